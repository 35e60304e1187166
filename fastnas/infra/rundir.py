"""Run directories: resolved config, log file, JSON-lines + CSV metrics, TensorBoard events (when
installed), and atomic checkpoints (temp file + rename, so a kill at any moment leaves either the
previous or the new checkpoint, never a torn one).

A :class:`RunDir` is a context manager (``with RunDir(path) as run:``); :func:`tracking_runs` collects
the run directories a command opens, so its error guard can write the failure into their run.log and
name the one to resume."""

from __future__ import annotations

import contextlib
import contextvars
import csv
import json
import logging
import os
import pickle
import time
import warnings
from pathlib import Path

import torch

from fastnas.infra import console
from fastnas.infra.errors import RunError
from fastnas.infra.lock import LOCK_NAME, acquire_lock, held_here, release_lock

# Version of the checkpoints this code writes; a checkpoint from a newer fastnas is refused by name.
CHECKPOINT_VERSION = 1
# The run directories opened inside the innermost tracking_runs() block (None outside one).
_TRACKED: contextvars.ContextVar[list | None] = contextvars.ContextVar("fastnas_tracked_runs", default=None)


@contextlib.contextmanager
def tracking_runs():
    """Collect every RunDir opened inside the block (outermost first) into the yielded list."""
    opened: list[RunDir] = []
    token = _TRACKED.set(opened)
    try:
        yield opened
    finally:
        _TRACKED.reset(token)


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
RUN_MARKERS = ("config.yaml", "run.log", "metrics.jsonl", "checkpoint.pt", "last.pt", "best.pt", "summary.json",
               "report.json", "study_config.yaml", "study.json", "pipeline.json", "genotype.json", "model.pt2",
               "model.safetensors", "model_state_dict.pt")
# What a run writes before its first checkpoint: a folder holding only these (and no live lock) is a
# start that failed or was interrupted, which nothing can resume; the next run may take it over.
_START_FILES = {"config.yaml", "run.log", LOCK_NAME}
_START_DIRS = {"tensorboard"}


def never_checkpointed(path: Path) -> bool:
    """Whether `path` holds only the files of a run start that never reached its first checkpoint."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    return bool(entries) and all((e.is_file() and e.name in _START_FILES) or (e.is_dir() and e.name in _START_DIRS)
                                 for e in entries)


def refuse_existing(path: str | Path, what: str) -> Path:
    """A result file to create: one that exists already (a run's config, a checkpoint, anything this
    command did not write) is never replaced."""
    p = Path(path)
    if p.exists():
        raise RunError(f"{what} {p} exists already: fastnas writes results only to new files (choose another path "
                       "or remove it)")
    return p


def holds_run(path: Path) -> str | None:
    """The first run file found in `path`, or None when it holds no run."""
    return next((m for m in RUN_MARKERS if (path / m).exists()), None)


def claim_run_dir(path: Path, *, resume: bool = False, overwrite: bool = False) -> Path | None:
    """Make `path` this run's directory. A directory holding another run is refused unless the run is
    resumed, or `overwrite` moves the old run aside (to <path>.old-<time>; nothing is deleted or mixed).
    A folder where a run started but never reached its first checkpoint belongs to nobody and is
    reused. Returns where the old run went (if it was moved) and whether the folder was reused."""
    moved, reused = None, False
    if path.is_dir() and (path / LOCK_NAME).exists() and not held_here(path):
        # a live run: say so (pid, host) rather than "holds a run"; a dead one's lock is taken over
        acquire_lock(path)
        release_lock(path)
    if path.is_dir() and not resume:
        found = holds_run(path)
        if found and never_checkpointed(path):
            (path / "config.yaml").unlink(missing_ok=True)
            found = None
            reused = True
        if found and not overwrite:
            raise RunError(f"{path} already holds a run ({found}): continue it with --resume {path}, move it "
                           "aside with --overwrite, or choose another --out")
        if found:
            if (path / LOCK_NAME).exists():  # never move a live run aside
                acquire_lock(path)
                release_lock(path)
            moved = _free_path(path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
            os.replace(path, moved)
    elif resume and not path.is_dir():
        raise RunError(f"nothing to resume: {path} is not a directory")
    return moved, reused


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
        self.is_open = True
        reused = False
        if enabled:
            self.moved_aside, reused = claim_run_dir(self.path, resume=resume, overwrite=overwrite)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                probe = self.path / ".write-test"
                probe.write_text("")
                probe.unlink()
            except OSError as exc:
                raise RunError(f"output directory {self.path} is not writable: {exc.strerror or exc}") from None
            acquire_lock(self.path)
            tracked = _TRACKED.get()
            if tracked is not None:
                tracked.append(self)
        self.metrics_path = self.path / "metrics.jsonl"
        self.logger = logging.getLogger(f"fastnas.run.{id(self)}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        if enabled:
            fh = logging.FileHandler(self.path / "run.log")
            fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.logger.addHandler(fh)
            if reused:
                self.log(f"reusing {self.path}: the run started here stopped before its first checkpoint, so "
                         "nothing could resume it (its log is above)")
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
            console.echo(message)

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
        self.is_open = False
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for h in list(self.logger.handlers):
            h.close()
            self.logger.removeHandler(h)
        if self.enabled:
            release_lock(self.path)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        tracked = _TRACKED.get()
        if exc_type is not None and tracked is not None and self in tracked:
            return  # the command's guard writes the failure into run.log, then closes every run it tracks
        self.close()


def _numpy_array_globals() -> list:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


_OLD_CHECKPOINT_GLOBALS = _numpy_array_globals()


def _refused_globals(path: Path) -> str:
    """The globals a refused file names (read from its opcodes, never executed)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return ""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _OLD_CHECKPOINT_GLOBALS}
    names = [n for n in names if n not in allowed]
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def load_checkpoint(path: str | Path, map_location="cpu", kind: str | tuple[str, ...] | None = None) -> dict:
    """A fastnas checkpoint as a dict, checked: readable, a fastnas checkpoint, a version this code
    reads, and (given `kind`) of that kind ('search', 'train', 'weights'). Anything else is a RunError."""
    p = Path(path)
    if not p.is_file():
        raise RunError(f"no checkpoint at {p}")
    try:
        # weights_only: a crafted file cannot run code. Numpy's array reconstruction is admitted for
        # the RNG state of checkpoints written before it was stored as a tensor (it builds arrays only).
        with torch.serialization.safe_globals(_OLD_CHECKPOINT_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on a foreign pickle protocol: the error says enough
            state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        refused = _refused_globals(p) if isinstance(exc, pickle.UnpicklingError) else ""
        if refused:  # the weights-only unpickler met a global it does not admit
            raise RunError(f"refused checkpoint {p}: {refused} is not data a fastnas checkpoint holds; loading "
                           "it could run code (a crafted or foreign file?)") from None
        first = (str(exc).splitlines() or [""])[0][:200]
        raise RunError(f"corrupt checkpoint {p}: {type(exc).__name__}: {first}") from None
    if not isinstance(state, dict) or "version" not in state:
        raise RunError(f"corrupt checkpoint {p}: not a fastnas checkpoint")
    version = state["version"]
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise RunError(f"checkpoint {p} has format version {version!r}; this fastnas reads versions 1 to "
                       f"{CHECKPOINT_VERSION} (a newer fastnas wrote it?)")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and state.get("kind") not in kinds:
        raise RunError(f"{p}: checkpoint is a {state.get('kind')!r} checkpoint, not {' or '.join(kinds)}")
    return state


