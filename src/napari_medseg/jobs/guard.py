"""What keeps a job record data, never code: bounded reads, record and request validation,
process identity through psutil, and the lock on a job's output.

A job folder can be written by anyone who can write the jobs folder, so nothing in it is
trusted: ``job.json`` and the event and log files are read only when they are regular files of
bounded size (never through a symlink, never blocking on a FIFO); a record's fields are checked
before use; a process is taken for the job's only when its pid *and* its creation time match
the record; and ``resume`` re-launches this interpreter with a request whose command is one of
the job kinds and whose arguments the ``medseg`` parser accepts, never an executable or an
environment the record names.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_medseg.errors import FileFormatError, InvalidInputError

__all__ = [
    "MAX_RECORD_BYTES",
    "read_regular_file",
    "open_regular_file",
    "check_record",
    "check_argv",
    "check_env",
    "parse_request",
    "process_if_same",
    "identity_problem",
    "create_time_of",
    "output_of_request",
]

MAX_RECORD_BYTES = 1 << 20  # a job record is a few hundred bytes; a bigger file is not one
_MAX_ARGV_ITEMS = 1000
_MAX_ARG_CHARS = 8192
_MAX_PID = 2**31 - 1
_MAX_UNIX_TIME = 1e11  # year 5138: larger "times" are not times and break time.localtime
# two reads of a process's creation time can differ by the kernel's rounding of the boot time (1 s);
# a pid is reused only after the pid space wraps around, never within a second of the first start
CREATE_TIME_TOLERANCE_S = 1.0
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# environment variables a job may set for its child: napari-medseg's own and thread/device
# selection; never PATH, PYTHONPATH, LD_PRELOAD... which would run other code
_ENV_NAME_RE = re.compile(r"MEDSEG_[A-Z0-9_]+")
_ENV_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF"})


# ------------------------------------------------------------------------------------ bounded reads
@contextlib.contextmanager
def open_regular_file(path: str | os.PathLike, *, what: str = "file"):
    """Open ``path`` for reading only if it is a regular file (no symlink, FIFO, device, folder).

    The open never blocks (``O_NONBLOCK``: a FIFO without a writer would) and never follows a
    symlink (``O_NOFOLLOW``). Yields a binary file object.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    FileFormatError
        If it is a symlink or not a regular file, or cannot be opened.
    """
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise FileFormatError(f"{path}: the {what} is a symbolic link; only a regular file in its folder is read")
    if not stat.S_ISREG(info.st_mode):
        raise FileFormatError(f"{path}: the {what} is not a regular file (a FIFO, device or folder); not read")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the lstat and the open
            raise FileFormatError(f"{path}: the {what} is not a regular file; not read")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_regular_file(path: str | os.PathLike, *, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular_file`).

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    FileFormatError
        If it is not a regular file or is larger than ``max_bytes``.
    """
    with open_regular_file(path, what=what) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileFormatError(f"{path}: the {what} is larger than {max_bytes} bytes; not read")
    return data


