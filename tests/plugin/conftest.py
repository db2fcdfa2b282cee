"""Fixtures of the napari plugin tests: an isolated registry, jobs folder and settings, a tiny model
with random weights written by the test itself, and small anisotropic volumes (nothing downloads).

The viewer comes from napari's own pytest plugin (``make_napari_viewer``); pytest-xvfb gives it a
display.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ellipsoid_mask

from napari_medseg.volume import Geometry, Volume


@pytest.fixture(autouse=True)
def medseg_env(tmp_path, monkeypatch):
    """Registry, user models and jobs in the test's own folders; one torch thread (2-core CI)."""
    import torch

    env = SimpleNamespace(
        models=tmp_path / "registry",
        user_models=tmp_path / "user_models",
        jobs=tmp_path / "jobs",
    )
    for folder in (env.models, env.user_models, env.jobs):
        folder.mkdir()
    monkeypatch.setenv("MEDSEG_MODELS", str(env.models))
    monkeypatch.setenv("MEDSEG_USER_MODELS", str(env.user_models))
    monkeypatch.setenv("MEDSEG_JOBS_DIR", str(env.jobs))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield env
    torch.set_num_threads(before)


def write_tiny_model(folder: Path, *, name: str = "tiny-seg", labels=(0, 1, 2), channels=(4, 8), seed: int = 0,
                     spacing=(1.0, 1.0, 2.0), **card_fields):
    """A 3D U-Net registry model with random weights, dropout in the decoder and before the head."""
    import torch

    from napari_medseg.networks import build_network
    from napari_medseg.registry import save_model_folder

    params = {"channels": list(channels)}
    placement = ["decoder", "head"]
    torch.manual_seed(seed)
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=len(labels), dropout_rate=0.2,
                        dropout_placement=placement, **params)
    colors = {0: (0.0, 0.0, 0.0), 1: (1.0, 0.0, 0.0), 2: (0.0, 0.8, 0.2), 3: (0.1, 0.2, 0.9)}
    card = {
        "name": name, "version": "1.0", "description": "tiny test model", "task": "segmentation",
        "license": "Apache-2.0", "architecture": {"name": "unet", "params": params}, "spatial_dims": 3,
        "channels": [{"name": "T1", "modality": "MR"}],
        "labels": {v: {"name": "background" if v == 0 else f"tissue{v}", "color": colors[v]} for v in labels},
        "spacing": spacing, "orientation": None, "normalization": {"kind": "zscore"},
        "patch_size": (8, 16, 16), "dropout": {"placement": placement, "rate": 0.2},
        "metrics": {"dice_tissue1": 0.5},
    }
    card.update(card_fields)
    return save_model_folder(folder / name, card=card, state_dict=net.state_dict())


@pytest.fixture
def tiny_model(medseg_env):
    """A registry model ``tiny-seg`` in the test's registry (spacing 1 x 1 x 2 mm, labels 0, 1, 2)."""
    return write_tiny_model(medseg_env.models)


def _small_array(shape=(10, 24, 28), spacing_zyx=(2.0, 1.0, 1.0)) -> np.ndarray:
    rng = np.random.default_rng(7)
    inner = ellipsoid_mask(shape, (4.5, 11.5, 13.5), (6.0, 8.0, 9.0), spacing_zyx)
    array = rng.normal(20.0, 5.0, size=shape) + 80.0 * inner
    return array.astype(np.float32)


@pytest.fixture
def small_volume() -> Volume:
    """A 10 x 24 x 28 T1-like volume, spacing (x, y, z) = (1, 1, 2) mm, origin off zero, identity direction."""
    return Volume(_small_array(), Geometry((1.0, 1.0, 2.0), (-12.5, 30.0, 7.25)))


@pytest.fixture
def ras_volume() -> Volume:
    """The same data in RAS orientation (direction diag(-1, -1, 1)): napari shows it with flips."""
    return Volume(_small_array(), Geometry((1.0, 1.0, 2.0), (12.5, -30.0, 7.25), (-1, 0, 0, 0, -1, 0, 0, 0, 1)))


@pytest.fixture
def notifications():
    """Every napari notification shown during the test, as ``(message, severity)`` pairs."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(event):
        seen.append((str(getattr(event, "message", event)), str(getattr(event, "severity", ""))))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)
