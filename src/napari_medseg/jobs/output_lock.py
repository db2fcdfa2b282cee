"""The lock a job holds on the output it writes (a run folder or an output file), through filelock."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.jobs import guard
from napari_medseg.jobs.guard import read_regular_file
from napari_medseg.jobs.protocol import JobKind

__all__ = ["OutputLock", "output_lock"]


class OutputLock:
    """The lock a job holds on its output (a run folder or an output file) while it runs.

    The lock is ``.<name>.medseg-job.lock`` beside the output (a ``filelock.FileLock``: the kernel
    drops it when the process ends, however it ends), and ``.<name>.medseg-job.json`` names the
    holder. Both are removed when the holder releases the lock.

    Parameters
    ----------
    output : pathlib.Path
        The resolved output path.
    """

    def __init__(self, output: Path) -> None:
        from filelock import FileLock

        self.output = output
        self.path = output.parent / f".{output.name}.medseg-job.lock"
        self.holder_path = output.parent / f".{output.name}.medseg-job.json"
        self._lock = FileLock(str(self.path), timeout=0)

    def holder(self) -> str:
        """Who holds the lock, for a message ("job <id> (pid N)"), from the holder file."""
        try:
            info = json.loads(read_regular_file(self.holder_path, max_bytes=4096, what="lock holder file"))
            return f"job {info['job']} (pid {int(info['pid'])})"
        except (OSError, ValueError, KeyError, TypeError, FileFormatError):
            return "another job"

    def acquire(self, *, timeout_s: float, job_id: str | None) -> None:
        """Take the lock, waiting up to ``timeout_s``; write the holder file when ``job_id`` is given.

        Raises
        ------
        InvalidInputError
            If another job holds it (the message names that job).
        """
        from filelock import Timeout

        self.output.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=timeout_s)
        except Timeout:
            raise InvalidInputError(
                f"--output {self.output} is in use by {self.holder()}; wait for it to end or cancel it, or choose "
                "another --output"
            ) from None
        if job_id is not None:
            from napari_medseg._atomic import write_text_atomic

            write_text_atomic(self.holder_path, json.dumps({"job": job_id, "pid": os.getpid()}) + "\n")

    def release(self, *, remove: bool = True) -> None:
        """Release the lock (removing the lock and holder files first when ``remove``)."""
        if not self._lock.is_locked:
            return
        if remove:  # unlink while holding: a waiter that locks the old inode sees it unlinked and retries
            for path in (self.holder_path, self.path):
                with contextlib.suppress(OSError):
                    path.unlink()
        self._lock.release()


_OUTPUT_KINDS = frozenset({JobKind.TRAIN, JobKind.FINETUNE, JobKind.REFINE, JobKind.PREDICT, JobKind.SELFTEST})


def output_lock(kind: str, argv: Sequence[str], cwd: str | os.PathLike) -> OutputLock | None:
    """The lock on the output ``medseg <argv>`` writes, or None (no output, or argv the parser refuses:
    the child then reports that itself)."""
    if kind not in _OUTPUT_KINDS:
        return None
    try:
        request = guard.parse_request(str(kind), argv, where="start_job")
    except InvalidInputError:
        return None
    output = guard.output_of_request(request, cwd)
    return None if output is None else OutputLock(output)
