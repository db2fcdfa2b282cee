"""Post-processing of label maps in millimetres: morphology and connected components, per label.

Array functions take a label array (``(z, y, x)``, or ``(y, x)`` for a single 2D image) and its
voxel spacing ``spacing_mm`` in the same axis order (:attr:`Geometry.spacing_zyx`); radii and sizes
are physical (``radius_mm``, ``min_size_mm3``), so the same chain gives the same physical result on
a 0.5 mm and on a 2.5 mm grid. The structuring element of radius ``r`` mm is the ball of radius
``r`` in physical space, i.e. an ellipsoid in voxels on an anisotropic grid (see
:func:`ellipsoid_footprint`). Small elements use :mod:`scipy.ndimage` binary morphology with that
footprint; larger ones the exact Euclidean distance transform
(:func:`skimage.morphology.isotropic_dilation` and friends, with ``spacing``), which gives the
identical result at a cost that does not grow with the radius. Each label is processed inside its
bounding box (grown by the radius), so many small labels in a large volume stay cheap.

The per-label rule
------------------
Every operation works on each selected label separately: label ``l``'s binary mask
``labels == l`` is transformed and the result recombined into a copy of the input so that labels
never leak into each other:

* a voxel that leaves label ``l``'s mask becomes background (0);
* a voxel can join label ``l`` only if it was background at the start of the step: voxels of
  other labels (selected or not) never change, so a dilation of label 1 does not overwrite label
  2, and a closing or hole filling of label 1 does not create label 1 voxels inside label 2;
* a background voxel claimed by several labels in the same step goes to the label whose own voxels
  are nearest in millimetres; exact ties go to the smaller label value.

Because every label sees the other labels as background, a hole of label 1 partly filled by label
2 keeps its label 2 voxels and only its background voxels are filled.

Edges of the array (as in ITK): for erosion, and the erosion inside an opening, voxels outside
the array count as foreground, so a structure cut by the edge of the field of view does not shrink
from the edge; dilation and closing treat the outside as background (closing pads the array, like
ITK's ``SafeBorder``), so a closing only bridges gaps between voxels of the label, never between a
label and the edge. Closing only adds voxels and opening only removes them.

Axes of length 1 are dropped before processing: a single 2D image stored as a ``(1, y, x)``
volume is processed as a 2D image (its holes are holes, a closing is a 2D closing, connectivity 3
means 8-connected in the plane). A component's volume still uses the full voxel volume.

Chains
------
A :class:`PostprocessChain` is an ordered list of steps described by plain JSON-able data, shared
by the CLI (``medseg postprocess --chain chain.json``), the napari widget and the Slicer module::

    [{"op": "opening", "radius_mm": 1.0, "labels": [1]},
     {"op": "fill_holes"},
     {"op": "remove_small", "min_size_mm3": 50},
     {"op": "keep_largest", "n": 1}]

Each step names an ``op`` (see :class:`PostprocessOp`), its parameters and optionally the
``labels`` it applies to (default: every non-zero label present). For example, the lung tumour
pipeline of Gil et al. (MIUA 2023, 0.1 mm pixels) is ``remove_small`` 50 mm^3 (5000 px of 0.01
mm^2 on a 1 mm thick slice), ``closing`` 2 mm (20 px), ``fill_holes``, ``keep_largest``; for
multi-instance lesions such as white matter hyperintensities (Phitidis et al., MIUA 2023) leave
``keep_largest`` out.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import ndimage as ndi

from napari_medseg._atomic import write_text_atomic
from napari_medseg._options import look_up_option
from napari_medseg.label_measures import grow_box, label_bounding_boxes
from napari_medseg.label_measures import label_volumes_ml, label_voxel_counts  # public here too (old home)
from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.progress import (
    CancelEvent,
    ProgressCallback,
    check_cancelled,
    report,
)
from napari_medseg.volume import as_label_array

if TYPE_CHECKING:
    from napari_medseg.volume import Volume

__all__ = [
    "PostprocessOp",
    "PostprocessChain",
    "ellipsoid_footprint",
    "erosion",
    "dilation",
    "opening",
    "closing",
    "fill_holes",
    "remove_small_components",
    "keep_largest_components",
    "label_voxel_counts",
    "label_volumes_ml",
    "chain_from_options",
    "apply_chain",
    "postprocess",
    "preview_margin_vox",
    "preview_slice",
]

#: Offsets at a distance <= radius * (1 + _REL_TOL) belong to a structuring element, and a component
#: whose volume is >= min_size * (1 - _REL_TOL) is kept: exact ties survive float rounding.
_REL_TOL = 1e-9


class PostprocessOp(StrEnum):
    """The operations a post-processing chain step can name (its ``"op"`` field)."""

    OPENING = "opening"
    CLOSING = "closing"
    EROSION = "erosion"
    DILATION = "dilation"
    FILL_HOLES = "fill_holes"
    REMOVE_SMALL = "remove_small"
    KEEP_LARGEST = "keep_largest"


# --------------------------------------------------------------------------------------- validation
def _check_labels_array(mask: Any, name: str = "mask") -> tuple[np.ndarray, np.dtype]:
    """Return ``(work, out_dtype)``: a non-negative integer view/copy of ``mask`` and the dtype to return."""
    array = np.asarray(mask)
    if array.ndim not in (2, 3):
        raise InvalidInputError(
            f"{name}: expected a (z, y, x) label array (or (y, x) for one 2D image); got shape {array.shape}"
        )
    if array.dtype == bool:
        return array.view(np.uint8), np.dtype(bool)
    checked = as_label_array(array, name=name)  # raises for float non-integers, negatives, NaN
    if np.issubdtype(array.dtype, np.integer):
        return array, array.dtype  # values checked >= 0; returned in the caller's dtype
    return checked, checked.dtype


def _check_spacing(spacing_mm: Any, ndim: int | None) -> tuple[float, ...]:
    """Validate a spacing; ``ndim`` None accepts 1 to 3 values (the one check, in ``_validate``)."""
    from napari_medseg._validate import check_spacing_mm

    return check_spacing_mm(spacing_mm, ndim)


def _check_nonnegative(value: Any, name: str, what: str) -> float:
    """``value`` as a finite float >= 0, or an error naming ``name`` and ``what`` was expected."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}={value!r}: expected a {what} >= 0") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise InvalidInputError(f"{name}={value!r}: expected a finite {what} >= 0")
    return number