# -------------------------------------------------------------------------------- record validation
def _finite_number(value: Any, low: float, high: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def check_argv(argv: Any, *, where: str) -> list[str]:
    """``argv`` as a list of strings, checked: non-empty, bounded, no NUL, no ``--job-dir``/``--``.

    Raises
    ------
    InvalidInputError
        Naming ``where`` and what is wrong.
    """
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        raise InvalidInputError(f"{where}: argv={argv!r:.80} must be a list of strings such as ['train', '--config', 'c.yaml']")
    argv = list(argv)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidInputError(f"{where}: argv={argv!r:.80} must be a non-empty list of strings")
    if len(argv) > _MAX_ARGV_ITEMS or any(len(a) > _MAX_ARG_CHARS for a in argv):
        raise InvalidInputError(
            f"{where}: argv must have at most {_MAX_ARGV_ITEMS} items of at most {_MAX_ARG_CHARS} characters"
        )
    if any("\0" in a for a in argv):
        raise InvalidInputError(f"{where}: argv contains a NUL character")
    for reserved in ("--job-dir", "--"):
        if reserved in argv or any(a.startswith("--job-dir=") for a in argv):
            raise InvalidInputError(f"{where}: argv must not contain {reserved!r}: start_job adds --job-dir itself")
    return argv


def check_env(env: Any, *, where: str) -> dict[str, str]:
    """Extra environment variables for a job's child, checked against the names a job may set.

    Allowed: ``MEDSEG_*`` and ``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
    ``PYTORCH_CUDA_ALLOC_CONF``; anything else (``PATH``, ``PYTHONPATH``, ``LD_PRELOAD``...) could
    make the child run other code, so it is refused.

    Raises
    ------
    InvalidInputError
        If ``env`` is not a mapping of strings or names a variable not allowed.
    """
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidInputError(f"{where}: env must be a mapping of variable names to strings")
    checked = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str) or "\0" in key + value:
            raise InvalidInputError(f"{where}: env must map variable names to strings, got {key!r}: {value!r:.40}")
        if not (_ENV_NAME_RE.fullmatch(key) or key in _ENV_NAMES):
            raise InvalidInputError(
                f"{where}: env variable {key!r} is not one a job may set (MEDSEG_*, "
                f"{', '.join(sorted(_ENV_NAMES))})"
            )
        checked[key] = value
    return checked


def check_record(record: Any, *, path: Path, folder_name: str, kinds: Sequence[str]) -> dict:
    """Check the fields of a job record read from ``path``; return it.

    Raises
    ------
    FileFormatError
        Naming ``path`` and the first bad field.
    """

    def bad(field: str, expected: str) -> FileFormatError:
        value = record.get(field, "<missing>") if isinstance(record, dict) else record
        return FileFormatError(f"{path}: not a job record: {field}={value!r:.80} (expected {expected})")

    if not isinstance(record, dict):
        raise FileFormatError(f"{path}: not a job record: the record is not a JSON object")
    job_id = record.get("id")
    if not isinstance(job_id, str) or not _ID_RE.fullmatch(job_id):
        raise bad("id", "a job id of letters, digits, '.', '_', '-'")
    if job_id != folder_name:
        raise bad("id", f"the folder's name {folder_name!r}")
    if record.get("kind") not in kinds:
        raise bad("kind", "one of " + ", ".join(kinds))
    try:
        check_argv(record.get("argv"), where=str(path))
    except InvalidInputError:
        raise bad("argv", "a non-empty list of command-line arguments") from None
    if not _finite_number(record.get("created"), 0, _MAX_UNIX_TIME):
        raise bad("created", "a unix time in seconds")
    pid = record.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= _MAX_PID):
        raise bad("pid", f"null or a process id in [1, {_MAX_PID}]")
    created = record.get("pid_create_time")
    if created is not None and not _finite_number(created, 0, _MAX_UNIX_TIME):
        raise bad("pid_create_time", "null or the process's creation time in unix seconds")
    for field in ("host", "cwd", "python", "version", "status", "resumed_from", "resumed_by"):
        if record.get(field) is not None and not isinstance(record[field], str):
            raise bad(field, "a string or null")
    if record.get("request") is not None and not isinstance(record["request"], dict):
        raise bad("request", "null or a JSON object (the typed request)")
    if not isinstance(record.get("signals", []), list):
        raise bad("signals", "a list")
    env = record.get("env")
    if env is not None and not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise bad("env", "a mapping of names to strings")
    return record


