"""The child's side of a job: :class:`JobReporter` appends events and watches for cancel;
:func:`run_reported` wraps a command's run in ``started`` ... ``done``/``error``/``cancelled``."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from napari_medseg._options import look_up_option
from napari_medseg.errors import CancelledError, InvalidInputError, MedsegError
from napari_medseg.jobs import guard
from napari_medseg.jobs.output_lock import OutputLock, output_lock
from napari_medseg.jobs.protocol import (
    _REQUIRED_FIELDS,
    CANCEL_FILE,
    EVENTS_FILE,
    _EVENT_NAME,
    EventType,
    JobKind,
    LogLevel,
    _json_default,
)

_OUTPUT_LOCK_WAIT_S = 5.0  # the child waits this long for a job that is ending to release the output


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
    >>> from napari_medseg.jobs import read_events
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
    lock: OutputLock | None = None
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


def _child_output_lock(reporter: JobReporter) -> OutputLock | None:
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
    lock = output_lock(kind, argv, os.getcwd()) if kind in {str(k) for k in JobKind} else None
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
