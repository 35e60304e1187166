"""Genotypes: the derived cell architectures, their DARTS text form, JSON, validation and diagrams.

A genotype lists, for the normal and the reduction cell, two (op, input) pairs per intermediate node:
input 0 and 1 are the cell inputs c_{k-2} and c_{k-1}, input j >= 2 is intermediate node j. The cell
output concatenates the nodes in ``*_concat`` (DARTS: nodes 2..5).

DARTS prints and users paste::

    Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=[...], reduce_concat=range(2, 6))

:meth:`Genotype.parse` reads that form (without ``eval``), ``str()`` writes it back.
"""

from __future__ import annotations

import ast
import json
import numbers
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from fastnas.infra.errors import GenotypeError
from fastnas.space.primitives import PRIMITIVES, is_primitive

__all__ = ["Genotype", "GenotypeError", "PUBLISHED", "published", "FIXED_REDUCTION_CELLS", "resolve_genotype",
           "random_genotype"]

# Hand-designed reduction cells a genotype can name instead of searched reduce edges.
FIXED_REDUCTION_CELLS = ("gdas_frc",)


MAX_NODES = 64  # intermediate nodes per cell a genotype may have (DARTS: 4)


Edge = tuple[str, int]


def _concat_repr(concat: list[int]) -> str:
    # DARTS writes contiguous concats as range(a, b); keep that so logs compare line for line.
    if len(concat) > 1 and concat == list(range(concat[0], concat[-1] + 1)):
        return f"range({concat[0]}, {concat[-1] + 1})"
    return repr(list(concat))