# ------------------------------------------------------------------------------------ the request
def parse_request(kind: str, argv: Sequence[str], *, where: str):
    """Parse a job's argv with the ``medseg`` parser; the typed arguments (an ``argparse.Namespace``).

    The command must be the job's kind (``jobs selftest`` for ``selftest``); the arguments must be
    ones its parser accepts. Parsing runs nothing: it only converts and checks the arguments.

    Raises
    ------
    InvalidInputError
        If the command is not the kind's or the parser refuses the arguments (the parser's message).
    """
    from napari_medseg.cli import build_parser

    argv = check_argv(argv, where=where)
    expected = ["jobs", "selftest"] if kind == "selftest" else [kind]
    if argv[: len(expected)] != expected:
        raise InvalidInputError(
            f"{where}: argv must start with {' '.join(expected)!r} for a {kind} job, got {' '.join(argv[:2])!r:.80}"
        )
    if any(a in ("-h", "--help", "--version", "--print-config") for a in argv):
        raise InvalidInputError(f"{where}: argv asks for help or the version, not a run")
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            namespace = build_parser().parse_args(argv)
    except SystemExit:
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        reason = lines[-1] if lines else "the arguments were refused"
        raise InvalidInputError(f"{where}: argv is not a valid 'medseg {' '.join(expected)}' command: {reason}") from None
    if getattr(namespace, "job_dir", None) is not None:
        raise InvalidInputError(f"{where}: argv must not contain --job-dir")
    return namespace


def output_of_request(namespace: Any, cwd: str | os.PathLike) -> Path | None:
    """The output a parsed request writes (``--output`` / predict's ``OUT``), resolved; None if none."""
    output = getattr(namespace, "output", None)
    if not isinstance(output, str) or not output:
        return None
    return (Path(cwd) / Path(output).expanduser()).resolve()


# ------------------------------------------------------------------------------- process identity
def create_time_of(pid: int) -> float | None:
    """The creation time (unix seconds, psutil) of process ``pid``, or None if there is none."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, ValueError, OverflowError):
        return None


def _runs_job(process, job_dir: Path | None) -> bool:
    """Whether ``process``'s command line is a job child for ``job_dir`` (``... --job-dir <job_dir>``)."""
    if job_dir is None:
        return True
    import psutil

    try:
        cmdline = process.cmdline()
    except (psutil.Error, OSError):
        return False
    want = os.path.realpath(job_dir)
    return any(a == "--job-dir" and i + 1 < len(cmdline) and os.path.realpath(cmdline[i + 1]) == want
               for i, a in enumerate(cmdline))


def process_if_same(pid: int | None, create_time: float | None, job_dir: Path | None = None):
    """The running process ``pid`` if it was created at ``create_time`` (within 1 s) and, when
    ``job_dir`` is given, its command line is that job's child (``--job-dir <job_dir>``); else None.

    A record without a creation time never matches: its pid cannot be told from a reused one. A
    zombie (exited, not yet reaped) does not count as running.
    """
    import psutil

    if pid is None or create_time is None:
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > CREATE_TIME_TOLERANCE_S:
            return None
        if process.status() == psutil.STATUS_ZOMBIE or not _runs_job(process, job_dir):
            return None
    except (psutil.Error, ValueError, OverflowError):
        return None
    return process


def identity_problem(
    pid: int | None, create_time: float | None, *, where: str, job_dir: Path | None = None
) -> str | None:
    """Why a live process ``pid`` cannot be taken for the job; None if it can, or if none runs."""
    import psutil

    if pid is None:
        return None
    actual = create_time_of(pid)
    if actual is None:
        return None  # no such process: nothing could be signalled anyway
    if create_time is None:
        return (
            f"{where} names pid {pid} without its start time (pid_create_time), so the running process {pid} "
            "cannot be proven to be this job's; it is not signalled"
        )
    if abs(actual - create_time) > CREATE_TIME_TOLERANCE_S:
        return (
            f"{where} says pid {pid} started at {_stamp(create_time)}, but the process {pid} running now started at "
            f"{_stamp(actual)}: it is another process, and it is not signalled"
        )
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE and not _runs_job(process, job_dir):
            return (
                f"{where} names pid {pid}, but that process's command line is not this job's "
                f"(no '--job-dir {job_dir}'): it is another process, and it is not signalled"
            )
    except psutil.Error:
        return None
    return None


def _stamp(seconds: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    except (OverflowError, OSError, ValueError):
        return repr(seconds)
