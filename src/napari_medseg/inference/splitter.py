"""The patch grid (MONAI's dense splitter), the Gaussian blending weights and the test-time flips."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

__all__ = ["SIGMA_SCALE", "patch_grid", "gaussian_importance_map", "flip_axes_sets"]

#: Gaussian blending: sigma = 0.125 x patch side, as MONAI and nnU-Net
SIGMA_SCALE = 0.125


def _axis_starts(size: int, patch: int, overlap: float) -> list[int]:
    if patch >= size:
        return [0]
    interval = max(int(patch * (1.0 - overlap)), 1)
    count = next(d for d in range(size) if d * interval + patch >= size) + 1
    return [min(d * interval, size - patch) for d in range(count)]


def patch_grid(image_shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Start indices of the patches covering ``image_shape`` (MONAI's dense patch grid).

    Parameters
    ----------
    image_shape, patch_size : sequence of int
        Same length; every image side must be >= the patch side (pad first).
    overlap : float in [0, 1)
        Fraction of a patch shared with its neighbour; the step is ``int(patch * (1 - overlap))``
        and the last patch is moved back to end at the border.

    Returns
    -------
    list of tuple of int
        In C order (last axis fastest), as MONAI enumerates them.

    Examples
    --------
    >>> patch_grid((160,), (96,), 0.25)
    [(0,), (64,)]
    """
    starts = [_axis_starts(int(s), int(p), float(overlap)) for s, p in zip(image_shape, patch_size)]
    return list(itertools.product(*starts))


def gaussian_importance_map(patch_size: Sequence[int], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """The Gaussian blending weights of one patch (sigma = 0.125 x side, minimum 1e-3).

    This is :func:`monai.data.utils.compute_importance_map` in ``"gaussian"`` mode, so blended
    outputs match MONAI's sliding window.
    """
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(int(p) for p in patch_size), mode="gaussian", sigma_scale=SIGMA_SCALE, device=device)


def flip_axes_sets(spatial_dims: int, enabled: bool) -> list[tuple[int, ...]]:
    """Tensor axes to flip for test-time augmentation: every subset of the spatial axes.

    For a ``(B, C, *spatial)`` tensor; ``[()]`` (no flip) when ``enabled`` is false.

    Examples
    --------
    >>> flip_axes_sets(2, True)
    [(), (2,), (3,), (2, 3)]
    """
    axes = list(range(2, 2 + spatial_dims))
    if not enabled:
        return [()]
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