@dataclass(frozen=True)
class Genotype:
    """A normal and a reduction cell: ``normal``/``reduce`` hold 2 (op, input) pairs per node."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...] = (2, 3, 4, 5)
    reduce: tuple[Edge, ...] = ()
    reduce_concat: tuple[int, ...] = (2, 3, 4, 5)
    name: str | None = field(default=None, compare=False)
    # A fixed (not searched) reduction cell by name, e.g. "gdas_frc"; `reduce` is then empty.
    reduce_cell: str | None = None

    def __post_init__(self):
        # Types are checked before anything is converted: "0", 1.7 or True as an input node is an error,
        # not silently int()-ed, and range(0, 10**8) as a concat is refused before it is materialised.
        for cell in ("normal", "reduce"):
            edges = getattr(self, cell)
            if len(edges) > 2 * MAX_NODES:
                raise GenotypeError(f"{cell} cell: {len(edges) // 2} intermediate nodes, at most {MAX_NODES}")
            for e, edge in enumerate(edges):
                if not isinstance(edge, (tuple, list)) or len(edge) != 2:
                    raise GenotypeError(f"{cell} cell, edge {e}: expected (op, input), got {edge!r}")
                op, idx = edge
                if not isinstance(op, str):
                    raise GenotypeError(f"{cell} cell, edge {e}: op must be a name, got {op!r}")
                if not isinstance(idx, numbers.Integral) or isinstance(idx, bool):
                    raise GenotypeError(f"{cell} cell, edge {e} ({op!r}): input must be an integer, got {idx!r}")
            concat = getattr(self, f"{cell}_concat")
            shown = f"range({concat.start}, {concat.stop})" if isinstance(concat, range) else repr(concat)[:80]
            if len(concat) > 2 + MAX_NODES:
                raise GenotypeError(f"{cell}_concat {shown}: {len(concat)} nodes, a cell has at most "
                                    f"{MAX_NODES} intermediate nodes")
            if any(not isinstance(c, numbers.Integral) or isinstance(c, bool) for c in concat):
                raise GenotypeError(f"{cell}_concat {shown} must list node numbers (integers)")
        object.__setattr__(self, "normal", tuple((op, int(i)) for op, i in self.normal))
        object.__setattr__(self, "reduce", tuple((op, int(i)) for op, i in self.reduce))
        object.__setattr__(self, "normal_concat", tuple(int(i) for i in self.normal_concat))
        object.__setattr__(self, "reduce_concat", tuple(int(i) for i in self.reduce_concat))

    # ----------------------------------------------------------------- validation
    @property
    def steps(self) -> int:
        """Intermediate nodes per cell (DARTS: 4)."""
        return len(self.normal) // 2

    def check_trainable(self) -> Genotype:
        """Raise :class:`GenotypeError` when a cell's every operation is 'none': its output is zero, so
        nothing after it learns (a network to retrain needs a path from the input); return self."""
        for kind, pairs in (("normal", self.normal), ("reduce", None if self.reduce_cell else self.reduce)):
            if pairs and all(op == "none" for op, _ in pairs):
                raise GenotypeError(f"the {kind} cell's every operation is 'none': its output is zero and the "
                                    "network cannot learn")
        return self

    def validate(self, check_ops: bool = True) -> Genotype:
        """Raise :class:`GenotypeError` naming the problem; return self when valid."""
        if self.reduce_cell is not None:
            if self.reduce_cell not in FIXED_REDUCTION_CELLS:
                raise GenotypeError(f"reduce_cell: unknown fixed reduction cell {self.reduce_cell!r} "
                                    f"(known: {', '.join(FIXED_REDUCTION_CELLS)})")
            if self.reduce:
                raise GenotypeError("reduce_cell is set: the reduce edges must be empty")
        cells = ("normal",) if self.reduce_cell else ("normal", "reduce")
        for cell in cells:
            edges = getattr(self, cell)
            if len(edges) == 0 or len(edges) % 2:
                raise GenotypeError(
                    f"{cell} cell: needs 2 edges per intermediate node (an even, non-zero count), "
                    f"got {len(edges)}"
                )
        if not self.reduce_cell and len(self.reduce) != len(self.normal):
            raise GenotypeError(
                f"reduce cell has {len(self.reduce)} edges but normal cell has {len(self.normal)}"
            )
        for cell in cells:
            edges = getattr(self, cell)
            for e, (op, idx) in enumerate(edges):
                node = 2 + e // 2
                if check_ops and not is_primitive(op):
                    raise GenotypeError(f"{cell} cell, edge {e}: unknown op {op!r}")
                if not 0 <= idx < node:
                    raise GenotypeError(
                        f"{cell} cell, edge {e} ({op!r}): input {idx} out of range for node {node} "
                        f"(must be 0..{node - 1})"
                    )
            n_nodes = 2 + len(edges) // 2
            concat = getattr(self, f"{cell}_concat")
            # Only intermediate nodes: an input node of a reduction cell has the wrong spatial size, and
            # the cell's width is len(concat) * C (so a repeated node would be counted twice).
            if not concat:
                raise GenotypeError(f"{cell}_concat is empty: name at least one of the nodes 2..{n_nodes - 1}")
            if any(not 2 <= c < n_nodes for c in concat):
                raise GenotypeError(f"{cell}_concat {list(concat)[:16]} must name intermediate nodes "
                                    f"2..{n_nodes - 1}; nodes 0 and 1 are the cell's inputs")
            if len(set(concat)) != len(concat):
                raise GenotypeError(f"{cell}_concat {list(concat)} names a node twice")
        return self

    # ----------------------------------------------------------------- text forms
    def __str__(self) -> str:
        fixed = f", reduce_cell={self.reduce_cell!r}" if self.reduce_cell else ""
        return (
            f"Genotype(normal={list(self.normal)!r}, normal_concat={_concat_repr(list(self.normal_concat))}, "
            f"reduce={list(self.reduce)!r}, reduce_concat={_concat_repr(list(self.reduce_concat))}{fixed})"
        )

    @classmethod
    def parse(cls, text: str, check_ops: bool = True) -> Genotype:
        """Parse the DARTS repr (``Genotype(normal=[...], normal_concat=range(2, 6), ...)``).

        Only literals and ``range(a, b)`` are accepted; nothing is evaluated.
        """
        text = text.strip()
        try:
            tree = ast.parse(text, mode="eval").body
        except SyntaxError as exc:
            raise GenotypeError(f"not a DARTS genotype string: {exc.msg} at column {exc.offset}") from None
        if not (isinstance(tree, ast.Call) and getattr(tree.func, "id", getattr(tree.func, "attr", None))
                == "Genotype"):
            raise GenotypeError("not a DARTS genotype string: expected Genotype(normal=..., reduce=...)")
        names = ["normal", "normal_concat", "reduce", "reduce_concat", "reduce_cell"]
        values = {}
        for pos, node in enumerate(tree.args):
            if pos >= 4:
                raise GenotypeError("Genotype(...) takes at most 4 positional fields")
            values[names[pos]] = node
        for kw in tree.keywords:
            if kw.arg not in names:
                raise GenotypeError(f"Genotype(...): unknown field {kw.arg!r}")
            values[kw.arg] = kw.value
        for required in ("normal", "reduce"):
            if required not in values:
                raise GenotypeError(f"Genotype(...): missing field {required!r}")
        fields = {k: _literal(v, k) for k, v in values.items()}
        try:
            geno = cls(**fields)
        except GenotypeError:
            raise
        except (TypeError, ValueError) as exc:
            raise GenotypeError(f"Genotype(...): malformed edges ({exc})") from None
        return geno.validate(check_ops)

    def to_dict(self) -> dict:
        d = {
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }
        if self.name:
            d["name"] = self.name
        if self.reduce_cell:
            d["reduce_cell"] = self.reduce_cell
        return d

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        """The genotype as JSON text; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict, check_ops: bool = True) -> Genotype:
        if not isinstance(d, dict):
            raise GenotypeError(f"genotype JSON must be an object, got {type(d).__name__}")
        for key in ("normal", "reduce"):
            if key not in d:
                raise GenotypeError(f"genotype JSON: missing key {key!r}")
        try:
            geno = cls(
                normal=[tuple(e) for e in d["normal"]],
                normal_concat=d.get("normal_concat", (2, 3, 4, 5)),
                reduce=[tuple(e) for e in d["reduce"]],
                reduce_concat=d.get("reduce_concat", (2, 3, 4, 5)),
                name=d.get("name"),
                reduce_cell=d.get("reduce_cell"),
            )
        except GenotypeError:
            raise
        except (TypeError, ValueError) as exc:
            raise GenotypeError(f"genotype JSON: malformed edges, expected [op, input] pairs ({exc})") from None
        return geno.validate(check_ops)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike, check_ops: bool = True) -> Genotype:
        """Read a genotype from JSON text or from a JSON file path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not _is_file(text):
                raise GenotypeError(f"genotype file not found: {path}")
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise GenotypeError(f"cannot read genotype file {path}: not a text file "
                                    f"({type(exc).__name__})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenotypeError(f"bad genotype JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        return cls.from_dict(data, check_ops)

    @classmethod
    def load(cls, spec: str | os.PathLike) -> Genotype:
        """A published name (DARTS_V2, ...), a JSON file or text, or a DARTS genotype string."""
        s = str(spec).strip()
        if s.upper() in PUBLISHED:
            return PUBLISHED[s.upper()]
        if s.split("(", 1)[0].strip().endswith("Genotype"):
            return cls.parse(s)
        if _is_file(s) and not s.endswith(".json"):
            # e.g. a search run's genotype.txt: the DARTS string, or JSON, in a file
            try:
                text = Path(s).read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise GenotypeError(f"cannot read genotype file {s}: {exc}") from None
            if text.split("(", 1)[0].strip().endswith("Genotype"):
                try:
                    return cls.parse(text)
                except GenotypeError as exc:
                    raise GenotypeError(f"{s}: {exc}") from None
            return cls.from_json(s)
        if s.startswith("{") or s.endswith(".json"):
            return cls.from_json(s)
        raise GenotypeError(
            f"cannot read genotype {s[:60]!r}: not a published name ({', '.join(PUBLISHED)}), "
            "JSON file/text or DARTS Genotype(...) string"
        )

    # ----------------------------------------------------------------- diagrams
    def to_dot(self, cell: str = "normal") -> str:
        """Graphviz source of one cell in the DARTS style: c_{k-2}, c_{k-1}, numbered nodes, op-labelled
        edges, c_{k}."""
        if cell not in ("normal", "reduce"):
            raise ValueError(f"cell must be 'normal' or 'reduce', got {cell!r}")
        edges = getattr(self, cell)
        concat = getattr(self, f"{cell}_concat")
        steps = len(edges) // 2
        lines = [
            f'digraph "{cell}" {{',
            "  rankdir=LR;",
            '  node [style="rounded,filled", shape=rect, align=center, fontsize=20, height=0.5, '
            'width=0.5, penwidth=2, fontname="times"];',
            '  edge [fontsize=20, fontname="times"];',
            '  "c_{k-2}" [fillcolor=darkseagreen2];',
            '  "c_{k-1}" [fillcolor=darkseagreen2];',
        ]
        for i in range(steps):
            lines.append(f'  "{i}" [fillcolor=lightblue];')
        for e, (op, idx) in enumerate(edges):
            src = "c_{k-2}" if idx == 0 else "c_{k-1}" if idx == 1 else str(idx - 2)
            lines.append(f'  "{src}" -> "{e // 2}" [label="{op}", fillcolor=gray];')
        lines.append('  "c_{k}" [fillcolor=palegoldenrod];')
        for c in concat:
            src = "c_{k-2}" if c == 0 else "c_{k-1}" if c == 1 else str(c - 2)
            lines.append(f'  "{src}" -> "c_{{k}}" [fillcolor=gray];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def render(self, directory: str | os.PathLike, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
        """Write normal.dot and reduce.dot to `directory` (always) and, when the `dot` program is
        present, the same diagrams in `formats`. Returns the written paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        dot = shutil.which("dot")
        for cell in ("normal", "reduce"):
            src = out / f"{cell}.dot"
            src.write_text(self.to_dot(cell))
            written.append(src)
            if dot:
                for fmt in formats:
                    target = out / f"{cell}.{fmt}"
                    result = subprocess.run([dot, f"-T{fmt}", str(src), "-o", str(target)],
                                            capture_output=True, text=True)
                    if result.returncode == 0:
                        written.append(target)
        return written


