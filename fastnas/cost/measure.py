"""Measuring what an evaluation network costs: parameters, FLOPs (multiply-adds) and latency, of
single candidate ops at a shape and of whole networks, plus the units and amounts (``2.5M``) budgets
are written in.

The costs are those of the network S3 retrains (:class:`fastnas.space.network.EvalNetwork`: its
channels, cells and image size), not of the supernet. FLOPs are counted as multiply-adds (MACs) of
convolutions and the classifier, as the NAS papers report them (DARTS' "<600M multiply-adds" mobile
setting); pooling, BN and additions count zero. Parameters exclude the auxiliary head, as DARTS
counts them. Latency is each op timed alone at each shape, kept in a lookup table on disk keyed by
device, dtype, batch, memory format and shape.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fastnas.infra.errors import ConfigError
from fastnas.space.genotype import Genotype
from fastnas.space.network import EvalNetwork
from fastnas.space.primitives import build_op
from fastnas.space.topology import is_reduction

METRICS = ("params", "flops", "latency")
UNITS = {"params": "parameters", "flops": "multiply-adds", "latency": "ms"}
# ops that produce nothing the evaluation network would keep: they never appear in a genotype
FREE_OPS = ("none", "noise")

_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9, "b": 1e9, "B": 1e9}


def parse_amount(value, name: str) -> float:
    """'2.5M', '600M', '3.3e6', 5 -> a positive number; anything else is a ConfigError naming `name`."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number such as 2.5M, got {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
    else:
        m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGbB]?)\s*", str(value))
        if not m:
            raise ConfigError(f"{name}: expected a number such as 2.5M or 600M, got {value!r}")
        x = float(m.group(1)) * _SUFFIX[m.group(2)]
    if not (math.isfinite(x) and x > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return x


def human(x: float, metric: str) -> str:
    if metric == "latency":
        return f"{x:.3f} ms"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3f}{suf}"
    return f"{x:.0f}"


# ----------------------------------------------------------------------------- network geometry
@dataclass(frozen=True)
class EvalShape:
    """The evaluation network a cost refers to."""

    channels: int = 36
    layers: int = 20
    image_size: int = 32
    num_classes: int = 10

    def cells(self) -> list[tuple[str, int, int]]:
        """(cell type, C of its ops, input side H) per cell, as EvalNetwork builds them."""
        out, C, H = [], self.channels, self.image_size
        for i in range(self.layers):
            reduction = is_reduction(i, self.layers)
            if reduction:
                C *= 2
            out.append(("reduce" if reduction else "normal", C, H))
            if reduction:
                H = (H + 1) // 2
        return out



# ----------------------------------------------------------------------------- per-op costs
def op_params(op: str, C: int, stride: int) -> int:
    return sum(p.numel() for p in build_op(op, C, stride, True).parameters())


def op_macs(op: str, C: int, stride: int, H: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    m = build_op(op, C, stride, True).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(torch.zeros(1, C, H, H))
    return counter.get_total_flops() / 2


@dataclass(frozen=True)
class LatencySetting:
    """Where and how latency is measured: the lookup table's key."""

    device: str = "cpu"
    batch_size: int = 1
    dtype: str = "float32"
    channels_last: bool = False
    repeats: int = 20

    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.dtype]

    def key(self) -> str:
        dev = torch.device(self.device)
        if dev.type == "cuda":
            name = torch.cuda.get_device_name(dev).replace(" ", "_")
        else:
            name = f"cpu{torch.get_num_threads()}threads"
        return f"{name}|{self.dtype}|b{self.batch_size}|{'cl' if self.channels_last else 'cf'}"


def time_module(module: torch.nn.Module, shape: tuple[int, ...], setting: LatencySetting) -> float:
    """Median milliseconds of one forward pass of `module` (eval mode, no grad) on zeros of `shape`."""
    dev = torch.device(setting.device)
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    m = module.to(dev, dtype=setting.torch_dtype(), memory_format=fmt).eval()
    x = torch.randn(*shape, device=dev, dtype=setting.torch_dtype()).contiguous(memory_format=fmt)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for _ in range(3):
            m(x)
        sync()
        for _ in range(max(3, setting.repeats)):
            t0 = time.perf_counter()
            m(x)
            sync()
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


class LatencyTable:
    """Per-op latencies by shape, kept in a JSON file so later searches reuse the measurements."""

    def __init__(self, setting: LatencySetting, path: str | Path | None = None):
        self.setting = setting
        self.path = Path(path).expanduser() if path else None
        self.entries: dict[str, float] = {}
        self.prefix = setting.key()
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                self.entries = {}  # a damaged cache is measured afresh
        self.measured = 0

    def op(self, op: str, C: int, stride: int, H: int) -> float:
        key = f"{self.prefix}|{op}|C{C}|s{stride}|H{H}"
        if key not in self.entries:
            shape = (self.setting.batch_size, C, H, H)
            self.entries[key] = time_module(build_op(op, C, stride, True), shape, self.setting)
            self.measured += 1
        return self.entries[key]

    def network(self, key: str, build, image_size: int) -> float:
        full = f"{self.prefix}|net|{key}"
        if full not in self.entries:
            self.entries[full] = measure_network_latency(build(), self.setting, image_size)
            self.measured += 1
        return self.entries[full]

    def save(self) -> None:
        if self.path is None or not self.measured:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=0, sort_keys=True))
        os.replace(tmp, self.path)


def measure_network_latency(net, setting: LatencySetting, image_size: int) -> float:
    return time_module(net, (setting.batch_size, 3, image_size, image_size), setting)


def default_latency_cache() -> Path:
    return Path(os.environ.get("FASTNAS_CACHE", "~/.cache/fastnas")).expanduser() / "latency.json"



def build_eval_network(genotype: Genotype, shape: EvalShape):
    return EvalNetwork(genotype, shape.channels, shape.layers, shape.num_classes, auxiliary=False)


def measure_genotype(genotype: Genotype, shape: EvalShape, metric: str, latency: LatencyTable | None = None) -> float:
    """The exact (params, FLOPs) or measured (latency) cost of the whole evaluation network."""
    net = build_eval_network(genotype, shape)
    if metric == "params":
        return float(net.num_parameters())
    if metric == "flops":
        from torch.utils.flop_counter import FlopCounterMode

        net.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, shape.image_size, shape.image_size))
        return counter.get_total_flops() / 2
    if latency is None:
        raise ValueError("measure_genotype: latency needs a LatencyTable (its device and setting)")
    return measure_network_latency(net, latency.setting, shape.image_size)
