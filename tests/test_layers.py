"""The package's one rule: a module imports only from its own layer or the layers below it, and only
the command-line layer runs as a program. Walks every import (module level and inside functions) of
every module, so an import circle between layers cannot come back."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastnas"

# Each layer and the layers it may import from (its own included). kernels: the compiled ops' Python
# face; infra knows nothing of architecture search; data, space (S1), cost, plots; search (S2) and
# train (S3) are siblings that do not know each other; cli assembles everything.
ALLOWED = {
    "kernels": {"kernels"},
    "infra": {"infra"},
    "data": {"infra", "data"},
    "space": {"kernels", "infra", "space"},
    "plots": {"infra", "space", "plots"},
    "cost": {"kernels", "infra", "space", "cost"},
    "search": {"kernels", "infra", "data", "space", "cost", "plots", "search"},
    "train": {"kernels", "infra", "data", "space", "cost", "plots", "train"},
    "cli": {"kernels", "infra", "data", "space", "cost", "plots", "search", "train", "cli", "package"},
    "package": {"kernels"},  # fastnas/__init__.py loads the ops
}
# Modules kept so that earlier command lines and imports keep working: `python -m fastnas.X` entry
# points (they import fastnas.cli) and the README's former import paths (they import fastnas.space).
ENTRY_POINTS = {"__main__", "evaluate", "pipeline", "study", "info"}
API_ALIASES = {"genotype", "network", "sampler", "supernet"}


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside fastnas."""
    parts = module.split(".")
    if parts == ["fastnas"]:
        return "package"
    head = parts[1]
    if head in ("ops", "reference", "_C"):
        return "kernels"
    if head in ("infra", "space", "cost", "search", "train", "cli"):
        return head
    if head in ("data", "plots"):
        return head
    raise AssertionError(f"{module}: not in any layer (add it to tests/test_layers.py)")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def imports(path: Path, module: str) -> list[str]:
    """Every fastnas module `path` imports, resolved to dotted names (relative imports included)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "fastnas"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            if base.split(".")[0] != "fastnas":
                continue
            for alias in node.names:  # `from fastnas import ops`: the module fastnas.ops
                out.append(f"{base}.{alias.name}" if base == "fastnas" else base)
    return out


def _kind(module: str) -> str:
    last = module.split(".")[-1]
    if last == "__main__" or (module.count(".") == 1 and last in ENTRY_POINTS):
        return "entry"
    if module.count(".") == 1 and last in API_ALIASES:
        return "alias"
    return "layer"


ALL = list(modules())


@pytest.mark.parametrize("module, path", ALL, ids=[m for m, _ in ALL])
def test_imports_stay_in_their_layer_or_below(module, path):
    kind = _kind(module)
    for target in imports(path, module):
        if kind == "entry":
            assert target.startswith("fastnas.cli"), f"{module} is an entry point: it may import fastnas.cli only"
        elif kind == "alias":
            assert target.startswith("fastnas.space"), f"{module} is an alias of fastnas.space: nothing else"
        else:
            mine, theirs = layer_of(module), layer_of(target)
            assert theirs in ALLOWED[mine], f"{module} ({mine}) imports {target} ({theirs}): not allowed"


@pytest.mark.parametrize("module, path", ALL, ids=[m for m, _ in ALL])
def test_only_the_command_line_layer_runs_as_a_program(module, path):
    text = path.read_text()
    runs = "__name__ == \"__main__\"" in text or module.endswith("__main__")
    if runs:
        assert _kind(module) == "entry" or layer_of(module) == "cli", f"{module} runs as a program outside fastnas.cli"


def test_the_rule_catches_a_violation(tmp_path):
    """The walk sees imports inside functions and relative ones: a layer reaching up is caught."""
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from fastnas.search import Searcher\n    from ..cli import main\n")
    found = imports(bad, "fastnas.space.m")
    assert "fastnas.search" in found and "fastnas.cli" in found
    assert all(layer_of(t) not in ALLOWED["space"] for t in found)


def test_the_cell_topology_is_written_once():
    """DARTS' edge numbering (node i takes 2 + i edges) lives in fastnas.space.topology alone (and the
    random cell, which draws 2 of a node's 2 + i inputs, says so in a comment)."""
    for module, path in ALL:
        if module == "fastnas.space.topology":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "start += 2 + i" in code or "start + 2 + i" in code or "for j in range(2 + i)" in code:
                pytest.fail(f"{path.name}:{n} walks the cell's edges itself; use fastnas.space.topology")