def _check_radius(radius_mm: Any) -> float:
    return _check_nonnegative(radius_mm, "radius_mm", "number of millimetres")


def _check_selection(labels: Any) -> frozenset[int] | None:
    if labels is None:
        return None
    if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):
        labels = [labels]
    try:
        items = list(labels)
    except TypeError:
        raise InvalidInputError(f"labels={labels!r}: expected a list of label values >= 1 or None") from None
    if not items or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in items):
        raise InvalidInputError(f"labels={labels!r}: expected a non-empty list of integer label values >= 1 (or None for all)")
    return frozenset(int(v) for v in items)


def _check_connectivity(connectivity: Any, ndim: int) -> None:
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)) or not 1 <= connectivity <= ndim:
        raise InvalidInputError(
            f"connectivity={connectivity!r}: expected an integer from 1 (voxels sharing a face) to {ndim} "
            "(sharing a corner)"
        )


def _inclusive(radius_mm: float) -> float:
    return radius_mm * (1.0 + _REL_TOL)


# ------------------------------------------------------------------------------ structuring element
def ellipsoid_footprint(radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    """The ball of radius ``radius_mm`` in physical space, sampled on a voxel grid.

    Parameters
    ----------
    radius_mm : float
        Radius in millimetres, >= 0. Offsets at a distance <= ``radius_mm`` (to 1e-9 relative, so
        exact ties are included) belong to the element.
    spacing_mm : sequence of float
        Voxel size in mm per array axis (``(z, y, x)`` for 3D), each > 0.

    Returns
    -------
    numpy.ndarray of bool
        Shape ``2 * floor(radius_mm / spacing_mm[i]) + 1`` per axis, centred: an ellipsoid in
        voxels when the spacing is anisotropic. A radius smaller than every spacing gives the
        single centre voxel.

    Raises
    ------
    InvalidInputError
        If ``radius_mm`` is negative or not finite, or a spacing is not a finite number > 0.

    Examples
    --------
    >>> ellipsoid_footprint(2.2, (2.5, 0.9, 0.7)).astype(int)[0]
    array([[0, 0, 1, 1, 1, 0, 0],
           [0, 1, 1, 1, 1, 1, 0],
           [1, 1, 1, 1, 1, 1, 1],
           [0, 1, 1, 1, 1, 1, 0],
           [0, 0, 1, 1, 1, 0, 0]])
    """
    radius = _check_radius(radius_mm)
    spacing = _check_spacing(spacing_mm, None)
    limit = _inclusive(radius)
    half = [int(math.floor(limit / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij", sparse=True)
    return np.sqrt(sum(g * g for g in grids)) <= limit


# ----------------------------------------------------------------------------------- per-label core
def _label_boxes(work: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every non-zero label value present (the one box function, in label_measures)."""
    return label_bounding_boxes(work)


_grow = grow_box


MaskOp = Callable[[np.ndarray], np.ndarray]


def _apply_per_label(
    work: np.ndarray,
    op: MaskOp,
    *,
    selection: frozenset[int] | None,
    margin: Sequence[int],
    spacing: Sequence[float],
    reach: Sequence[int] | None = None,
    cancel: CancelEvent | None = None,
    what: str = "post-processing",
) -> np.ndarray:
    """Apply ``op`` to each selected label's binary mask and recombine by the per-label rule.

    ``op`` receives the label's mask cropped to its bounding box grown by ``margin`` voxels (the
    caller's guarantee that the result inside the crop equals the full-array result) and returns
    the new mask of the same shape. ``reach``, when given, promises that every voxel ``op`` adds
    lies within that many voxels (per axis) of a voxel of the label: the distances that settle
    contested voxels are then computed in a small box around them instead of the whole crop.
    """
    out = work.copy()
    boxes = _label_boxes(work)
    claims: list[tuple[int, tuple[slice, ...], np.ndarray]] = []
    for value in sorted(boxes):
        if selection is not None and value not in selection:
            continue
        check_cancelled(cancel, what)
        crop = _grow(boxes[value], margin, work.shape)
        sub = work[crop]
        mask = sub == value
        new = op(mask)
        out[crop][mask & ~new] = 0
        added = new & ~mask & (sub == 0)
        if added.any():
            claims.append((value, crop, added))
    if not claims:
        return out
    count = np.zeros(work.shape, dtype=np.uint16 if len(claims) < 65535 else np.uint32)
    for _, crop, added in claims:
        count[crop] += added
    contested = count > 1
    for value, crop, added in claims:
        out[crop][added & ~contested[crop]] = value
    if contested.any():
        # contested background voxels go to the nearest label (mm); ties to the smaller label
        best = np.full(work.shape, np.inf)
        for value, crop, added in claims:
            mine = added & contested[crop]
            if not mine.any():
                continue
            check_cancelled(cancel, what)
            if reach is None:
                box, mine_box = crop, mine
            else:
                inner = ndi.find_objects(mine.view(np.uint8))[0]
                local = tuple(slice(c.start + i.start, c.start + i.stop) for c, i in zip(crop, inner))
                box = _grow(local, reach, work.shape)
                mine_box = np.zeros(tuple(b.stop - b.start for b in box), dtype=bool)
                mine_box[tuple(slice(l.start - b.start, l.stop - b.start) for l, b in zip(local, box))] = mine[inner]
            distance = ndi.distance_transform_edt(work[box] != value, sampling=spacing)
            best_box, out_box = best[box], out[box]
            better = mine_box & (distance < best_box)
            best_box[better] = distance[better]
            out_box[better] = value
    return out


def _finish(out: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    return out.astype(out_dtype, copy=out.dtype != out_dtype) if out_dtype != bool else out.astype(bool)


# ----------------------------------------------------------------------------------- mask operators
# Measured on a 128^3 ball of radius 40 voxels, 1 mm grid (2 shared CPU cores, noisy, best of 2):
# footprint dilation (scipy.ndimage.binary_dilation) 0.10 s at 33 footprint voxels, 0.32 s at 123,
# 0.91 s at 257, 4.7 s at 2109; the distance transform takes 0.3-0.45 s whatever the radius.
# Footprint erosion is cheaper (0.03-0.10 s up to 257 voxels). Both give identical results (a test
# checks it), so small footprints use scipy's binary morphology and larger ones the EDT.
_FOOTPRINT_MAX_VOXELS = 125


def _dilate_mask(mask: np.ndarray, radius: float, spacing: Sequence[float]) -> np.ndarray:
    from skimage.morphology import isotropic_dilation

    if radius == 0 or not mask.any():  # the distance transform of an all-true array is undefined
        return mask.copy()
    footprint = ellipsoid_footprint(radius, spacing)
    if footprint.sum() <= _FOOTPRINT_MAX_VOXELS:
        return ndi.binary_dilation(mask, footprint)
    return isotropic_dilation(mask, _inclusive(radius), spacing=spacing)


def _erode_mask(mask: np.ndarray, radius: float, spacing: Sequence[float]) -> np.ndarray:
    from skimage.morphology import isotropic_erosion

    if radius == 0 or mask.all():  # outside the array counts as foreground: nothing to erode from
        return mask.copy()
    footprint = ellipsoid_footprint(radius, spacing)
    if footprint.sum() <= _FOOTPRINT_MAX_VOXELS:
        return ndi.binary_erosion(mask, footprint, border_value=1)
    return isotropic_erosion(mask, _inclusive(radius), spacing=spacing)


def _distance_margin(radius: float, spacing: Sequence[float]) -> list[int]:
    # the result never reaches further than floor(r / s) voxels from the label's box along each axis;
    # one more voxel of background makes the cropped distance transforms equal the full-array ones
    return [int(math.floor(_inclusive(radius) / s)) + 1 for s in spacing]


def _close_mask(mask: np.ndarray, radius: float, spacing: Sequence[float]) -> np.ndarray:
    if radius == 0 or not mask.any():
        return mask.copy()
    # surround with background first (as ITK's SafeBorder does), so the closing only bridges gaps
    # between voxels of the label, never between the label and the edge of the array
    pad = _distance_margin(radius, spacing)
    padded = np.pad(mask, [(p, p) for p in pad])
    closed = _erode_mask(_dilate_mask(padded, radius, spacing), radius, spacing)
    return closed[tuple(slice(p, p + n) for p, n in zip(pad, mask.shape))]


def _reduced(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...], list[int]]:
    """Drop axes of length 1: ``(shape, spacing, kept_axes)`` of the array as processed."""
    kept = [i for i, n in enumerate(shape) if n > 1] or [len(shape) - 1]
    return tuple(shape[i] for i in kept), tuple(spacing[i] for i in kept), kept


def _morphology(
    work: np.ndarray,
    kind: PostprocessOp,
    radius: float,
    spacing: Sequence[float],
    selection: frozenset[int] | None,
    cancel: CancelEvent | None = None,
) -> np.ndarray:
    shape, spacing, _ = _reduced(work.shape, spacing)

    def op(mask: np.ndarray) -> np.ndarray:
        if kind == PostprocessOp.EROSION:
            return _erode_mask(mask, radius, spacing)
        if kind == PostprocessOp.DILATION:
            return _dilate_mask(mask, radius, spacing)
        if kind == PostprocessOp.OPENING:
            return _dilate_mask(_erode_mask(mask, radius, spacing), radius, spacing)
        return _close_mask(mask, radius, spacing)

    margin = _distance_margin(radius, spacing)
    out = _apply_per_label(
        work.reshape(shape), op, selection=selection, margin=margin, spacing=spacing, reach=margin, cancel=cancel,
        what=str(kind),
    )
    return out.reshape(work.shape)


def _fill_holes(
    work: np.ndarray,
    slice_wise: bool,
    axis: int,
    spacing: Sequence[float],
    selection: frozenset[int] | None,
    cancel: CancelEvent | None = None,
) -> np.ndarray:
    shape, spacing, kept = _reduced(work.shape, spacing)
    structure = ndi.generate_binary_structure(len(shape), 1)
    if slice_wise and axis in kept and len(shape) > 1:
        # no neighbours along `axis`: each slice is filled on its own, as a 2D image
        index = [1] * len(shape)
        for end in (0, 2):
            index[kept.index(axis)] = end
            structure[tuple(index)] = False

    def op(mask: np.ndarray) -> np.ndarray:
        return ndi.binary_fill_holes(mask, structure=structure)

    out = _apply_per_label(
        work.reshape(shape), op, selection=selection, margin=[1] * len(shape), spacing=spacing, cancel=cancel,
        what="fill holes",
    )
    return out.reshape(work.shape)


def _components_op(
    work: np.ndarray,
    spacing: Sequence[float],
    connectivity: int,
    selection: frozenset[int] | None,
    *,
    min_size_mm3: float | None = None,
    keep_n: int | None = None,
    cancel: CancelEvent | None = None,
) -> np.ndarray:
    min_voxels = None if min_size_mm3 is None else min_size_mm3 * (1.0 - _REL_TOL) / float(np.prod(spacing))
    shape, spacing, _ = _reduced(work.shape, spacing)
    # connectivity 3 of a single slice is connectivity 2 of the 2D image
    structure = ndi.generate_binary_structure(len(shape), min(connectivity, len(shape)))

    def op(mask: np.ndarray) -> np.ndarray:
        components, n = ndi.label(mask, structure=structure)
        if n == 0:
            return mask.copy()
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        keep = np.zeros(n + 1, dtype=bool)
        if min_voxels is not None:
            keep[1:] = sizes[1:] >= min_voxels
        else:
            # largest first; equal sizes keep the component met first in raster order
            order = np.argsort(-sizes[1:], kind="stable")[:keep_n] + 1
            keep[order] = True
        return keep[components]

    what = "remove small components" if min_voxels is not None else "keep largest components"
    out = _apply_per_label(
        work.reshape(shape), op, selection=selection, margin=[0] * len(shape), spacing=spacing, cancel=cancel, what=what
    )
    return out.reshape(work.shape)


# ------------------------------------------------------------------------------- public array API
_MORPHOLOGY_DOC = """

    Parameters
    ----------
    mask : numpy.ndarray
        Label array ``(z, y, x)`` (or ``(y, x)``) of non-negative integers, or a boolean mask.
        Not modified.
    radius_mm : float
        Radius of the structuring element in millimetres, >= 0 (0 changes nothing): the ball of
        that radius in physical space, see :func:`ellipsoid_footprint`.
    spacing_mm : sequence of float
        Voxel size in mm per array axis, e.g. :attr:`Volume.spacing_zyx`.
    labels : sequence of int, optional
        The label values to process (each >= 1); default every non-zero label present. Other
        labels are left unchanged.

    Returns
    -------
    numpy.ndarray
        A new array of the same shape and dtype (float arrays holding integer labels come back
        as the smallest unsigned integer dtype). Labels are recombined by the per-label rule of
        this module: they never leak into each other.

    Raises
    ------
    InvalidInputError
        If ``mask`` is not 2D/3D or holds non-integer, negative or non-finite values, if
        ``radius_mm`` is negative or not finite, if ``spacing_mm`` does not give one value > 0
        per axis, or if ``labels`` holds a value < 1.
"""


def _morphology_entry(mask, kind, radius_mm, spacing_mm, labels) -> np.ndarray:
    work, out_dtype = _check_labels_array(mask)
    spacing = _check_spacing(spacing_mm, work.ndim)
    radius = _check_radius(radius_mm)
    selection = _check_selection(labels)
    return _finish(_morphology(work, kind, radius, spacing, selection), out_dtype)


def erosion(
    mask: np.ndarray, *, radius_mm: float, spacing_mm: Sequence[float], labels: Sequence[int] | None = None
) -> np.ndarray:
    """Erode each label by a ball of ``radius_mm``; removed voxels become background.

    Voxels outside the array count as foreground, so a label touching the edge of the array does
    not shrink from the edge.
    """
    return _morphology_entry(mask, PostprocessOp.EROSION, radius_mm, spacing_mm, labels)


def dilation(
    mask: np.ndarray, *, radius_mm: float, spacing_mm: Sequence[float], labels: Sequence[int] | None = None
) -> np.ndarray:
    """Dilate each label by a ball of ``radius_mm`` into background voxels only.

    A background voxel reached by several labels goes to the nearest one (mm); ties go to the
    smaller label value.
    """
    return _morphology_entry(mask, PostprocessOp.DILATION, radius_mm, spacing_mm, labels)


def opening(
    mask: np.ndarray, *, radius_mm: float, spacing_mm: Sequence[float], labels: Sequence[int] | None = None
) -> np.ndarray:
    """Open each label (erosion then dilation by a ball of ``radius_mm``): removes parts thinner than the ball.

    Opening only removes voxels; they become background.
    """
    return _morphology_entry(mask, PostprocessOp.OPENING, radius_mm, spacing_mm, labels)


def closing(
    mask: np.ndarray, *, radius_mm: float, spacing_mm: Sequence[float], labels: Sequence[int] | None = None
) -> np.ndarray:
    """Close each label (dilation then erosion by a ball of ``radius_mm``): bridges gaps narrower than the ball.

    Closing only adds voxels, and only background ones: it never creates a label inside another
    label's voxels. The array is treated as surrounded by background, so a label is never joined
    to the edge of the array.
    """
    return _morphology_entry(mask, PostprocessOp.CLOSING, radius_mm, spacing_mm, labels)


for _function in (erosion, dilation, opening, closing):
    _function.__doc__ = (_function.__doc__ or "").rstrip() + "\n" + _MORPHOLOGY_DOC
del _function


def fill_holes(
    mask: np.ndarray,
    *,
    slice_wise: bool = False,
    axis: int = 0,
    labels: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
) -> np.ndarray:
    """Fill the holes of each label: background regions it encloses.

    A hole is a region of the label's complement (face-connected) that does not reach the edge of
    the array. Only the hole's background voxels are filled; voxels of other labels inside it stay.

    Parameters
    ----------
    mask : numpy.ndarray
        Label array ``(z, y, x)`` (or ``(y, x)``) of non-negative integers, or a boolean mask.
        Not modified.
    slice_wise : bool, default False
        False: fill holes enclosed in 3D. True: fill each slice along ``axis`` as a 2D image, which
        also fills cavities open at their ends along ``axis`` (e.g. a tube's lumen). Slice-wise
        filling needs a 3D array.
    axis : int, default 0
        The axis slices are taken along when ``slice_wise`` (0 is z, the usual acquisition axis).
    labels : sequence of int, optional
        The label values to process (each >= 1); default every non-zero label present.
    spacing_mm : sequence of float, optional
        Voxel size in mm per array axis; only used to give a background region enclosed by
        several labels (a ring inside a ring) to the nearest of them. Default 1 mm per axis.

    Returns
    -------
    numpy.ndarray
        A new array, same shape and dtype.

    Raises
    ------
    InvalidInputError
        If ``mask`` is not a valid 2D/3D label array, ``slice_wise`` is asked for a 2D array,
        ``axis`` is not an axis of ``mask``, ``labels`` holds a value < 1 or ``spacing_mm`` is
        invalid.

    Examples
    --------
    >>> ring = np.zeros((1, 5, 5), dtype=np.uint8)
    >>> ring[0, 1:4, 1:4] = 2
    >>> ring[0, 2, 2] = 0
    >>> int(fill_holes(ring)[0, 2, 2])
    2
    """
    work, out_dtype = _check_labels_array(mask)
    if not isinstance(slice_wise, (bool, np.bool_)):
        raise InvalidInputError(f"slice_wise={slice_wise!r}: expected True or False")
    if slice_wise and work.ndim != 3:
        raise InvalidInputError(f"slice_wise=True needs a 3D (z, y, x) array; got shape {work.shape}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis < work.ndim:
        raise InvalidInputError(f"axis={axis!r}: expected an array axis from 0 to {work.ndim - 1}")
    selection = _check_selection(labels)
    spacing = (1.0,) * work.ndim if spacing_mm is None else _check_spacing(spacing_mm, work.ndim)
    return _finish(_fill_holes(work, bool(slice_wise), int(axis), spacing, selection), out_dtype)


def _check_min_size(min_size_mm3: Any) -> float:
    return _check_nonnegative(min_size_mm3, "min_size_mm3", "volume in mm^3")


def remove_small_components(
    mask: np.ndarray,
    *,
    min_size_mm3: float,
    spacing_mm: Sequence[float],
    connectivity: int = 1,
    labels: Sequence[int] | None = None,
) -> np.ndarray:
    """Remove the connected components of each label whose physical volume is below ``min_size_mm3``.

    Parameters
    ----------
    mask : numpy.ndarray
        Label array ``(z, y, x)`` (or ``(y, x)``) of non-negative integers, or a boolean mask.
        Not modified.
    min_size_mm3 : float
        Components with a volume (voxels x voxel volume) smaller than this, in mm^3, become
        background; a component of exactly this volume is kept. 0 keeps everything.
    spacing_mm : sequence of float
        Voxel size in mm per array axis.
    connectivity : int, default 1
        Which voxels are neighbours: 1 sharing a face (6 in 3D), 2 also an edge (18), 3 also a
        corner (26). Faces are the default because on thick-slice data diagonal neighbours are far
        apart.
    labels : sequence of int, optional
        The label values to process (each >= 1); default every non-zero label present.

    Returns
    -------
    numpy.ndarray
        A new array, same shape and dtype.

    Raises
    ------
    InvalidInputError
        If ``mask`` is not a valid 2D/3D label array, ``min_size_mm3`` is negative or not finite,
        ``spacing_mm`` is invalid, ``connectivity`` is not 1..ndim, or ``labels`` holds a value < 1.

    Examples
    --------
    >>> m = np.zeros((1, 1, 8), dtype=np.uint8)
    >>> m[0, 0, :3] = 1; m[0, 0, 5] = 1  # 3 voxels and 1 voxel of 2 mm^3 each
    >>> remove_small_components(m, min_size_mm3=4.0, spacing_mm=(1.0, 1.0, 2.0))[0, 0].tolist()
    [1, 1, 1, 0, 0, 0, 0, 0]
    """
    work, out_dtype = _check_labels_array(mask)
    spacing = _check_spacing(spacing_mm, work.ndim)
    min_size = _check_min_size(min_size_mm3)
    _check_connectivity(connectivity, work.ndim)
    selection = _check_selection(labels)
    out = _components_op(work, spacing, int(connectivity), selection, min_size_mm3=min_size)
    return _finish(out, out_dtype)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidInputError(f"n={n!r}: expected the number of components to keep, an integer >= 1")
    return int(n)


def keep_largest_components(
    mask: np.ndarray, *, n: int = 1, connectivity: int = 1, labels: Sequence[int] | None = None
) -> np.ndarray:
    """Keep only the ``n`` largest connected components of each label; the rest become background.

    Parameters
    ----------
    mask : numpy.ndarray
        Label array ``(z, y, x)`` (or ``(y, x)``) of non-negative integers, or a boolean mask.
        Not modified.
    n : int, default 1
        How many components to keep per label (all of them if the label has fewer). Components
        of equal size are ranked by the first voxel met in raster (C) order.
    connectivity : int, default 1
        1 faces, 2 edges, 3 corners, as in :func:`remove_small_components`.
    labels : sequence of int, optional
        The label values to process (each >= 1); default every non-zero label present. Leave out
        labels that may have several true instances (e.g. lesions).

    Returns
    -------
    numpy.ndarray
        A new array, same shape and dtype.

    Raises
    ------
    InvalidInputError
        If ``mask`` is not a valid 2D/3D label array, ``n`` < 1, ``connectivity`` is not 1..ndim,
        or ``labels`` holds a value < 1.
    """
    work, out_dtype = _check_labels_array(mask)
    keep_n = _check_n(n)
    _check_connectivity(connectivity, work.ndim)
    selection = _check_selection(labels)
    return _finish(_components_op(work, (1.0,) * work.ndim, int(connectivity), selection, keep_n=keep_n), out_dtype)


# ---------------------------------------------------------------------------------------- chain
_Radius = Annotated[float, Field(ge=0, allow_inf_nan=False, description="radius of the ball in mm")]
_Labels = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] | None
_Connectivity = Annotated[int, Field(ge=1, le=3)]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    labels: _Labels = None

    def _selection(self) -> frozenset[int] | None:
        return None if self.labels is None else frozenset(self.labels)

    def run(self, work: np.ndarray, spacing: Sequence[float], cancel: CancelEvent | None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        """A short human-readable form, e.g. ``"closing radius_mm=2 (labels 1)"``."""
        params = self.model_dump(exclude={"op", "labels"})
        text = str(self.op).replace("_", " ")  # type: ignore[attr-defined]
        if params:
            text += " " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        if self.labels is not None:
            text += f" (labels {','.join(map(str, self.labels))})"
        return text


class _MorphologyStep(_Step):
    radius_mm: _Radius

    def run(self, work, spacing, cancel):
        return _morphology(work, PostprocessOp(self.op), self.radius_mm, spacing, self._selection(), cancel)  # type: ignore[attr-defined]


class OpeningStep(_MorphologyStep):
    """``{"op": "opening", "radius_mm": r}``: see :func:`opening`."""

    op: Literal["opening"] = "opening"


class ClosingStep(_MorphologyStep):
    """``{"op": "closing", "radius_mm": r}``: see :func:`closing`."""

    op: Literal["closing"] = "closing"


class ErosionStep(_MorphologyStep):
    """``{"op": "erosion", "radius_mm": r}``: see :func:`erosion`."""

    op: Literal["erosion"] = "erosion"


class DilationStep(_MorphologyStep):
    """``{"op": "dilation", "radius_mm": r}``: see :func:`dilation`."""

    op: Literal["dilation"] = "dilation"


class FillHolesStep(_Step):
    """``{"op": "fill_holes", "slice_wise": false, "axis": 0}``: see :func:`fill_holes`."""

    op: Literal["fill_holes"] = "fill_holes"
    slice_wise: bool = False
    axis: Annotated[int, Field(ge=0, le=2)] = 0

    def run(self, work, spacing, cancel):
        if self.slice_wise and work.ndim != 3:
            raise InvalidInputError(f"fill_holes with slice_wise=true needs a 3D (z, y, x) array; got shape {work.shape}")
        if self.axis >= work.ndim:
            raise InvalidInputError(f"fill_holes: axis={self.axis} is not an axis of a {work.ndim}D array")
        return _fill_holes(work, self.slice_wise, self.axis, spacing, self._selection(), cancel)


class RemoveSmallStep(_Step):
    """``{"op": "remove_small", "min_size_mm3": v, "connectivity": 1}``: see :func:`remove_small_components`."""

    op: Literal["remove_small"] = "remove_small"
    min_size_mm3: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    connectivity: _Connectivity = 1

    def run(self, work, spacing, cancel):
        _check_connectivity(self.connectivity, work.ndim)
        return _components_op(
            work, spacing, self.connectivity, self._selection(), min_size_mm3=self.min_size_mm3, cancel=cancel
        )


class KeepLargestStep(_Step):
    """``{"op": "keep_largest", "n": 1, "connectivity": 1}``: see :func:`keep_largest_components`."""

    op: Literal["keep_largest"] = "keep_largest"
    n: Annotated[int, Field(ge=1)] = 1
    connectivity: _Connectivity = 1

    def run(self, work, spacing, cancel):
        _check_connectivity(self.connectivity, work.ndim)
        return _components_op(work, spacing, self.connectivity, self._selection(), keep_n=self.n, cancel=cancel)


_STEP_MODELS: dict[PostprocessOp, type[_Step]] = {
    PostprocessOp.OPENING: OpeningStep,
    PostprocessOp.CLOSING: ClosingStep,
    PostprocessOp.EROSION: ErosionStep,
    PostprocessOp.DILATION: DilationStep,
    PostprocessOp.FILL_HOLES: FillHolesStep,
    PostprocessOp.REMOVE_SMALL: RemoveSmallStep,
    PostprocessOp.KEEP_LARGEST: KeepLargestStep,
}


def _step_error(index: int, op: str, exc: ValidationError) -> InvalidInputError:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "step"
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(_STEP_MODELS[PostprocessOp(op)].model_fields))
            problems.append(f"unknown field {field!r} (fields of {op}: {allowed})")
        elif error["type"] == "missing":
            problems.append(f"{field} is required")
        else:
            problems.append(f"{field}={error['input']!r}: {error['msg'].lower()}")
    return InvalidInputError(f"chain step {index} ({op}): " + "; ".join(problems))


def _parse_step(index: int, raw: Any) -> _Step:
    if isinstance(raw, _Step):
        return raw
    if not isinstance(raw, Mapping):
        raise InvalidInputError(f"chain step {index}: expected an object like {{\"op\": \"closing\", \"radius_mm\": 2}}; got {raw!r}")
    if "op" not in raw:
        raise InvalidInputError(
            f"chain step {index}: missing \"op\"; expected one of {', '.join(op.value for op in PostprocessOp)}"
        )
    op = look_up_option(raw["op"], PostprocessOp, name=f"chain step {index}: op")
    data = dict(raw)
    data["op"] = op.value
    try:
        return _STEP_MODELS[op].model_validate(data)
    except ValidationError as exc:
        raise _step_error(index, op.value, exc) from None


@dataclass(frozen=True)
class PostprocessChain:
    """An ordered, validated list of post-processing steps, built from plain JSON-able data.

    Parameters
    ----------
    steps : tuple of step models
        Use :meth:`from_json`, :meth:`from_file` or :func:`chain_from_options` to build one; each
        step is a pydantic model with an ``op`` field (:class:`PostprocessOp`), its parameters and
        an optional ``labels`` list.

    Examples
    --------
    >>> chain = PostprocessChain.from_json('[{"op": "closing", "radius_mm": 2}, {"op": "keep_largest"}]')
    >>> chain.to_list()
    [{'op': 'closing', 'radius_mm': 2.0}, {'op': 'keep_largest', 'n': 1, 'connectivity': 1}]
    >>> PostprocessChain.from_json(chain.to_json()) == chain
    True
    """

    steps: tuple[_Step, ...] = ()

    @classmethod
    def from_json(cls, data: str | bytes | Sequence[Mapping[str, Any]] | Mapping[str, Any] | PostprocessChain) -> PostprocessChain:
        """Build a chain from JSON text, or from the parsed data: a list of steps or ``{"steps": [...]}``.

        Raises
        ------
        InvalidInputError
            If the text is not valid JSON, the data is not a list of step objects, an ``op`` is
            unknown (the message suggests the closest one) or a parameter is invalid (the message
            names the step index and the field).
        """
        if isinstance(data, PostprocessChain):
            return data
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"post-processing chain: not valid JSON ({exc})") from None
        if isinstance(data, Mapping):
            if set(data) != {"steps"}:
                raise InvalidInputError(
                    f"post-processing chain: expected a list of steps or {{\"steps\": [...]}}; got an object with keys {sorted(data)}"
                )
            data = data["steps"]
        if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
            raise InvalidInputError(f"post-processing chain: expected a list of steps; got {type(data).__name__}")
        return cls(tuple(_parse_step(i, raw) for i, raw in enumerate(data)))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PostprocessChain:
        """Read a chain from a JSON file.

        Raises
        ------
        FileFormatError
            If the file is missing or not valid UTF-8 JSON.
        InvalidInputError
            If its content is not a valid chain (the message names the file).
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileFormatError(f"{p}: chain file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise FileFormatError(f"{p}: cannot read the chain file ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{p}: not valid JSON ({exc})") from None
        try:
            return cls.from_json(data)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{p}: {exc}") from None

    def to_list(self) -> list[dict[str, Any]]:
        """The chain as plain data: a list of step dicts with every parameter (``labels`` only if set)."""
        steps = []
        for step in self.steps:
            data = step.model_dump(mode="json", exclude_none=True)
            steps.append({"op": data.pop("op"), **data})
        return steps

    def to_json(self, *, indent: int | None = None) -> str:
        """The chain as JSON text, readable by :meth:`from_json`."""
        return json.dumps(self.to_list(), indent=indent)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the chain as indented JSON to ``path`` atomically and return the path."""
        return write_text_atomic(path, self.to_json(indent=2) + "\n")

    def describe(self) -> str:
        """One line, e.g. ``"opening radius_mm=1 -> fill holes slice_wise=False, axis=0"``."""
        return " -> ".join(step.describe() for step in self.steps) or "(no steps)"

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[_Step]:
        return iter(self.steps)


def chain_from_options(
    *,
    opening_mm: float | None = None,
    closing_mm: float | None = None,
    fill_holes: bool = False,
    fill_holes_2d: bool = False,
    min_size_mm3: float | None = None,
    keep_largest: bool | int = False,
    labels: Sequence[int] | None = None,
) -> PostprocessChain:
    """The chain the CLI flags (and simple GUI forms) describe, in a fixed order.

    The order is: opening, closing, fill holes (3D, or slice-wise along z with ``fill_holes_2d``),
    remove small components, keep the largest components. Options left at their default add no
    step.

    Parameters
    ----------
    opening_mm, closing_mm : float, optional
        Radius in mm of the opening / closing.
    fill_holes : bool, default False
        Fill holes enclosed in 3D.
    fill_holes_2d : bool, default False
        Fill holes slice by slice along z instead (which also fills cavities open in z).
    min_size_mm3 : float, optional
        Remove components smaller than this volume in mm^3.
    keep_largest : bool or int, default False
        True keeps the largest component of each label; an integer N >= 1 keeps the N largest.
    labels : sequence of int, optional
        Apply every step to these labels only (default all).

    Returns
    -------
    PostprocessChain

    Raises
    ------
    InvalidInputError
        If a value is invalid (negative radius or size, ``keep_largest`` < 0, a label < 1) or both
        ``fill_holes`` and ``fill_holes_2d`` are set.

    Examples
    --------
    >>> chain_from_options(closing_mm=2, fill_holes=True, keep_largest=True).describe()
    'closing radius_mm=2 -> fill holes slice_wise=False, axis=0 -> keep largest n=1, connectivity=1'
    """
    if fill_holes and fill_holes_2d:
        raise InvalidInputError("fill_holes and fill_holes_2d: choose one (slice-wise filling already fills every 3D hole)")
    if isinstance(keep_largest, bool):
        keep_n = 1 if keep_largest else 0
    elif isinstance(keep_largest, (int, np.integer)) and keep_largest >= 0:
        keep_n = int(keep_largest)
    else:
        raise InvalidInputError(f"keep_largest={keep_largest!r}: expected True/False or a number of components >= 1")
    selection = _check_selection(labels)
    extra: dict[str, Any] = {} if selection is None else {"labels": sorted(selection)}
    steps: list[dict[str, Any]] = []
    if opening_mm is not None:
        steps.append({"op": "opening", "radius_mm": opening_mm, **extra})
    if closing_mm is not None:
        steps.append({"op": "closing", "radius_mm": closing_mm, **extra})
    if fill_holes or fill_holes_2d:
        steps.append({"op": "fill_holes", "slice_wise": bool(fill_holes_2d), "axis": 0, **extra})
    if min_size_mm3 is not None:
        steps.append({"op": "remove_small", "min_size_mm3": min_size_mm3, **extra})
    if keep_n:
        steps.append({"op": "keep_largest", "n": keep_n, **extra})
    # plain ints are valid radii and sizes in this API; the strict step models want floats
    for step in steps:
        for key in ("radius_mm", "min_size_mm3"):
            if isinstance(step.get(key), (int, np.integer)) and not isinstance(step[key], bool):
                step[key] = float(step[key])
    return PostprocessChain.from_json(steps)


def apply_chain(
    labels: np.ndarray,
    chain: PostprocessChain | Sequence[Mapping[str, Any]] | str,
    *,
    spacing_mm: Sequence[float],
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
) -> np.ndarray:
    """Apply the steps of ``chain`` in order to a label array.

    Parameters
    ----------
    labels : numpy.ndarray
        Label array ``(z, y, x)`` (or ``(y, x)``) of non-negative integers, or a boolean mask.
        Not modified.
    chain : PostprocessChain, list of dict or str
        The steps, or plain data / JSON text accepted by :meth:`PostprocessChain.from_json`.
    spacing_mm : sequence of float
        Voxel size in mm per array axis, e.g. :attr:`Volume.spacing_zyx`.
    progress : callable, optional
        Called as ``progress(done_steps, total_steps)``, first with 0 and after every step.
    cancel : object with ``is_set()``, optional
        Checked before every step and between labels; when set, :class:`CancelledError` is raised.

    Returns
    -------
    numpy.ndarray
        A new array, same shape and dtype (float arrays holding integer labels come back as the
        smallest unsigned integer dtype). An empty chain returns a copy.

    Raises
    ------
    InvalidInputError
        If ``labels`` is not a valid 2D/3D label array, ``spacing_mm`` is invalid or the chain is
        invalid.
    CancelledError
        If ``cancel`` is set.

    Examples
    --------
    >>> m = np.zeros((1, 1, 12), dtype=np.uint8)
    >>> m[0, 0, [1, 2, 4, 5, 6, 10]] = 1
    >>> steps = [{"op": "closing", "radius_mm": 1.0}, {"op": "keep_largest"}]
    >>> apply_chain(m, steps, spacing_mm=(1.0, 1.0, 1.0))[0, 0].tolist()
    [0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    """
    chain = PostprocessChain.from_json(chain)
    work, out_dtype = _check_labels_array(labels, name="labels")
    spacing = _check_spacing(spacing_mm, work.ndim)
    total = len(chain)
    report(progress, 0, total)
    out = work.copy()
    for index, step in enumerate(chain):
        check_cancelled(cancel, f"post-processing (step {index}: {step.op})")  # type: ignore[attr-defined]
        out = step.run(out, spacing, cancel)
        report(progress, index + 1, total)
    return _finish(out, out_dtype)


def postprocess(
    volume: Volume,
    chain: PostprocessChain | Sequence[Mapping[str, Any]] | str,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
) -> Volume:
    """Apply ``chain`` to a label :class:`Volume`; the result keeps the geometry.

    Parameters
    ----------
    volume : Volume
        A scalar label volume (``read_labels`` gives one). Not modified.
    chain : PostprocessChain, list of dict or str
        See :func:`apply_chain`.
    progress, cancel
        See :func:`apply_chain`.

    Returns
    -------
    Volume
        Same grid and metadata, plus ``medseg_postprocess`` (the chain as JSON) for provenance.

    Raises
    ------
    InvalidInputError
        If the volume has several components or non-integer values, or the chain is invalid.
    CancelledError
        If ``cancel`` is set.
    """
    chain = PostprocessChain.from_json(chain)
    if volume.n_components != 1:
        raise InvalidInputError(f"post-processing needs a scalar label volume; got {volume.n_components} components per voxel")
    array = apply_chain(volume.array, chain, spacing_mm=volume.spacing_zyx, progress=progress, cancel=cancel)
    return volume.derive(array, metadata={"medseg_postprocess": chain.to_json()})


# ------------------------------------------------------------------------------ slice previews
def preview_margin_vox(chain: PostprocessChain | Sequence[Mapping[str, Any]] | str, *, spacing_mm: Sequence[float],
                       axis: int = 0) -> int | None:
    """How many slices on each side of a slice make the chain exact on it, or None if it is global.

    A step's result at a voxel depends only on voxels within its reach along ``axis``: the
    structuring element's half-size ``floor(radius_mm / spacing_mm[axis])`` for an erosion or a
    dilation (their edge rules and the nearest-label rule for contested voxels stay within it),
    twice that for an opening or a closing (two passes), and 0 for slice-wise hole filling across
    ``axis``. Errors made at the edges of a slab therefore move inwards by at most the sum of the
    reaches, so a slab of that many slices (plus one) on each side gives the exact result on its
    middle slice. Hole filling in 3D (or across another axis), removing small components and
    keeping the largest ones depend on whole connected components: global, None.

    Parameters
    ----------
    chain : PostprocessChain, list of dict or str
        The chain (see :meth:`PostprocessChain.from_json`).
    spacing_mm : sequence of 3 float, keyword-only
        Voxel size in mm in array order (z, y, x).
    axis : int, keyword-only, default 0
        The sliced array axis.

    Returns
    -------
    int or None
        The margin in slices (>= 1), or None when a step is global.

    Raises
    ------
    InvalidInputError
        If the chain is invalid, ``spacing_mm`` does not hold 3 values > 0 or ``axis`` is not 0-2.

    Examples
    --------
    >>> preview_margin_vox([{"op": "opening", "radius_mm": 5.0}], spacing_mm=(2.0, 1.0, 1.0))
    5
    >>> preview_margin_vox([{"op": "keep_largest"}], spacing_mm=(2.0, 1.0, 1.0)) is None
    True
    """
    chain = PostprocessChain.from_json(chain)
    try:
        spacing = [float(s) for s in spacing_mm]
    except (TypeError, ValueError):
        spacing = []
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InvalidInputError(f"spacing_mm={spacing_mm!r}: expected 3 voxel sizes > 0 in mm, array order (z, y, x)")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis <= 2:
        raise InvalidInputError(f"axis={axis!r}: expected 0, 1 or 2 (an array axis of a (z, y, x) volume)")
    step_mm = spacing[axis]
    total = 0
    for step in chain:
        op = PostprocessOp(step.op)
        if op in (PostprocessOp.EROSION, PostprocessOp.DILATION, PostprocessOp.OPENING, PostprocessOp.CLOSING):
            half = int(math.floor(_inclusive(step.radius_mm) / step_mm))
            total += half * (2 if op in (PostprocessOp.OPENING, PostprocessOp.CLOSING) else 1)
        elif op is PostprocessOp.FILL_HOLES and step.slice_wise and step.axis == axis:
            continue
        else:
            return None
    return total + 1


def preview_slice(
    labels: np.ndarray,
    chain: PostprocessChain | Sequence[Mapping[str, Any]] | str,
    *,
    spacing_mm: Sequence[float],
    axis: int,
    index: int,
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
) -> np.ndarray:
    """The chain's result on one slice, computed on the smallest exact slab around it.

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x)
        The label volume. Not modified.
    chain : PostprocessChain, list of dict or str
        Every step must be local (:func:`preview_margin_vox` is not None).
    spacing_mm : sequence of 3 float, keyword-only
        Voxel size in mm in array order.
    axis, index : int, keyword-only
        The slice: ``labels.take(index, axis)``.
    progress, cancel : optional
        As :func:`apply_chain`.

    Returns
    -------
    numpy.ndarray
        The 2D slice of ``apply_chain(labels, chain, spacing_mm=spacing_mm)`` at ``index`` along
        ``axis``, bit for bit, same dtype.

    Raises
    ------
    InvalidInputError
        If the chain has a global step, ``index`` is outside the volume, or the inputs are invalid.
    CancelledError
        If ``cancel`` is set.
    """
    array = np.asarray(labels)
    if array.ndim != 3:
        raise InvalidInputError(f"labels: expected a (z, y, x) volume; got shape {array.shape}")
    margin = preview_margin_vox(chain, spacing_mm=spacing_mm, axis=axis)
    if margin is None:
        raise InvalidInputError("the chain has a global step (fill holes in 3D, remove small, keep largest): "
                                "compute it on the whole volume")
    n = array.shape[axis]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise InvalidInputError(f"index={index!r}: expected a slice index from 0 to {n - 1} along axis {axis}")
    lo, hi = max(0, int(index) - margin), min(n, int(index) + margin + 1)
    slab = np.take(array, np.arange(lo, hi), axis=axis)
    result = apply_chain(slab, chain, spacing_mm=spacing_mm, progress=progress, cancel=cancel)
    return np.take(result, int(index) - lo, axis=axis)
