"""Cost of the evaluation network per candidate op: parameters, FLOPs (multiply-adds) and measured
latency, as a table the search can weigh its candidates with.

The costs are those of the network S3 retrains (:class:`fastnas.space.network.EvalNetwork`: its channels,
cells and image size), not of the supernet. Every normal cell runs the same genotype, so the cost of
op k on edge e of the normal cell is the sum of that op's cost over all normal cells (their shapes
differ per stage); likewise for the reduction cells, whose edges from the cell inputs have stride 2.
A genotype's cost is then

    fixed + sum over its 16 (edge, op) choices of table[cell][edge][op]

where `fixed` (stem, per-cell preprocessing, classifier, node sums) is measured once on a reference
network whose ops cost nothing (every edge a 3x3 max pool). Parameters and FLOPs are exact this way
(tests/test_cost.py checks it against whole networks); latency is a lookup table of each op timed
alone at each shape (:mod:`fastnas.cost.measure`), and its prediction error for whole networks is
reported by ``fastnas cost --latency-device ...``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastnas.cost.measure import (
    FREE_OPS,
    METRICS,
    EvalShape,
    LatencySetting,
    LatencyTable,
    build_eval_network,
    default_latency_cache,
    measure_genotype,
    op_macs,
    op_params,
)
from fastnas.infra.errors import ConfigError
from fastnas.space.genotype import Genotype
from fastnas.space.topology import CELL_TYPES, edge_inputs, genotype_edges, node_edges


# ----------------------------------------------------------------------------- the cost model
def _reference_genotype(steps: int = 4, reduce_cell: str | None = None) -> Genotype:
    """Every edge a 3x3 max pool: ops with no parameters and no FLOPs (a fixed reduction cell, if any,
    is part of the fixed cost)."""
    pairs = [("max_pool_3x3", j) for i in range(steps) for j in (0, 1)]
    concat = tuple(range(2, steps + 2))
    return Genotype(pairs, concat, () if reduce_cell else pairs, concat, reduce_cell=reduce_cell)



class CostModel:
    """Cost of op `name` on every edge of each cell type of the evaluation network, for one metric.

    ``op_cost(cell, edge, op)`` sums the op over every cell of that type; ``genotype_cost`` adds the
    fixed part; ``table(edge_primitives)`` lays the costs out like the supernet's alpha (E, K).
    """

    def __init__(self, metric: str, shape: EvalShape | None = None, latency: LatencyTable | None = None,
                 steps: int = 4, reduce_cell: str | None = None):
        shape = shape or EvalShape()
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
        if op in FREE_OPS:
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
        return sum(self.op_cost(cell, e, op) for cell in CELL_TYPES
                   for e, op in genotype_edges(getattr(genotype, cell), self.steps))

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
def free_op_mask(names: list[list[str]], device=None) -> Tensor:
    """(E, K) bool: True where the candidate is not one of FREE_OPS ('none', 'noise'), which the expected
    cost leaves out."""
    return torch.tensor([[n not in FREE_OPS for n in row] for row in names], device=device)


def expected_cell_cost(p: Tensor, cost: Tensor, names: list[list[str]], steps: int = 4,
                       edge_weight: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
    """Differentiable expected cost of one cell type's derived edges under op probabilities `p` (E, K).

    Derivation drops 'none', keeps per edge its strongest op and per node the 2 strongest edges. The
    smooth stand-in: per edge, the cost of the op distribution renormalised without 'none'; per node,
    each incoming edge weighted by ``2 * s_e / sum(s)`` where s_e is the edge's strongest non-'none'
    probability (the derivation's edge score), so every node counts two edges' worth, shared by
    strength. With all edges equally strong this is the exact expectation under a uniform choice of
    the two edges. `edge_weight` (E,): PC-DARTS' normalised edge betas, which derivation multiplies into
    the edge scores, so they weigh the edges here too (differentiably)."""
    if keep is None:  # callers that run every step pass it, made once on the device (no host copy per step)
        keep = free_op_mask(names, p.device)
    q = p * keep
    q_sum = q.sum(-1, keepdim=True).clamp_min(1e-12)
    edge_cost = ((q / q_sum) * cost.to(p)).sum(-1)
    strength = q.amax(-1)
    if edge_weight is not None:
        strength = strength * edge_weight.to(strength)
    total = p.new_zeros(())
    for rng in node_edges(steps):
        s = strength[rng.start:rng.stop]
        w = 2 * s / s.sum().clamp_min(1e-12)
        total = total + (w * edge_cost[rng.start:rng.stop]).sum()
    return total


def expected_cost(probs: dict[str, Tensor], tables: dict[str, Tensor], edge_primitives, fixed: float,
                  steps: int = 4, edge_weights: dict[str, Tensor] | None = None,
                  keeps: dict[str, Tensor] | None = None) -> Tensor:
    """fixed + the expected cost of both cell types (see :func:`expected_cell_cost`)."""
    ew, keeps = edge_weights or {}, keeps or {}
    return fixed + sum(expected_cell_cost(probs[c], tables[c], edge_primitives[c], steps, ew.get(c), keeps.get(c))
                       for c in CELL_TYPES)




# ----------------------------------------------------------------------------- fitting the budget
def cheapest_cost(model: CostModel, edge_primitives) -> float:
    """A lower bound on the cost of any genotype derivable from `edge_primitives`: per node its two
    cheapest edges, each with its cheapest op other than 'none' (the skip cap is ignored, which can only
    lower the bound). A target below it cannot be met."""
    total = model.fixed
    for cell in CELL_TYPES:
        for rng in node_edges(model.steps):
            opts = []
            for e in rng:
                ops = [model.op_cost(cell, e, op) for op in edge_primitives[cell][e] if op not in FREE_OPS]
                if ops:
                    opts.append(min(ops))
            if len(opts) < 2:
                return math.inf
            total += sum(sorted(opts)[:2])
    return total


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


