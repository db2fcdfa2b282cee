"""Shared fixtures: small generated volumes with oblique, anisotropic geometry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_medseg.volume import Geometry, Volume


def oblique_geometry(angle_rad: float = 0.3, spacing=(0.7, 0.9, 2.5), origin=(10.5, -20.25, 33.125)) -> Geometry:
    """A geometry rotated about two axes with anisotropic spacing (SimpleITK x, y, z order)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return Geometry(spacing, origin, tuple((rz @ rx).ravel()))


def ellipsoid_mask(shape, centre_zyx, radii_mm, spacing_zyx) -> np.ndarray:
    """Boolean ellipsoid with radii in mm on an anisotropic grid."""
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre_zyx, spacing_zyx)], indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grids, radii_mm)) <= 1.0


@pytest.fixture
def oblique_volume() -> Volume:
    rng = np.random.default_rng(42)
    return Volume(rng.normal(100, 20, size=(6, 20, 24)).astype(np.float32), oblique_geometry())


@pytest.fixture
def one_torch_thread():
    """The CI machine is shared; one torch thread avoids OpenMP oversubscription stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_cli():
    """Run ``medseg`` in a subprocess (the real console entry point) and return the CompletedProcess."""

    def _run(*args, check_rc: int | None = 0, **kwargs):
        proc = subprocess.run(
            [sys.executable, "-m", "napari_medseg.cli", *map(str, args)],
            capture_output=True,
            text=True,
            encoding="utf-8",  # the CLI prints box-drawing characters; never depend on the locale
            **kwargs,
        )
        if check_rc is not None:
            assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
        return proc

    return _run


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory):
    """A real nnU-Net v2 result folder built with nnunetv2 itself (tests/_nnunet_factory.py), once per session."""
    pytest.importorskip("nnunetv2")
    from _nnunet_factory import build_in_subprocess

    return build_in_subprocess(tmp_path_factory.mktemp("nnunet"))
