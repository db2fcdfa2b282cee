"""Volumes <-> napari layers, keeping the geometry exact.

napari places a layer with ``scale`` (the spacing, mm), ``translate`` (the origin, mm) and
``rotate``. We show every volume in physical LPS millimetres in napari's ``(z, y, x)`` world order:

- ``scale`` = spacing, ``translate`` = origin, both in array order ``(z, y, x)``;
- a direction that only flips axes (RAS, LAS, ... volumes) goes into ``rotate`` as a diagonal of
  +-1, so world coordinates under the cursor are true LPS millimetres and layers from files with
  different flips overlay correctly;
- a direction that permutes axes (sagittal or coronal acquisitions) or is oblique cannot be shown
  in napari's 2D slicing (a non-diagonal ``rotate`` makes vispy's slice transform singular), so the
  layer is shown axis-aligned at its origin and the user gets a notice saying so.

In every case the exact geometry and the provenance go into ``layer.metadata`` (``GEOMETRY_KEY``,
``PROVENANCE_KEY``, ``HEADER_KEY``) so that saving restores the original header bit for bit, and
so that a layer derived from another one (labels from an image) carries the same geometry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medseg.errors import InvalidInputError
from napari_medseg.volume import Geometry, Volume

if TYPE_CHECKING:  # napari is imported lazily so the plugin imports without it
    import napari

__all__ = [
    "GEOMETRY_KEY",
    "PROVENANCE_KEY",
    "HEADER_KEY",
    "AXIS_LABELS",
    "display_transform",
    "geometry_notice",
    "layer_kwargs",
    "image_layer_data",
    "labels_layer_data",
    "layer_geometry",
    "volume_from_attributes",
    "volume_from_layer",
    "label_style",
]

GEOMETRY_KEY = "medseg_geometry"
PROVENANCE_KEY = "medseg_provenance"
HEADER_KEY = "medseg_header"
AXIS_LABELS = ("z", "y", "x")
_ATOL = 1e-6


def _zyx(values) -> tuple[float, float, float]:
    return (float(values[2]), float(values[1]), float(values[0]))


def _geometry_from_dict(data: Mapping[str, Any]) -> Geometry:
    return Geometry(tuple(data["spacing"]), tuple(data["origin"]), tuple(data["direction"]))


def _flip_diagonal(geometry: Geometry) -> np.ndarray | None:
    """The direction as a diagonal of +-1 in (z, y, x) order, or None if it permutes or is oblique."""
    matrix = geometry.direction_matrix
    if not np.allclose(np.abs(matrix), np.eye(3), atol=_ATOL):
        return None
    return np.diag(_zyx(np.round(np.diag(matrix))))


def display_transform(geometry: Geometry) -> dict[str, Any]:
    """The ``scale``, ``translate`` and ``rotate`` that place a volume of ``geometry`` in napari.

    Parameters
    ----------
    geometry : Geometry
        The volume's geometry.

    Returns
    -------
    dict
        ``scale`` (mm, z y x), ``translate`` (mm, z y x), ``rotate`` (3x3, z y x), ``units``
        (``"mm"`` per axis) and ``axis_labels``. The transform is exact (world = LPS mm in z, y, x
        order) unless :func:`geometry_notice` returns a message.
    """
    flips = _flip_diagonal(geometry)
    return {
        "scale": geometry.spacing_zyx,
        "translate": _zyx(geometry.origin),
        "rotate": flips if flips is not None else np.eye(3),
        "units": ("mm", "mm", "mm"),
        "axis_labels": AXIS_LABELS,
    }


def geometry_notice(geometry: Geometry, name: str) -> str | None:
    """A message for the user when napari cannot show ``geometry`` exactly, else None."""
    if _flip_diagonal(geometry) is not None:
        return None
    kind = "oblique" if geometry.is_oblique else f"axis-permuted ({geometry.orientation})"
    return (
        f"{name!r} has an {kind} direction; napari shows it axis-aligned at its origin. Its exact "
        "geometry is kept in the layer metadata, restored on save and used by every MedSeg tool."
    )


def layer_kwargs(
    geometry: Geometry,
    *,
    name: str,
    provenance: Mapping[str, Any] | None = None,
    header: Mapping[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """napari layer keyword arguments that place and describe a volume of ``geometry``.

    Parameters
    ----------
    geometry : Geometry
        The geometry of the layer's data (its array shape is the volume's).
    name : str, keyword-only
        The layer name.
    provenance : mapping or None, keyword-only
        Model, sha256, parameters, version (``Prediction.provenance``), kept in the metadata.
    header : mapping of str to str or None, keyword-only
        The file header keys (``Volume.metadata``), restored on save.
    **extra
        Further layer keyword arguments (``colormap``, ``opacity``, ...).
    """
    kwargs = dict(display_transform(geometry))
    metadata = {GEOMETRY_KEY: geometry.to_dict()}
    if provenance:
        metadata[PROVENANCE_KEY] = json.loads(json.dumps(dict(provenance), default=str))
    if header:
        metadata[HEADER_KEY] = {str(k): str(v) for k, v in header.items()}
    extra_metadata = extra.pop("metadata", None) or {}
    metadata.update(extra_metadata)
    kwargs.update(name=name, metadata=metadata, **extra)
    return kwargs


def image_layer_data(volume: Volume, *, name: str, **extra: Any) -> tuple[np.ndarray, dict, str]:
    """A napari ``LayerDataTuple`` for an image volume (a channel axis, if any, is split off last).

    Multi-component volumes ``(z, y, x, c)`` become ``channel_axis=3`` layers (one per component).
    """
    kwargs = layer_kwargs(volume.geometry, name=name, header=volume.metadata, **extra)
    data = volume.array
    if data.ndim == 4:
        kwargs["channel_axis"] = 3
    return data, kwargs, "image"


def labels_layer_data(volume: Volume, *, name: str, **extra: Any) -> tuple[np.ndarray, dict, str]:
    """A napari ``LayerDataTuple`` for a label volume (integer array, geometry kept)."""
    if volume.array.ndim != 3 or not np.issubdtype(volume.array.dtype, np.integer):
        raise InvalidInputError(f"labels {name!r}: expected a 3D integer array, got {volume.array.dtype} {volume.array.shape}")
    kwargs = layer_kwargs(volume.geometry, name=name, header=volume.metadata, **extra)
    return volume.array, kwargs, "labels"


def _shown_as(layer: napari.layers.Layer, geometry: Geometry) -> bool:
    """True if the layer still sits where :func:`display_transform` put it (the user did not move it)."""
    expected = display_transform(geometry)
    return (
        np.allclose(layer.scale[-3:], expected["scale"], atol=_ATOL)
        and np.allclose(layer.translate[-3:], expected["translate"], atol=_ATOL)
        and np.allclose(np.asarray(layer.rotate)[-3:, -3:], expected["rotate"], atol=_ATOL)
    )


def layer_geometry(layer: napari.layers.Layer) -> Geometry:
    """The exact geometry of a layer's data.

    The geometry stored in the metadata when the shape matches and the layer has not been moved;
    otherwise the geometry its ``scale`` and ``translate`` describe (identity direction), which is
    what the user sees.

    Raises
    ------
    InvalidInputError
        If the layer is not 3D (spatial) or its scale is not positive.
    """
    shape = tuple(layer.data.shape)
    spatial = len(shape) - (1 if getattr(layer, "rgb", False) else 0)
    if spatial != 3:
        raise InvalidInputError(f"layer {layer.name!r}: expected a 3D volume (z, y, x), got shape {shape}")
    stored = layer.metadata.get(GEOMETRY_KEY) if isinstance(layer.metadata, Mapping) else None
    if stored:
        geometry = _geometry_from_dict(stored)
        if _shown_as(layer, geometry):
            return geometry
    scale = [float(s) for s in layer.scale[-3:]]
    if not all(s > 0 for s in scale):
        raise InvalidInputError(f"layer {layer.name!r}: scale {tuple(scale)} must be > 0 (mm per voxel)")
    translate = [float(t) for t in layer.translate[-3:]]
    return Geometry(tuple(reversed(scale)), tuple(reversed(translate)))


def volume_from_layer(layer: napari.layers.Layer, *, labels: bool | None = None) -> Volume:
    """The layer's data as a Volume with its exact geometry and file header.

    Parameters
    ----------
    layer : napari.layers.Image or napari.layers.Labels
        A 3D layer (as read by this plugin or derived from one).
    labels : bool or None, keyword-only
        Force integer label data (True) or not; default: True for Labels layers.

    Raises
    ------
    InvalidInputError
        If the layer is not a 3D volume or label data is not integer.
    """
    geometry = layer_geometry(layer)
    data = np.asarray(layer.data)
    is_labels = labels if labels is not None else type(layer).__name__ == "Labels"
    if is_labels and not np.issubdtype(data.dtype, np.integer):
        raise InvalidInputError(f"layer {layer.name!r}: labels must be integers, got {data.dtype}")
    header = layer.metadata.get(HEADER_KEY, {}) if isinstance(layer.metadata, Mapping) else {}
    return Volume(data, geometry, dict(header))


def volume_from_attributes(data: Any, attributes: Mapping[str, Any], *, labels: bool) -> Volume:
    """The Volume a layer's ``(data, attributes)`` describe (what npe2 hands a writer).

    Same rules as :func:`volume_from_layer`.

    Raises
    ------
    InvalidInputError
        If the data is not a 3D volume, labels are not integers, or the scale is not positive.
    """
    array = np.asarray(data)
    ndim = array.ndim
    view = SimpleNamespace(
        data=array,
        name=str(attributes.get("name", "layer")),
        rgb=bool(attributes.get("rgb", False)),
        scale=np.asarray(attributes.get("scale", np.ones(ndim)), float),
        translate=np.asarray(attributes.get("translate", np.zeros(ndim)), float),
        rotate=np.asarray(attributes.get("rotate", np.eye(ndim)), float),
        metadata=dict(attributes.get("metadata") or {}),
    )
    return volume_from_layer(view, labels=labels)


def label_style(
    names: Mapping[int, str], colors: Mapping[int, Sequence[float] | None] | None = None
) -> dict[str, Any]:
    """Labels-layer keyword arguments that show ``names`` and ``colors`` in napari.

    Parameters
    ----------
    names : mapping of int to str
        Label value -> name; napari's status bar shows the name under the cursor
        (``features`` with an ``index`` column).
    colors : mapping of int to RGB(A) in [0, 1], optional
        Label value -> colour (a ``DirectLabelColormap``; the background 0 stays transparent and
        unnamed values get napari's default black). Without colours napari's own colours apply.

    Returns
    -------
    dict
        ``features`` (and ``colormap`` when colours are given).
    """
    from napari.utils.colormaps import DirectLabelColormap

    values = sorted(int(v) for v in names)
    kwargs: dict[str, Any] = {"features": {"index": values, "name": [str(names[v]) for v in values]}}
    if colors:
        color_dict: dict[int | None, np.ndarray] = {None: np.array([0.0, 0.0, 0.0, 1.0])}
        for value, colour in colors.items():
            if colour is None:
                continue
            rgba = [float(c) for c in colour][:4]
            color_dict[int(value)] = np.array(rgba + [1.0] * (4 - len(rgba)))
        color_dict[0] = np.zeros(4)
        kwargs["colormap"] = DirectLabelColormap(color_dict=color_dict)
    return kwargs
