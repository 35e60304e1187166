"""Bringing a derived genotype within a cost budget: exchange chosen ops or edges for cheaper ones
(least probability lost per unit of cost saved), or shrink the evaluation network's channels."""

from __future__ import annotations

from torch import Tensor

from fastnas.cost.measure import FREE_OPS, UNITS, EvalShape, LatencyTable, human, measure_genotype
from fastnas.cost.model import CostModel
from fastnas.space.genotype import Genotype
from fastnas.space.primitives import PARAMETER_FREE
from fastnas.space.topology import CELL_TYPES, edge_inputs, genotype_edges, node_edges


def fit_genotype(genotype: Genotype, probs: dict[str, Tensor], edge_primitives, model: CostModel, target: float,
                 max_skip: int | None, max_free: int | None = None) -> tuple[Genotype, list[str]]:
    """Exchange choices of `genotype` for cheaper ones until the evaluation network costs at most
    `target`: each exchange replaces one chosen (edge, op) of a node by a cheaper (edge, op) of the same
    node, taking the one that loses the least probability per unit of cost saved. Returns the genotype
    and a line per exchange; the result is over budget only if no cheaper choice is left."""
    cells = {c: [(e, op) for e, op in genotype_edges(getattr(genotype, c), model.steps)] for c in CELL_TYPES}
    p = {c: probs[c].tolist() for c in CELL_TYPES}
    into = node_edges(model.steps)  # each node's incoming edges

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
            free = sum(op in PARAMETER_FREE for _, op in cells[c])
            for slot, (e, op) in enumerate(cells[c]):
                node = slot // 2
                other = cells[c][slot ^ 1][0]
                here = model.op_cost(c, e, op)
                for e2 in into[node]:
                    if e2 == other:
                        continue
                    for op2 in edge_primitives[c][e2]:
                        if op2 in FREE_OPS or (e2, op2) == (e, op):
                            continue
                        if (c == "normal" and max_skip is not None and op2 == "skip_connect"
                                and op != "skip_connect" and skips >= max_skip):
                            continue
                        if (c == "normal" and max_free is not None and max_free >= 0 and op2 in PARAMETER_FREE
                                and op not in PARAMETER_FREE and free >= max_free):
                            continue  # the parameter-free cap holds through the fit too
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




def budget_report_lines(rep: dict | None) -> list[str]:
    """The log lines of a budget report (none without a budget)."""
    if not rep:
        return []
    h = lambda x: human(x, rep["metric"])  # noqa: E731
    verdict = "within" if rep["meets_budget"] else "OVER"
    if "measured_latency_ms" in rep:  # latency is judged by the measurement, not the table
        final = (f"final {h(rep['cost'])} by the lookup table, {rep['measured_latency_ms']:.3f} ms measured "
                 f"({verdict} budget; the table is {100 * rep['table_error']:+.0f}% off on this network)")
    else:
        final = f"final {h(rep['cost'])} ({verdict} budget)"
    lines = [f"budget: {rep['metric']} <= {h(rep['target'])} of the evaluation network (C={rep['eval_channels']}, "
             f"{rep['eval_layers']} cells); derived cell {h(rep['derived_cost'])}, {final}"]
    if rep.get("refits"):
        lines.append(f"budget: refitted {rep['refits']} time(s) against the measurement (table target "
                     f"{h(rep['fit_target'])})")
    lines += [f"budget: {m}" for m in rep["exchanges"]]
    if rep["fit"] == "channels" and rep["derived_cost"] > rep["target"]:
        lines.append(f"budget: evaluation channels reduced to C={rep['eval_channels']}: retrain with --channels "
                     f"{rep['eval_channels']}")
    if "measured_latency_ms" in rep:
        lines.append(f"budget: latency measured with {rep['latency_setting']}")
    return lines


def fit_to_budget(m: CostModel, target: float, genotype: Genotype, probs: dict[str, Tensor], edge_primitives,
                  max_skip: int | None, mode: str = "exchange", refits: int = 3,
                  max_free: int | None = None) -> tuple[Genotype, dict]:
    """Bring the derived genotype within `target` (``mode``: exchange, channels or report) and say what
    it costs: the report holds the target, the derived and the final exact cost, the exchanges made and
    the evaluation channels.

    Latency is a lookup table's sum of per-op times, which misses what a whole network adds (launches,
    memory traffic between ops, the framework). So the final network is measured too, and the budget is
    met or missed by the measurement: when it misses, the fit is redone (up to `refits` times) against
    a table target scaled by the table's error on this network, which is cheap since a measurement is
    one network's forward passes."""
    scaled = target
    final, rep = _fit_once(m, scaled, target, genotype, probs, edge_primitives, max_skip, mode, max_free)
    if m.metric == "latency":
        for _ in range(refits if mode != "report" else 0):
            if rep["measured_latency_ms"] <= target:
                break
            # the table's ratio to the measurement on this network, applied to the target it fits against
            scaled *= rep["cost"] / rep["measured_latency_ms"]
            final, rep = _fit_once(m, scaled, target, genotype, probs, edge_primitives, max_skip, mode, max_free)
            rep["refits"] = rep.get("refits", 0) + 1
    m.save()
    return final, rep


def _fit_once(m: CostModel, fit_target: float, target: float, genotype: Genotype, probs, edge_primitives,
              max_skip, mode: str, max_free: int | None = None) -> tuple[Genotype, dict]:
    before = m.genotype_cost(genotype)
    final, moves, channels = genotype, [], m.shape.channels
    if before > fit_target and mode == "exchange":
        final, moves = fit_genotype(genotype, probs, edge_primitives, m, fit_target, max_skip, max_free)
    elif before > fit_target and mode == "channels":
        channels = fit_channels(genotype, m.shape, m.metric, fit_target, m.latency) or 1
    shape = EvalShape(channels, m.shape.layers, m.shape.image_size, m.shape.num_classes)
    after = (CostModel(m.metric, shape, m.latency, reduce_cell=m.reduce_cell) if channels != m.shape.channels
             else m).genotype_cost(final)
    rep = {"metric": m.metric, "unit": UNITS[m.metric], "target": target, "fit": mode, "derived_cost": before,
           "cost": after, "meets_budget": after <= target, "exchanges": moves, "eval_channels": channels,
           "eval_layers": m.shape.layers, "genotype_before_fit": str(genotype)}
    if m.metric == "latency":
        measured = measure_genotype(final, shape, "latency", m.latency)
        rep.update(measured_latency_ms=measured, latency_setting=m.latency.setting.key(),
                   table_error=after / measured - 1, meets_budget=measured <= target, fit_target=fit_target)
    return final, rep
