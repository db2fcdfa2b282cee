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
    "FileAccessError",
    "os_error_reason",
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



class FileAccessError(MedsegError, OSError):
    """A file or folder cannot be read or written because of the system: no space left, permission
    denied, a read-only or another file system, a folder where a file is expected. The message
    names the path and the reason; nothing the user had is changed."""


#: errno -> the reason in words, for the errors a user's own system causes
_OS_REASONS = {
    "ENOSPC": "no space left on the device",
    "EDQUOT": "disk quota exceeded",
    "EFBIG": "file too large (for this file system or the process's file size limit)",
    "EROFS": "read-only file system",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
    "EXDEV": "it is on another file system (a rename cannot cross file systems)",
    "EBUSY": "it is busy (a mount point or in use)",
    "EISDIR": "it is a folder, not a file",
    "ENOTDIR": "a part of the path is not a folder",
    "ENOENT": "no such file or folder",
    "ENAMETOOLONG": "the name is too long",
    "ELOOP": "too many levels of symbolic links",
    "EPIPE": "the output pipe was closed",
    "EIO": "input/output error on the device",
    "ENOTEMPTY": "the folder is not empty",
    "EEXIST": "it already exists",
    "EMFILE": "too many open files",
}


def os_error_reason(exc: OSError) -> str:
    """The reason an :class:`OSError` happened, in a few words (``"no space left on the device"``)."""
    import errno

    name = errno.errorcode.get(exc.errno or -1, "")
    return _OS_REASONS.get(name) or (exc.strerror or str(exc) or type(exc).__name__).strip()
