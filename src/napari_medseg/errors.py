"""The typed exceptions of napari-medseg.

Every error a user can cause is a :class:`MedsegError`; its message names the file or parameter and
says what was expected. The CLI turns these into a one-line message and exit code 2; the napari
plugin and the Slicer module show the message as a notification.
"""

from __future__ import annotations

__all__ = [
    "MedsegError",
    "InvalidInputError",
    "FileFormatError",
    "GeometryMismatchError",
    "IntegrityError",
    "CancelledError",
]


class MedsegError(Exception):
    """Base class of every error napari-medseg raises on purpose."""


class InvalidInputError(MedsegError, ValueError):
    """An argument or an input's content is not what the function accepts."""


class FileFormatError(InvalidInputError):
    """A file is missing, has an unsupported extension, or cannot be decoded."""


class GeometryMismatchError(InvalidInputError):
    """Two volumes that must share a grid (shape, spacing, origin, direction) do not."""


class IntegrityError(MedsegError):
    """A file does not match its recorded sha256 or escapes the folder it must stay in."""


class CancelledError(MedsegError):
    """A long operation was cancelled through its ``cancel`` event; nothing partial was written."""
