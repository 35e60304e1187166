"""Run directories: resolved config, log file, JSON-lines + CSV metrics, TensorBoard events (when
installed), and atomic checkpoints (temp file + rename, so a kill at any moment leaves either the
previous or the new checkpoint, never a torn one)."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used."""


def default_run_dir(kind: str) -> Path:
    """runs/<kind>-<time>-<pid>: two runs started in the same second by two processes get two names, and
    a name already taken (the same process, the same second) gets a numeric suffix."""
    return _free_path(Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")


def _free_path(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, ... : the first that does not exist yet."""
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


# Files whose presence makes a directory a run's (search, train, pipeline or study).
RUN_MARKERS = ("config.yaml", "run.log", "metrics.jsonl", "checkpoint.pt", "last.pt", "summary.json",
               "report.json", "study_config.yaml", "pipeline.json", "genotype.json")
LOCK_NAME = ".lock"
_HELD: set[str] = set()  # run directories this process holds the lock of
_OPEN: list[RunDir] = []  # run directories open in this process, innermost last
_DEPTH = [0]  # CLI bodies running (guarded): > 1 inside a pipeline or a study


def holds_run(path: Path) -> str | None:
    """The first run file found in `path`, or None when it holds no run."""
    return next((m for m in RUN_MARKERS if (path / m).exists()), None)


def _proc_start(pid: int) -> tuple[str, str] | None:
    """(start time in clock ticks since boot, state) of a process, from /proc where there is one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[19], fields[0]


def _pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether the process that wrote a lock still runs: a zombie (killed, not yet reaped) does not, and
    neither does a new process that got the same pid (its start time differs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    now = _proc_start(pid)
    if now is None:
        return True
    ticks, state = now
    if state in ("Z", "X"):
        return False
    return start is None or start == ticks


def _acquire_lock(path: Path) -> Path:
    """Create path/.lock holding our pid and host (O_EXCL: of two processes one wins). A lock whose
    process is gone (killed runs leave one) is taken over; a live one is a one-line error."""
    lock = path / LOCK_NAME
    start = (_proc_start(os.getpid()) or ("",))[0]
    me = f"{os.getpid()} {socket.gethostname()} {start}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                parts = lock.read_text().split()
                pid, host, started = int(parts[0]), (parts[1:2] or [""])[0], (parts[2:3] or [None])[0]
            except (OSError, ValueError, IndexError):
                pid, host, started = -1, "", None
            same_host = host in ("", socket.gethostname())
            ours_stale = pid == os.getpid() and str(path.resolve()) not in _HELD
            if pid > 0 and same_host and _pid_alive(pid, started or None) and not ours_stale:
                raise RunError(f"run directory {path} is in use by another run (pid {pid}): wait for it to "
                               "finish or choose another --out") from None
            if pid > 0 and not same_host:
                raise RunError(f"run directory {path} is locked by pid {pid} on host {host}: if that run is "
                               f"gone, delete {lock}") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        _HELD.add(str(path.resolve()))
        return lock
    raise RunError(f"could not lock run directory {path}")


def claim_run_dir(path: Path, *, resume: bool = False, overwrite: bool = False) -> Path | None:
    """Make `path` this run's directory. A directory holding another run is refused unless the run is
    resumed, or `overwrite` moves the old run aside (to <path>.old-<time>; nothing is deleted or mixed).
    Returns where the old run went, if it was moved."""
    moved = None
    if path.is_dir() and not resume:
        found = holds_run(path)
        if found and not overwrite:
            raise RunError(f"{path} already holds a run ({found}): continue it with --resume {path}, move it "
                           "aside with --overwrite, or choose another --out")
        if found:
            if (path / LOCK_NAME).exists():  # never move a live run aside
                _acquire_lock(path)
                _release_lock(path)
            moved = _free_path(path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
            os.replace(path, moved)
    elif resume and not path.is_dir():
        raise RunError(f"nothing to resume: {path} is not a directory")
    return moved


def _release_lock(path: Path) -> None:
    key = str(path.resolve())
    if key in _HELD:
        _HELD.discard(key)
        (path / LOCK_NAME).unlink(missing_ok=True)


class RunDir:
    """The output folder of one search/train run.

    The directory is owned for the run's lifetime: a directory holding another run is refused unless
    `resume` (or `overwrite`, which moves the old run aside), and a lock file (pid, host) stops a second
    process from writing into it; :meth:`close` releases it (a killed run's lock is taken over later).
    """

    def __init__(self, path: str | Path, *, enabled: bool = True, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.enabled = enabled  # only rank 0 writes in distributed runs
        self.moved_aside = None
        if enabled:
            self.moved_aside = claim_run_dir(self.path, resume=resume, overwrite=overwrite)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                probe = self.path / ".write-test"
                probe.write_text("")
                probe.unlink()
            except OSError as exc:
                raise RunError(f"output directory {self.path} is not writable: {exc.strerror or exc}") from None
            _acquire_lock(self.path)
            _OPEN.append(self)
        self.metrics_path = self.path / "metrics.jsonl"
        self.logger = logging.getLogger(f"fastnas.run.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        if enabled:
            fh = logging.FileHandler(self.path / "run.log")
            fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.logger.addHandler(fh)
        self._tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path / "tensorboard"))
            except Exception:  # tensorboard not installed: events are optional
                self._tb = None

    # ----------------------------------------------------------------- logging
    def log(self, message: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        self.logger.info(message)
        if echo:
            _echo(message)

    def log_metrics(self, row: dict, step: int | None = None) -> None:
        """Append one JSON line, refresh the CSV, send scalars to TensorBoard."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        if self._tb is not None and step is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill
                break
        return rows

    def truncate_metrics(self, keep) -> None:
        """Keep only the rows for which keep(row) is true (used on resume)."""
        if not self.enabled:
            return
        rows = [r for r in self.read_metrics() if keep(r)]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.metrics_path)
        self._write_csv()

    def _write_csv(self) -> None:
        rows = self.read_metrics()
        if not rows:
            return
        columns = []
        for r in rows:
            for k, v in r.items():
                if k not in columns and not isinstance(v, (dict, list)):
                    columns.append(k)
        tmp = self.path / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path / "metrics.csv")

    # ----------------------------------------------------------------- files
    def write_text(self, name: str, text: str) -> Path:
        p = self.path / name
        if self.enabled:
            tmp = p.with_name(p.name + ".tmp")
            try:
                tmp.write_text(text)
                os.replace(tmp, p)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise RunError(f"could not write {p}: {exc.strerror or exc}") from None
        return p

    def write_json(self, name: str, obj) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def save_checkpoint(self, state: dict, name: str = "checkpoint.pt") -> Path:
        p = self.path / name
        if self.enabled:
            tmp = p.with_name(p.name + ".tmp")
            try:
                torch.save(state, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, p)
            except (OSError, RuntimeError) as exc:  # a full disk surfaces from torch.save as a RuntimeError
                tmp.unlink(missing_ok=True)
                reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:160]
                kept = "the previous checkpoint is kept" if p.exists() else "no checkpoint was written yet"
                raise RunError(f"could not write checkpoint {p} ({reason}; is the disk full?): {kept}") from None
        return p

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for h in list(self.logger.handlers):
            h.close()
            self.logger.removeHandler(h)
        if self.enabled:
            _release_lock(self.path)
        if self in _OPEN:
            _OPEN.remove(self)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    p = Path(path)
    if not p.is_file():
        raise RunError(f"no checkpoint at {p}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise RunError(f"corrupt checkpoint {p}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or "version" not in state:
        raise RunError(f"corrupt checkpoint {p}: not a fastnas checkpoint")
    return state


def is_terminal() -> bool:
    return sys.stderr.isatty()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


_BARS: list = []  # live tqdm bars: log lines go through tqdm.write meanwhile, so they do not tear them


class _Bar:
    def __init__(self, bar):
        self.bar = bar
        _BARS.append(self)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        if self in _BARS:
            _BARS.remove(self)


def progress_bar(total: int, desc: str, enabled: bool = True, *, whole_run: bool = False, initial: int = 0):
    """A tqdm bar with rate and ETA in a terminal (`enabled`: rank 0), else a silent stand-in: the
    per-epoch log lines are the progress report when the output is a file or a pipe. `whole_run`: the
    bar of the whole run in epochs (stays on screen, on top); otherwise the current epoch's steps."""
    if enabled and is_terminal():
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        return _Bar(tqdm(total=total, initial=initial, desc=desc, position=0 if whole_run else 1,
                         leave=whole_run, unit="epoch" if whole_run else "step", dynamic_ncols=True))
    return _NoBar()


def _echo(message: str) -> None:
    if _BARS:
        from tqdm import tqdm

        tqdm.write(message)
    else:
        print(message, flush=True)


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_context(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype` on `device`, or a no-op context when mixed precision is off."""
    if dtype is None:
        from contextlib import nullcontext

        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {name!r} requested but no CUDA device is visible")
    return dev


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cli_main(parse_args, body, argv=None) -> int:
    """Entry point of every CLI: parse (``--help`` -> 0, usage error -> 2), then run `body` guarded."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return guarded(body, args)


def sub_run(main, argv: list[str]) -> int:
    """Run a CLI inside another (a pipeline's or a study's search and retraining): its exit code, except
    that Ctrl-C goes on up, so the outer command names its own directory to resume."""
    code = main(argv)
    if code == 130:
        raise KeyboardInterrupt
    return code


def guarded(body, *args) -> int:
    """Run a CLI body: bad input (config, data, genotype, run dir, checkpoint) becomes one `error:`
    line on stderr and exit code 2, never a traceback; Ctrl-C exits 130 naming the run directory to
    resume. Either way the line also goes into the run's run.log, and the run's lock is released."""
    from fastnas.config import ConfigError
    from fastnas.data import DataError
    from fastnas.genotype import GenotypeError

    opened = len(_OPEN)
    _DEPTH[0] += 1
    try:
        return body(*args)
    except (ConfigError, DataError, RunError, GenotypeError) as exc:
        _fail(f"error: {exc}", opened)
        return 2
    except (torch.OutOfMemoryError, MemoryError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        _fail(f"error: out of memory ({first or type(exc).__name__}): lower --batch-size, --channels or the "
              "dataset size", opened)
        return 2
    except OSError as exc:  # disk full, permission denied, ...: name the path, no traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _fail(f"error: {exc.strerror or exc}{where}", opened)
        return 2
    except KeyboardInterrupt:
        line = _interrupt_message(_OPEN[opened:])
        if _DEPTH[0] > 1:  # inside another command (see sub_run): it reports, naming its own directory
            _close_open(opened, line)
        else:
            _fail(line, opened)
        return 130
    except RuntimeError as exc:
        if not _peer_failure(exc):
            _close_open(opened, "error: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
            raise
        # A peer died or a collective timed out: stop with one line instead of hanging.
        rank = os.environ.get("RANK", "?")
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        _fail(f"error: distributed run failed on rank {rank} (a peer process died or timed out): {first}", opened)
        return 1
    finally:
        _DEPTH[0] -= 1
        _close_open(opened, None)


def _interrupt_message(runs: list[RunDir]) -> str:
    """Where to resume from, or that there is nothing to resume yet."""
    run = runs[0] if runs else None  # the outermost run this command opened
    if run is None:
        return "interrupted"
    if any((run.path / n).is_file() for n in ("checkpoint.pt", "last.pt", "pipeline.json", "study_config.yaml")):
        return f"interrupted: continue with --resume {run.path}"
    return f"interrupted before the first checkpoint of {run.path}: nothing to resume yet, start again"


def _fail(line: str, opened: int) -> None:
    print(line, file=sys.stderr, flush=True)
    _close_open(opened, line)


def _close_open(opened: int, line: str | None) -> None:
    """Log `line` into the run.log of every run this command opened, then close them (innermost first)."""
    for run in reversed(_OPEN[opened:]):
        if line and run.enabled:
            try:
                run.logger.info(line)
            except Exception:  # logging must not mask the failure being reported
                pass
        try:
            run.close()
        except Exception:
            pass


_PEER_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "broken pipe")


def _peer_failure(exc: RuntimeError) -> bool:
    """A collective that failed because another process went away (not a bug of ours)."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    msg = str(exc).lower()
    return any(m in msg for m in _PEER_MARKERS)