def _is_file(s: str) -> bool:
    try:
        return Path(s).is_file()
    except OSError:  # e.g. a name too long to be a path
        return False


def _literal(node: ast.AST, field_name: str):
    """Evaluate a literal list/tuple/str/int node or range(a[, b]) without eval."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range":
        args = [_literal(a, field_name) for a in node.args]
        if not 1 <= len(args) <= 3 or not all(isinstance(a, int) for a in args):
            raise GenotypeError(f"{field_name}: range(...) takes 1 to 3 integers")
        return range(*args)  # not materialised: a huge range is refused by its length
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, field_name) for e in node.elts]
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
        return node.value
    raise GenotypeError(f"{field_name}: unexpected {ast.dump(node)[:60]}; only literals and range() are allowed")


def _g(name: str, normal: str, reduce: str) -> Genotype:
    abbrev = {
        "sep3": "sep_conv_3x3", "sep5": "sep_conv_5x5", "dil3": "dil_conv_3x3", "dil5": "dil_conv_5x5",
        "max3": "max_pool_3x3", "avg3": "avg_pool_3x3", "skip": "skip_connect",
    }

    def edges(text):
        pairs = [p.split() for p in text.split(",")]
        return [(abbrev[op], int(i)) for op, i in pairs]

    return Genotype(edges(normal), (2, 3, 4, 5), edges(reduce), (2, 3, 4, 5), name=name)


# The published cells: DARTS (quark0/darts cnn/genotypes.py), P-DARTS (chenxin061/pdarts genotypes.py),
# PC-DARTS (yuhuixu1993/PC-DARTS genotypes.py), DrNAS (xiangning-chen/DrNAS DARTS-space genotypes.py).
PUBLISHED: dict[str, Genotype] = {
    "DARTS_V1": _g(
        "DARTS_V1",
        "sep3 1, sep3 0, skip 0, sep3 1, skip 0, sep3 1, sep3 0, skip 2",
        "max3 0, max3 1, skip 2, max3 0, max3 0, skip 2, skip 2, avg3 0",
    ),
    "DARTS_V2": _g(
        "DARTS_V2",
        "sep3 0, sep3 1, sep3 0, sep3 1, sep3 1, skip 0, skip 0, dil3 2",
        "max3 0, max3 1, skip 2, max3 1, max3 0, skip 2, skip 2, max3 1",
    ),
    "PDARTS": _g(
        "PDARTS",
        "skip 0, dil3 1, skip 0, sep3 1, sep3 1, sep3 3, sep3 0, dil5 4",
        "avg3 0, sep5 1, sep3 0, dil5 2, max3 0, dil3 1, dil3 1, dil5 3",
    ),
    "PC_DARTS": _g(
        "PC_DARTS",
        "sep3 1, skip 0, sep3 0, dil3 1, sep5 0, sep3 1, avg3 0, dil3 1",
        "sep5 1, max3 0, sep5 1, sep5 2, sep3 0, sep3 3, sep3 1, sep3 2",
    ),
    "DRNAS": _g(
        "DRNAS",
        "sep3 0, sep5 1, sep3 1, sep3 2, skip 0, sep3 1, sep3 2, dil5 3",
        "max3 0, sep5 1, dil5 2, sep5 1, sep5 1, dil5 3, skip 4, sep5 1",
    ),
}


def published(name: str) -> Genotype:
    """A published genotype by name (case-insensitive)."""
    try:
        return PUBLISHED[name.upper()]
    except KeyError:
        raise GenotypeError(f"unknown published genotype {name!r}; known: {', '.join(PUBLISHED)}") from None


def resolve_genotype(spec: str) -> Genotype:
    """A published name, a genotype.json, a search run directory, or a DARTS Genotype(...) string."""
    path = Path(str(spec))
    try:
        if path.is_dir():
            if not (path / "genotype.json").is_file():
                raise GenotypeError(f"{path} holds no genotype.json (has its search finished?)")
            return Genotype.from_json(path / "genotype.json")
    except OSError:
        pass
    return Genotype.load(spec)


def random_genotype(rng: random.Random, primitives=PRIMITIVES, steps: int = 4, max_skip: int | None = 2,
                    reduce_cell: str | None = None) -> Genotype:
    """A uniformly random DARTS cell pair: per node two distinct earlier nodes, each edge an op drawn
    uniformly from `primitives` without 'none'; the normal cell is redrawn until it holds at most
    `max_skip` skip connections (the rule the search's derivation obeys)."""
    ops = [p for p in primitives if p != "none"]
    if not ops:
        raise GenotypeError("random genotypes need at least one candidate op besides 'none'")
    if max_skip is not None and max_skip < 2 * steps and ops == ["skip_connect"]:
        raise GenotypeError("the skip cap cannot be met with skip_connect as the only op")

    def cell(cap):
        while True:
            pairs = []
            for i in range(steps):  # node i + 2 chooses 2 of its 2 + i inputs
                for j in sorted(rng.sample(range(2 + i), 2)):
                    pairs.append((rng.choice(ops), j))
            if cap is None or sum(op == "skip_connect" for op, _ in pairs) <= cap:
                return pairs

    concat = list(range(2, steps + 2))
    normal = cell(max_skip)
    if reduce_cell:  # the search's fixed reduction cell: the same for random cells
        return Genotype(normal, concat, (), concat, reduce_cell=reduce_cell)
    return Genotype(normal, concat, cell(None), concat)
