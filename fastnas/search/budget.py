"""A cost budget for the search (the ``target_*`` mechanism): its options, declared once and reused by
the retraining's cost report, the pipeline and ``fastnas cost``; the term it adds to the architecture
loss from the expected cost under the sampler's distribution; and the fit of the derived genotype.

Expected cost (:func:`fastnas.cost.expected_cost`): per edge the cost of its op distribution without
'none'; per node its edges weighted by ``2 * strength / sum(strengths)``, a smooth stand-in for the
top-2 selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fastnas.cost import (
    CostModel,
    EvalShape,
    cheapest_cost,
    expected_cost,
    fit_to_budget,
    free_op_mask,
    human,
    make_cost_model,
    parse_amount,
)
from fastnas.infra.config import opt
from fastnas.infra.errors import ConfigError
from fastnas.search.mechanism import Mechanism
from fastnas.space.genotype import Genotype
from fastnas.space.topology import CELL_TYPES, num_edges

FORMS = ("linear", "absolute", "log")


@dataclass
class Budget(Mechanism):
    """A cost of the evaluation network in the architecture loss (one target at a time)."""

    target_params: str | None = opt(None, "parameter budget of the evaluation network, e.g. 2.5M")
    target_flops: str | None = opt(None, "FLOPs budget (multiply-adds per image) of the evaluation network, e.g. 600M")
    target_latency_ms: float | None = opt(None, "latency budget (ms per batch) of the evaluation network on "
                                                "--latency-device", gt=0)
    cost_penalty: str = opt("absolute", "form of the cost term: linear (ProxylessNAS), absolute (TuNAS) or log "
                            "(FBNet)", choices=list(FORMS))
    cost_strength: float = opt(1.0, "weight of the cost term (the cost is taken relative to the target)", ge=0)
    budget_fit: str = opt("exchange", "when the derived network is over the target: exchange ops for cheaper "
                          "ones (least probability lost per unit of cost), shrink the evaluation channels, "
                          "or only report", choices=["exchange", "channels", "report"])
    eval_channels: int = opt(36, "initial channels of the evaluation network the costs refer to", ge=1)
    eval_layers: int = opt(20, "cells of the evaluation network the costs refer to", ge=3)
    latency_device: str = opt("cpu", "where latency is measured: cpu or cuda[:N]")
    latency_batch: int = opt(1, "batch size of the latency measurements", ge=1)
    latency_dtype: str = opt("float32", "dtype of the latency measurements",
                             choices=["float32", "float16", "bfloat16"])
    latency_cache: str | None = opt(None, "latency lookup-table file (default ~/.cache/fastnas/latency.json)")

    _TARGETS = (("params", "target_params"), ("flops", "target_flops"), ("latency", "target_latency_ms"))

    def _given_targets(self) -> list[tuple[str, str]]:
        """(metric, option name) of every budget set."""
        return [(m, name) for m, name in self._TARGETS if getattr(self, name) is not None]

    @property
    def budget(self) -> tuple[str, float] | None:
        """(metric, target) of the cost budget, or None."""
        given = self._given_targets()
        if not given:
            return None
        metric, name = given[0]
        return metric, parse_amount(getattr(self, name), name)

    def check(self) -> None:
        targets = [name for _, name in self._given_targets()]
        if len(targets) > 1:
            raise ConfigError(f"one budget at a time: {' and '.join(targets)} are both set")
        _ = self.budget  # parses the target: a one-line error for 0, negatives or text
        if not (self.latency_device == "cpu" or self.latency_device.startswith("cuda")):
            raise ConfigError(f"latency_device must be cpu or cuda[:N], got {self.latency_device!r}")


class BudgetTerm:
    """A term added to the architecture loss from the expected cost E under the sampler's distribution,
    relative to the target T (so `strength` has no unit):

    - ``linear`` (ProxylessNAS: loss + lambda * E[latency]): ``ce + strength * E / T``; always pushes down.
    - ``absolute`` (TuNAS' absolute-value reward): ``ce + strength * |E / T - 1|``; pulls E to T from
      either side, so it lands near the target. The default.
    - ``log`` (FBNet, Wu et al. 2019, its loss ``ce * alpha * log(LAT)^beta``): multiplicative in a power
      of the cost, ``ce * (E / T) ** strength``, i.e. linear in log(E / T) on the log scale. The
      multiplier is positive for every cost and target (1 at the target), so the term always pushes
      the cost down, harder when the loss is high. (Before: ``ce * (1 + strength * log(E / T))``,
      which turned negative below E / T = exp(-1 / strength) and then ascended the cross-entropy.)
    """

    FORMS = FORMS

    def __init__(self, model: CostModel, target: float, form: str = "absolute", strength: float = 1.0):
        if form not in self.FORMS:
            raise ConfigError(f"cost_penalty must be one of {', '.join(self.FORMS)}, got {form!r}")
        self.model, self.target, self.form, self.strength = model, float(target), form, float(strength)
        self.tables = None
        self.edge_primitives = None
        self._placed = None  # (device, dtype), tables and masks there: made once, not copied every step

    @property
    def metric(self) -> str:
        return self.model.metric

    def bind(self, edge_primitives) -> None:
        """Lay the cost table out for the current stage's candidates."""
        self.edge_primitives = edge_primitives
        self.tables = self.model.table(edge_primitives)
        self._placed = None

    def expected(self, net, sampler) -> Tensor:
        probs = {c: sampler.expected_probabilities(a) for c, a in net.named_arch_parameters().items()}
        # PC-DARTS' edge betas weigh the edges as derivation does (and get the cost's gradient too)
        edge_weights = net.edge_weights() if hasattr(net, "edge_weights") else None
        p = probs["normal"]
        if self._placed is None or self._placed[0] != (p.device, p.dtype):
            self._placed = ((p.device, p.dtype), {c: t.to(p) for c, t in self.tables.items()},
                            {c: free_op_mask(self.edge_primitives[c], p.device) for c in self.tables})
        _, tables, keeps = self._placed
        return expected_cost(probs, tables, self.edge_primitives, self.model.fixed, net.steps, edge_weights, keeps)

    def __call__(self, loss: Tensor, net, sampler) -> Tensor:
        ratio = self.expected(net, sampler).float() / self.target
        if self.form == "linear":
            return loss + self.strength * ratio
        if self.form == "absolute":
            return loss + self.strength * (ratio - 1).abs()
        return loss * self.multiplier(ratio)

    def multiplier(self, ratio: Tensor) -> Tensor:
        """The ``log`` form's factor on the cross-entropy: (E / T) ** strength, > 0 for every ratio > 0."""
        return ratio.clamp_min(torch.finfo(ratio.dtype).tiny) ** self.strength

    def describe(self, expected: float) -> str:
        """The per-epoch log fragment: expected cost against the target."""
        m = self.model.metric
        return f"expected {m} {human(expected, m)} / {human(self.target, m)}, "

    def fit(self, genotype: Genotype, probs: dict[str, Tensor], edge_primitives, max_skip: int | None,
            mode: str = "exchange", max_free: int | None = None) -> tuple[Genotype, dict]:
        """The derived genotype brought within the target (:func:`fastnas.cost.fit_to_budget`), and the
        report, with this term's form and strength."""
        final, rep = fit_to_budget(self.model, self.target, genotype, probs, edge_primitives, max_skip, mode,
                                   max_free=max_free)
        return final, {**rep, "penalty": self.form, "strength": self.strength}


def make_budget_term(cfg, image_size: int, num_classes: int, primitives) -> BudgetTerm | None:
    """The search's cost term from its config (``target_*``, ``cost_*``, ``eval_*``, ``latency_*``);
    None without a target; a target below the cheapest genotype of the space is a ConfigError."""
    budget = cfg.budget
    if budget is None:
        return None
    metric, target = budget
    shape = EvalShape(cfg.eval_channels, cfg.eval_layers, image_size, num_classes)
    model = make_cost_model(metric, shape, latency_device=cfg.latency_device, latency_batch=cfg.latency_batch,
                            latency_dtype=cfg.latency_dtype, channels_last=cfg.channels_last,
                            latency_cache=cfg.latency_cache, reduce_cell=cfg.fixed_reduction)
    low = cheapest_cost(model, {c: [list(primitives)] * num_edges(model.steps) for c in CELL_TYPES})
    if low > target:
        name = "target_latency_ms" if metric == "latency" else f"target_{metric}"
        raise ConfigError(f"{name} {human(target, metric)} is unreachable: the cheapest cell of this space costs "
                          f"{human(low, metric)} in the evaluation network (C={shape.channels}, {shape.layers} cells; "
                          "see --eval-channels/--eval-layers)")
    return BudgetTerm(model, target, cfg.cost_penalty, cfg.cost_strength)


