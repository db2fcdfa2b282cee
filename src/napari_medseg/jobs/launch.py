"""Starting a job: :func:`start_job` creates the job folder and its record and spawns the detached child."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_medseg._atomic import write_text_atomic
from napari_medseg._options import look_up_option
from napari_medseg.errors import InvalidInputError, MedsegError
from napari_medseg.jobs import guard
from napari_medseg.jobs.job import _CHILDREN, _CHILDREN_LOCK, Job
from napari_medseg.jobs.output_lock import output_lock
from napari_medseg.jobs.protocol import JOB_FILE, STDERR_FILE, STDOUT_FILE, JobKind, JobStatus, _resolve_root, new_run_name
from napari_medseg.jobs.requests import Request, request_from_argv


def _check_argv(argv: Sequence[str]) -> list[str]:
    return guard.check_argv(argv, where="start_job")


def _new_job_id(kind: str) -> str:
    return new_run_name(kind)


def start_job(
    kind: Request | JobKind | str,
    argv: Sequence[str] | None = None,
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
    kind : Request, JobKind or str
        What the job runs: a typed request (:mod:`napari_medseg.jobs.requests`; the faces pass
        one), or a kind (``"train"``, ``"finetune"``, ``"refine"``, ``"predict"``, ``"register"``,
        ``"selftest"``) with ``argv``.
    argv : sequence of str or None
        With a kind: the ``medseg`` arguments, e.g. ``["train", "--config", "c.yaml"]``, without
        ``--job-dir``; they are parsed into the kind's request (an argv the parser refuses is
        started as given, and the child reports why it fails). None with a request.
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
    workdir = Path(cwd) if cwd is not None else Path.cwd()
    if isinstance(kind, Request):
        if argv is not None:
            raise InvalidInputError("start_job: give a request or a kind with argv, not both")
        request: Request | None = kind
    else:
        kind = look_up_option(kind, JobKind, name="kind")
        argv = _check_argv(argv)
        try:
            request = request_from_argv(kind, argv)
        except InvalidInputError:
            request = None  # started as given: the child's parser says what is wrong, in the job's events
    if request is not None:
        request = request.anchored(workdir)
        kind, argv = request.kind, request.to_argv()
    return _launch(kind, argv, jobs_root=jobs_root, env=env, cwd=cwd, python=python, resumed_from=None, request=request)


def _launch(
    kind: JobKind | str,
    argv: Sequence[str],
    *,
    jobs_root: str | os.PathLike | None,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike | None,
    python: str | os.PathLike | None,
    resumed_from: str | None,
    request: Request | None = None,
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
    lock = output_lock(kind, argv, workdir)
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
        "request": None if request is None else request.to_record(),
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
