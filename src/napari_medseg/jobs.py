"""Background jobs: a long run (training, fine-tuning, refinement, prediction) as a detached child process.

A job is a folder ``<jobs_root>/<job_id>/`` that holds all of its state, so any process (the napari
plugin, the Slicer module, ``medseg jobs``) can find it, follow it, cancel it or resume it, also
after the process that started it has closed:

``job.json``
    Written by the parent only (atomically): id, kind, argv, cwd, created, host, pid, the process
    start time (to guard against pid reuse), cancel requests, signals sent, the status last observed.
``events.jsonl``
    Written by the child only: one JSON object per line, each with ``"time"`` (unix seconds) and
    ``"event"``, appended with a single write + flush + fsync. Readers take complete lines only.
``cancel``
    A flag file the parent creates to ask the child to stop at its next check.
``stdout.log``, ``stderr.log``
    The child's standard output and error.

The child is ``python -m napari_medseg.cli <argv> --job-dir <folder>``: any subcommand that calls
:func:`add_job_dir_argument` and reports through :func:`run_reported` can run as a job. The event
protocol is described in ``docs/jobs.md``.

A job's status is derived from its events and its process, never trusted from a cache:

========= ==============================================================================
pending   the process was started but has not emitted ``started`` yet
running   ``started`` was emitted, no final event yet, and the process is alive
done      the child emitted ``done``
failed    the child emitted ``error``
cancelled the child emitted ``cancelled``, or it was killed after a cancel request
lost      the process is gone without a final event (crashed, killed, out of memory)
========= ==============================================================================

This module is Qt-free: the napari plugin polls :meth:`Job.read_events` from a timer or a worker,
the Slicer module from a ``qt.QTimer``, exactly as ``medseg jobs show`` does.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from napari_medseg import _job_guard as guard
from napari_medseg._atomic import write_text_atomic
from napari_medseg._options import close_matches_message, look_up_option
from napari_medseg.errors import CancelledError, FileFormatError, InvalidInputError, MedsegError

__all__ = [
    "JobKind",
    "JobStatus",
    "EventType",
    "LogLevel",
    "LogStream",
    "JOBS_DIR_ENV",
    "default_jobs_root",
    "JobReporter",
    "run_reported",
    "add_job_dir_argument",
    "reporter_from_args",
    "Job",
    "start_job",
    "list_jobs",
    "get_job",
    "read_events",
    "run_selftest",
]

JOBS_DIR_ENV = "MEDSEG_JOBS_DIR"
JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
CANCEL_FILE = "cancel"
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
_LOCK_FILE = ".job.lock"

# a job whose parent died between creating the folder and recording the pid is "pending" for this long
_PENDING_GRACE_S = 60.0
_POLL_S = 0.05
_MAX_READ_BYTES = 16 << 20  # per read of the events file: memory stays bounded however big it grows
_OUTPUT_LOCK_WAIT_S = 5.0  # the child waits this long for a job that is ending to release the output
_RECORD_LOCK_WAIT_S = 10.0
_MAX_REFRESH_CHUNKS = 64  # x 16 MiB: 1 GiB of events per status check at most


class JobKind(StrEnum):
    """What a job runs; the ``medseg`` subcommand its argv starts with."""

    TRAIN = "train"
    FINETUNE = "finetune"
    REFINE = "refine"
    PREDICT = "predict"
    REGISTER = "register"
    SELFTEST = "selftest"


class JobStatus(StrEnum):
    """A job's state, derived from its events and its process (see the module docstring)."""

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


def _resolve_root(jobs_root: str | os.PathLike | None) -> Path:
    return Path(jobs_root).expanduser() if jobs_root is not None else default_jobs_root()


# --------------------------------------------------------------------------------------------------
# child side
# --------------------------------------------------------------------------------------------------


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


class _CancelFlag:
    """``is_set()`` is true once the job's ``cancel`` file exists or a SIGTERM/SIGINT arrived."""

    def __init__(self, path: Path, *, watch_file: bool) -> None:
        self._path = path
        self._watch_file = watch_file
        self._event = threading.Event()
        self.reason: str | None = None

    def is_set(self) -> bool:
        if self._event.is_set():
            return True
        if self._watch_file and os.path.exists(self._path):
            self.reason = self.reason or "cancel requested"
            return True
        return False

    def set(self, reason: str = "cancel requested") -> None:
        """Ask the running code to stop at its next check (as the flag file does)."""
        self.reason = self.reason or reason
        self._event.set()


