"""The package's layers: every import (module-level and inside functions) goes down, never up,
and no module imports itself back through another (no cycle anywhere).

Layers, bottom to top (docs/architecture.md draws them):
base helpers -> io -> compilation -> solve -> models -> fitting -> inference -> datasets -> demos,
commands -> cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "neuraldiffeq"

#: the rank of each top-level part; a module may import its own part or any lower one
RANKS = {
    "_version": 0,
    "_compat": 0,
    "_checks": 0,
    "io": 1,
    "compilation": 2,
    "solve": 3,
    "models": 4,
    "fitting": 5,
    "inference": 5.5,
    "datasets": 6,
    "demos": 7,
    "commands": 7,
    "cli": 8,
    "__main__": 9,
    "__init__": 10,
}
#: the parts that may use the public API (`import neuraldiffeq as nde`), as a user would
PUBLIC_API_USERS = {"demos", "commands", "cli", "__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every neuraldiffeq module `path` imports, anywhere in the file (functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "neuraldiffeq"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "neuraldiffeq":
                continue
            found.add(target)
            for alias in node.names:  # `from . import x` imports the module x
                candidate = f"{target}.{alias.name}"
                if _exists(candidate):
                    found.add(candidate)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def test_every_part_has_a_rank():
    assert {_part(m) for m in MODULES} <= set(RANKS), "a new top-level module needs a layer"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down(module):
    rank = RANKS[_part(module)]
    for target in sorted(GRAPH[module]):
        if target == "neuraldiffeq":
            assert _part(module) in PUBLIC_API_USERS | {"__init__"}, (
                f"{module} imports the public API; only {sorted(PUBLIC_API_USERS)} may"
            )
            continue
        assert RANKS[_part(target)] <= rank, f"{module} (rank {rank}) imports {target} above it"


def _package_parents(module: str) -> list[str]:
    # importing a.b.c runs a/__init__ and a/b/__init__: a package's own __init__ importing its
    # submodules is not a cycle of the submodules
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(2, len(parts))]


def test_no_cycles():
    edges = {m: {t for t in GRAPH[m] if t in MODULES and t != m} for m in MODULES}
    # a package's __init__ re-exporting its submodules is the usual pattern: drop the edges from a
    # submodule to its own ancestors' __init__ (they would always look like cycles)
    for m in MODULES:
        edges[m] -= set(_package_parents(m)) - {m}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
