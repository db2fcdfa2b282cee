"""A synthetic reference/target pair like the paper's Fig. 4, in 2D or 3D.

Reference: an ellipse (ellipsoid) with two disks (balls) of different intensities and a thin line
segment. Target: the same object with two local dents and a bulge on its outline, a thicker line,
a darkened disk and a smooth non-linear intensity variation; then a known rigid transform
(rotation in the (y, x) plane about the centre, and a translation). ``moving_prealigned`` is the
target before that rigid transform, i.e. the paper's Fig. 4b (target after registration with the
known rigid parameters), the input of the deformable step and the "original target" of the
mutual-information measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_medseg.errors import InvalidInputError

__all__ = ["SyntheticPair", "synthetic_pair"]


@dataclass(frozen=True)
class SyntheticPair:
    """Arrays of :func:`synthetic_pair` (all the same shape, float32 images, bool masks)."""

    fixed: np.ndarray
    fixed_mask: np.ndarray
    moving: np.ndarray
    moving_mask: np.ndarray
    moving_prealigned: np.ndarray
    moving_prealigned_mask: np.ndarray
    rotation_deg: float
    translation_vox: tuple[float, ...]


def _segment_distance(coords: list[np.ndarray], a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ab = b - a
    t = sum((c - ai) * d for c, ai, d in zip(coords, a, ab)) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt(sum((c - (ai + t * d)) ** 2 for c, ai, d in zip(coords, a, ab)))


def synthetic_pair(
    shape: Sequence[int] = (128, 128),
    *,
    rotation_deg: float = 4.0,
    translation_vox: Sequence[float] | None = None,
    line_halfwidth_vox: float = 1.0,
    deformation_scale: float = 1.0,
) -> SyntheticPair:
    """Generate the Fig. 4-like pair.

    Parameters
    ----------
    shape : tuple of int, default (128, 128)
        2D ``(y, x)`` or 3D ``(z, y, x)``; every axis at least 32 voxels.
    rotation_deg : float, default 4.0
        Rigid rotation of the target in the (y, x) plane, degrees.
    translation_vox : sequence of float, optional
        Rigid translation in voxels per axis (default 3% of the size along y and -2% along x).
    line_halfwidth_vox : float, default 1.0
        Half-width of the reference line; the target line is twice as thick.
    deformation_scale : float, default 1.0
        Multiplies the radii of the dents and of the bulge (larger local deformations).

    Returns
    -------
    SyntheticPair

    Raises
    ------
    InvalidInputError
        If ``shape`` is not 2D/3D with axes >= 32, or the translation has the wrong length.

    Examples
    --------
    >>> pair = synthetic_pair((64, 64))
    >>> pair.fixed.shape, pair.moving_mask.dtype.name
    ((64, 64), 'bool')
    """
    shape = tuple(int(n) for n in shape)
    if not (np.isfinite(deformation_scale) and 0 <= deformation_scale <= 2.5):
        raise InvalidInputError(f"deformation_scale={deformation_scale!r}: expected a value in [0, 2.5]")
    if len(shape) not in (2, 3) or min(shape) < 32:
        raise InvalidInputError(f"shape={shape!r}: expected 2 or 3 axes of at least 32 voxels")
    ndim = len(shape)
    if translation_vox is None:
        translation = [0.0] * ndim
        translation[-2] = 0.03 * shape[-2]
        translation[-1] = -0.02 * shape[-1]
    else:
        translation = [float(t) for t in translation_vox]
        if len(translation) != ndim:
            raise InvalidInputError(f"translation_vox={translation_vox!r}: expected {ndim} values")
    half = [n / 2.0 for n in shape]
    idx = np.indices(shape, dtype=np.float32)
    coords = [(idx[a] - (n - 1) / 2.0) / h for a, (n, h) in enumerate(zip(shape, half))]  # in [-1, 1]
    px = 1.0 / min(half)  # one voxel in normalised units (the smallest axis)

    def point(y: float, x: float) -> list[float]:
        return ([0.0] if ndim == 3 else []) + [y, x]

    semi = ([0.6] if ndim == 3 else []) + [0.55, 0.75]
    ellipse = sum((c / s) ** 2 for c, s in zip(coords, semi)) <= 1.0

    def ball(centre: Sequence[float], radius: float) -> np.ndarray:
        return sum((c - p) ** 2 for c, p in zip(coords, centre)) <= radius**2

    def boundary(angle_deg: float) -> list[float]:
        t = np.deg2rad(angle_deg)
        return point(semi[-2] * np.sin(t), semi[-1] * np.cos(t))

    disk_a = ball(point(-0.15, -0.35), 0.14)
    disk_b = ball(point(0.12, 0.32), 0.11)
    line_a, line_b = point(0.3, -0.35), point(0.3, 0.1)
    line_ref = _segment_distance(coords, line_a, line_b) <= line_halfwidth_vox * px
    line_tgt = _segment_distance(coords, line_a, line_b) <= 2.0 * line_halfwidth_vox * px

    fixed = np.zeros(shape, np.float32)
    fixed[ellipse] = 0.5
    fixed[disk_a] = 1.0
    fixed[disk_b] = 0.8
    fixed[line_ref] = 0.2

    target_obj = ellipse.copy()
    for angle, radius in ((35.0, 0.09), (250.0, 0.08)):  # dents
        target_obj &= ~ball(boundary(angle), radius * deformation_scale)
    bulge = ball(boundary(145.0), 0.11 * deformation_scale)
    target_obj |= bulge
    target = np.zeros(shape, np.float32)
    target[target_obj] = 0.5
    target[disk_a] = 1.0
    target[disk_b] = 0.35  # darkened disk
    target[line_tgt & target_obj] = 0.2
    # smooth non-linear intensity variation: multiplicative low-frequency field, then a gamma
    field = 1.0 + 0.25 * np.sin(np.pi * coords[-1] * 0.8 + 0.4) * np.cos(np.pi * coords[-2] * 0.6)
    target = np.where(target_obj, np.clip(target * field, 0, None) ** 0.7, 0.0).astype(np.float32)

    # known rigid transform: p' = R (p - c) + c + t  (rotation in the (y, x) plane)
    theta = np.deg2rad(rotation_deg)
    rot = np.eye(ndim)
    rot[-2:, -2:] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    centre = np.array([(n - 1) / 2.0 for n in shape])
    inv = rot.T
    offset = centre - inv @ (centre + np.asarray(translation))
    moving = ndimage.affine_transform(target, inv, offset=offset, order=1, mode="constant", cval=0.0)
    moving_mask = ndimage.affine_transform(target_obj.astype(np.float32), inv, offset=offset, order=1) >= 0.5
    return SyntheticPair(
        fixed=fixed,
        fixed_mask=ellipse,
        moving=moving.astype(np.float32),
        moving_mask=moving_mask,
        moving_prealigned=target,
        moving_prealigned_mask=target_obj,
        rotation_deg=float(rotation_deg),
        translation_vox=tuple(translation),
    )