class JobReporter:
    """The child's side of a job: appends events to ``events.jsonl`` and watches for cancel.

    Parameters
    ----------
    job_dir : str or os.PathLike
        The job folder (it must exist; :func:`start_job` creates it and passes ``--job-dir``).
    watch_cancel_file : bool, keyword-only
        Whether :attr:`cancel` watches the ``cancel`` flag file (default True). False leaves only
        the signals, which is what a child that never polls the folder looks like (used by tests of
        the SIGTERM fallback).
    install_signal_handlers : bool, keyword-only
        Install SIGTERM and SIGINT handlers that set :attr:`cancel` (default True). Handlers are only
        installed from the main thread; a second signal of the same kind runs the previous handler,
        so Ctrl-C twice still stops at once. :meth:`close` restores the previous handlers.
    rank : int or None, keyword-only
        Process rank under ``torch.distributed``; only rank 0 writes events, the others only watch
        for cancel. Default: ``$RANK`` or 0.
    progress_interval_s : float, keyword-only
        ``progress`` events (from :meth:`progress` or :meth:`emit`) are written at most once per this
        many seconds, plus the first and the last (``done == total``). Default 0.2.

    Attributes
    ----------
    cancel : object with ``is_set()``
        Pass it as the ``cancel`` argument of long operations.
    outputs : dict
        What the ``done`` event reports as ``outputs``; fill it in before the run ends.

    Raises
    ------
    InvalidInputError
        If ``job_dir`` is not an existing folder or ``progress_interval_s`` is negative.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with JobReporter(folder, install_signal_handlers=False) as reporter:
    ...     _ = reporter.emit("metric", name="dice", value=0.91, epoch=3)
    >>> read_events(folder)[0][0]["value"]
    0.91
    """

    def __init__(
        self,
        job_dir: str | os.PathLike,
        *,
        watch_cancel_file: bool = True,
        install_signal_handlers: bool = True,
        rank: int | None = None,
        progress_interval_s: float = 0.2,
    ) -> None:
        self.folder = Path(job_dir)
        if not self.folder.is_dir():
            raise InvalidInputError(f"--job-dir {str(self.folder)!r} is not an existing job folder")
        if not progress_interval_s >= 0:
            raise InvalidInputError(f"progress_interval_s={progress_interval_s!r} must be >= 0")
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
        self.writes_events = self.rank == 0
        self.events_path = self.folder / EVENTS_FILE
        self.cancel = _CancelFlag(self.folder / CANCEL_FILE, watch_file=watch_cancel_file)
        self.outputs: dict[str, Any] = {}
        self.what = "work"
        self._progress_interval_s = float(progress_interval_s)
        self._last_progress_time = -math.inf
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.cancel._event.is_set():  # second signal: let the previous handler act (stop at once)
            previous = self._previous_handlers.get(signum)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)  # None: set from C
            signal.raise_signal(signum)
            return
        # no event is written here: a handler runs between two bytecodes of the main thread, which
        # may be inside emit(); the code that checks ``cancel`` reports it
        self.cancel.set(f"{name} received")

    def emit(self, event: str, /, **fields: Any) -> dict:
        """Append one event and return it.

        The line is written with one ``os.write`` to a file opened with ``O_APPEND``, then fsync'ed,
        so it survives a crash right after and a reader never takes half of it. Thread-safe.

        Parameters
        ----------
        event : str
            The event name: one of :class:`EventType` or another lowercase identifier (readers
            ignore names they do not know).
        **fields
            JSON-serialisable fields (numpy/torch scalars and arrays, paths and sets are converted).
            A known event must carry its required fields (``docs/jobs.md``); ``time`` and ``event``
            are set here.

        Returns
        -------
        dict
            The event as written (also when it is not written: on ranks other than 0, and for a
            ``progress`` event within ``progress_interval_s`` of the last one, unless ``done`` is 0
            or equals ``total``; each written line costs an fsync, so per-batch progress is thinned).

        Raises
        ------
        InvalidInputError
            If ``event`` is not a lowercase identifier, a required field is missing, ``time`` is
            given, or a field cannot be written as JSON.
        """
        name = str(event)
        if not _EVENT_NAME.fullmatch(name):
            raise InvalidInputError(f"event={name!r} must be a lowercase identifier such as 'metric'")
        if "time" in fields:
            raise InvalidInputError(f"event {name!r}: 'time' is set by emit(), do not pass it")
        missing = [key for key in _REQUIRED_FIELDS.get(name, ()) if key not in fields]
        if missing:
            raise InvalidInputError(f"event {name!r} needs the field(s) {', '.join(missing)}; got {sorted(fields)}")
        record = {"time": time.time(), "event": name, **fields}
        try:
            line = (json.dumps(record, default=_json_default) + "\n").encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"event {name!r}: a field cannot be written as JSON: {exc}") from exc
        if not self.writes_events:
            return record
        with self._lock:
            if self._throttled(name, fields):
                return record
            if self._fd is None:
                self._fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            view = memoryview(line)
            while view:  # one write in practice; the loop only guards against a short write
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        return record

    def progress(self, done: int, total: int, *, what: str | None = None) -> None:
        """A ``progress(done, total)`` callback that emits (throttled) ``progress`` events.

        Parameters
        ----------
        done, total : int
            Units of work finished and in all.
        what : str or None, keyword-only
            What the units are (default: :attr:`what`, ``"work"`` unless set).
        """
        self.emit(EventType.PROGRESS, done=int(done), total=int(total), what=what or self.what)

    def _throttled(self, name: str, fields: dict) -> bool:
        """Whether to drop this ``progress`` event: one within ``progress_interval_s`` of the last
        one written, unless it is the first (``done`` 0) or the last (``done == total``)."""
        if name != EventType.PROGRESS:
            return False
        done, total = fields.get("done"), fields.get("total")
        now = time.monotonic()
        if isinstance(done, int) and isinstance(total, int) and 0 < done < total:
            if now - self._last_progress_time < self._progress_interval_s:
                return True
        self._last_progress_time = now
        return False

    def log(self, message: str, *, level: LogLevel | str = LogLevel.INFO) -> dict:
        """Emit a ``log`` event.

        Raises
        ------
        InvalidInputError
            If ``level`` is not one of :class:`LogLevel`.
        """
        level = look_up_option(level, LogLevel, name="level")
        return self.emit(EventType.LOG, message=str(message), level=str(level))

    def close(self) -> None:
        """Close the events file and restore the previous signal handlers."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
            self._previous_handlers.clear()

    def __enter__(self) -> JobReporter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


@contextlib.contextmanager
def run_reported(
    job_dir: str | os.PathLike | JobReporter | None,
    *,
    argv: Sequence[str] | None = None,
    **reporter_options: Any,
) -> Iterator[JobReporter | None]:
    """Run a block as a job: emit ``started``, then ``done``, ``cancelled`` or ``error``.

    The exception is re-raised after its event is written, so the CLI's exit codes stay right (0
    done, 130 cancelled, 2 bad input, 1 bug) and ``stderr.log`` gets the message.

    Parameters
    ----------
    job_dir : path, JobReporter or None
        The job folder (a :class:`JobReporter` is made and closed here), a reporter (used and left
        open), or None: then the block runs unreported and ``None`` is yielded, so a CLI handler can
        write ``with run_reported(reporter_from_args(args)) as reporter:`` whether or not it is a job.
    argv : sequence of str or None, keyword-only
        Reported in ``started`` (default ``sys.argv[1:]``).
    **reporter_options
        Passed to :class:`JobReporter` when ``job_dir`` is a path.

    Yields
    ------
    JobReporter or None
        Set ``reporter.outputs`` to what ``done`` should report.

    Notes
    -----
    ``CancelledError`` and ``KeyboardInterrupt`` become ``cancelled``; any other exception becomes
    ``error`` with ``message`` and ``type`` (and ``traceback`` when it is not a
    :class:`~napari_medseg.errors.MedsegError`, i.e. a bug); ``SystemExit(0)`` counts as done.
    """
    if job_dir is None:
        yield None
        return
    owned = not isinstance(job_dir, JobReporter)
    reporter = JobReporter(job_dir, **reporter_options) if owned else job_dir
    lock: guard.OutputLock | None = None
    try:
        reporter.emit(
            EventType.STARTED,
            argv=list(sys.argv[1:] if argv is None else argv),
            pid=os.getpid(),
            pid_create_time=guard.create_time_of(os.getpid()),
            host=socket.gethostname(),
        )
        try:
            lock = _child_output_lock(reporter)
            yield reporter
        except (CancelledError, KeyboardInterrupt) as exc:
            message = str(exc) or "cancelled"
            _emit_final(reporter, EventType.CANCELLED, message=message, reason=reporter.cancel.reason)
            raise
        except SystemExit as exc:
            if exc.code in (None, 0):
                _emit_final(reporter, EventType.DONE, outputs=reporter.outputs)
            else:
                _emit_final(reporter, EventType.ERROR, message=f"exited with {exc.code}", type="SystemExit")
            raise
        except BaseException as exc:
            fields: dict[str, Any] = {"message": str(exc) or type(exc).__name__, "type": type(exc).__name__}
            if not isinstance(exc, MedsegError):
                fields["traceback"] = "".join(traceback.format_exception(exc))
            _emit_final(reporter, EventType.ERROR, **fields)
            raise
        else:
            reporter.emit(EventType.DONE, outputs=reporter.outputs)
    finally:
        if lock is not None:
            with contextlib.suppress(OSError):
                lock.release()
        if owned:
            reporter.close()


def _child_output_lock(reporter: JobReporter) -> guard.OutputLock | None:
    """In a job's child: take the lock on the output this command writes (None if it writes none).

    The command is this process's own argv (what it really runs), parsed as start_job parsed it; a
    job that is ending is given a few seconds to release the output.

    Raises
    ------
    InvalidInputError
        If another job holds the output (the message names it).
    """
    if not reporter.writes_events:  # torchrun ranks other than 0 share rank 0's lock
        return None
    argv = list(sys.argv[1:])
    if "--job-dir" in argv:
        index = argv.index("--job-dir")
        del argv[index : index + 2]
    kind = "selftest" if argv[:2] == ["jobs", "selftest"] else (argv[0] if argv else "")
    lock = _output_lock(kind, argv, os.getcwd()) if kind in {str(k) for k in JobKind} else None
    if lock is not None:
        lock.acquire(timeout_s=_OUTPUT_LOCK_WAIT_S, job_id=reporter.folder.name)
    return lock


def _emit_final(reporter: JobReporter, event: str, **fields: Any) -> None:
    # on the way out of an exception: a failing write (full disk) must not hide the original error
    try:
        reporter.emit(event, **fields)
    except (OSError, InvalidInputError) as exc:
        print(f"napari-medseg: could not write the {event!r} event: {exc}", file=sys.stderr)


def add_job_dir_argument(parser: argparse.ArgumentParser) -> None:
    """Add the hidden ``--job-dir DIR`` option that :func:`start_job` passes to a job's child."""
    parser.add_argument("--job-dir", dest="job_dir", metavar="DIR", default=None, help=argparse.SUPPRESS)


