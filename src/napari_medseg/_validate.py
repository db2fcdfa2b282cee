"""The validators every face and the core share; they import no torch, so a typo fails before it loads.

Numeric options (batch size, overlap, dropout rate, Monte-Carlo samples), voxel spacings
(:func:`check_spacing_mm`) and label lists typed by a user (:func:`parse_label_list`). ``predict``
(CLI), the napari widgets and the Slicer logic call these before torch is imported;
:mod:`napari_medseg.inference`, :mod:`napari_medseg.uncertainty` and
:mod:`napari_medseg.networks.unet` re-export some under their old names. The choices themselves
(devices...) and the "did you mean" lookup are in :mod:`napari_medseg.choices`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from napari_medseg.errors import InvalidInputError

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_MC_SAMPLES",
    "check_overlap",
    "check_positive_int",
    "check_dropout_rate",
    "check_mc_samples",
    "check_spacing_mm",
    "parse_label_list",
]

#: Most patches (3D) or slices (2D) per network call.
MAX_BATCH_SIZE = 4096
#: Most Monte-Carlo dropout samples a prediction takes (the uncertainty estimates settle long before).
MAX_MC_SAMPLES = 1000


def check_positive_int(value: Any, name: str, maximum: int = MAX_BATCH_SIZE) -> int:
    """Return ``value`` as an int, or raise :class:`InvalidInputError` unless ``1 <= value <= maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name}={value!r}: expected an integer >= 1")
    if value > maximum:
        raise InvalidInputError(f"{name}={value!r}: expected an integer from 1 to {maximum}")
    return int(value)


def check_overlap(overlap: Any, *, name: str = "overlap") -> float:
    """Return ``overlap`` as a float, or raise :class:`InvalidInputError` unless ``0 <= overlap < 1``."""
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}={overlap!r}: expected a number in [0, 1)") from None
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise InvalidInputError(f"{name}={overlap!r}: expected a number in [0, 1) (fraction of a patch shared)")
    return value


def check_dropout_rate(rate: float, *, name: str = "dropout_rate") -> float:
    """Return ``rate`` as a float, or raise :class:`InvalidInputError` unless ``0 <= rate < 1``."""
    # a bool or a text is refused (the Slicer logic's former copy did; float("0.3") would pass)
    if isinstance(rate, (bool, np.bool_, str, bytes)):
        raise InvalidInputError(f"{name}={rate!r}: expected a number in [0, 1)")
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}={rate!r}: expected a number in [0, 1)") from None
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise InvalidInputError(f"{name}={rate!r}: expected a number in [0, 1) (a fraction of units dropped)")
    return value


def check_mc_samples(mc_samples: int, *, name: str = "mc_samples") -> int:
    """Return ``mc_samples`` as an int, or raise :class:`InvalidInputError` unless it is in
    ``[0, MAX_MC_SAMPLES]`` (a count beyond it would run for days and, in the fused head path, hold
    every sample of a patch in memory)."""
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)):
        raise InvalidInputError(f"{name}={mc_samples!r}: expected an integer >= 0 (0 = deterministic)")
    if mc_samples < 0 or mc_samples > MAX_MC_SAMPLES:
        raise InvalidInputError(f"{name}={mc_samples!r}: expected an integer from 0 (deterministic) to {MAX_MC_SAMPLES}")
    return int(mc_samples)


#: ``order`` texts of :func:`check_spacing_mm` for its error message
ARRAY_ORDER = "array axis order (z, y, x), e.g. Volume.spacing_zyx"


def check_spacing_mm(
    spacing_mm: Any,
    ndim: int | None,
    *,
    name: str = "spacing_mm",
    order: str = ARRAY_ORDER,
    allow_scalar: bool = False,
) -> tuple[float, ...]:
    """Return a voxel spacing as one float (mm) per axis, or raise a one-line error naming ``name``.

    The one spacing check of the package (metrics, post-processing, uncertainty, registration,
    :class:`~napari_medseg.volume.Geometry`).

    Parameters
    ----------
    spacing_mm : sequence of float, or one number if ``allow_scalar``
        Voxel size in mm per axis.
    ndim : int or None
        How many values are expected; ``None`` accepts 1 to 3.
    name : str, default "spacing_mm"
        The parameter's name in the error message.
    order : str, default array axis order
        Which axis order the values are in, for the error message (``Geometry`` says ``x y z``).
    allow_scalar : bool, default False
        Accept one number for every axis (registration's ``spacing=1.0``).

    Raises
    ------
    InvalidInputError
        If the count is wrong, a value is not a finite number > 0, or the spacing is a text (a
        string is a sequence of characters: ``"111"`` is not three spacings).

    Examples
    --------
    >>> check_spacing_mm([2, 1, 0.5], 3)
    (2.0, 1.0, 0.5)
    >>> check_spacing_mm(1.5, 2, allow_scalar=True)
    (1.5, 1.5)
    """
    count = "1 to 3" if ndim is None else str(ndim)
    expected = f"{name}={spacing_mm!r}: expected {count} finite values > 0 in mm, in {order}"
    if allow_scalar and ndim is not None and isinstance(spacing_mm, (int, float, np.integer, np.floating)):
        spacing_mm = (spacing_mm,) * ndim
    if isinstance(spacing_mm, (str, bytes)) or not hasattr(spacing_mm, "__iter__"):
        raise InvalidInputError(expected + (" (or one number)" if allow_scalar else ""))
    try:
        values = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise InvalidInputError(expected) from None
    right_length = 1 <= len(values) <= 3 if ndim is None else len(values) == ndim
    if not right_length or not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidInputError(expected + (" (or one number)" if allow_scalar else ""))
    return values


#: the largest label value a typed list may hold (numpy compares it with int64 label arrays)
MAX_LABEL_VALUE = np.iinfo(np.int64).max


def parse_label_list(text: str | None, *, name: str = "labels") -> list[int] | None:
    """Parse a typed list of label values: ``"1, 2"`` -> ``[1, 2]``; ``None`` or ``"all"`` -> ``None`` (all).

    The one parser of the CLI's ``--labels`` (predict, postprocess, evaluate) and the napari
    Post-process and Evaluate widgets' label fields. Where its two former copies disagreed, the
    stricter rule won: values are label values >= 1 (0 is the background, which post-processing
    refuses and evaluation leaves out by default; the CLI used to accept it), written in ASCII
    digits (``"²"`` passed ``isdigit`` and then crashed ``int``), each once (a repeat is a typo);
    a text with no value at all is refused (the napari widgets pass ``None`` for an empty field,
    which means every label). Empty items between commas are skipped (``"1,2,"``).

    Raises
    ------
    InvalidInputError
        If an item is not an integer label value >= 1, a value repeats, or no value is given;
        the message names ``name`` and the text.

    Examples
    --------
    >>> parse_label_list(" 2, 1,")
    [2, 1]
    >>> parse_label_list("ALL") is None
    True
    """
    if text is None:
        return None
    stripped = str(text).strip()
    if stripped.lower() == "all":
        return None
    expected = f"{name}={text!r}: expected 'all' or comma-separated label values >= 1, e.g. 1,2"
    values: list[int] = []
    for item in stripped.split(","):
        item = item.strip()
        if not item:
            continue
        if not (item.isascii() and item.isdigit()) or not 1 <= int(item) <= MAX_LABEL_VALUE:
            raise InvalidInputError(expected + f"; got {item!r}")
        if int(item) in values:
            raise InvalidInputError(f"{name}={text!r}: label {int(item)} is given twice")
        values.append(int(item))
    if not values:
        raise InvalidInputError(expected + "; no label given")
    return values
