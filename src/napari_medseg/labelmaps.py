"""Label maps from probabilities: the one argmax-to-label-values rule that ``predict``, the
uncertainty re-thresholding and the bundle runner share (torch-free; imports nothing of inference
or uncertainty, so neither imports the other for it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from napari_medseg.errors import InvalidInputError

__all__ = ["label_dtype", "labels_from_probabilities"]


def label_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``max_value`` (label maps)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _threshold_table(
    min_probability: float | Mapping[int, float] | None, values: list[int]
) -> np.ndarray:
    """Per output channel: the probability the argmax label needs (0 for background)."""
    table = np.zeros(len(values), np.float32)
    if min_probability is None:
        return table
    if isinstance(min_probability, Mapping):
        unknown = [k for k in min_probability if int(k) not in values]
        if unknown:
            raise InvalidInputError(
                f"min_probability names label(s) {unknown} that are not among label_values {values}"
            )
        items = {int(k): v for k, v in min_probability.items()}
    else:
        items = {v: min_probability for v in values}
    for value, thr in items.items():
        if isinstance(thr, bool) or not isinstance(thr, (int, float, np.floating, np.integer)) or not (0.0 <= float(thr) <= 1.0):
            raise InvalidInputError(f"min_probability={thr!r} for label {value}: expected a probability in [0, 1]")
        table[values.index(value)] = float(thr)
    table[values.index(0)] = 0.0  # background never falls back to anything
    return table


def labels_from_probabilities(
    probabilities: np.ndarray,
    label_values: Sequence[int],
    *,
    min_probability: float | Mapping[int, float] | None = None,
) -> np.ndarray:
    """Labels from per-label probabilities, optionally requiring a minimum probability.

    Rule: each voxel takes the label of its most probable channel (the argmax, first channel on
    ties, exactly as :func:`napari_medseg.inference.predict`); if that label is not the
    background (0) and its probability is below its threshold, the voxel becomes background.
    With ``min_probability=None`` (or 0) the result equals ``predict``'s labels.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(z, y, x, C)`` (any leading shape, labels last) probabilities, channel ``i`` for
        ``label_values[i]``. Not modified.
    label_values : sequence of int
        The ``C`` label values in channel order (a model card's ``label_values``); must include 0
        (the background).
    min_probability : float in [0, 1], or mapping of label value to float, optional, keyword-only
        One threshold for every label, or per label (labels not named keep threshold 0). The
        background's threshold is ignored.

    Returns
    -------
    numpy.ndarray
        Labels of shape ``probabilities.shape[:-1]`` in the smallest unsigned dtype holding the
        largest label value.

    Raises
    ------
    InvalidInputError
        If the last axis does not match ``label_values``, the label values are not unique
        non-negative integers including 0, or a threshold is outside [0, 1] or names an unknown
        label.

    Examples
    --------
    >>> p = np.array([[0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], np.float32)
    >>> labels_from_probabilities(p, [0, 1, 2]).tolist()
    [1, 1, 2]
    >>> labels_from_probabilities(p, [0, 1, 2], min_probability=0.6).tolist()
    [0, 1, 0]
    >>> labels_from_probabilities(p, [0, 1, 2], min_probability={2: 0.35}).tolist()
    [1, 1, 2]
    """
    p = np.asarray(probabilities)
    values = [int(v) for v in label_values]
    if len(values) != len(set(values)) or any(v < 0 for v in values) or 0 not in values:
        raise InvalidInputError(
            f"label_values={list(label_values)!r}: expected unique non-negative integers including 0 (background)"
        )
    if p.ndim < 1 or p.shape[-1] != len(values):
        raise InvalidInputError(
            f"probabilities has shape {p.shape}: expected the last axis to hold the {len(values)} label(s) {values}"
        )
    table = _threshold_table(min_probability, values)
    lut = np.asarray(values).astype(label_dtype(max(values)))
    background = lut[values.index(0)]
    if p.ndim == 1:
        p = p[None]
        squeeze = True
    else:
        squeeze = False
    out = np.empty(p.shape[:-1], lut.dtype)
    step = max(1, (1 << 22) // max(1, p[0].size))
    for start in range(0, p.shape[0], step):
        chunk = p[start:start + step]
        index = np.argmax(chunk, axis=-1)
        labels = lut[index]
        if table.any():
            best = np.take_along_axis(chunk, index[..., None], axis=-1)[..., 0]
            labels[best < table[index]] = background
        out[start:start + step] = labels
    return out[0] if squeeze else out
