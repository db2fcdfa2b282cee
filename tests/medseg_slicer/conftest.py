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


def write_tiny_model(folder: Path, *, name: str = "tiny-seg", seed: int = 0):
    """A 3D U-Net with random weights: labels 0/1/2 (background, tissue1, tissue2), spacing 1 x 1 x 2 mm."""
    import torch

    from napari_medseg.networks import build_network
    from napari_medseg.registry import save_model_folder

    params = {"channels": [4, 8]}
    placement = ["decoder", "head"]
    torch.manual_seed(seed)
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=3, dropout_rate=0.2,
                        dropout_placement=placement, **params)
    colors = {0: (0.0, 0.0, 0.0), 1: (1.0, 0.0, 0.0), 2: (0.0, 0.8, 0.2)}
    card = {
        "name": name, "version": "1.0", "description": "tiny test model", "task": "segmentation",
        "license": "Apache-2.0", "architecture": {"name": "unet", "params": params}, "spatial_dims": 3,
        "channels": [{"name": "T1", "modality": "MR"}],
        "labels": {v: {"name": "background" if v == 0 else f"tissue{v}", "color": colors[v]} for v in (0, 1, 2)},
        "spacing": (1.0, 1.0, 2.0), "orientation": None, "normalization": {"kind": "zscore"},
        "patch_size": (8, 16, 16), "dropout": {"placement": placement, "rate": 0.2},
    }
    return save_model_folder(folder / name, card=card, state_dict=net.state_dict())


@pytest.fixture
def tiny_model(medseg_env):
    return write_tiny_model(medseg_env.models)


def small_array(shape=(10, 24, 28)) -> np.ndarray:
    rng = np.random.default_rng(7)
    z, y, x = np.indices(shape)
    inner = ((z - 4.5) / 3.0) ** 2 + ((y - 11.5) / 8.0) ** 2 + ((x - 13.5) / 9.0) ** 2 <= 1.0
    return (rng.normal(20.0, 5.0, size=shape) + 80.0 * inner).astype(np.float32)
