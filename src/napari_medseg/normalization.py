"""Intensity normalisation as a model card says (torch-free: the trainer, the model grid and
inference share it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_medseg.errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    from napari_medseg.registry import NormalizationSpec

__all__ = ["normalize_intensities"]


def normalize_intensities(array: np.ndarray, spec: NormalizationSpec | None) -> np.ndarray:
    """Normalise each channel of ``array`` as a model card says.

    Parameters
    ----------
    array : numpy.ndarray
        ``(C, ...)`` intensities (not modified).
    spec : NormalizationSpec or None
        ``kind``: ``zscore`` ``(x - mean) / std``; ``percentile`` maps the
        ``[lower_percentile, upper_percentile]`` percentiles to [0, 1]; ``ct_window`` maps
        ``[window_center - window_width / 2, window_center + window_width / 2]`` to [0, 1];
        ``minmax`` maps [min, max] to [0, 1]; ``none`` (or ``spec=None``) keeps the values.
        ``nonzero_only`` computes statistics on non-zero voxels (and keeps zeros at zero for
        ``zscore``); ``clip`` clips the [0, 1] kinds to [0, 1].

    Returns
    -------
    numpy.ndarray
        float32, same shape. A constant channel becomes zeros (no division by zero).
    """
    out = np.array(array, dtype=np.float32, copy=True)
    kind = "none" if spec is None else str(getattr(spec.kind, "value", spec.kind))
    if kind == "none":
        return out
    nonzero_only = bool(getattr(spec, "nonzero_only", False))
    clip = bool(getattr(spec, "clip", True))
    for c in range(out.shape[0]):
        channel = out[c]
        mask = channel != 0 if nonzero_only else None
        values = channel[mask] if mask is not None else channel.ravel()
        if values.size == 0:
            continue
        if kind == "zscore":
            mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
            channel -= mean
            channel *= 1.0 / std if std > 0 else 0.0
            if mask is not None:
                channel[~mask] = 0.0
            continue
        if kind == "percentile":
            lo, hi = (float(v) for v in np.percentile(values, [spec.lower_percentile, spec.upper_percentile]))
        elif kind == "ct_window":
            lo = float(spec.window_center) - float(spec.window_width) / 2
            hi = float(spec.window_center) + float(spec.window_width) / 2
        elif kind == "minmax":
            lo, hi = float(values.min()), float(values.max())
        else:
            raise InvalidInputError(f"normalization kind={kind!r}: expected zscore, percentile, ct_window, minmax or none")
        channel -= lo
        channel *= 1.0 / (hi - lo) if hi > lo else 0.0
        if clip:
            np.clip(channel, 0.0, 1.0, out=channel)
    return out
