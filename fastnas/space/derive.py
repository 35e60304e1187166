"""Deriving a genotype from the architecture parameters (S1 -> S2's output), and pruning candidates
between stages.

DARTS' rule (quark0/darts cnn/model_search.py ``genotype``): per edge the strongest op other than
'none'; per node the 2 strongest incoming edges. GDAS' rule (AutoDL-Projects
search_model_gdas_nasnet.py ``genotype``): per node the 2 strongest (op, input) pairs over every
non-'none' op of every incoming edge, so one input may be taken twice. Then P-DARTS' skip cap
(chenxin061/pdarts train_search.py ``check_sk_number`` / ``delete_min_sk_prob``): while the normal cell
holds more than M skip connections, rule out the weakest chosen one and derive again.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import Tensor

from fastnas.space.genotype import Genotype
from fastnas.space.primitives import PARAMETER_FREE
from fastnas.space.sampler import Sampler
from fastnas.space.topology import CELL_TYPES, node_edges

if TYPE_CHECKING:
    from fastnas.space.supernet import SuperNet


# The genotype rules a supernet derives with: DARTS' two distinct edges, or GDAS' two (op, input) pairs.
DERIVATIONS = ("darts", "gdas")


def _derive_once(probs: list[list[float]], names: list[list[str]], steps: int, rule: str = "darts"):
    """DARTS' rule: per edge its strongest op other than 'none', per node its 2 strongest edges; GDAS':
    per node its 2 strongest (op, edge) pairs. Returns (op, input node, edge, candidate) per choice, or
    None when a node has fewer than 2 choices left."""
    gene = []
    for rng in node_edges(steps):
        if rule == "gdas":  # sorted by weight, ties in GDAS' order (input, then op)
            pairs = [(-p, j, k, e) for j, e in enumerate(rng) for k, p in enumerate(probs[e])
                     if names[e][k] != "none" and p != -math.inf]
            if len(pairs) < 2:
                return None
            gene += [(names[e][k], j, e, k) for _, j, k, e in sorted(pairs)[:2]]
            continue
        cands = []
        for j, e in enumerate(rng):
            scored = [(p, k) for k, p in enumerate(probs[e]) if names[e][k] != "none" and p != -math.inf]
            if scored:
                p, k = max(scored)
                cands.append((p, -j, j, e, k))
        if len(cands) < 2:
            return None
        for _p, _, j, e, k in sorted(cands, reverse=True)[:2]:
            gene.append((names[e][k], j, e, k))
    return gene


def _derive_cell(probs: list[list[float]], names: list[list[str]], steps: int, max_skip: int | None,
                 rule: str = "darts", max_free: int | None = None):
    """DARTS derivation of one cell, then the P-DARTS skip cap: while more than `max_skip` chosen
    edges are skip connections, rule out the weakest chosen skip and derive again; then the same for
    every parameter-free op (skip, pooling, noise) above `max_free`. A choice whose removal would leave
    a node without two inputs (its edges offer nothing else, as a last stage can keep) stays: the cap is
    then met as far as the space allows, never by a crash."""
    probs = [list(row) for row in probs]
    gene = _derive_once(probs, names, steps, rule)
    if gene is None:
        raise ValueError("a node has fewer than 2 incoming edges with an op other than 'none'")
    kept: set[tuple[int, int]] = set()  # choices that cannot go
    while True:
        # the skip cap first (P-DARTS), then the cap on every parameter-free op (max_free)
        skips = [(probs[e][k], e, k) for name, _, e, k in gene if name == "skip_connect"]
        free = [(probs[e][k], e, k) for name, _, e, k in gene if name in PARAMETER_FREE]
        if max_skip is not None and len(skips) > max_skip:
            over = skips
        elif max_free is not None and len(free) > max_free:
            over = free
        else:
            break
        removable = [s for s in over if (s[1], s[2]) not in kept]
        if not removable:
            break
        p, e, k = min(removable)
        probs[e][k] = -math.inf
        trial = _derive_once(probs, names, steps, rule)
        if trial is None:
            probs[e][k] = p
            kept.add((e, k))
        else:
            gene = trial
    return [(name, j) for name, j, _, _ in gene]


def edge_scores(supernet: SuperNet, probs: dict[str, Tensor]) -> dict[str, Tensor]:
    """What derivation ranks: the op probabilities, times each edge's normalised beta under PC-DARTS'
    edge normalization (yuhuixu1993/PC-DARTS model_search.py ``genotype``: weights2 scale each edge)."""
    ew = supernet.edge_weights()
    if ew is None:
        return probs
    return {c: probs[c] * ew[c].detach().float().cpu()[:, None] for c in CELL_TYPES}


def derive_genotype(supernet: SuperNet, max_skip_normal: int | None = 2, sampler: Sampler | None = None,
                    probabilities: dict[str, Tensor] | None = None, max_param_free: int | None = None) -> Genotype:
    """The supernet's rule (``supernet.derivation``: DARTS' per edge the strongest non-zero op and per
    node the 2 strongest incoming edges, or GDAS' 2 strongest (op, input) pairs per node); at most
    `max_skip_normal` skip connections in the normal cell (None or -1, as on the command line: no cap),
    and at most `max_param_free` parameter-free ops in it (None or -1: no cap)."""
    if max_skip_normal is not None and max_skip_normal < 0:
        if max_skip_normal != -1:
            raise ValueError(f"max_skip_normal must be >= 0, or -1/None for no cap; got {max_skip_normal}")
        max_skip_normal = None
    if probabilities is None:  # DrNAS derives from softmax(alpha) whatever its sampler (derive_softmax)
        probabilities = supernet.probabilities(None if supernet.derive_softmax else sampler)
    probs = edge_scores(supernet, probabilities)
    steps, mult = supernet.steps, supernet.multiplier
    cells = {}
    for cell in CELL_TYPES:
        cap = max_skip_normal if cell == "normal" else None
        free = max_param_free if cell == "normal" and max_param_free is not None and max_param_free >= 0 else None
        cells[cell] = _derive_cell(probs[cell].tolist(), supernet.edge_primitives[cell], steps, cap,
                                   supernet.derivation, free)
    concat = tuple(range(2 + steps - mult, steps + 2))
    if supernet.fixed_reduction:
        return Genotype(cells["normal"], concat, (), concat, reduce_cell=supernet.fixed_reduction)
    return Genotype(cells["normal"], concat, cells["reduce"], concat)


def genotypes_by_skip_count(supernet: SuperNet, sampler: Sampler | None = None,
                            probabilities: dict[str, Tensor] | None = None,
                            max_param_free: int | None = None) -> list[dict]:
    """P-DARTS' closing log: the genotype under every skip cap from 8 down to 0 (the weakest chosen skip
    ruled out first, each time), so a user can pick the cell with the skip count they want. Caps that
    change nothing are left out: one entry per distinct genotype, with its cap and skip count. The list
    ends at the fewest skips the space allows (a node whose edges offer only skip_connect keeps it)."""
    uncapped = derive_genotype(supernet, None, sampler, probabilities, max_param_free)
    out, seen = [], set()
    for cap in range(2 * supernet.steps, -1, -1):
        g = derive_genotype(supernet, cap, sampler, probabilities, max_param_free)
        skips = sum(op == "skip_connect" for op, _ in g.normal)
        if skips > cap:  # this cap, and every lower one, cannot be met
            break
        if str(g) in seen:
            continue
        seen.add(str(g))
        out.append({"max_skip": cap, "skips": skips, "genotype": g.to_dict(), "text": str(g),
                    "uncapped": g == uncapped})
    return out


def cell_stats(genotype: Genotype, capped_from: Genotype | None = None) -> dict:
    """Collapse indicators of a derived normal cell: its skip connections and parameter-free ops, and
    (given the uncapped derivation `capped_from`) how many the caps removed: the architecture's own
    preference stays visible whatever the caps make of it."""
    ops = [op for op, _ in genotype.normal]
    out = {"normal_skips": ops.count("skip_connect"),
           "normal_param_free": sum(op in PARAMETER_FREE for op in ops),
           "reduce_param_free": sum(op in PARAMETER_FREE for op, _ in genotype.reduce)}
    if capped_from is not None:
        uncapped = sum(op == "skip_connect" for op, _ in capped_from.normal)
        out["skips_removed_by_cap"] = max(0, uncapped - out["normal_skips"])
        free = sum(op in PARAMETER_FREE for op, _ in capped_from.normal)
        out["uncapped_normal_param_free"] = free  # what the architecture itself prefers
        out["param_free_removed_by_cap"] = max(0, free - out["normal_param_free"])
    return out


def prune_primitives(supernet: SuperNet, keep: int, drop_zero_first: bool = False,
                     sampler: Sampler | None = None,
                     probabilities: dict[str, Tensor] | None = None) -> dict[str, list[list[str]]]:
    """Per edge, the `keep` most probable candidates (in their original order), for the next stage's
    ``edge_primitives``. Between stages P-DARTS keeps 'none' by its probability like any op (the final
    derivation excludes it); `drop_zero_first` puts 'none' out before anything else, as P-DARTS does
    only when it prunes down to the single op per edge after its last stage."""
    probs = probabilities if probabilities is not None else supernet.probabilities(sampler)
    out = {}
    for cell in CELL_TYPES:
        rows = []
        for names, p in zip(supernet.edge_primitives[cell], probs[cell].tolist(), strict=True):
            if keep < 1 or keep > len(names):
                raise ValueError(f"prune: keep={keep} must be in 1..{len(names)} (candidates per edge)")
            order = sorted(range(len(names)), key=lambda k: -p[k])
            if drop_zero_first and "none" in names:
                order = [k for k in order if names[k] != "none"] + [names.index("none")]
            kept = sorted(order[:keep])
            rows.append([names[k] for k in kept])
        out[cell] = rows
    return out

