"""Input guards: does an input look like the images a model was trained on?

A card may carry ``input_fingerprint`` (:class:`napari_medseg.registry.InputFingerprint`): the
range, over the training cases, of a few features of the first channel that do not depend on the
scanner's arbitrary intensity scale (:func:`image_features`):

- ``negative_fraction``: voxels below -5 % of the robust range (p0.5 .. p99.5). MR magnitude
  images have none; a CT in Hounsfield units has its air at -1000 (typically 30-70 %).
- ``foreground_fraction``: voxels above p0.5 + 10 % of the robust range (the head, not the air).
- ``foreground_relative_percentiles``: the foreground's p0.5, p50, p99.5 as fractions of the
  robust range (where tissue sits between background and the brightest voxels); the gap from
  p0.5 to p50 also shows a foreground in one narrow peak (CT soft tissue at any offset).
- ``foreground_extent_mm``: the foreground's bounding box, longest to shortest side (the field of
  view that holds the object).
- ``foreground_percentiles``: the same percentiles in raw units, compared only for models whose
  normalisation is absolute (``ct_window``, ``none``): "mostly outside the expected range".

:func:`input_fit_messages` compares an input with the card (tolerances below) and returns one
sentence per misfit; :func:`napari_medseg.registry.card_warnings` includes them, so every face
warns; ``medseg predict --strict`` refuses such an input (:class:`InputMismatchError`, exit 2).
Monte-Carlo dropout does not detect such inputs: it measures disagreement between dropout
samples of one network, which can be confidently wrong far from its training data.

Torch-free (the Slicer interface process calls it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from napari_medseg.errors import InvalidInputError
from napari_medseg.volume import Volume

__all__ = ["InputMismatchError", "image_features", "fingerprint_from_volumes", "input_fit_messages", "PERCENTILES"]

#: the percentiles the fingerprint records
PERCENTILES = (0.5, 50.0, 99.5)
#: tolerances: how far outside the training range an input may lie before a warning
NEGATIVE_FRACTION_MIN = 0.02  # absolute; and at least twice the training maximum
FOREGROUND_FRACTION_FACTOR = 1.5  # x / / the training range
RELATIVE_MEDIAN_MARGIN = 0.15  # of the robust range
NARROW_SPREAD_FACTOR = 0.5  # foreground p0.5..p50 narrower than half the training's smallest
EXTENT_FACTOR = 1.6  # x / / the training range, per sorted side
OUTSIDE_RANGE_FRACTION = 0.5  # absolute normalisations: half the foreground outside the training range
_MAX_SAMPLES = 2_000_000


class InputMismatchError(InvalidInputError):
    """An input does not fit the model card's ``input_fingerprint`` and strict checking was asked for."""


def _first_channel(volume: Volume) -> np.ndarray:
    a = volume.array
    return a[..., 0] if a.ndim == 4 else a


