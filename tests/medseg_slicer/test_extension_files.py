"""Static checks of the Slicer extension: CMake lists, catalog entry, module structure, the .ui file.

MedSeg.py needs the Slicer application (qt, slicer.util), so it is checked without running it.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXTENSION = Path(__file__).resolve().parents[2] / "slicer_extension"
MODULE = EXTENSION / "MedSeg"
CMAKE_FILES = {"CMakeLists.txt"}


def cmake_listed_files(cmake: Path, module_name: str) -> set[str]:
    text = re.sub(r"#.*", "", cmake.read_text())
    listed = set()
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)(.*?)\)", text, flags=re.DOTALL):
        listed |= {item.replace("${MODULE_NAME}", module_name) for item in block.split()}
    return listed


def module_files() -> set[str]:
    files = set()
    for path in MODULE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.name not in CMAKE_FILES:
            files.add(path.relative_to(MODULE).as_posix())
    return files


def test_every_module_file_is_listed_in_cmakelists_and_nothing_more():
    listed = cmake_listed_files(MODULE / "CMakeLists.txt", "MedSeg")
    on_disk = module_files()
    assert on_disk - listed == set(), "files in MedSeg/ missing from MedSeg/CMakeLists.txt"
    assert listed - on_disk == set(), "MedSeg/CMakeLists.txt lists files that do not exist"
    assert "MedSeg.py" in listed and "Resources/UI/MedSeg.ui" in listed
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    for folder in {p.parent for p in MODULE.rglob("CMakeLists.txt")} - {MODULE}:
        assert f"add_subdirectory({folder.relative_to(MODULE).as_posix()})" in text


def test_cmake_listing_check_catches_a_missing_file(tmp_path):
    cmake = tmp_path / "CMakeLists.txt"
    cmake.write_text("set(MODULE_PYTHON_SCRIPTS\n  ${MODULE_NAME}.py\n  # ${MODULE_NAME}Lib/old.py\n  )\n")
    assert cmake_listed_files(cmake, "X") == {"X.py"}  # comments do not count as listed


def test_extension_cmakelists_metadata():
    text = (EXTENSION / "CMakeLists.txt").read_text()
    fields = dict(re.findall(r'set\((EXTENSION_[A-Z_]+) "([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert fields.get(key), key
    assert fields["EXTENSION_CATEGORY"] == "Segmentation" and fields["EXTENSION_DEPENDS"] == "PyTorch"
    assert fields["EXTENSION_ICONURL"].endswith("MedSeg/Resources/Icons/MedSeg.png")
    assert "add_subdirectory(MedSeg)" in text and "project(MedSeg)" in text


def test_catalog_entry_has_the_index_fields():
    entry = json.loads((EXTENSION / "MedSeg.json").read_text())
    # the index's catalog-entry schema v1.0.1: these keys only (additionalProperties is false)
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
               "scm_type", "scm_url", "tier"}
    assert set(entry) <= allowed
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.")
    assert entry["category"] == "Segmentation" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].startswith("https://") and 1 <= entry["tier"] <= 5


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def test_module_script_compiles_and_has_the_slicer_classes(tmp_path):
    source = MODULE / "MedSeg.py"
    py_compile.compile(str(source), cfile=str(tmp_path / "MedSeg.pyc"), doraise=True)
    tree = ast.parse(source.read_text())
    classes = _classes(tree)
    bases = {name: {ast.unparse(b) for b in cls.bases} for name, cls in classes.items()}
    assert "ScriptedLoadableModule" in bases["MedSeg"]
    assert "ScriptedLoadableModuleWidget" in bases["MedSegWidget"]
    assert "ScriptedLoadableModuleTest" in bases["MedSegTest"]
    assert [ast.unparse(d) for d in classes["MedSegParameterNode"].decorator_list] == ["parameterNodeWrapper"]
    assert set(classes) == {"MedSeg", "MedSegParameterNode", "MedSegWidget", "MedSegTest"}  # nothing else
    assert len(source.read_text().splitlines()) < 500
    tests = [f.name for f in classes["MedSegTest"].body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    assert {"test_volume_round_trip", "test_segmentation_and_metrics", "test_transform", "test_predict_job"} <= set(tests)
    # the logic lives in MedSegLib: the module imports neither torch nor the core at module level
    top_imports = {ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert not any("torch" in i or "napari_medseg" in i for i in top_imports)


def test_ui_file_is_valid_and_names_every_widget_the_module_uses():
    root = ET.parse(MODULE / "Resources" / "UI" / "MedSeg.ui").getroot()
    names = {w.get("name") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "MedSeg.py").read_text()))
    assert used and used <= names, f"widgets used by MedSeg.py but missing from MedSeg.ui: {sorted(used - names)}"
    # parameter-node bindings point at parameters of MedSegParameterNode
    tree = ast.parse((MODULE / "MedSeg.py").read_text())
    parameters = {s.target.id for s in _classes(tree)["MedSegParameterNode"].body if isinstance(s, ast.AnnAssign)}
    bound = set()
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound.add(prop.find("string").text)
    assert bound and bound <= parameters, sorted(bound - parameters)
    custom = {c.find("class").text for c in root.iter("customwidget")}
    assert {w.get("class") for w in root.iter("widget") if not w.get("class").startswith("Q")} <= custom


@pytest.mark.parametrize("name", ["nodes", "logic", "dependencies", "dicom_export", "model_import"])
def test_medseglib_imports_no_qt_and_no_application(name):
    tree = ast.parse((MODULE / "MedSegLib" / f"{name}.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    assert not modules & {"qt", "PythonQt", "ctk", "PyQt5", "PyQt6", "napari", "torch", "slicer.util"}
