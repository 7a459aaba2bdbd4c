"""The layers, as the imports draw them: no cycle anywhere in ``app/``, and the detector core
and the storage layer stand alone (nothing from the HTTP layer, the domain services, the
command line or the app factory). Every import counts, those inside functions too: a lazy
import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"
UPPER_LAYERS = ("app.api", "app.services", "app.cli", "app.main", "app.evaluation")
STANDALONE = ("app.detector", "app.db")


def _module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The ``app`` modules that ``path`` imports (``from app.x import y`` counts as
    ``app.x.y`` when that is a module, else ``app.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in APP.rglob("*.py")}
    modules = set(files)
    graph = {name: _imports(path, modules) - {name} for name, path in files.items()}
    # A package's __init__ importing its own submodules is not a layer dependency.
    return {name: {d for d in deps if not d.startswith(name + ".")}
            for name, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for w in sorted(graph.get(v, ())):
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


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "app.main" in graph and "app.api.routes.inspect" in graph["app.main"]
    assert "app.detector.engine" in graph["app.services.training"]


def test_no_import_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_cycles_are_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_detector_and_storage_stand_alone() -> None:
    offending = sorted(
        f"{module} imports {dep}"
        for module, deps in import_graph().items() if module.startswith(STANDALONE)
        for dep in deps if dep.startswith(UPPER_LAYERS)
    )
    assert offending == []