def reporter_from_args(args: argparse.Namespace, **reporter_options: Any) -> JobReporter | None:
    """A :class:`JobReporter` for ``args.job_dir``, or None when the command is not run as a job.

    Raises
    ------
    InvalidInputError
        If ``--job-dir`` names a folder that does not exist.
    """
    job_dir = getattr(args, "job_dir", None)
    return None if job_dir is None else JobReporter(job_dir, **reporter_options)


# --------------------------------------------------------------------------------------------------
# reading events (either side)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# process identity: pid + creation time + a command line naming the job folder (psutil, in _job_guard),
# so a reused pid or an unrelated process is never mistaken for the job or signalled
# --------------------------------------------------------------------------------------------------

# the Popen objects of the children this process started, so they are reaped (no zombies) and their
# exit codes known; any Job object for the same id in this process uses them
_CHILDREN: dict[str, subprocess.Popen] = {}
_CHILDREN_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------------


class _Summary:
    """What the events read so far say; updated incrementally."""

    def __init__(self) -> None:
        self.offset = 0
        self.count = 0
        self.started: dict | None = None
        self.final: dict | None = None
        self.progress: dict | None = None
        self.epoch: dict | None = None
        self.checkpoint: dict | None = None
        self.metrics: dict[str, dict] = {}
        self.recent: collections.deque[dict] = collections.deque(maxlen=50)

    def update(self, events: list[dict]) -> None:
        for event in events:
            self.count += 1
            self.recent.append(event)
            name = event.get("event")
            if name == EventType.STARTED:
                self.started = event
            elif name == EventType.PROGRESS:
                self.progress = event
            elif name == EventType.EPOCH:
                self.epoch = event
            elif name == EventType.CHECKPOINT:
                self.checkpoint = event
            elif name == EventType.METRIC and "name" in event:
                self.metrics[str(event["name"])] = event
            elif name in _FINAL_EVENTS and self.final is None:
                self.final = event


