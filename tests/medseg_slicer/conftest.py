"""Fixtures of the Slicer extension's logic tests: real MRML from the ``slicer-core`` wheel.

``slicer_extension/MedSeg`` goes on ``sys.path`` so ``import MedSegLib`` works as it does inside
Slicer; registry, user models and jobs live in the test's own folders; the model is a tiny 3D
U-Net with random weights written by the test (nothing downloads).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from _models import make_model, tissue_card

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_extension" / "MedSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

pytest.importorskip("slicer_core", reason="the slicer-core wheel (MRML without the application) is not installed")


@pytest.fixture
def scene():
    from slicer import vtkMRMLScene

    scene = vtkMRMLScene()
    yield scene
    scene.Clear(1)


@pytest.fixture
def medseg_env(tmp_path, monkeypatch):
    env = SimpleNamespace(models=tmp_path / "registry", user_models=tmp_path / "user_models", jobs=tmp_path / "jobs",
                          work=tmp_path / "work")
    for folder in (env.models, env.user_models, env.jobs, env.work):
        folder.mkdir()
    monkeypatch.setenv("MEDSEG_MODELS", str(env.models))
    monkeypatch.setenv("MEDSEG_USER_MODELS", str(env.user_models))
    monkeypatch.setenv("MEDSEG_JOBS_DIR", str(env.jobs))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # children on the shared 2-core machine
    return env


@pytest.fixture
def tiny_model(medseg_env):
    return make_model(medseg_env.models, card=tissue_card())


def small_array(shape=(10, 24, 28)) -> np.ndarray:
    rng = np.random.default_rng(7)
    z, y, x = np.indices(shape)
    inner = ((z - 4.5) / 3.0) ** 2 + ((y - 11.5) / 8.0) ** 2 + ((x - 13.5) / 9.0) ** 2 <= 1.0
    return (rng.normal(20.0, 5.0, size=shape) + 80.0 * inner).astype(np.float32)
