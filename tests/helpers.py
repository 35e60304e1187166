"""Test helpers: small datasets in the real on-disk formats."""

import pickle
from pathlib import Path

import numpy as np


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """cifar-10-batches-py/ with 5 training batches and a test batch, in CIFAR's pickle format."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            b"batch_label": name.encode(),
            b"labels": [int(x) for x in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(per_batch)],
        }
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, f)
    return root


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = {
            b"fine_labels": [int(x) for x in rng.integers(0, 100, n)],
            b"coarse_labels": [int(x) for x in rng.integers(0, 20, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    return root


def write_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 4, size: int = 20) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra) -> dict:
    """Environment for a CLI subprocess: this checkout's fastnas, one intra-op thread."""
    import os

    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)


def run_module(module: str, args, **kw):
    """`python -m module args...` in a subprocess; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=cli_env(),
                          timeout=600, **kw)


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")


def kill_after_rows(cmd, metrics: Path, rows: int, timeout: float = 300):
    """Start `cmd` in its own process group, wait until `metrics` (JSON lines) holds `rows` rows, then
    SIGKILL the whole group (a launcher and its workers alike). Fails if the run ends first."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(),
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= rows:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    # torchrun starts its workers in sessions of their own: kill the launcher's whole process tree, not
    # only its group (an orphaned worker would go on writing into the run directory, and hold its lock).
    tree = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for _ in range(500):  # SIGKILL is delivered asynchronously
        if not any(_running(pid) for pid in tree):
            break
        time.sleep(0.02)


# The smallest search and retraining command lines (seconds): what the robustness tests run.
SMOKE = ["--preset", "smoke", "--no-plots", "--derived-eval-images", "0"]
TINY = [*SMOKE, "--epochs", "1", "1", "1", "--warmup-epochs", "0", "0", "0", "--max-steps", "1",
        "--embedded-size", "128"]
TRAIN = ["--genotype", "DARTS_V2", "--preset", "smoke"]


def files(path: Path) -> dict[str, str]:
    """Every file under `path` with the hash of its bytes (to show a command changed nothing)."""
    import hashlib

    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def fails(main, argv, fragment, capsys, code=2):
    """`main(argv)` exits with `code` and one last stderr line (error: or interrupted) holding `fragment`."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(("error:", "interrupted")), err
    assert fragment in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)


def tiny_searcher(run_path: Path, preset: str = "darts", *, device: str = "cpu", cells: int = 2, channels: int = 4,
                  batch_size: int = 8, partial_channels: int = 2, **options):
    """A Searcher of `preset` with its first stage built (`cells` x `channels`, every stage alike, no
    warm-up) on embedded data, in training mode, its run directory open at `run_path`. PC-DARTS and DrNAS
    take `partial_channels` (their presets' K does not divide small widths); `options` override any
    search option. The global RNG is seeded before the build, so two calls start from the same weights."""
    import torch

    from fastnas.infra import config as cfglib
    from fastnas.infra.rundir import RunDir
    from fastnas.search import PRESETS, SearchConfig, Searcher

    n = len(PRESETS[preset].get("cells", [5, 11, 17]))  # the preset's stage count; only the first is built
    cli = {"preset": preset, "cells": [cells] * n, "channels": [channels] * n, "batch_size": batch_size,
           "warmup_epochs": [0] * n, "epochs": [2] * n, "embedded_size": 256, "plots": False,
           "derived_eval_images": 0, "device": device, "workers": 1}
    if preset in ("pcdarts", "drnas"):
        cli["partial_channels"] = [partial_channels] * n
    cli.update(options)
    cfg = cfglib.build_config(SearchConfig, PRESETS, cli, "progressive")
    s = Searcher(cfg, RunDir(run_path).__enter__(), torch.device(device))
    torch.manual_seed(0)
    s.build_stage(0)
    s.net.train()
    return s


def load_benchmark(name: str):
    """A script of benchmarks/ as a fresh module (benchmarks/ on sys.path for its own imports, such as
    harness, which puts this checkout first)."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