class Job:
    """A background job, attached through its folder (from this or any other process).

    Parameters
    ----------
    folder : str or os.PathLike
        The job folder (``<jobs_root>/<job_id>``).

    Attributes
    ----------
    id, kind : str
        The job id (also the folder name) and its :class:`JobKind`.
    folder : pathlib.Path
        The job folder.
    argv : list of str
        The ``medseg`` arguments the child runs (without ``--job-dir``).
    created : float
        Unix time the job was created.

    Raises
    ------
    FileFormatError
        If ``folder/job.json`` is missing or is not a job record.

    Notes
    -----
    Methods that wait (:meth:`cancel`, :meth:`wait`) block the calling thread; from a GUI call them
    in a worker, or use :meth:`request_cancel` and poll :meth:`status`.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        from filelock import FileLock

        self.folder = Path(folder)
        record = self._record()
        self.id = record["id"]
        self.kind = record["kind"]
        self.argv = list(record["argv"])
        self.created = float(record["created"])
        self._lock = threading.RLock()
        self._file_lock = FileLock(str(self.folder / _LOCK_FILE), timeout=_RECORD_LOCK_WAIT_S)
        self._summary = _Summary()

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r}, folder={str(self.folder)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.folder.resolve() == self.folder.resolve()

    def __hash__(self) -> int:
        return hash(self.folder.resolve())

    # -- job.json -----------------------------------------------------------------------------------

    def _record(self) -> dict:
        # a record is data anyone who can write the jobs folder may have crafted: read a bounded
        # regular file (never a FIFO or a link), then check every field before any use
        path = self.folder / JOB_FILE
        try:
            data = guard.read_regular_file(path, max_bytes=guard.MAX_RECORD_BYTES, what="job record")
            record = json.loads(data.decode("utf-8"))
        except FileNotFoundError as exc:
            raise FileFormatError(f"{path}: no such job record (is {self.folder} a job folder?)") from exc
        except (OSError, ValueError, RecursionError) as exc:
            raise FileFormatError(f"{path}: cannot read the job record: {exc}") from exc
        return guard.check_record(record, path=path, folder_name=self.folder.name, kinds=[str(k) for k in JobKind])

    @property
    def record(self) -> dict:
        """A fresh copy of ``job.json`` (pid, host, cwd, cancel requests, signals, links...)."""
        return self._record()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # serialise read-modify-write of job.json between processes (two GUIs, a GUI and the CLI)
        with self._lock:
            try:
                with self._file_lock:
                    yield
            except TimeoutError as exc:  # filelock.Timeout
                raise FileFormatError(f"{self.folder / _LOCK_FILE}: the job record stays locked: {exc}") from None

    def _update_record(self, **fields: Any) -> dict:
        with self._locked():
            record = self._record()
            for key, value in fields.items():
                if key == "signals":
                    record.setdefault("signals", []).extend(value)
                else:
                    record[key] = value
            write_text_atomic(self.folder / JOB_FILE, json.dumps(record, indent=2) + "\n")
            return record

    # -- events and status ----------------------------------------------------------------------------

    def read_events(self, offset: int = 0) -> tuple[list[dict], int]:
        """The complete events from byte ``offset`` and the offset to pass next time.

        See :func:`read_events`; never blocks, never returns a half-written line.
        """
        return read_events(self.folder, offset)

    def _refresh(self) -> _Summary:
        # read on until the end, a bounded chunk at a time: memory stays bounded (the summary keeps
        # the last events only), and a huge file is read at most _MAX_REFRESH_CHUNKS chunks per call
        with self._lock:
            for _ in range(_MAX_REFRESH_CHUNKS):
                before = self._summary.offset
                events, self._summary.offset = read_events(self.folder, before)
                self._summary.update(events)
                if self._summary.offset == before or self._summary.final is not None:
                    break
            return self._summary

    def _liveness(self, record: dict) -> bool | None:
        """True/False when known; None when it cannot be checked here (another host, no pid yet)."""
        with _CHILDREN_LOCK:
            popen = _CHILDREN.get(self.id)
        if popen is not None:
            returncode = popen.poll()
            if returncode is None:
                return True
            with contextlib.suppress(OSError):
                if record.get("returncode") != returncode:
                    self._update_record(returncode=returncode)
                with _CHILDREN_LOCK:  # reaped and recorded: later checks go by pid like anyone else's
                    _CHILDREN.pop(self.id, None)
            return False
        if record.get("host") != socket.gethostname():
            return None
        pid, create_time = self._identity(record)
        if pid is None:
            return None
        return guard.process_if_same(pid, create_time, self.folder) is not None

    def _identity(self, record: dict) -> tuple[int | None, float | None]:
        """The job's (pid, creation time): from the record, else from the ``started`` event."""
        if record.get("pid") is not None:
            return record["pid"], record.get("pid_create_time")
        started = self._refresh().started  # the parent died before recording the pid
        if started is None:
            return None, None
        pid, create_time = started.get("pid"), started.get("pid_create_time")
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
            return None, None
        if isinstance(create_time, bool) or not isinstance(create_time, (int, float)) or not math.isfinite(create_time):
            create_time = None
        return pid, create_time

    def check_identity(self) -> None:
        """Refuse to act on a job whose record names a running process that is not provably its own.

        Raises
        ------
        InvalidInputError
            If the recorded pid runs but the record has no creation time or another one.
        """
        record = self._record()
        if record.get("host") != socket.gethostname():
            return
        with _CHILDREN_LOCK:
            if self.id in _CHILDREN:  # started by this process: the Popen object is its identity
                return
        pid, create_time = self._identity(record)
        problem = guard.identity_problem(
            pid, create_time, where=f"job {self.id}: {self.folder / JOB_FILE}", job_dir=self.folder
        )
        if problem:
            raise InvalidInputError(problem)

    def is_alive(self) -> bool:
        """Whether the child process still runs.

        For a job started on another host (a shared jobs folder) this cannot be checked: it is
        True until a final event arrives.
        """
        alive = self._liveness(self._record())
        return not self.status().is_final if alive is None else alive

    def status(self) -> JobStatus:
        """The job's :class:`JobStatus`, from its events and its process (module docstring)."""
        with self._lock:
            summary = self._refresh()
            if summary.final is not None:
                return self._final_status(_FINAL_EVENTS[summary.final["event"]])
            record = self._record()
            alive = self._liveness(record)
            if alive is None:
                if record.get("host") != socket.gethostname():
                    return JobStatus.RUNNING if summary.started is not None else JobStatus.PENDING
                # no pid: the spawn failed, or the parent died right after creating the folder
                if record.get("status") in (JobStatus.LOST, JobStatus.FAILED):
                    return JobStatus(record["status"])
                alive = time.time() - self.created < _PENDING_GRACE_S
            if alive:
                return JobStatus.RUNNING if summary.started is not None else JobStatus.PENDING
            # the process is gone: its final line may have landed between the two reads
            summary = self._refresh()
            if summary.final is not None:
                return self._final_status(_FINAL_EVENTS[summary.final["event"]])
            return self._final_status(JobStatus.CANCELLED if record.get("cancel_requested") else JobStatus.LOST)

    def _final_status(self, status: JobStatus) -> JobStatus:
        # cache what was observed in job.json; a reader without write access just does not cache
        with contextlib.suppress(OSError, FileFormatError):
            if self._record().get("status") != status:
                self._update_record(status=str(status))
        return status

    def summary(self) -> dict:
        """What ``medseg jobs show`` reports, as a JSON-ready dict.

        Keys: ``id, kind, status, argv, created, pid, host, folder, events`` (the count), ``started,
        progress, epoch, checkpoint`` (the last such event or None), ``metrics`` (name -> the last
        ``metric`` event), ``final`` (the done/error/cancelled event or None), ``cancel_requested,
        signals, returncode, resumed_from, resumed_by``.
        """
        status = self.status()
        record = self._record()
        with self._lock:
            summary = self._summary
            return {
                "id": self.id,
                "kind": self.kind,
                "status": str(status),
                "argv": self.argv,
                "created": self.created,
                "pid": record.get("pid"),
                "host": record.get("host"),
                "folder": str(self.folder),
                "events": summary.count,
                "started": summary.started,
                "progress": summary.progress,
                "epoch": summary.epoch,
                "checkpoint": summary.checkpoint,
                "metrics": dict(summary.metrics),
                "final": summary.final,
                "cancel_requested": record.get("cancel_requested"),
                "signals": record.get("signals", []),
                "returncode": record.get("returncode"),
                "resumed_from": record.get("resumed_from"),
                "resumed_by": record.get("resumed_by"),
            }

    def last_events(self, n: int = 10) -> list[dict]:
        """The last ``n`` events (at most 50 are kept in memory).

        Raises
        ------
        InvalidInputError
            If ``n`` is negative.
        """
        if n < 0:
            raise InvalidInputError(f"n={n!r} must be >= 0")
        events = list(self._refresh().recent)
        return events[-n:] if n else []

    # -- control --------------------------------------------------------------------------------------

    def wait(self, timeout_s: float | None = None) -> JobStatus:
        """Wait until the job has a final status and its process has exited; return the status.

        Parameters
        ----------
        timeout_s : float or None
            Give up after this many seconds and return the status then (maybe still running);
            None waits as long as it takes. Default None.

        Raises
        ------
        InvalidInputError
            If ``timeout_s`` is negative.
        """
        if timeout_s is not None and not timeout_s >= 0:
            raise InvalidInputError(f"timeout_s={timeout_s!r} must be >= 0 or None")
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status()
            if status.is_final and not self._alive_here():
                return status
            if time.monotonic() >= deadline:
                return status
            time.sleep(_POLL_S)

    def _alive_here(self) -> bool:
        return bool(self._liveness(self._record()))

    def _wait_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._alive_here():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    def request_cancel(self) -> None:
        """Ask the child to stop: create the ``cancel`` flag file and record the request. Returns at once.

        The child checks the flag between units of work (batches, epochs), writes a checkpoint and
        emits ``cancelled``.
        """
        write_text_atomic(self.folder / CANCEL_FILE, f"{time.time()}\n")
        if not self._record().get("cancel_requested"):
            self._update_record(cancel_requested=time.time())

    def cancel(self, *, timeout_s: float = 30.0, kill_after_s: float | None = None) -> JobStatus:
        """Cancel the job and wait for it to stop; return the final status.

        First the ``cancel`` flag file (the child stops cleanly at its next check); if the process
        still runs after ``timeout_s``, SIGTERM (the child's handler sets its cancel flag, which also
        reaches code that does not watch the folder); after another ``kill_after_s``, SIGKILL to the
        child's whole process group (data loader workers included), as SlicerMONAIAuto3DSeg kills
        the process tree. A job killed after a cancel request is reported ``cancelled``, not ``lost``.
        Cancelling a finished job does nothing and returns its status.

        Parameters
        ----------
        timeout_s : float, keyword-only
            Seconds to wait after the flag before SIGTERM. Default 30.
        kill_after_s : float or None, keyword-only
            Seconds to wait after SIGTERM before SIGKILL. Default: ``timeout_s``.

        Raises
        ------
        InvalidInputError
            If a timeout is negative, or the record names a running process that cannot be proven
            to be this job's (no creation time, or another one): nothing is signalled then.

        Notes
        -----
        A job on another host only gets the flag: signals cannot reach it. A process is this job's
        only when its pid and its creation time (psutil) both match the record.
        """
        kill_after_s = timeout_s if kill_after_s is None else kill_after_s
        for name, value in (("timeout_s", timeout_s), ("kill_after_s", kill_after_s)):
            if not value >= 0:
                raise InvalidInputError(f"{name}={value!r} must be >= 0")
        self.check_identity()
        status = self.status()
        if status.is_final:
            return status
        self.request_cancel()
        if self._wait_exit(timeout_s):
            return self.wait(timeout_s=1.0)
        self._send_signal(signal.SIGTERM, tree=False)
        if self._wait_exit(kill_after_s):
            return self.wait(timeout_s=1.0)
        self._send_signal(getattr(signal, "SIGKILL", signal.SIGTERM), tree=True)
        self._wait_exit(10.0)
        return self.wait(timeout_s=1.0)

    def _process(self):
        """This job's running process (a ``psutil.Process``: pid and creation time match), or None."""
        import psutil

        record = self._record()
        if record.get("host") != socket.gethostname():
            return None
        with _CHILDREN_LOCK:
            popen = _CHILDREN.get(self.id)
        if popen is not None:
            if popen.poll() is not None:
                return None
            with contextlib.suppress(psutil.Error):
                return psutil.Process(popen.pid)
            return None
        pid, create_time = self._identity(record)
        return guard.process_if_same(pid, create_time, self.folder)

    def _send_signal(self, sig: int, *, tree: bool) -> bool:
        import psutil

        process = self._process()
        if process is None:  # never signal a pid that is not (or no longer) this job's process
            return False
        targets = [process]
        if tree:  # the children (data loader workers...) first collected, then all signalled
            with contextlib.suppress(psutil.Error):
                targets += process.children(recursive=True)
        sent = False
        for target in targets:
            # psutil re-checks the pid's creation time before signalling, so a reused pid is spared
            with contextlib.suppress(psutil.Error):
                target.send_signal(sig)
                sent = sent or target is process
        if sent:
            self._update_record(signals=[{"signal": signal.Signals(sig).name, "time": time.time()}])
        return sent

    def resume(self, *, python: str | os.PathLike | None = None) -> Job:
        """Start a new job that continues this one: the same validated request with ``--resume``.

        The record is data, never code: its command must be its kind's ``medseg`` subcommand and its
        arguments ones that subcommand's parser accepts; its extra environment may only set the
        variables :func:`start_job` allows. The new job runs ``python -m napari_medseg.cli`` with
        this interpreter (or ``python``, given by the caller), never one the record names, in the
        record's working folder. ``--resume`` is added for the commands that have it (train,
        finetune, refine, selftest); the others run again. The new job records ``resumed_from``
        (this id) and this one ``resumed_by``.

        Parameters
        ----------
        python : str, os.PathLike or None, keyword-only
            The interpreter for the new child (default ``sys.executable``; in 3D Slicer, pass
            ``PythonSlicer``).

        Returns
        -------
        Job
            The new job.

        Raises
        ------
        InvalidInputError
            If this job is still pending or running (cancel it first) or finished with ``done``, or
            its record does not hold a valid request (the message names the record and the field).
        """
        status = self.status()
        if not status.is_final:
            raise InvalidInputError(f"job {self.id} is {status}; cancel it before resuming it")
        if status == JobStatus.DONE:
            raise InvalidInputError(f"job {self.id} is done; there is nothing to resume")
        record = self._record()
        where = f"job {self.id}: {self.folder / JOB_FILE}"
        request = guard.parse_request(self.kind, self.argv, where=where)
        env = guard.check_env(record.get("env"), where=where)
        cwd = record.get("cwd")
        if not isinstance(cwd, str) or not Path(cwd).is_absolute() or not Path(cwd).is_dir():
            raise InvalidInputError(f"{where}: cwd={cwd!r:.80} is not an existing absolute folder")
        argv = list(self.argv)
        if hasattr(request, "resume") and "--resume" not in argv:
            argv.append("--resume")
        self._wait_exit(_OUTPUT_LOCK_WAIT_S)  # a job that has just ended may still hold its output
        new = _launch(
            self.kind,
            argv,
            jobs_root=self.folder.parent,
            env=env or None,
            cwd=cwd,
            python=python,
            resumed_from=self.id,
        )
        self._update_record(resumed_by=new.id)
        return new

    def log_tail(self, n: int = 20, *, stream: LogStream | str = LogStream.BOTH) -> str:
        """The last ``n`` lines of the child's ``stdout.log`` and/or ``stderr.log``.

        Parameters
        ----------
        n : int
            Lines per file. Default 20.
        stream : {"both", "stdout", "stderr"}, keyword-only
            Which file; ``"both"`` gives each non-empty file under a ``==> name <==`` header, as
            ``tail`` does. Default "both".

        Raises
        ------
        InvalidInputError
            If ``n`` is negative or ``stream`` is not a :class:`LogStream`.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInputError(f"n={n!r} must be a non-negative number of lines")
        stream = look_up_option(stream, LogStream, name="stream")
        files = {LogStream.STDOUT: [STDOUT_FILE], LogStream.STDERR: [STDERR_FILE]}
        names = files.get(stream, [STDOUT_FILE, STDERR_FILE])
        parts = []
        for name in names:
            lines = _tail_lines(self.folder / name, n)
            if stream == LogStream.BOTH:
                if lines:
                    parts.append(f"==> {name} <==\n" + "".join(lines))
            else:
                parts.append("".join(lines))
        return "\n".join(p.rstrip("\n") for p in parts if p) + ("\n" if any(parts) else "")


def _tail_lines(path: Path, n: int, *, block: int = 65536) -> list[str]:
    """The last ``n`` lines of a text file, reading from the end in blocks."""
    if n == 0:
        return []
    try:
        with guard.open_regular_file(path, what="log file") as fh:
            fh.seek(0, os.SEEK_END)
            position = fh.tell()
            data = b""
            while position > 0 and data.count(b"\n") <= n and len(data) < _MAX_READ_BYTES:
                step = min(block, position)
                position -= step
                fh.seek(position)
                data = fh.read(step) + data
    except FileNotFoundError:
        return []
    except FileFormatError as exc:  # a FIFO or a link where the log should be: say so, read nothing
        return [f"({exc})\n"]
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    return lines[-n:]


def _check_argv(argv: Sequence[str]) -> list[str]:
    return guard.check_argv(argv, where="start_job")


# the kinds whose command writes one output (--output, or predict's OUT) that the job locks
_OUTPUT_KINDS = frozenset({JobKind.TRAIN, JobKind.FINETUNE, JobKind.REFINE, JobKind.PREDICT, JobKind.SELFTEST})


def _output_lock(kind: str, argv: Sequence[str], cwd: str | os.PathLike) -> guard.OutputLock | None:
    """The lock on the output ``medseg <argv>`` writes, or None (no output, or argv the parser refuses:
    the child then reports that itself)."""
    if kind not in _OUTPUT_KINDS:
        return None
    try:
        request = guard.parse_request(str(kind), argv, where="start_job")
    except InvalidInputError:
        return None
    output = guard.output_of_request(request, cwd)
    return None if output is None else guard.OutputLock(output)


def _new_job_id(kind: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{uuid.uuid4().hex[:6]}"


def start_job(
    kind: JobKind | str,
    argv: Sequence[str],
    *,
    jobs_root: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    python: str | os.PathLike | None = None,
) -> Job:
    """Start ``medseg <argv>`` as a detached background job and return it at once.

    The child is ``[sys.executable, "-m", "napari_medseg.cli", *argv, "--job-dir", folder]`` in a
    new session (POSIX) or a new process group (Windows), with stdin closed and stdout/stderr in the
    job folder, so it survives the GUI or terminal that started it.

    Parameters
    ----------
    kind : JobKind or str
        What the job runs (``"train"``, ``"finetune"``, ``"refine"``, ``"predict"``, ``"selftest"``).
    argv : sequence of str
        The ``medseg`` arguments, e.g. ``["train", "--config", "c.yaml"]``; without ``--job-dir``.
    jobs_root : str, os.PathLike or None, keyword-only
        Where job folders live (default :func:`default_jobs_root`).
    env : mapping or None, keyword-only
        Extra environment variables for the child, on top of this process's environment; recorded
        in ``job.json`` so :meth:`Job.resume` uses them again. Only ``MEDSEG_*``,
        ``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
        ``PYTORCH_CUDA_ALLOC_CONF`` may be set (others could make the child run other code).
    cwd : str, os.PathLike or None, keyword-only
        The child's working folder, against which relative paths in ``argv`` resolve (default: the
        current one); recorded for :meth:`Job.resume`.
    python : str, os.PathLike or None, keyword-only
        The Python interpreter that runs the child (default ``sys.executable``). Inside 3D Slicer,
        whose ``sys.executable`` may be the application, pass the path of ``PythonSlicer``.
        Recorded for information only: :meth:`Job.resume` never runs an interpreter a record names.

    Returns
    -------
    Job
        Its status is ``pending`` until the child emits ``started``.

    Raises
    ------
    InvalidInputError
        If ``kind`` is unknown, ``argv`` is not a non-empty list of strings or contains
        ``--job-dir``/``--``, ``env`` sets a variable not allowed, ``cwd`` is not a folder,
        ``python`` is not an existing file, the job folder cannot be created under ``jobs_root``,
        or another job holds the output ``argv`` names (``--output``, predict's ``OUT``: the
        message names that job).
    MedsegError
        If the process cannot be started (the job is recorded as ``lost``).
    """
    return _launch(kind, argv, jobs_root=jobs_root, env=env, cwd=cwd, python=python, resumed_from=None)


def _launch(
    kind: JobKind | str,
    argv: Sequence[str],
    *,
    jobs_root: str | os.PathLike | None,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike | None,
    python: str | os.PathLike | None,
    resumed_from: str | None,
) -> Job:
    kind = look_up_option(kind, JobKind, name="kind")
    argv = _check_argv(argv)
    interpreter = os.fspath(python) if python is not None else sys.executable
    if not interpreter or not Path(interpreter).is_file():
        raise InvalidInputError(f"python={interpreter!r} is not an existing Python interpreter")
    extra_env = guard.check_env(env, where="start_job")
    workdir = Path(cwd) if cwd is not None else Path.cwd()
    if not workdir.is_dir():
        raise InvalidInputError(f"cwd={str(workdir)!r} is not an existing folder")
    lock = _output_lock(kind, argv, workdir)
    if lock is not None and lock.output.parent.is_dir():  # refuse now, naming the job that writes there
        lock.acquire(timeout_s=0, job_id=None)  # (the child takes and holds the lock itself)
        lock.release()
    root = _resolve_root(jobs_root)
    job_id = _new_job_id(kind)
    folder = root / job_id
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise InvalidInputError(f"jobs_root={str(root)!r}: cannot create the job folder there: {exc}") from exc
    from napari_medseg import __version__

    record = {
        "id": job_id,
        "kind": str(kind),
        "argv": argv,
        "cwd": str(workdir.resolve()),
        "env": extra_env,
        "created": time.time(),
        "host": socket.gethostname(),
        "python": interpreter,
        "version": __version__,
        "status": str(JobStatus.PENDING),
        "pid": None,
        "resumed_from": resumed_from,
    }
    write_text_atomic(folder / JOB_FILE, json.dumps(record, indent=2) + "\n")
    job = Job(folder)
    command = [interpreter, "-m", "napari_medseg.cli", *argv, "--job-dir", str(folder.resolve())]
    child_env = {**os.environ, **extra_env, "PYTHONUNBUFFERED": "1"}
    options: dict[str, Any] = {}
    if os.name == "nt":  # pragma: no cover
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
    else:
        options["start_new_session"] = True
    try:
        with open(folder / STDOUT_FILE, "ab") as out, open(folder / STDERR_FILE, "ab") as err:
            popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir, env=child_env, **options
            )
    except OSError as exc:
        job._update_record(status=str(JobStatus.LOST), error=f"could not start {command[0]}: {exc}")
        raise MedsegError(f"job {job_id}: could not start {command[0]}: {exc}") from exc
    with _CHILDREN_LOCK:
        _CHILDREN[job_id] = popen
    job._update_record(pid=popen.pid, pid_create_time=guard.create_time_of(popen.pid))
    return job


def scan_jobs(jobs_root: str | os.PathLike | None = None) -> tuple[list[Job], list[tuple[Path, str]]]:
    """The jobs under ``jobs_root`` (oldest first) and the folders skipped, with the reason.

    Never blocks and never follows a link out of the jobs folder: a job folder that is a symlink, a
    ``job.json`` that is a symlink, a FIFO, too big, not JSON or not a valid record is skipped and
    reported. Folders without a ``job.json`` (such as the plugin's ``runs/``) are not jobs.

    Returns
    -------
    jobs : list of Job
    problems : list of (Path, str)
        The skipped folders and why.
    """
    root = _resolve_root(jobs_root)
    jobs: list[Job] = []
    problems: list[tuple[Path, str]] = []
    try:
        entries = sorted(root.iterdir()) if root.is_dir() else []
    except OSError as exc:
        return [], [(root, f"cannot list the jobs folder: {exc.strerror or exc}")]
    for folder in entries:
        if folder.name.startswith("."):
            continue
        try:
            if folder.is_symlink():
                if (folder / JOB_FILE).exists():
                    problems.append((folder, "the job folder is a symbolic link; job folders must be real folders"))
                continue
            if not folder.is_dir() or not os.path.lexists(folder / JOB_FILE):
                continue
            jobs.append(Job(folder))
        except (FileFormatError, OSError) as exc:
            problems.append((folder, str(exc)))
    return sorted(jobs, key=lambda job: (job.created, job.id)), problems


def list_jobs(jobs_root: str | os.PathLike | None = None) -> list[Job]:
    """All jobs under ``jobs_root`` (default :func:`default_jobs_root`), oldest first.

    A folder whose ``job.json`` cannot be used (see :func:`scan_jobs`) is skipped with a warning.
    """
    jobs, problems = scan_jobs(jobs_root)
    for folder, why in problems:
        warnings.warn(f"skipped {folder}: {why}", stacklevel=2)
    return jobs


def get_job(id_or_prefix: str, *, jobs_root: str | os.PathLike | None = None) -> Job:
    """The job whose id is ``id_or_prefix`` or starts with it (a unique prefix).

    Parameters
    ----------
    id_or_prefix : str
        A job id as ``medseg jobs list`` shows it, or a unique prefix of one; also accepted: the
        job's folder path.
    jobs_root : str, os.PathLike or None, keyword-only
        Default :func:`default_jobs_root`.

    Raises
    ------
    InvalidInputError
        If no job matches (the message names the closest ids) or the prefix matches several.
    """
    text = str(id_or_prefix).strip()
    if not text:
        raise InvalidInputError("job id is empty; see 'medseg jobs list'")
    as_path = Path(text)
    if as_path.is_dir() and os.path.lexists(as_path / JOB_FILE):
        return Job(as_path)
    root = _resolve_root(jobs_root)
    # an id is a name in the jobs folder, never a path out of it
    if "/" not in text and os.sep not in text and text not in (".", "..") and os.path.lexists(root / text / JOB_FILE):
        if (root / text).is_symlink():
            raise FileFormatError(f"{root / text}: the job folder is a symbolic link; job folders must be real folders")
        return Job(root / text)
    with warnings.catch_warnings():  # an unusable record elsewhere in the folder is not this lookup's error
        warnings.simplefilter("ignore")
        ids = [job.id for job in list_jobs(root)]
    matches = [job_id for job_id in ids if job_id.startswith(text)]
    if len(matches) == 1:
        return Job(root / matches[0])
    if matches:
        raise InvalidInputError(f"job id {text!r} is ambiguous in {root}: it starts {', '.join(matches)}")
    # ids start with a timestamp, so compare the part a user would mistype against the whole id too
    raise InvalidInputError(
        f"no job {text!r} in {root} ({len(ids)} job(s); see 'medseg jobs list')" + close_matches_message(text, ids)
    )


# --------------------------------------------------------------------------------------------------
# a small real job for tests and demos
# --------------------------------------------------------------------------------------------------

SELFTEST_CHECKPOINT = "selftest-checkpoint.json"


def _selftest_problem():
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.normal(size=(32, 8))
    b = a @ rng.normal(size=8) + 0.1 * rng.normal(size=32)
    lr = 1.0 / np.linalg.eigvalsh(a.T @ a / len(a)).max()
    return a, b, lr


def run_selftest(
    output_dir: str | os.PathLike,
    *,
    steps: int,
    step_seconds: float = 0.0,
    checkpoint_every: int = 5,
    resume: bool = False,
    fail_at_step: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    emit: Callable[..., Any] | None = None,
) -> dict:
    """A small, deterministic, checkpointed computation that behaves like a training run.

    Gradient descent on a fixed least-squares problem (32 x 8, seed 0, step 1/L): each step is one
    gradient step, then a pause of ``step_seconds`` (one uninterruptible unit of work, like an
    epoch). It emits ``epoch``, ``metric`` (``loss``, the half mean squared residual) and
    ``checkpoint`` events, writes the checkpoint atomically every ``checkpoint_every`` steps, on
    cancel and at the end, and continues exactly from it with ``resume``: a run cancelled at any
    step and resumed ends with the same state, bit for bit, as an uninterrupted one.

    Parameters
    ----------
    output_dir : str or os.PathLike
        Folder for ``selftest-checkpoint.json`` (created if needed; reported as an absolute path).
    steps : int
        Number of gradient steps in all (>= 1).
    step_seconds : float, keyword-only
        Pause after each step, seconds. Default 0.
    checkpoint_every : int, keyword-only
        Checkpoint period in steps (>= 1). Default 5.
    resume : bool, keyword-only
        Continue from the checkpoint in ``output_dir`` (start afresh, with a ``log`` event, when
        there is none). Default False.
    fail_at_step : int or None, keyword-only
        Raise ``RuntimeError`` when this step begins, to exercise failure handling. Default None.
    progress : callable or None, keyword-only
        ``progress(done, total)`` after each step.
    cancel : object with ``is_set()`` or None, keyword-only
        Checked before each step; when set, the checkpoint is written and CancelledError raised.
    emit : callable or None, keyword-only
        ``emit(event, **fields)``, e.g. :meth:`JobReporter.emit`.

    Returns
    -------
    dict
        ``{"steps": steps, "loss": float, "x": list of 8 floats, "checkpoint": str}``.

    Raises
    ------
    InvalidInputError
        If a count is out of range, ``step_seconds`` is negative, or the checkpoint does not fit.
    CancelledError
        If ``cancel`` is set before the last step (the checkpoint holds the last finished step).
    RuntimeError
        At ``fail_at_step``.
    """
    import numpy as np

    for name, value, low in (("steps", steps, 1), ("checkpoint_every", checkpoint_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(f"{name}={value!r} must be an integer >= {low}")
    if not step_seconds >= 0:
        raise InvalidInputError(f"step_seconds={step_seconds!r} must be >= 0")
    emit = emit or (lambda event, **fields: None)
    folder = Path(output_dir).resolve()  # events carry absolute paths: readers run elsewhere
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SELFTEST_CHECKPOINT
    a, b, lr = _selftest_problem()
    x, start = np.zeros(a.shape[1]), 0
    if resume and path.exists():
        try:
            state = json.loads(path.read_text())
            x, start = np.array(state["x"], dtype=float), int(state["step"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{path}: not a selftest checkpoint ({exc})") from exc
        if x.shape != (a.shape[1],) or not 0 <= start <= steps:
            raise InvalidInputError(
                f"{path}: checkpoint at step {start} with {x.size} values does not fit --steps {steps}"
            )
        emit(EventType.LOG, message=f"resumed from {path} at step {start}", level="info")
    elif resume:
        emit(EventType.LOG, message=f"no checkpoint in {folder}: starting from step 0", level="warning")

    def loss_of(x):
        return float(0.5 * np.mean((a @ x - b) ** 2))

    def save(step: int) -> None:
        write_text_atomic(path, json.dumps({"step": step, "x": x.tolist(), "loss": loss_of(x)}))
        emit(EventType.CHECKPOINT, path=str(path), epoch=step)

    for step in range(start, steps):
        if cancel is not None and cancel.is_set():
            save(step)
            raise CancelledError(f"selftest cancelled after step {step} of {steps}; the checkpoint is {path}")
        if fail_at_step is not None and step + 1 == fail_at_step:
            raise RuntimeError(f"selftest: failure injected at step {step + 1} (--fail-at-step)")
        x = x - lr * a.T @ (a @ x - b) / len(a)
        if step_seconds:
            time.sleep(step_seconds)
        emit(EventType.EPOCH, epoch=step + 1, epochs=steps)
        emit(EventType.METRIC, name="loss", value=loss_of(x), epoch=step + 1)
        if progress is not None:
            progress(step + 1, steps)
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save(step + 1)
    save(steps)
    return {"steps": steps, "loss": loss_of(x), "x": x.tolist(), "checkpoint": str(path)}
