"""The choices every face offers, and the one "did you mean" lookup; imports no torch.

Every face derives its list from the enums here: the CLI's ``--device`` (via
:func:`parse_device`), the napari Segment and Train widgets' combo boxes, the napari settings
manifest and the Slicer module (whose list is checked against :class:`Device` by a test, because
MedSeg.py loads before napari-medseg may be installed). :func:`look_up_option` and
:func:`close_matches_message` are the one case-insensitive lookup and suggestion used for every
named option (networks, losses, jobs, models, post-processing steps...). Validators of numbers,
spacings and label lists live in :mod:`napari_medseg._validate`; the torch side of a device
(is CUDA there?) in :func:`napari_medseg.inference.resolve_device`.
"""

from __future__ import annotations

import difflib
from enum import Enum, StrEnum
from typing import TypeVar

from napari_medseg.errors import InvalidInputError

E = TypeVar("E", bound=Enum)

__all__ = ["Device", "DEVICE_NAMES", "parse_device", "look_up_option", "close_matches_message"]


class Device(StrEnum):
    """Where a network runs: ``auto`` picks CUDA, then MPS, then the CPU (for predict and training alike)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


#: the device names in the order the faces list them (``auto`` first: the default)
DEVICE_NAMES: tuple[str, ...] = tuple(d.value for d in Device)


def close_matches_message(value: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest of ``choices`` or an empty string."""
    by_lower: dict[str, str] = {}
    for choice in choices:  # match case-insensitively, suggest in the choices' own spelling
        by_lower.setdefault(str(choice).lower(), str(choice))
    close = difflib.get_close_matches(str(value).lower(), list(by_lower), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(by_lower[c]) for c in close) + "?)"


def look_up_option(value: str | E, options: type[E], *, name: str) -> E:
    """Return the member of ``options`` that ``value`` names (case-insensitive).

    Parameters
    ----------
    value : str or Enum member
        The user's choice.
    options : type of Enum
        The enum whose values are the valid choices.
    name : str
        The parameter's name, used in the error message.

    Raises
    ------
    InvalidInputError
        If ``value`` is not one of the enum's values; the message lists the choices and the
        closest match.

    Examples
    --------
    >>> from enum import StrEnum
    >>> class Mode(StrEnum):
    ...     LINEAR = "linear"
    ...     NEAREST = "nearest"
    >>> look_up_option("Linear", Mode, name="interpolation")
    <Mode.LINEAR: 'linear'>
    """
    if isinstance(value, options):
        return value
    text = str(value).strip().lower()
    for member in options:
        if str(member.value).lower() == text:
            return member
    choices = [str(m.value) for m in options]
    raise InvalidInputError(
        f"{name}={value!r} is not a valid choice; expected one of {', '.join(choices)}"
        + close_matches_message(text, choices)
    )


def parse_device(value: str | Device, *, name: str = "device") -> tuple[Device, int | None]:
    """Split a device name into its kind and optional index: ``"cuda:1"`` -> ``(Device.CUDA, 1)``.

    Only names are checked here (no torch); whether that device exists on this machine is
    :func:`napari_medseg.inference.resolve_device`'s question.

    Raises
    ------
    InvalidInputError
        If the kind is not a :class:`Device` (with a "did you mean"), or an index is given that is
        not a non-negative integer or is given to ``auto``.

    Examples
    --------
    >>> parse_device("CUDA:1")
    (<Device.CUDA: 'cuda'>, 1)
    >>> parse_device("auto")
    (<Device.AUTO: 'auto'>, None)
    """
    if isinstance(value, Device):
        return value, None
    text = str(value).strip().lower()
    base, colon, index = text.partition(":")
    kind = look_up_option(base, Device, name=name)
    if not colon:
        return kind, None
    if kind == Device.AUTO or not (index.isascii() and index.isdigit()):
        raise InvalidInputError(
            f"{name}={value!r}: expected one of {', '.join(DEVICE_NAMES)}, optionally with ':N' (a device index) "
            "after cpu, cuda or mps"
        )
    return kind, int(index)
