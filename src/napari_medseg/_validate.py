"""Checks of numeric options that import no torch, so every face can refuse a typo before it loads.

``predict`` (CLI), the napari widget and the Slicer logic call these before torch is imported;
:mod:`napari_medseg.inference`, :mod:`napari_medseg.uncertainty` and
:mod:`napari_medseg.networks.unet` re-export them under their old names.
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
