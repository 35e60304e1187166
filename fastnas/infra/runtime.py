"""Where and how a run executes: the device, mixed precision, seeds and the random-number states a
checkpoint carries."""

from __future__ import annotations

import os
import random
import re
import time

import numpy as np
import torch

from fastnas.infra.errors import ConfigError, RunError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_context(device: torch.device, dtype: torch.dtype | None, cache_enabled: bool = True):
    """torch.autocast for `dtype` on `device`, or a no-op context when mixed precision is off;
    `cache_enabled=False` where a CUDA graph captures the region."""
    if dtype is None:
        from contextlib import nullcontext

        return nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


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
        torch.backends.cudnn.deterministic = True  # the autotuner's setting: configure_cudnn


def configure_cudnn(benchmark: bool, deterministic: bool) -> None:
    """cuDNN's autotuner on or off for this process (``--cudnn-benchmark``): on, the first call with a new
    convolution shape times the candidate algorithms and later calls use the fastest. The shapes of a
    search stage and of a retraining run are fixed, so it pays once; under ``--deterministic`` it stays
    off (the timing may pick a different algorithm per run). A CUDA graph's capture follows eager warm-up
    steps, so no timing happens inside a capture."""
    torch.backends.cudnn.benchmark = bool(benchmark) and not deterministic


def rng_state() -> dict:
    """Every generator's state in plain types and tensors, so a checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]  # keys: a tensor, or (checkpoints before 0.1) a numpy array
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])



def physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores(window: float = 0.2) -> float | None:
    """How many cores other work keeps busy right now, from /proc/stat over `window` seconds (None where
    there is no /proc/stat). Sampled before this process computes anything, so it counts the others."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return sum(v[:8]), idle

    try:
        t0, i0 = sample()
        time.sleep(window)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = t1 - t0
    if total <= 0:
        return None
    return (os.cpu_count() or 1) * (total - (i1 - i0)) / total


def choose_threads(requested: int, deterministic: bool = False) -> tuple[int, str]:
    """The intra-op thread count of a run and why. `requested` > 0 (--workers) or OMP_NUM_THREADS
    decide when given; a deterministic run takes every usable core (a count that does not depend on the
    machine's load: CPU kernels split their sums by thread, so the count is part of the result);
    otherwise one thread per core that other work leaves free. Measured on 2 cores
    (benchmarks/README.md): two threads on two idle cores run the smoke search 1.4x faster than one,
    but beside one busy process they are 2.4x slower than one, since every tiny op's barrier waits for
    the thread the other process holds up."""
    if requested > 0:
        return requested, "--workers"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cores = usable_cores()
    if deterministic:
        return cores, f"{cores} usable core(s); --deterministic: not chosen by load"
    busy = busy_cores()
    if busy is None:
        return cores, f"{cores} usable core(s)"
    free = max(1, min(cores, int(cores - busy + 0.5)))
    return free, f"{cores} usable core(s), {busy:.1f} busy with other work"


def device_memory(name: str) -> int:
    """Bytes of memory a run on device `name` (auto, cpu, cuda[:N]) can hold tensors in: the GPU's for
    CUDA, the machine's otherwise (0 when unknown)."""
    if name != "cpu" and torch.cuda.is_available():
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        if index < torch.cuda.device_count():
            return torch.cuda.get_device_properties(index).total_memory
    return physical_memory()


def check_device(name: str) -> None:
    """auto, cpu, cuda or cuda:N, and a CUDA device that exists on this machine."""
    m = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", name)
    if not m:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: no CUDA device is visible on this machine")
        if m.group(1) is not None and int(m.group(1)) >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
