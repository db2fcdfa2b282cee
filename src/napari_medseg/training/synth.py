"""Synthetic training images from tissue probability maps, in the spirit of SynthSeg.

Given tissue probability maps (e.g. nilearn's MNI152 grey and white matter maps), each call makes
a new training case: the maps are deformed (random affine + smooth elastic field), every tissue
gets a random mean intensity and noise level, partial volume comes from the soft maps, and the
image is blurred, multiplied by a smooth bias field, degraded in resolution along a random axis
and given noise. The label map is the deformed maps' argmax (a tissue needs probability >= 0.5,
else background), the same rule as :func:`napari_medseg.sample_data.mni152_tissue_labels`.

Intensity prior: unlike SynthSeg's fully random contrasts, tissue means are drawn so that
``outside < CSF < grey matter < white matter`` (a T1-like ordering with wide random ranges).
That keeps the demo model trainable on two CPU cores in the time budget; the real T1 image is
never used, so evaluating on it is an honest test of transfer from synthetic data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_medseg.errors import InvalidInputError

__all__ = ["brain_region", "synthesize_case"]


def brain_region(gm: np.ndarray, wm: np.ndarray, *, threshold: float = 0.1, closing_voxels: int = 3) -> np.ndarray:
    """Where the brain (tissue plus enclosed CSF) is, derived from the tissue maps only.

    ``gm + wm >= threshold``, closed with a ball of ``closing_voxels`` and hole-filled, so the
    ventricles and sulci between tissue count as brain (CSF) and nothing comes from a T1 image.
    """
    tissue = (gm + wm) >= threshold
    ball = ndimage.generate_binary_structure(3, 1)
    closed = ndimage.binary_closing(tissue, structure=ball, iterations=closing_voxels, border_value=0)
    return ndimage.binary_fill_holes(closed | tissue)


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, *, control_points: int, amplitude: float) -> np.ndarray:
    coarse = rng.standard_normal([control_points] * len(shape)) * amplitude
    zoom = [n / control_points for n in shape]
    return ndimage.zoom(coarse, zoom, order=3, mode="nearest")[tuple(slice(0, n) for n in shape)]


def _deformation_coordinates(shape: tuple[int, int, int], rng: np.random.Generator, *, max_rotation_deg: float, scale_range: tuple[float, float], elastic_voxels: float) -> np.ndarray:
    centre = (np.array(shape) - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    cz, cy, cx = np.cos(angles)
    sz, sy, sx = np.sin(angles)
    rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    matrix = rz @ ry @ rx @ np.diag(1.0 / rng.uniform(*scale_range, 3))
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    coords = (matrix @ grid).reshape(3, *shape) + centre[:, None, None, None]
    for axis in range(3):
        coords[axis] += _smooth_field(shape, rng, control_points=5, amplitude=elastic_voxels)
    return coords.astype(np.float32)


def synthesize_case(
    gm: np.ndarray,
    wm: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 12.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    elastic_voxels: float = 3.0,
    skull_stripped_probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic (image, labels) pair on the maps' grid.

    Parameters
    ----------
    gm, wm : ndarray, float, shape (z, y, x)
        Grey and white matter probabilities in [0, 1].
    brain : ndarray, bool, shape (z, y, x)
        The brain region (:func:`brain_region`); brain voxels that are not tissue are CSF.
    rng : numpy.random.Generator
    max_rotation_deg : float, default 12
        Random rotation about each axis, uniform in [-max, max] degrees.
    scale_range : (float, float), default (0.9, 1.1)
        Random scale per axis.
    elastic_voxels : float, default 3
        Standard deviation (voxels) of the smooth elastic displacement at its control points.
    skull_stripped_probability : float, default 0.5
        Probability that everything outside the (deformed) brain region is set to exactly 0, as
        in skull-stripped images; otherwise the outside has a low random intensity and noise.

    Returns
    -------
    image : ndarray, float32, shape (z, y, x)
        Intensities roughly in [0, 255].
    labels : ndarray, uint8
        0 background, 1 grey matter, 2 white matter.

    Raises
    ------
    InvalidInputError
        If the maps do not share one 3D shape.
    """
    if gm.shape != wm.shape or gm.shape != brain.shape or gm.ndim != 3:
        raise InvalidInputError(f"gm {gm.shape}, wm {wm.shape} and brain {brain.shape} must be one 3D shape")
    coords = _deformation_coordinates(gm.shape, rng, max_rotation_deg=max_rotation_deg, scale_range=scale_range, elastic_voxels=elastic_voxels)
    p_gm = ndimage.map_coordinates(gm.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    p_wm = ndimage.map_coordinates(wm.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    p_brain = ndimage.map_coordinates(brain.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    p_csf = np.clip(p_brain - p_gm - p_wm, 0.0, 1.0)
    p_out = np.clip(1.0 - p_gm - p_wm - p_csf, 0.0, 1.0)

    # T1-like ordering with wide random ranges (see the module docstring)
    mu_out = rng.uniform(0.0, 15.0)
    mu_csf = rng.uniform(20.0, 90.0)
    mu_gm = rng.uniform(max(mu_csf + 25.0, 100.0), 175.0)
    mu_wm = rng.uniform(mu_gm + 25.0, mu_gm + 90.0)
    image = np.zeros(gm.shape, np.float32)
    for p, mu in ((p_out, mu_out), (p_csf, mu_csf), (p_gm, mu_gm), (p_wm, mu_wm)):
        sigma = rng.uniform(1.0, 12.0)
        image += p * (mu + sigma * rng.standard_normal(gm.shape, dtype=np.float32))

    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.0, 1.0, 3))
    if rng.random() < 0.3:  # thick slices along one axis, then back to the grid
        axis, factor = int(rng.integers(3)), rng.uniform(1.5, 3.0)
        zoom = [1.0, 1.0, 1.0]
        zoom[axis] = 1.0 / factor
        small = ndimage.zoom(image, zoom, order=1)
        image = ndimage.zoom(small, [n / m for n, m in zip(gm.shape, small.shape)], order=1)[: gm.shape[0], : gm.shape[1], : gm.shape[2]]
        image = np.pad(image, [(0, n - m) for n, m in zip(gm.shape, image.shape)], mode="edge")
    bias = np.exp(_smooth_field(gm.shape, rng, control_points=4, amplitude=rng.uniform(0.0, 0.25))).astype(np.float32)
    image = image * bias
    gamma = float(np.exp(rng.normal(0.0, 0.2)))
    top = float(np.percentile(image, 99.9)) or 1.0
    image = np.clip(image / top, 0.0, None) ** gamma * top
    image = image + rng.uniform(0.0, 4.0) * rng.standard_normal(gm.shape, dtype=np.float32)
    image = np.clip(image, 0.0, None).astype(np.float32)
    if rng.random() < skull_stripped_probability:
        # skull-stripped images (like the MNI152 template) are exactly 0 outside the brain
        image[p_brain < 0.5] = 0.0

    tissue = np.stack([p_gm, p_wm])
    labels = (np.argmax(tissue, axis=0) + 1).astype(np.uint8)
    labels[tissue.max(axis=0) < 0.5] = 0
    return image, labels
