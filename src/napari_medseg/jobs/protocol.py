"""The job protocol: the files of a job folder, the job kinds and states, the events, and reading them.

Both sides of the process boundary use this module: the child (:mod:`.reporter`) writes the events,
the parent (:mod:`.job`) reads them. The protocol is described in ``docs/jobs.md``.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
import warnings
from enum import StrEnum
from pathlib import Path
from typing import Any

from napari_medseg.errors import InvalidInputError
from napari_medseg.jobs import guard

JOBS_DIR_ENV = "MEDSEG_JOBS_DIR"
JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
CANCEL_FILE = "cancel"
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
_MAX_READ_BYTES = 16 << 20  # per read of the events file: memory stays bounded however big it grows


class JobKind(StrEnum):
    """What a job runs; the ``medseg`` subcommand its argv starts with."""

    TRAIN = "train"
    FINETUNE = "finetune"
    REFINE = "refine"
    PREDICT = "predict"
    REGISTER = "register"
    SELFTEST = "selftest"


class JobStatus(StrEnum):
    """A job's state, derived from its events and its process (see :mod:`napari_medseg.jobs`)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def is_final(self) -> bool:
        """True for done, failed, cancelled and lost: the job will not change any more."""
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


class EventType(StrEnum):
    """The events of the protocol (``docs/jobs.md``); readers ignore event names they do not know."""

    STARTED = "started"
    PROGRESS = "progress"
    EPOCH = "epoch"
    METRIC = "metric"
    CHECKPOINT = "checkpoint"
    LOG = "log"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


class LogLevel(StrEnum):
    """Level of a ``log`` event."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogStream(StrEnum):
    """Which of a job's log files :meth:`Job.log_tail` reads."""

    STDOUT = "stdout"
    STDERR = "stderr"
    BOTH = "both"


_FINAL_EVENTS = {
    EventType.DONE: JobStatus.DONE,
    EventType.ERROR: JobStatus.FAILED,
    EventType.CANCELLED: JobStatus.CANCELLED,
}

# fields each known event must carry (besides "time" and "event"); other fields are free
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    EventType.STARTED: ("argv", "pid"),
    EventType.PROGRESS: ("done", "total"),
    EventType.EPOCH: ("epoch", "epochs"),
    EventType.METRIC: ("name", "value"),
    EventType.CHECKPOINT: ("path",),
    EventType.LOG: ("message", "level"),
    EventType.DONE: ("outputs",),
    EventType.ERROR: ("message", "type"),
    EventType.CANCELLED: ("message",),
}

_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")


def default_jobs_root() -> Path:
    """The folder that holds the job folders.

    ``$MEDSEG_JOBS_DIR`` if set, else ``platformdirs.user_data_dir("napari-medseg")/jobs`` (e.g.
    ``~/.local/share/napari-medseg/jobs`` on Linux).
    """
    override = os.environ.get(JOBS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-medseg", appauthor=False)) / "jobs"


def new_run_name(stem: str) -> str:
    """A unique, sortable folder name ``<YYYYmmdd-HHMMSS>-<stem>-<6 hex>`` for a job or a run.

    The one naming rule of job ids, the napari plugin's run folders and the Slicer module's work
    folders. Characters of ``stem`` other than letters, digits, ``-``, ``_`` and ``.`` become ``_``
    and it is cut to 40 characters, so the name is always one safe path component.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(stem))[:40].lstrip(".") or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{uuid.uuid4().hex[:6]}"


def _resolve_root(jobs_root: str | os.PathLike | None) -> Path:
    return Path(jobs_root).expanduser() if jobs_root is not None else default_jobs_root()


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return value.item()
    if hasattr(value, "tolist"):  # numpy array, torch tensor
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_events(job_dir: str | os.PathLike, offset: int = 0, *, max_bytes: int = _MAX_READ_BYTES) -> tuple[list[dict], int]:
    """Read the complete event lines of ``job_dir/events.jsonl`` from byte ``offset``.

    Non-blocking: a last line the child has not finished writing is left for the next call. At most
    ``max_bytes`` are read per call (call again from the returned offset for more); a file that is
    not a regular file (a FIFO, a symlink) is refused, never waited on.

    Parameters
    ----------
    job_dir : str or os.PathLike
        The job folder.
    offset : int
        Byte offset to start from: 0, or the offset a previous call returned. Default 0.
    max_bytes : int, keyword-only
        Read at most this many bytes (default 16 MiB).

    Returns
    -------
    events : list of dict
        The events, oldest first; a line that is not a JSON object is skipped with a warning.
    offset : int
        The offset just after the last complete line read (unchanged when there is none).

    Raises
    ------
    InvalidInputError
        If ``offset`` is negative.
    FileFormatError
        If the events file is not a regular file.
    """
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInputError(f"offset={offset!r} must be a non-negative byte offset")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise InvalidInputError(f"max_bytes={max_bytes!r} must be a positive number of bytes")
    try:
        # the file is data anyone may have replaced: never follow a link, never block on a FIFO
        with guard.open_regular_file(Path(job_dir) / EVENTS_FILE, what="events file") as fh:
            fh.seek(offset)
            data = fh.read(max_bytes)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) == max_bytes:  # one "line" longer than a read: not an event; step over it
            where = Path(job_dir) / EVENTS_FILE
            warnings.warn(f"{where}: skipped {max_bytes} bytes without a line end at offset {offset}", stacklevel=2)
            return [], offset + max_bytes
        return [], offset
    events = []
    for raw in data[:end].split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or "event" not in record:
            where = Path(job_dir) / EVENTS_FILE
            warnings.warn(f"{where}: skipped a line that is not an event: {raw[:80]!r}", stacklevel=2)
            continue
        events.append(record)
    return events, offset + end + 1
