"""napari writers for Image and Labels layers: NIfTI, NRRD (and Slicer ``.seg.nrrd``), MetaImage.

The volume is rebuilt from the layer's data and attributes: the exact geometry and the file
header stored in ``metadata`` by :mod:`._layers` when the layer was read (or derived from a read
layer) and not moved since, else the geometry its ``scale`` and ``translate`` describe. So a layer
opened with this plugin and saved again keeps its header: spacing, origin, direction (oblique
included) and custom NRRD/MHA keys. Labels saved as ``.seg.nrrd`` keep the segment names (the
layer's ``features``) and colours (its colormap). Writing is atomic
(:func:`napari_medseg.volume.write_volume`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.errors import InvalidInputError
from napari_medseg.inference import provenance_metadata
from napari_medseg.plugin._layers import PROVENANCE_KEY, volume_from_attributes
from napari_medseg.volume import Volume, write_volume

__all__ = ["write_image", "write_labels"]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_LABEL_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")


def _volume_to_write(data: Any, attributes: Mapping[str, Any], *, labels: bool) -> Volume:
    """The layer's Volume with a prediction's provenance added to the header keys."""
    volume = volume_from_attributes(data, attributes, labels=labels)
    provenance = (attributes.get("metadata") or {}).get(PROVENANCE_KEY)
    if provenance and "models" in provenance:
        header = dict(volume.metadata)
        for key, value in provenance_metadata(provenance).items():
            header.setdefault(key, value)
        volume = Volume(volume.array, volume.geometry, header)
    return volume


def _check_suffix(path: str, allowed: tuple[str, ...], what: str) -> Path:
    target = Path(path)
    if not target.name.lower().endswith(allowed):
        raise InvalidInputError(f"{target}: cannot save {what} with this extension; expected one of {', '.join(allowed)}")
    return target


def _names_and_colors(attributes: Mapping[str, Any]) -> tuple[dict[int, str] | None, dict[int, tuple] | None]:
    names = None
    features = attributes.get("features")
    if features is not None and len(features) and "index" in features and "name" in features:
        index, column = list(features["index"]), list(features["name"])
        names = {int(v): str(n) for v, n in zip(index, column)}
    colors = None
    colormap = attributes.get("colormap")
    color_dict = getattr(colormap, "color_dict", None)
    if color_dict:
        colors = {int(v): tuple(float(c) for c in np.asarray(rgba)[:3]) for v, rgba in color_dict.items() if v is not None and int(v) != 0}
    return names, colors or None


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Write an Image layer to NIfTI, NRRD or MetaImage with its original geometry and header.

    Parameters
    ----------
    path : str
        Target file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``).
    data : array-like
        The layer's ``(z, y, x)`` data.
    attributes : dict
        The layer's attributes (napari passes ``scale``, ``translate``, ``rotate``, ``metadata``...).

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    InvalidInputError
        Unsupported extension, data not 3D, or a format that cannot hold the data.
    """
    target = _check_suffix(path, _IMAGE_SUFFIXES, "an image")
    volume = _volume_to_write(data, attributes, labels=False)
    return [str(write_volume(volume, target))]


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Labels layer with its original geometry; ``.seg.nrrd`` keeps names and colours.

    Parameters
    ----------
    path : str
        Target file (``.nii.gz``, ``.nii``, ``.seg.nrrd``, ``.nrrd``, ``.mha``).
    data : array-like
        The layer's ``(z, y, x)`` integer labels.
    attributes : dict
        The layer's attributes; for ``.seg.nrrd`` the ``features`` (``index``/``name`` columns)
        give the segment names and the ``colormap`` the colours.

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    InvalidInputError
        Unsupported extension, data not 3D or not integer labels.
    """
    target = _check_suffix(path, _LABEL_SUFFIXES, "labels")
    volume = _volume_to_write(data, attributes, labels=True)
    if target.name.lower().endswith(".seg.nrrd"):
        names, colors = _names_and_colors(attributes)
        if names or colors:
            return [str(write_volume(volume, target, label_names=names, label_colors=colors))]
    return [str(write_volume(volume, target))]

