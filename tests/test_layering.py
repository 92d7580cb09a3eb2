"""The package's layering, read from the source with ``ast``: no import cycle among chanprune's modules.

Every import counts, at module level and inside functions alike: a function-level import is still a
dependency (it runs on the first call), and allowing it would let a cycle hide behind a late import.
An edge goes to the module imported (``from .x import y`` → ``x``, or ``x.y`` where ``y`` is a
submodule) and to every package above it, whose ``__init__`` Python runs first — except the packages
above the importing module itself, which are already being imported when it runs (a package's own
``__init__`` importing its submodules is no cycle).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "chanprune"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: modules of the package it imports}."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)]
                    mod = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            else:
                continue
            own = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
            for t in targets:
                parts = t.split(".")
                deps |= {p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                         if p in modules and p != name and p not in own}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_in_src():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_cycle_check_sees_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "chanprune.methods.pipeline" in graph["chanprune.methods.cp"]  # relative imports resolve
    assert "chanprune.recovery" in graph["chanprune.methods.cp"]  # a submodule's package __init__ runs first
    assert "chanprune.methods" not in graph["chanprune.methods.cp"]  # but not the importer's own package


# Torch-Pruning's internals: its DependencyGraph and nodes, and its operator classes. Only graph.py
# (the adapter) may read them; everything else asks PruningGraph.
TP_INTERNALS = re.compile(r"\.dg\b|module2node|_ConcatOp|_ElementWiseOp|_SplitOp|_grad_fn|\bgrad_fn\b|torch_pruning\.ops|tp\.ops"
                          r"|from torch_pruning import ops|get_pruning_group|get_all_groups|\.outputs\b")


def test_only_graph_reads_torch_pruning_internals():
    offenders = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        if path.name == "graph.py" and path.parent.name == PACKAGE:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if TP_INTERNALS.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not offenders, "Torch-Pruning internals outside graph.py:\n" + "\n".join(offenders)
