"""The DARTS cell's topology, defined once: two input nodes (0, 1), `steps` intermediate nodes
(2 .. steps + 1), and one edge from every earlier node into each intermediate node, numbered node by
node: node 2 takes edges 0, 1 (from nodes 0, 1), node 3 edges 2, 3, 4 (from 0, 1, 2), and so on:
14 edges for DARTS' 4 steps. Reduction cells are at 1/3 and 2/3 of the depth.

Every module that walks a cell's edges (supernet, derivation, costs, random cells, plots) asks this
one instead of spelling out ``2 + i``.
"""

from __future__ import annotations

from collections.abc import Iterator

# The two cell types of a DARTS network: the normal cell keeps the resolution, the reduction cell halves it.
CELL_TYPES = ("normal", "reduce")
STEPS = 4  # DARTS' intermediate nodes per cell


def num_edges(steps: int = STEPS) -> int:
    """Edges of a cell with `steps` intermediate nodes (DARTS: 14)."""
    return sum(2 + i for i in range(steps))


def node_edges(steps: int = STEPS) -> list[range]:
    """Per intermediate node i (node i + 2), the range of its incoming edges' indices."""
    out, start = [], 0
    for i in range(steps):
        out.append(range(start, start + 2 + i))
        start += 2 + i
    return out


def edges(steps: int = STEPS) -> Iterator[tuple[int, int, int]]:
    """(edge index, intermediate node i (node i + 2), input node j) of every edge, in edge order."""
    for i, rng in enumerate(node_edges(steps)):
        for j, e in enumerate(rng):
            yield e, i, j


def edge_inputs(steps: int = STEPS) -> list[int]:
    """The input node of each edge, in edge order."""
    return [j for _, _, j in edges(steps)]


def edge_index(node: int, input_node: int) -> int:
    """The edge from `input_node` into intermediate node `node` (0-based: node 0 is the cell's node 2)."""
    if not 0 <= input_node < 2 + node:
        raise ValueError(f"node {node + 2} has no edge from node {input_node}")
    return sum(2 + k for k in range(node)) + input_node


def is_reduction(layer: int, layers: int) -> bool:
    """Whether cell `layer` of `layers` is a reduction cell (DARTS: at layers // 3 and 2 * layers // 3)."""
    return layer in (layers // 3, 2 * layers // 3)


def genotype_edges(pairs, steps: int | None = None) -> list[tuple[int, str]]:
    """(edge index, op) of each of a cell's chosen (op, input node) pairs, two per node."""
    steps = len(pairs) // 2 if steps is None else steps
    return [(edge_index(k // 2, j), op) for k, (op, j) in enumerate(pairs[: 2 * steps])]
