"""The structure drawn from the imports: no cycle, and no import from the library up into the
workflow steps (only the step registry reaches them, by name)."""
from __future__ import annotations

import ast
from pathlib import Path

from fusionroute.steps import STEP_MODULES

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fusionroute", "baselines")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body (function-level imports too)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_library_never_imports_a_step_module():
    graph = import_graph()
    steps = set(STEP_MODULES)
    # the step modules and their shared helpers: every module of fusionroute/steps/ but the registry
    step_package = {m for m in graph if m.startswith("fusionroute.steps.")}
    upward = {(m, t) for m, targets in graph.items() for t in targets & (steps | step_package)
              if m not in steps and not m.startswith("fusionroute.steps")}
    assert upward == set()
    assert all(m in graph for m in steps)


def test_step_modules_are_the_step_package():
    """STEP_MODULES names every module of fusionroute/steps/ that defines steps, and only those."""
    helpers = {"fusionroute.steps.__main__", "fusionroute.steps.common"}
    package = {m for m in import_graph() if m.startswith("fusionroute.steps.")} - helpers
    assert set(STEP_MODULES) == package
