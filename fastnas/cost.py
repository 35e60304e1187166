"""Cost of the evaluation network per candidate op: parameters, FLOPs (multiply-adds) and measured
latency, and the budgeted-search pieces built on it: ``python -m fastnas.cost``.

The costs are those of the network S3 retrains (:class:`fastnas.network.EvalNetwork`: its channels,
cells and image size), not of the supernet. Every normal cell runs the same genotype, so the cost of
op k on edge e of the normal cell is the sum of that op's cost over all normal cells (their shapes
differ per stage); likewise for the reduction cells, whose edges from the cell inputs have stride 2.
A genotype's cost is then

    fixed + sum over its 16 (edge, op) choices of table[cell][edge][op]

where `fixed` (stem, per-cell preprocessing, classifier, node sums) is measured once on a reference
network whose ops cost nothing (every edge a 3x3 max pool). Parameters and FLOPs are exact this way
(tests/test_cost.py checks it against whole networks); latency is a lookup table of each op timed
alone at each shape, cached on disk keyed by device, dtype, batch, memory format and shape, and its
prediction error for whole networks is reported by ``python -m fastnas.cost --check``.

FLOPs are counted as multiply-adds (MACs) of convolutions and the classifier, as the NAS papers
report them (DARTS' "<600M multiply-adds" mobile setting); pooling, BN and additions count zero.
Parameters exclude the auxiliary head, as DARTS counts them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fastnas.config import ConfigError
from fastnas.genotype import Genotype
from fastnas.primitives import build_op

METRICS = ("params", "flops", "latency")
UNITS = {"params": "parameters", "flops": "multiply-adds", "latency": "ms"}
CELL_TYPES = ("normal", "reduce")
# ops that produce nothing the evaluation network would keep: they never appear in a genotype
_FREE = ("none", "noise")

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
            reduction = i in (self.layers // 3, 2 * self.layers // 3)
            if reduction:
                C *= 2
            out.append(("reduce" if reduction else "normal", C, H))
            if reduction:
                H = (H + 1) // 2
        return out


def edge_inputs(steps: int = 4) -> list[int]:
    """Input node j of each edge e (DARTS edge order: node 2 takes edges from 0, 1; node 3 from 0, 1, 2...)."""
    return [j for i in range(steps) for j in range(2 + i)]


def genotype_edges(genotype: Genotype, cell: str) -> list[tuple[int, str]]:
    """(edge index, op) of each of a cell's chosen pairs."""
    pairs = getattr(genotype, cell)
    out, start = [], 0
    for i in range(len(pairs) // 2):
        for op, j in pairs[2 * i: 2 * i + 2]:
            out.append((start + j, op))
        start += 2 + i
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


# ----------------------------------------------------------------------------- the cost model
def _reference_genotype(steps: int = 4, reduce_cell: str | None = None) -> Genotype:
    """Every edge a 3x3 max pool: ops with no parameters and no FLOPs (a fixed reduction cell, if any,
    is part of the fixed cost)."""
    pairs = [("max_pool_3x3", j) for i in range(steps) for j in (0, 1)]
    concat = tuple(range(2, steps + 2))
    return Genotype(pairs, concat, () if reduce_cell else pairs, concat, reduce_cell=reduce_cell)


def build_eval_network(genotype: Genotype, shape: EvalShape):
    from fastnas.network import EvalNetwork

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


class CostModel:
    """Cost of op `name` on every edge of each cell type of the evaluation network, for one metric.

    ``op_cost(cell, edge, op)`` sums the op over every cell of that type; ``genotype_cost`` adds the
    fixed part; ``table(edge_primitives)`` lays the costs out like the supernet's alpha (E, K).
    """

    def __init__(self, metric: str, shape: EvalShape = EvalShape(), latency: LatencyTable | None = None,
                 steps: int = 4, reduce_cell: str | None = None):
        if metric not in METRICS:
            raise ConfigError(f"cost metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if metric == "latency" and latency is None:
            latency = LatencyTable(LatencySetting(), None)
        self.metric, self.shape, self.latency, self.steps = metric, shape, latency, steps
        self.reduce_cell = reduce_cell
        self.inputs = edge_inputs(steps)
        self._cache: dict[tuple[str, int, str], float] = {}
        ref = _reference_genotype(steps, reduce_cell)
        if metric == "latency":
            key = f"ref|C{shape.channels}|L{shape.layers}|S{shape.image_size}|n{shape.num_classes}|{reduce_cell}"
            whole = latency.network(key, lambda: build_eval_network(ref, shape), shape.image_size)
        else:
            whole = measure_genotype(ref, shape, metric)
        self.fixed = whole - self._ops_cost(ref)

    def _one(self, op: str, C: int, stride: int, H: int) -> float:
        if op in _FREE:
            return 0.0
        if self.metric == "params":
            return float(op_params(op, C, stride))
        if self.metric == "flops":
            return float(op_macs(op, C, stride, H))
        return self.latency.op(op, C, stride, H)

    def op_cost(self, cell: str, edge: int, op: str) -> float:
        """Cost of `op` on `edge` summed over every `cell` of the evaluation network."""
        if cell == "reduce" and self.reduce_cell:  # fixed: its cost is in `fixed`
            return 0.0
        stride2 = cell == "reduce" and self.inputs[edge] < 2
        key = (cell, 2 if stride2 else 1, op)
        if key not in self._cache:
            total = 0.0
            for kind, C, H in self.shape.cells():
                if kind == cell:
                    # a reduction cell's intermediate nodes are already at the halved side
                    side = (H + 1) // 2 if cell == "reduce" and not stride2 else H
                    total += self._one(op, C, key[1], side)
            self._cache[key] = total
        return self._cache[key]

    def _ops_cost(self, genotype: Genotype) -> float:
        return sum(self.op_cost(cell, e, op) for cell in CELL_TYPES for e, op in genotype_edges(genotype, cell))

    def genotype_cost(self, genotype: Genotype) -> float:
        """Predicted cost of the whole evaluation network for `genotype` (exact for params and FLOPs)."""
        if genotype.reduce_cell != self.reduce_cell:
            raise ValueError(f"cost model for reduce_cell={self.reduce_cell!r} asked about a genotype with "
                             f"reduce_cell={genotype.reduce_cell!r}")
        return self.fixed + self._ops_cost(genotype)

    def table(self, edge_primitives: dict[str, list[list[str]]]) -> dict[str, Tensor]:
        """Per cell type an (E, K) float64 tensor of op costs, in the supernet's candidate order."""
        return {cell: torch.tensor([[self.op_cost(cell, e, op) for op in names]
                                    for e, names in enumerate(edge_primitives[cell])], dtype=torch.float64)
                for cell in CELL_TYPES}

    def save(self) -> None:
        if self.latency is not None:
            self.latency.save()


def make_cost_model(metric: str, shape: EvalShape, *, latency_device: str = "cpu", latency_batch: int = 1,
                    latency_dtype: str = "float32", channels_last: bool = False,
                    latency_cache: str | None = None, reduce_cell: str | None = None) -> CostModel:
    latency = None
    if metric == "latency":
        if latency_device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"latency_device {latency_device}: no CUDA device here")
        setting = LatencySetting(latency_device, latency_batch, latency_dtype, channels_last)
        latency = LatencyTable(setting, latency_cache or default_latency_cache())
    model = CostModel(metric, shape, latency, reduce_cell=reduce_cell)
    model.save()
    return model


# ----------------------------------------------------------------------------- expected cost
def expected_cell_cost(p: Tensor, cost: Tensor, names: list[list[str]], steps: int = 4) -> Tensor:
    """Differentiable expected cost of one cell type's derived edges under op probabilities `p` (E, K).

    Derivation drops 'none', keeps per edge its strongest op and per node the 2 strongest edges. The
    smooth stand-in: per edge, the cost of the op distribution renormalised without 'none'; per node,
    each incoming edge weighted by ``2 * s_e / sum(s)`` where s_e is the edge's strongest non-'none'
    probability (the derivation's edge score), so every node counts two edges' worth, shared by
    strength. With all edges equally strong this is the exact expectation under a uniform choice of
    the two edges."""
    keep = torch.tensor([[n not in _FREE for n in row] for row in names], device=p.device)
    q = p * keep
    q_sum = q.sum(-1, keepdim=True).clamp_min(1e-12)
    edge_cost = ((q / q_sum) * cost.to(p)).sum(-1)
    strength = q.amax(-1)
    total = p.new_zeros(())
    start = 0
    for i in range(steps):
        n = 2 + i
        s = strength[start:start + n]
        w = 2 * s / s.sum().clamp_min(1e-12)
        total = total + (w * edge_cost[start:start + n]).sum()
        start += n
    return total


def expected_cost(probs: dict[str, Tensor], tables: dict[str, Tensor], edge_primitives, fixed: float,
                  steps: int = 4) -> Tensor:
    """fixed + the expected cost of both cell types (see :func:`expected_cell_cost`)."""
    return fixed + sum(expected_cell_cost(probs[c], tables[c], edge_primitives[c], steps) for c in CELL_TYPES)


# ----------------------------------------------------------------------------- penalties
class CostPenalty:
    """A term added to the architecture loss from the expected cost E under the sampler's distribution,
    relative to the target T (so `strength` has no unit):

    - ``linear`` (ProxylessNAS: loss + lambda * E[latency]): ``ce + strength * E / T``; always pushes down.
    - ``absolute`` (TuNAS' absolute-value reward): ``ce + strength * |E / T - 1|``; pulls E to T from
      either side, so it lands near the target. The default.
    - ``log`` (FBNet: ce * alpha * log(LAT)^beta, beta = 1): ``ce * (1 + strength * log(E / T))``;
      multiplicative, always pushes down, harder when the loss is high.
    """

    FORMS = ("linear", "absolute", "log")

    def __init__(self, model: CostModel, target: float, form: str = "absolute", strength: float = 1.0):
        if form not in self.FORMS:
            raise ConfigError(f"cost_penalty must be one of {', '.join(self.FORMS)}, got {form!r}")
        self.model, self.target, self.form, self.strength = model, float(target), form, float(strength)
        self.tables = None
        self.edge_primitives = None

    def bind(self, edge_primitives) -> None:
        """Lay the cost table out for the current stage's candidates."""
        self.edge_primitives = edge_primitives
        self.tables = self.model.table(edge_primitives)

    def expected(self, net, sampler) -> Tensor:
        probs = {c: sampler.expected_probabilities(a) for c, a in net.named_arch_parameters().items()}
        return expected_cost(probs, self.tables, self.edge_primitives, self.model.fixed, net.steps)

    def __call__(self, loss: Tensor, net, sampler) -> Tensor:
        ratio = self.expected(net, sampler).float() / self.target
        if self.form == "linear":
            return loss + self.strength * ratio
        if self.form == "absolute":
            return loss + self.strength * (ratio - 1).abs()
        return loss * (1 + self.strength * torch.log(ratio))


    def describe(self, expected: float | None) -> str:
        """The per-epoch log fragment: expected cost against the target."""
        if expected is None:
            return ""
        m = self.model.metric
        return f"expected {m} {human(expected, m)} / {human(self.target, m)}, "

    def fit(self, genotype: Genotype, probs: dict[str, Tensor], edge_primitives, max_skip: int | None,
            mode: str = "exchange") -> tuple[Genotype, dict]:
        """Bring the derived genotype within the target (``mode``: exchange, channels or report) and say
        what it costs: the report holds the target, the derived and the final exact cost, the exchanges
        made and the evaluation channels."""
        m = self.model
        before = m.genotype_cost(genotype)
        final, moves, channels = genotype, [], m.shape.channels
        if before > self.target and mode == "exchange":
            final, moves = fit_genotype(genotype, probs, edge_primitives, m, self.target, max_skip)
        elif before > self.target and mode == "channels":
            channels = fit_channels(genotype, m.shape, m.metric, self.target, m.latency) or 1
        shape = EvalShape(channels, m.shape.layers, m.shape.image_size, m.shape.num_classes)
        after = (CostModel(m.metric, shape, m.latency, reduce_cell=m.reduce_cell) if channels != m.shape.channels
                 else m).genotype_cost(final)
        rep = {"metric": m.metric, "unit": UNITS[m.metric], "target": self.target, "penalty": self.form,
               "strength": self.strength, "fit": mode, "derived_cost": before, "cost": after,
               "meets_budget": after <= self.target, "exchanges": moves, "eval_channels": channels,
               "eval_layers": m.shape.layers, "genotype_before_fit": str(genotype)}
        if m.metric == "latency":
            rep["measured_latency_ms"] = measure_genotype(final, shape, "latency", m.latency)
            rep["latency_setting"] = m.latency.setting.key()
        m.save()
        return final, rep

    def report_lines(self, rep: dict | None) -> list[str]:
        if not rep:
            return []
        h = lambda x: human(x, rep["metric"])  # noqa: E731
        lines = [f"budget: {rep['metric']} <= {h(rep['target'])} of the evaluation network (C={rep['eval_channels']}, "
                 f"{rep['eval_layers']} cells); derived cell {h(rep['derived_cost'])}, final {h(rep['cost'])} "
                 f"({'within' if rep['meets_budget'] else 'OVER'} budget)"]
        lines += [f"budget: {m}" for m in rep["exchanges"]]
        if rep["fit"] == "channels" and rep["derived_cost"] > rep["target"]:
            lines.append(f"budget: evaluation channels reduced to C={rep['eval_channels']}: retrain with --channels "
                         f"{rep['eval_channels']}")
        if "measured_latency_ms" in rep:
            lines.append(f"budget: measured latency of the final network {rep['measured_latency_ms']:.3f} ms "
                         f"({rep['latency_setting']})")
        return lines


class NoPenalty:
    """The architecture loss as it is (no budget): the same calls as :class:`CostPenalty`, doing nothing."""

    target = None

    def bind(self, edge_primitives) -> None:
        pass

    def expected(self, net, sampler):
        return None

    def __call__(self, loss, net, sampler):
        return loss

    def describe(self, expected) -> str:
        return ""

    def fit(self, genotype, probs, edge_primitives, max_skip, mode="exchange"):
        return genotype, None

    def report_lines(self, rep) -> list[str]:
        return []


def make_penalty(cfg, image_size: int, num_classes: int, primitives) -> CostPenalty | NoPenalty:
    """The search's cost term from its config (``target_*``, ``cost_*``, ``eval_*``, ``latency_*``);
    a target below the cheapest genotype of the space is a ConfigError."""
    budget = cfg.budget
    if budget is None:
        return NoPenalty()
    metric, target = budget
    shape = EvalShape(cfg.eval_channels, cfg.eval_layers, image_size, num_classes)
    model = make_cost_model(metric, shape, latency_device=cfg.latency_device, latency_batch=cfg.latency_batch,
                            latency_dtype=cfg.latency_dtype, channels_last=cfg.channels_last,
                            latency_cache=cfg.latency_cache, reduce_cell=cfg.fixed_reduction)
    low = cheapest_cost(model, {c: [list(primitives)] * len(model.inputs) for c in CELL_TYPES})
    if low > target:
        name = "target_latency_ms" if metric == "latency" else f"target_{metric}"
        raise ConfigError(f"{name} {human(target, metric)} is unreachable: the cheapest cell of this space costs "
                          f"{human(low, metric)} in the evaluation network (C={shape.channels}, {shape.layers} cells; "
                          "see --eval-channels/--eval-layers)")
    return CostPenalty(model, target, cfg.cost_penalty, cfg.cost_strength)


# ----------------------------------------------------------------------------- fitting the budget
def cheapest_cost(model: CostModel, edge_primitives) -> float:
    """A lower bound on the cost of any genotype derivable from `edge_primitives`: per node its two
    cheapest edges, each with its cheapest op other than 'none' (the skip cap is ignored, which can only
    lower the bound). A target below it cannot be met."""
    total = model.fixed
    for cell in CELL_TYPES:
        start = 0
        for i in range(model.steps):
            opts = []
            for j in range(2 + i):
                e = start + j
                ops = [model.op_cost(cell, e, op) for op in edge_primitives[cell][e] if op not in _FREE]
                if ops:
                    opts.append(min(ops))
            if len(opts) < 2:
                return math.inf
            total += sum(sorted(opts)[:2])
            start += 2 + i
    return total


def fit_genotype(genotype: Genotype, probs: dict[str, Tensor], edge_primitives, model: CostModel, target: float,
                 max_skip: int | None) -> tuple[Genotype, list[str]]:
    """Exchange choices of `genotype` for cheaper ones until the evaluation network costs at most
    `target`: each exchange replaces one chosen (edge, op) of a node by a cheaper (edge, op) of the same
    node, taking the one that loses the least probability per unit of cost saved. Returns the genotype
    and a line per exchange; the result is over budget only if no cheaper choice is left."""
    cells = {c: [(e, op) for e, op in genotype_edges(genotype, c)] for c in CELL_TYPES}
    p = {c: probs[c].tolist() for c in CELL_TYPES}
    starts = [sum(2 + k for k in range(i)) for i in range(model.steps)]

    def score(c, e, op):
        return p[c][e][edge_primitives[c][e].index(op)]

    def cost_of():
        return model.fixed + sum(model.op_cost(c, e, op) for c in CELL_TYPES for e, op in cells[c])

    moves = []
    current = cost_of()
    while current > target:
        best = None
        for c in CELL_TYPES:
            skips = sum(op == "skip_connect" for _, op in cells[c])
            for slot, (e, op) in enumerate(cells[c]):
                node = slot // 2
                other = cells[c][slot ^ 1][0]
                here = model.op_cost(c, e, op)
                for e2 in range(starts[node], starts[node] + 2 + node):
                    if e2 == other:
                        continue
                    for op2 in edge_primitives[c][e2]:
                        if op2 in _FREE or (e2, op2) == (e, op):
                            continue
                        if (c == "normal" and max_skip is not None and op2 == "skip_connect"
                                and op != "skip_connect" and skips >= max_skip):
                            continue
                        saved = here - model.op_cost(c, e2, op2)
                        if saved <= 0:
                            continue
                        ratio = (score(c, e, op) - score(c, e2, op2)) / saved
                        if best is None or ratio < best[0]:
                            best = (ratio, c, slot, e2, op2, saved)
        if best is None:
            break
        _, c, slot, e2, op2, saved = best
        e, op = cells[c][slot]
        cells[c][slot] = (e2, op2)
        current -= saved
        moves.append(f"{c} node {slot // 2 + 2}: {op} on edge {e} -> {op2} on edge {e2} "
                     f"(saves {human(saved, model.metric)})")
    return _to_genotype(cells, genotype, model.steps), moves


def _to_genotype(cells, like: Genotype, steps: int) -> Genotype:
    inputs = edge_inputs(steps)
    out = {}
    for c in CELL_TYPES:
        pairs = []
        for i in range(steps):
            pairs += [(op, inputs[e]) for e, op in cells[c][2 * i: 2 * i + 2]]
        out[c] = pairs
    return Genotype(out["normal"], like.normal_concat, out["reduce"], like.reduce_concat, reduce_cell=like.reduce_cell)


def fit_channels(genotype: Genotype, shape: EvalShape, metric: str, target: float,
                 latency: LatencyTable | None = None) -> int | None:
    """The largest channel count C <= shape.channels whose network for `genotype` costs at most
    `target` (None if even C=1 does not)."""
    for C in range(shape.channels, 0, -1):
        s = EvalShape(C, shape.layers, shape.image_size, shape.num_classes)
        try:
            cost = CostModel(metric, s, latency, reduce_cell=genotype.reduce_cell).genotype_cost(genotype)
        except ValueError:  # e.g. a fixed reduction cell needs C * 2 to be a multiple of 8
            continue
        if cost <= target:
            return C
    return None


def cost_report(genotype: Genotype, shape: EvalShape, latency: LatencyTable | None = None) -> dict:
    """Parameters and FLOPs (and latency, given a table) of the evaluation network for `genotype`."""
    rep = {"channels": shape.channels, "layers": shape.layers, "image_size": shape.image_size,
           "params": measure_genotype(genotype, shape, "params"),
           "flops": measure_genotype(genotype, shape, "flops")}
    if latency is not None:
        model = CostModel("latency", shape, latency, reduce_cell=genotype.reduce_cell)
        rep["latency_ms_predicted"] = model.genotype_cost(genotype)
        rep["latency_ms_measured"] = measure_genotype(genotype, shape, "latency", latency)
        rep["latency_setting"] = latency.setting.key()
        latency.save()
    return rep


def format_report(rep: dict) -> str:
    lines = [f"evaluation network: C={rep['channels']}, {rep['layers']} cells, {rep['image_size']}x{rep['image_size']}",
             f"  parameters: {int(rep['params']):,} (without the auxiliary head)",
             f"  FLOPs: {rep['flops'] / 1e6:.2f}M multiply-adds per image"]
    if "latency_ms_measured" in rep:
        lines.append(f"  latency ({rep['latency_setting']}): {rep['latency_ms_measured']:.3f} ms measured, "
                     f"{rep['latency_ms_predicted']:.3f} ms from the lookup table")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    from fastnas import config as cfglib

    p = cfglib.OneLineErrorParser(prog="python -m fastnas.cost", description=__doc__.split("\n")[0],
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--genotype", nargs="+", default=["DARTS_V2"],
                   help="published names, genotype.json files, search run directories or genotype strings")
    p.add_argument("--random", type=int, default=0, help="also this many random genotypes (seeded)")
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--latency-device", default=None, help="cpu or cuda[:N]: also measure latency there")
    p.add_argument("--latency-batch", type=int, default=1)
    p.add_argument("--latency-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--latency-cache", default=None, help=f"lookup-table file (default {default_latency_cache()})")
    p.add_argument("--json", default=None, help="also write the reports to this JSON file")
    return p.parse_args(argv)


def _main(args) -> int:
    import random

    from fastnas.study import random_genotype
    from fastnas.train import resolve_genotype

    for name in ("channels", "layers", "image_size", "num_classes", "latency_batch"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    shape = EvalShape(args.channels, args.layers, args.image_size, args.num_classes)
    genotypes = [(spec, resolve_genotype(spec)) for spec in args.genotype]
    rng = random.Random(0)
    genotypes += [(f"random{i}", random_genotype(rng)) for i in range(args.random)]
    latency = None
    if args.latency_device:
        if args.latency_device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--latency-device {args.latency_device}: no CUDA device here")
        latency = LatencyTable(LatencySetting(args.latency_device, args.latency_batch, args.latency_dtype,
                                              args.channels_last), args.latency_cache or default_latency_cache())
    reports, errors = {}, []
    for name, g in genotypes:
        rep = cost_report(g, shape, latency)
        reports[name] = rep
        print(f"{name[:60]}\n{format_report(rep)}")
        if latency is not None:
            errors.append(rep["latency_ms_predicted"] / rep["latency_ms_measured"] - 1)
    if errors:
        print(f"lookup-table prediction error over {len(errors)} networks: mean {100 * statistics.mean(errors):+.1f}%, "
              f"mean absolute {100 * statistics.mean(abs(e) for e in errors):.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))
    return 0


def main(argv=None) -> int:
    from fastnas.runs import cli_main

    return cli_main(parse_args, _main, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "METRICS", "EvalShape", "CostModel", "CostPenalty", "NoPenalty", "LatencySetting", "LatencyTable",
    "parse_amount", "expected_cost", "expected_cell_cost", "fit_genotype", "fit_channels", "cheapest_cost",
    "cost_report", "make_cost_model", "make_penalty", "measure_genotype", "build_eval_network",
]
