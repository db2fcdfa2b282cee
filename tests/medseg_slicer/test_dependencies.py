"""MedSegLib.dependencies: what the first-use install puts into Slicer's Python (pure logic, offline)."""

from __future__ import annotations

import importlib.metadata

import pytest
from MedSegLib import dependencies


def fake_environment(installed: dict[str, str]):
    def version(name: str) -> str:
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    return version


@pytest.mark.parametrize(
    "installed, missing",
    [
        ({}, ["torch", "napari-medseg"]),
        ({"torch": "2.5.1+cu121"}, ["napari-medseg"]),
        ({"torch": "2.5.1", "napari-medseg": "0.0.9"}, ["napari-medseg"]),  # too old
        ({"napari-medseg": "0.1.0"}, ["torch"]),
        ({"torch": "2.13.0", "napari-medseg": "0.1.0"}, []),
        ({"torch": "2.13.0", "napari-medseg": "0.2.0.dev3+g1234"}, []),
    ],
)
def test_missing_requirements(installed, missing):
    assert dependencies.missing_requirements(metadata_version=fake_environment(installed)) == missing


def test_this_environment_has_everything():
    assert dependencies.missing_requirements() == []  # the venv has napari-medseg and torch


def test_constraints_pin_slicer_packages_and_skip_missing():
    text = dependencies.constraints_text({"SimpleITK": "2.4.0", "numpy": "1.26.4", "vtk": None, "torch": "2.5.1"})
    assert text == "SimpleITK==2.4.0\nnumpy==1.26.4\ntorch==2.5.1\n"
    own = dependencies.constraints_text()
    assert f"numpy=={importlib.metadata.version('numpy')}\n" in own


def test_pip_install_args():
    assert dependencies.pip_install_args("/tmp/c.txt") == ["napari-medseg>=0.1", "--constraint", "/tmp/c.txt"]
    assert dependencies.pip_install_args("c.txt", upgrade=True)[0] == "--upgrade"
    wheel = "/wheels/napari_medseg-0.1.0-py3-none-any.whl"
    assert dependencies.pip_install_args("c.txt", source=wheel)[0] == wheel


def test_invalid_pip_install_with_extras():
    with pytest.raises(ValueError, match="without extras"):
        dependencies.pip_install_args("c.txt", source="napari-medseg[napari]")


def test_failure_message_names_the_step_error_and_retry():
    message = dependencies.failure_message("installing napari-medseg", OSError("No route to host\nmore"), missing=["napari-medseg"])
    lines = message.splitlines()
    assert lines[0] == "MedSeg could not finish installing napari-medseg: No route to host"
    assert lines[1] == "Still missing: napari-medseg."
    assert "Retry" in lines[2] and "PyTorch extension" in lines[2]
