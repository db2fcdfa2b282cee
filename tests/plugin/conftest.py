"""Fixtures of the napari plugin tests: an isolated registry, jobs folder and settings, a tiny model
with random weights written by the test itself, and small anisotropic volumes (nothing downloads).

The viewer comes from napari's own pytest plugin (``make_napari_viewer``); pytest-xvfb gives it a
display.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from _models import make_model, tissue_card
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


@pytest.fixture
def tiny_model(medseg_env):
    """A registry model ``tiny-seg`` in the test's registry (spacing 1 x 1 x 2 mm, labels 0, 1, 2)."""
    return make_model(medseg_env.models, card=tissue_card())


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
