"""Progress reporting and cancellation shared by every long operation.

Long operations take ``progress`` (a callable receiving ``done`` and ``total``) and ``cancel`` (any
object with an ``is_set()`` method, e.g. :class:`threading.Event` or :class:`multiprocessing.Event`)
and call :func:`report` / :func:`check_cancelled` between patches, samples, iterations and epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from napari_medseg.errors import CancelledError

__all__ = ["ProgressCallback", "CancelEvent", "report", "check_cancelled"]

ProgressCallback = Callable[[int, int], None]


class CancelEvent(Protocol):
    def is_set(self) -> bool: ...


def report(progress: ProgressCallback | None, done: int, total: int) -> None:
    """Call ``progress(done, total)`` if a callback was given."""
    if progress is not None:
        progress(int(done), int(total))


def check_cancelled(cancel: CancelEvent | None, what: str = "operation") -> None:
    """Raise :class:`CancelledError` if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"{what} was cancelled")
