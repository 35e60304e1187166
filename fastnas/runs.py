"""Run directories: resolved config, log file, JSON-lines + CSV metrics, TensorBoard events (when
installed), and atomic checkpoints (temp file + rename, so a kill at any moment leaves either the
previous or the new checkpoint, never a torn one)."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used."""


def default_run_dir(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """The output folder of one search/train run."""

    def __init__(self, path: str | Path, *, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled  # only rank 0 writes in distributed runs
        if enabled:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                probe = self.path / ".write-test"
                probe.write_text("")
                probe.unlink()
            except OSError as exc:
                raise RunError(f"output directory {self.path} is not writable: {exc.strerror or exc}") from None
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
            print(message, flush=True)

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
            tmp.write_text(text)
            os.replace(tmp, p)
        return p

    def write_json(self, name: str, obj) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def save_checkpoint(self, state: dict, name: str = "checkpoint.pt") -> Path:
        p = self.path / name
        if self.enabled:
            tmp = p.with_name(p.name + ".tmp")
            torch.save(state, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, p)
        return p

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        for h in list(self.logger.handlers):
            h.close()
            self.logger.removeHandler(h)


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


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar in a terminal (when tqdm is installed and `enabled`), else a silent stand-in: the
    per-epoch log line is the progress report then."""
    if enabled and is_terminal():
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, leave=False)
        except ImportError:
            pass
    return _NoBar()


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


def guarded(body, *args) -> int:
    """Run a CLI body: bad input (config, data, genotype, run dir, checkpoint) becomes one `error:`
    line on stderr and exit code 2, never a traceback."""
    from fastnas.config import ConfigError
    from fastnas.data import DataError
    from fastnas.genotype import GenotypeError

    try:
        return body(*args)
    except (ConfigError, DataError, RunError, GenotypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: continue with --resume <run dir>", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        if not _peer_failure(exc):
            raise
        # A peer died or a collective timed out: stop with one line instead of hanging.
        rank = os.environ.get("RANK", "?")
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        print(f"error: distributed run failed on rank {rank} (a peer process died or timed out): {first}",
              file=sys.stderr)
        return 1


_PEER_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "broken pipe")


def _peer_failure(exc: RuntimeError) -> bool:
    """A collective that failed because another process went away (not a bug of ours)."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    msg = str(exc).lower()
    return any(m in msg for m in _PEER_MARKERS)