def image_features(volume: Volume) -> dict[str, Any]:
    """The fingerprint features of one image (its first channel); see the module docstring.

    Parameters
    ----------
    volume : Volume
        ``(z, y, x[, c])``, any real dtype. Not modified.

    Returns
    -------
    dict
        ``negative_fraction``, ``foreground_fraction`` (floats in [0, 1]),
        ``foreground_percentiles`` (raw units), ``foreground_relative_percentiles`` (fractions of
        the robust range), ``foreground_extent_mm`` (3 floats, descending).
    """
    a = _first_channel(volume)
    flat = a.reshape(-1)
    stride = max(1, flat.size // _MAX_SAMPLES)
    sample = flat[::stride].astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    span = hi - lo if hi > lo else 1.0
    negative = float(np.mean(sample < -0.05 * span)) if lo < 0 else 0.0
    fg_mask = a > lo + 0.1 * span
    fg = sample[sample > lo + 0.1 * span]
    if fg.size == 0:
        fg = sample
    raw = [float(v) for v in np.percentile(fg, PERCENTILES)]
    extent = [0.0, 0.0, 0.0]
    if fg_mask.any():
        spacing = volume.geometry.spacing_zyx
        for axis in range(3):
            other = tuple(i for i in range(3) if i != axis)
            idx = np.flatnonzero(fg_mask.any(axis=other))
            extent[axis] = float((idx[-1] - idx[0] + 1) * spacing[axis])
    return {
        "negative_fraction": negative,
        "foreground_fraction": float(fg.size / sample.size),
        "foreground_percentiles": raw,
        "foreground_relative_percentiles": [(v - lo) / span for v in raw],
        "foreground_extent_mm": sorted(extent, reverse=True),
    }


def fingerprint_from_volumes(volumes: Iterable[Volume], *, modality: str) -> dict[str, Any]:
    """The ``input_fingerprint`` card field from training images: each feature's [min, max].

    Parameters
    ----------
    volumes : iterable of Volume
        Training images (first channel used), e.g. the synthetic training cases.
    modality : str
        The training modality, e.g. ``"MR"``.

    Returns
    -------
    dict
        Ready for ``ModelCard(input_fingerprint=...)``: ``modality``, ``n_cases``,
        ``percentiles`` and one ``[min, max]`` per feature (per entry for the list features).

    Raises
    ------
    InvalidInputError
        If no volume is given.
    """
    feats = [image_features(v) for v in volumes]
    if not feats:
        raise InvalidInputError("volumes: expected at least one training image")

    def span(key: str) -> Any:
        values = np.array([f[key] for f in feats], dtype=float)
        if values.ndim == 1:
            return [round(float(values.min()), 4), round(float(values.max()), 4)]
        return [[round(float(lo), 4), round(float(hi), 4)] for lo, hi in zip(values.min(0), values.max(0))]

    return {
        "modality": modality,
        "n_cases": len(feats),
        "percentiles": list(PERCENTILES),
        **{k: span(k) for k in ("negative_fraction", "foreground_fraction", "foreground_percentiles",
                                 "foreground_relative_percentiles", "foreground_extent_mm")},
    }


def _get(fp: Any, key: str) -> Any:
    return fp.get(key) if isinstance(fp, Mapping) else getattr(fp, key, None)


def input_fit_messages(volume: Volume, card: Any) -> list[str]:
    """Why ``volume`` does not look like ``card``'s training inputs (empty when it does, or when
    the card has no ``input_fingerprint``).

    Parameters
    ----------
    volume : Volume
        The input (first channel).
    card : ModelCard
        The model's card.

    Returns
    -------
    list of str
        One sentence per misfit, each naming the measured value and the training range.
    """
    fp = getattr(card, "input_fingerprint", None)
    if fp is None:
        return []
    f = image_features(volume)
    modality = _get(fp, "modality") or "?"
    messages = []
    meta_modality = volume.metadata.get("dicom_modality", "").strip().upper()
    if meta_modality and modality.upper() in ("CT", "MR") and meta_modality in ("CT", "MR") and meta_modality != modality.upper():
        messages.append(f"the input is a {meta_modality} series (DICOM Modality) but model {card.name!r} was trained on {modality}")
    neg = _get(fp, "negative_fraction")
    if neg is not None and f["negative_fraction"] > max(NEGATIVE_FRACTION_MIN, 2 * neg[1]):
        a = _first_channel(volume)
        messages.append(
            f"{100 * f['negative_fraction']:.0f} % of the input's voxels are strongly negative (minimum {float(a.min()):g}); "
            f"model {card.name!r} was trained on {modality} with at most {100 * neg[1]:.1f} % (a CT in Hounsfield units "
            "into an MR model?)"
        )
    rel = _get(fp, "foreground_relative_percentiles")
    if rel is not None:
        median, (lo, hi) = f["foreground_relative_percentiles"][1], rel[1]
        if not lo - RELATIVE_MEDIAN_MARGIN <= median <= hi + RELATIVE_MEDIAN_MARGIN:
            messages.append(
                f"the input's intensity distribution differs from the training inputs': its foreground median sits at "
                f"{median:.2f} of its intensity range, {lo:.2f}-{hi:.2f} in training ({modality})"
            )
        # the lower half of the foreground in a narrow peak (CT soft tissue, whatever its offset),
        # where training images spread over tissues with different intensities
        spread = f["foreground_relative_percentiles"][1] - f["foreground_relative_percentiles"][0]
        least = max(0.05, NARROW_SPREAD_FACTOR * (rel[1][0] - rel[0][1]))
        if spread < least:
            messages.append(
                f"the input's foreground intensities sit in one narrow peak (p0.5 to median: {spread:.3f} of its range, "
                f"at least {rel[1][0] - rel[0][1]:.2f} in training {modality}): soft tissue of a CT, or a "
                "different modality?"
            )
    frac = _get(fp, "foreground_fraction")
    if frac is not None:
        value, (lo, hi) = f["foreground_fraction"], frac
        if not lo / FOREGROUND_FRACTION_FACTOR <= value <= min(1.0, hi * FOREGROUND_FRACTION_FACTOR):
            messages.append(
                f"{100 * value:.0f} % of the input is foreground (above background), {100 * lo:.0f}-{100 * hi:.0f} % in "
                "training: mostly outside the expected content or a noise image?"
            )
    ext = _get(fp, "foreground_extent_mm")
    if ext is not None:
        sides = f["foreground_extent_mm"]
        bad = [
            (s, lo, hi) for s, (lo, hi) in zip(sides, ext)
            if not lo / EXTENT_FACTOR <= s <= hi * EXTENT_FACTOR
        ]
        if bad:
            text = " x ".join(f"{s:.0f}" for s in sides)
            train = " x ".join(f"{lo:.0f}-{hi:.0f}" for lo, hi in ext)
            messages.append(f"the input's field of view holding the object is {text} mm, {train} mm in training")
    kind = str(getattr(getattr(card, "normalization", None), "kind", ""))
    raw = _get(fp, "foreground_percentiles")
    if raw is not None and kind.lower().endswith(("ct_window", "none")):
        lo, hi = raw[0][0], raw[-1][1]
        a = _first_channel(volume)
        fg = a[a > np.percentile(a, 0.5) + 0.1 * (np.percentile(a, 99.5) - np.percentile(a, 0.5))]
        outside = float(np.mean((fg < lo) | (fg > hi))) if fg.size else 0.0
        if outside > OUTSIDE_RANGE_FRACTION:
            messages.append(
                f"{100 * outside:.0f} % of the input's foreground lies outside the training range {lo:g} .. {hi:g}"
            )
    return messages
