"""Compact storage of probability and uncertainty maps: integers with a scale in the header.

A float32 map of a 1 mm head with five components takes about 170 MB; quantised to 8 bits with
one scale per file and compressed it takes a few MB. :func:`compact_map` returns the integer
volume with ``medseg_scale`` (value = stored integer x scale), ``medseg_offset`` (0) and
``medseg_precision`` (the largest rounding error, in the map's unit) in its metadata.

- NIfTI: :func:`napari_medseg.volume.write_volume` also writes the scale of a single-component
  map into the header's standard ``scl_slope`` / ``scl_inter`` fields, which every NIfTI reader
  applies (nibabel, SimpleITK/ITK, FSL, ANTs, 3D Slicer, ITK-SNAP). NIfTI-1 has no float16 type
  (nibabel refuses it, and SimpleITK cannot write float16 at all), so 8-bit with a slope is the
  widely readable choice. Multi-component maps (NIfTI vector images) carry the scale in the
  header's ``descrip`` text instead (``medseg_scale=... medseg_offset=0``): ITK 5.4 corrupts
  memory reading a vector NIfTI with a slope. medseg's readers apply it; for other tools prefer
  ``.nrrd`` or multiply by the scale.
- NRRD / MetaImage: the scale is kept as the custom header fields above, which
  :func:`napari_medseg.volume.read_volume` (and so napari and ``medseg info``) applies; other
  tools show the stored integers, to be multiplied by ``medseg_scale``.

Probabilities use the fixed scale 1/255 (0 and 1 exact, error <= 0.002); uncertainty maps use
their own maximum / 255 (entropy of 3 labels: error <= 0.0022 nats).
"""

from __future__ import annotations

import numpy as np

from napari_medseg.errors import InvalidInputError
from napari_medseg.volume import Volume

__all__ = ["compact_map", "SCALE_KEY", "OFFSET_KEY", "PRECISION_KEY", "BITS"]

SCALE_KEY, OFFSET_KEY, PRECISION_KEY = "medseg_scale", "medseg_offset", "medseg_precision"
#: bits per stored value
BITS = 8


def compact_map(volume: Volume, *, kind: str = "uncertainty", bits: int = BITS) -> Volume:
    """Quantise a non-negative float map to ``bits``-bit integers with a scale in its metadata.

    Parameters
    ----------
    volume : Volume
        A float map (``(z, y, x[, c])``), values >= 0. Not modified.
    kind : {"uncertainty", "probability"}, default "uncertainty"
        ``probability`` uses the fixed scale ``1 / (2**bits - 1)``; ``uncertainty`` the map's
        maximum ``/ (2**bits - 1)``.
    bits : {8, 16}, default 8

    Returns
    -------
    Volume
        uint8 (or uint16) array, same geometry; metadata adds ``medseg_scale``,
        ``medseg_offset`` and ``medseg_precision``. A map with negative or non-finite values is
        returned unchanged (float32), with ``medseg_precision`` "float32".

    Raises
    ------
    InvalidInputError
        If ``kind`` or ``bits`` is not one of the accepted values.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_medseg.volume import Geometry, Volume
    >>> v = compact_map(Volume(np.array([[[0.0, 0.5, 1.0]]], np.float32), Geometry()), kind="probability")
    >>> v.array.tolist(), round(float(v.metadata["medseg_scale"]) * 255, 6)
    ([[[0, 127, 255]]], 1.0)
    """
    if kind not in ("uncertainty", "probability"):
        raise InvalidInputError(f"kind={kind!r}: expected 'uncertainty' or 'probability'")
    if bits not in (8, 16):
        raise InvalidInputError(f"bits={bits!r}: expected 8 or 16")
    array = np.asarray(volume.array)
    levels = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    top = float(array.max()) if array.size else 0.0
    if array.size and (not np.isfinite(top) or float(array.min()) < 0):
        return volume.derive(array.astype(np.float32, copy=False), metadata={**volume.metadata, PRECISION_KEY: "float32"})
    if kind == "probability":
        scale = 1.0 / levels
    else:
        scale = top / levels if top > 0 else 1.0
    scale = float(np.float32(scale))  # what a NIfTI scl_slope (float32) holds exactly
    out = np.empty(array.shape, dtype)
    step = max(1, (1 << 22) // max(1, array[0].size)) if array.ndim else 1
    for z in range(0, array.shape[0], step):  # slab by slab: no full-size float64 temporary
        np.clip(np.rint(array[z:z + step] / np.float32(scale)), 0, levels, out=out[z:z + step], casting="unsafe")
    meta = {
        **volume.metadata,
        SCALE_KEY: repr(scale),
        OFFSET_KEY: "0",
        PRECISION_KEY: f"{bits}-bit; value = stored x {scale:.6g}; max rounding error {scale / 2:.3g}",
    }
    return Volume(out, volume.geometry, meta)
