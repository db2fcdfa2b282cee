"""The parent's side of a job: :class:`Job`, attached through its folder from any process.

Process identity: pid + creation time + a command line naming the job folder (psutil, in
:mod:`.guard`), so a reused pid or an unrelated process is never mistaken for the job or signalled.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_medseg._atomic import write_text_atomic
from napari_medseg._options import look_up_option
from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.jobs import guard
from napari_medseg.jobs.protocol import (
    _FINAL_EVENTS,
    _MAX_READ_BYTES,
    CANCEL_FILE,
    JOB_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    EventType,
    JobKind,
    JobStatus,
    LogStream,
    read_events,
)
from napari_medseg.jobs.requests import Request, request_from_argv, request_from_record

_LOCK_FILE = ".job.lock"
# a job whose parent died between creating the folder and recording the pid is "pending" for this long
_PENDING_GRACE_S = 60.0
_POLL_S = 0.05
_OUTPUT_LOCK_WAIT_S = 5.0  # a job that has just ended may still hold its output this long
_RECORD_LOCK_WAIT_S = 10.0
_MAX_REFRESH_CHUNKS = 64  # x 16 MiB: 1 GiB of events per status check at most

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
        request = self._checked_request(record, where=where)
        env = guard.check_env(record.get("env"), where=where)
        cwd = record.get("cwd")
        if not isinstance(cwd, str) or not Path(cwd).is_absolute() or not Path(cwd).is_dir():
            raise InvalidInputError(f"{where}: cwd={cwd!r:.80} is not an existing absolute folder")
        if "resume" in {f.name for f in dataclasses.fields(request)}:
            request = request.replace(resume=True)
        argv = request.to_argv()
        from napari_medseg.jobs.launch import _launch  # launch imports this module

        self._wait_exit(_OUTPUT_LOCK_WAIT_S)  # a job that has just ended may still hold its output
        new = _launch(
            self.kind,
            argv,
            jobs_root=self.folder.parent,
            env=env or None,
            cwd=cwd,
            python=python,
            resumed_from=self.id,
            request=request,
        )
        self._update_record(resumed_by=new.id)
        return new

    @property
    def request(self) -> Request:
        """The job's typed request, read from ``job.json`` and checked (see :meth:`resume`).

        Raises
        ------
        InvalidInputError
            If the record's request (or, in a record written before requests, its argv) is not valid.
        """
        record = self._record()
        return self._checked_request(record, where=f"job {self.id}: {self.folder / JOB_FILE}")

    def _checked_request(self, record: dict, *, where: str) -> Request:
        """The record's request, checked field by field, agreeing with the record's kind and argv, and
        accepted by the ``medseg`` parser; a record from before requests: its argv, parsed."""
        if record.get("request") is None:
            return request_from_argv(self.kind, self.argv, where=where)
        request = request_from_record(record["request"], where=where)
        if request.kind != self.kind:
            raise InvalidInputError(f"{where}: request kind {str(request.kind)!r} is not the job's kind {self.kind!r}")
        if request.to_argv() != self.argv:
            raise InvalidInputError(f"{where}: argv {' '.join(self.argv)!r:.120} is not the request's command line")
        guard.parse_request(self.kind, request.to_argv(), where=where)  # the parser accepts it too
        return request

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
