"""Per-label measures of a label map: voxel counts, volumes in mL, bounding boxes (numpy/scipy only).

The one place these are computed: post-processing crops each label to its box and reports volumes
before and after (CLI, napari, Slicer), evaluation crops each label pair to the union of their
boxes, ``medseg predict`` prints each label's voxel count. Arrays are in array axis order and
spacings in mm per array axis (``Volume.spacing_zyx``).

Bounding boxes: ``scipy.ndimage.find_objects`` returns one list entry per value from 1 to the
largest label, so it is called directly only while that largest value is at most
:data:`DIRECT_MAX_LABEL` (65 536 entries); above it the present values are renumbered 1..k
through ``np.unique`` and found in one pass. The two former copies switched at 2**16
(post-processing) and 2**20 (metrics, which then looped once over the whole array per label);
the lower threshold won: the result is the same, and a 2**20-entry list per call was the larger
cost with nothing gained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medseg._validate import check_spacing_mm
from napari_medseg.errors import InvalidInputError

__all__ = [
    "DIRECT_MAX_LABEL",
    "grow_box",
    "label_bounding_boxes",
    "label_volumes_ml",
    "label_voxel_counts",
    "voxel_volume_ml",
]

#: largest label value for which ``find_objects``/``bincount`` index by value directly
DIRECT_MAX_LABEL = 1 << 16

Box = tuple[slice, ...]


def _label_work(labels: Any, name: str) -> np.ndarray:
    """A non-negative integer view/copy of ``labels`` (bool as uint8), or a one-line error naming ``name``."""
    from napari_medseg.volume import as_label_array

    array = np.asarray(labels)
    if array.dtype == bool:
        return array.view(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and (array.size == 0 or array.min() >= 0):
        return array  # already what the counting needs: no copy of a large map
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InvalidInputError(f"{name}: label image has dtype {array.dtype}; expected integers")
    return as_label_array(array, name=name)  # raises for negatives, non-integers, NaN


def label_bounding_boxes(labels: np.ndarray) -> dict[int, Box]:
    """Bounding box (slices, stop exclusive) of every non-zero label value present.

    Parameters
    ----------
    labels : numpy.ndarray of non-negative integers (or bool), any number of axes

    Returns
    -------
    dict of int to tuple of slice
        Label value -> its box, in increasing label order; absent labels are not listed.

    Examples
    --------
    >>> label_bounding_boxes(np.array([[0, 2, 2], [0, 0, 2]]))
    {2: (slice(0, 2, None), slice(1, 3, None))}
    """
    work = _label_work(labels, "labels")
    if work.size == 0:
        return {}
    max_label = int(work.max())
    if max_label == 0:
        return {}
    if max_label <= DIRECT_MAX_LABEL:
        boxes = ndimage.find_objects(work if work.dtype != np.uint64 else work.astype(np.int64))
        return {i + 1: box for i, box in enumerate(boxes) if box is not None}
    values, inverse = np.unique(work, return_inverse=True)  # present values -> 1..k, one pass
    codes = inverse.reshape(work.shape).astype(np.int64) + 1
    return {int(v): box for v, box in zip(values, ndimage.find_objects(codes)) if v != 0 and box is not None}


def grow_box(box: Box, margin: int | Sequence[int], shape: Sequence[int]) -> Box:
    """``box`` grown by ``margin`` voxels on each side (one number or one per axis), clipped to ``shape``."""
    margins = [int(margin)] * len(shape) if np.isscalar(margin) else [int(m) for m in margin]
    return tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margins, shape))


def voxel_volume_ml(spacing_mm: Sequence[float]) -> float:
    """The volume of one voxel in mL (1 mL = 1000 mm^3); a 2D spacing is one slice 1 mm thick.

    Examples
    --------
    >>> voxel_volume_ml((2.0, 1.0, 0.5))
    0.001
    """
    return float(np.prod(check_spacing_mm(spacing_mm, None))) / 1000.0


def label_voxel_counts(labels: np.ndarray) -> dict[int, int]:
    """Number of voxels of each non-zero label present, in increasing label order.

    Raises
    ------
    InvalidInputError
        If ``labels`` does not hold non-negative integer labels.

    Examples
    --------
    >>> label_voxel_counts(np.array([[0, 3, 3], [1, 0, 3]]))
    {1: 1, 3: 3}
    """
    work = _label_work(labels, "labels")
    if work.size == 0:
        return {}
    if int(work.max()) <= DIRECT_MAX_LABEL:
        counts = np.bincount(work.ravel())
        return {int(v): int(c) for v, c in enumerate(counts) if v != 0 and c}
    values, counts = np.unique(work, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if v != 0}


def label_volumes_ml(labels: np.ndarray, *, spacing_mm: Sequence[float]) -> dict[int, float]:
    """Volume in millilitres (1 mL = 1000 mm^3) of each non-zero label present.

    Parameters
    ----------
    labels : numpy.ndarray
        Label array ``(z, y, x)`` (or ``(y, x)``) of non-negative integers.
    spacing_mm : sequence of float
        Voxel size in mm per array axis.

    Returns
    -------
    dict of int to float
        Label value -> volume in mL, in increasing label order; absent labels are not listed.

    Raises
    ------
    InvalidInputError
        If ``labels`` is not a valid label array or ``spacing_mm`` is invalid.

    Examples
    --------
    >>> label_volumes_ml(np.ones((10, 10, 10), dtype=np.uint8), spacing_mm=(2.0, 1.0, 0.5))
    {1: 1.0}
    """
    work = _label_work(labels, "labels")
    voxel_ml = float(np.prod(check_spacing_mm(spacing_mm, work.ndim))) / 1000.0
    return {value: count * voxel_ml for value, count in label_voxel_counts(work).items()}
