"""The core never imports Qt, napari, Slicer or tqdm (STYLE rule 1); the faces hold no algorithms."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import napari_medseg

CORE = Path(napari_medseg.__file__).parent
FORBIDDEN = {"PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "magicgui", "slicer", "vtk", "qt", "tqdm"}


def _imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_import_no_gui_toolkit():
    offenders = {}
    for path in CORE.rglob("*.py"):
        if "plugin" in path.relative_to(CORE).parts:
            continue  # the napari face may import napari
        bad = _imported_top_levels(path) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(CORE))] = sorted(bad)
    assert offenders == {}


def test_the_boundary_check_sees_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\nfrom qtpy.QtWidgets import QWidget\ndef f():\n    import tqdm\n")
    assert _imported_top_levels(probe) & FORBIDDEN == {"qtpy", "tqdm"}


def test_importing_the_cli_does_not_load_torch():
    # `medseg info` and `--help` must stay fast: the command modules import heavy libraries lazily
    code = "import sys, napari_medseg.cli as c; c.build_parser(); print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_modules_the_slicer_interface_uses_do_not_load_torch():
    """Slicer's interface process imports these; torch must load only in the job child processes."""
    modules = ["registry", "volume", "metrics", "postprocess", "jobs", "training.data", "training.config", "training.finetune", "sample_data"]
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module('napari_medseg.' + m)\n"
        "print('torch' in sys.modules, 'monai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
