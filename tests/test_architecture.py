"""The package's import graph: the registry package has no import cycle (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_medseg

CORE = Path(napari_medseg.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("napari_medseg", *path.relative_to(CORE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """``module -> modules of ``package`` it imports``, module-level and inside functions alike."""
    files = {_module_name(p): p for p in CORE.rglob("*.py")}
    inside = {m for m in files if m == package or m.startswith(package + ".")}
    graph: dict[str, set[str]] = {m: set() for m in inside}
    for module in inside:
        path = files[module]
        base = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                root = node.module or ""
                if node.level:
                    anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                    root = f"{anchor}.{root}" if root else anchor
                targets = [root, *(f"{root}.{a.name}" for a in node.names)]
            for target in targets:
                if target in inside and target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_registry_package_has_no_import_cycle():
    graph = import_graph("napari_medseg.registry")
    # the package's own __init__ imports every submodule; a submodule importing the package back
    # (``from napari_medseg.registry import X``) would be a cycle through it
    assert len(graph) >= 7
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_sees_submodule_imports():
    graph = import_graph("napari_medseg.registry")
    assert "napari_medseg.registry.card" in graph["napari_medseg.registry.model"]
    assert "napari_medseg.registry.model" in graph["napari_medseg.registry"]
