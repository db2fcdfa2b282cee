"""The package's import graph: no module imports itself back through others.

The graph is read from the source with :mod:`ast` (every ``import`` of a ``napari_medseg`` module,
also those inside functions, which run later but still tie two concepts together; ``if
TYPE_CHECKING:`` blocks never run and are left out).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import napari_medseg

CORE = Path(napari_medseg.__file__).parent


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module, *, deferred: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module: at import time only, or also inside functions."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(nodes: list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not deferred:
                continue
            else:
                visit(list(ast.iter_child_nodes(node)))

    visit(tree.body)
    return found


def import_graph(root: Path, *, deferred: bool = True) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``root`` is the package folder)."""
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str | None] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")), deferred=deferred):
            if isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names if a.name.split(".")[0] == root.name}
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                full = f"{target}.{alias.name}"
                deps.add(full if full in modules else known(target))
        graph[name] = {d for d in deps if d is not None and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
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


#: modules of the prediction path that must sit in no circle, even through deferred imports
PREDICTION_PATH = ("napari_medseg.inference", "napari_medseg.uncertainty", "napari_medseg.labelmaps",
                   "napari_medseg.normalization", "napari_medseg.model_grid")


def test_no_import_cycle_at_import_time():
    assert cycles(import_graph(CORE, deferred=False)) == []


def test_prediction_path_is_in_no_cycle_even_through_deferred_imports():
    on_path = [c for c in cycles(import_graph(CORE)) if any(m.startswith(PREDICTION_PATH) for m in c)]
    assert on_path == []


def test_one_argmax_to_labels_rule():
    """inference and uncertainty share labelmaps' function instead of each writing one."""
    graph = import_graph(CORE)
    assert "napari_medseg.labelmaps" in graph["napari_medseg.inference.predictor"]
    assert "napari_medseg.labelmaps" in graph["napari_medseg.uncertainty"]
    assert not any(d.startswith("napari_medseg.inference") for d in graph["napari_medseg.uncertainty"])


def test_the_cycle_check_finds_cycles(tmp_path):
    pkg = tmp_path / "napari_medseg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from napari_medseg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import napari_medseg.a\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from napari_medseg import sub\n")
    graph = import_graph(pkg)
    assert graph["napari_medseg.a"] == {"napari_medseg.sub.b"}
    assert graph["napari_medseg.sub.b"] == {"napari_medseg.c"}
    assert graph["napari_medseg.c"] == {"napari_medseg.a"}  # TYPE_CHECKING left out
    assert cycles(graph) == [["napari_medseg.a", "napari_medseg.c", "napari_medseg.sub.b"]]
    assert cycles(import_graph(pkg, deferred=False)) == []  # the circle closes inside a function


def test_model_grid_normalisation_and_labelmaps_do_not_load_torch():
    """The trainer's data side, card_warnings and the faces use them without torch."""
    code = (
        "import sys, napari_medseg.model_grid, napari_medseg.normalization, napari_medseg.labelmaps\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]


def test_registry_package_modules_are_layered():
    """The registry's modules import only from the ones below them, deferred imports included."""
    graph = import_graph(CORE)
    inside = {m: {d for d in deps if d.startswith("napari_medseg.registry.")}
              for m, deps in graph.items() if m.startswith("napari_medseg.registry.")}
    assert len(inside) >= 6 and cycles(inside) == []
