"""Resolve a string option to a member of a ``StrEnum`` with a "did you mean" message."""

from __future__ import annotations

import difflib
from enum import Enum
from typing import TypeVar

from napari_medseg.errors import InvalidInputError

E = TypeVar("E", bound=Enum)

__all__ = ["look_up_option", "close_matches_message"]


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
