"""Atomic, verified file writes: write under a temporary name beside the target, check it, rename.

A crash, a full disk, a kill or a cancel in the middle of a write leaves the previous file (or no
file) in place, never a half-written one:

* every temporary entry is named ``.<target name>.medseg-<pid>-<random>.tmp`` (``.journal`` for a
  commit journal, ``.old`` for a folder set aside), in the target's own folder so the final step is
  a rename on one file system;
* data is flushed with ``fsync`` and checked (size, or the caller's ``verify``) before the rename;
* several files that belong together (a ``.mhd`` header and its ``.raw``, a prediction's labels,
  probabilities and sidecar) are committed through a journal, written only once every file is
  staged and verified: a process killed between two renames leaves the journal, and the next write
  into that folder rolls the commit forward (:func:`recover`);
* temporary entries of processes that no longer run are removed by :func:`recover`, which every
  write calls for its target folder first;
* an :class:`OSError` (no space, quota, file size limit, read-only, permission, another file
  system) becomes a :class:`~napari_medseg.errors.FileAccessError` naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from napari_medseg.errors import FileAccessError, MedsegError, os_error_reason

__all__ = [
    "atomic_path",
    "atomic_directory",
    "write_text_atomic",
    "write_bytes_atomic",
    "copy_file_atomic",
    "stage_dir",
    "commit",
    "recover",
    "fsync_path",
    "access_error",
    "TEMP_MARK",
]

#: every temporary entry this module creates has this in its name (after the target's name)
TEMP_MARK = ".medseg-"
_TEMP_RE = re.compile(r"^\..*\.medseg-(\d+)-[A-Za-z0-9_]*\.(tmp|journal|old)(\.[^/]*)?$")


def access_error(exc: OSError, path: str | os.PathLike, action: str = "write") -> FileAccessError:
    """A :class:`FileAccessError` for ``exc`` that names ``path`` and the reason in words."""
    if isinstance(exc, FileAccessError):
        return exc
    unchanged = "; nothing was changed" if action == "write" else ""
    return FileAccessError(f"{path}: cannot {action}: {os_error_reason(exc)}{unchanged}")


def _temp_prefix(target: Path) -> str:
    return f".{target.name}{TEMP_MARK}{os.getpid()}-"


def _random() -> str:
    return secrets.token_hex(4)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _give_default_mode(tmp: Path, target: Path, *, directory: bool) -> None:
    # mkstemp/mkdtemp create private (0600/0700) entries; outputs get the mode a plain open()
    # would give them, or keep the mode of the file they replace
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        mode = (0o777 if directory else 0o666) & ~_umask()
    os.chmod(tmp, mode)


def _suffixes(path: Path) -> str:
    # keep every suffix (".nii.gz", ".seg.nrrd") so writers that dispatch on the name still work
    return "".join(path.suffixes) if path.suffixes else ""


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file (or a folder's entries) to the device; errors of the device surface here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a folder; a file's fsync must work
        if not os.path.isdir(path) or exc.errno not in (22, 95):  # EINVAL, EOPNOTSUPP
            raise
    finally:
        os.close(fd)


def _make_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise access_error(exc, target.parent, "create the folder") from None
    if not target.parent.is_dir():
        raise FileAccessError(f"{target.parent}: cannot write {target.name} there: it is not a folder")


# ------------------------------------------------------------------------------------- recovery
def _owner_gone(pid: int, entry: os.DirEntry) -> bool:
    """True if the process that made a temporary entry no longer runs (or its pid was reused)."""
    if pid == os.getpid():
        return False
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.Error:
        return False
    try:
        mtime = entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False
    return created > mtime + 1.0  # a newer process with a reused pid


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover(folder: str | os.PathLike) -> None:
    """Finish or clean up what killed writers left in ``folder``.

    A commit journal of a dead process is rolled forward (its files were all complete and verified
    before the journal was written); a folder it set aside (``.old``) whose target is missing is put
    back; then the temporary files and folders of dead processes are removed. Entries of running processes are left alone. Errors (a read-only folder) are ignored:
    the write that follows reports them.
    """
    folder = Path(folder)
    try:
        entries = [e for e in os.scandir(folder) if TEMP_MARK in e.name and e.name.startswith(".")]
    except OSError:
        return
    stale = []
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match and _owner_gone(int(match.group(1)), entry):
            stale.append((match.group(2), Path(entry.path)))
    for kind, path in stale:
        if kind == "journal":
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError, IndexError):
                _apply_journal(json.loads(path.read_text(encoding="utf-8")), written_at=path.stat().st_mtime)
                path.unlink()
    for kind, path in stale:
        if kind == "old":
            # a folder set aside by a replace that was killed before the new one went in: the
            # target is missing, so the old folder is put back rather than deleted
            target = path.with_name(path.name[1 : path.name.rfind(TEMP_MARK)])
            if not (target.exists() or target.is_symlink()):
                with contextlib.suppress(OSError):
                    os.replace(path, target)
                continue  # never deleted while its target is missing
        if kind != "journal":
            with contextlib.suppress(OSError):
                _remove(path)


# --------------------------------------------------------------------------------------- commit
def _move_into_place(src: Path, dst: Path) -> None:
    if src.is_dir() and dst.is_dir() and not dst.is_symlink():
        aside = dst.with_name(f"{_temp_prefix(dst)}{_random()}.old")
        os.replace(dst, aside)
        os.replace(src, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(src, dst)


def _apply_journal(journal: dict, *, written_at: float | None = None) -> None:
    moves = [(Path(s), Path(d)) for s, d in journal["moves"]]
    describing = {moves[i][1] for i in journal.get("describing", [])}
    if written_at is not None:
        # recovering a killed commit: a target the user changed since then is left as it is
        moves = [(s, d) for s, d in moves if not (d.exists() and d.stat().st_mtime > written_at + 1.0)]
    # files that describe the others (a sidecar) go first, so they never describe a mixed set
    for src, dst in moves:
        if dst in describing and (src.exists() or src.is_symlink()):
            with contextlib.suppress(FileNotFoundError):
                dst.unlink()
    for src, dst in moves:
        if src.exists() or src.is_symlink():
            _move_into_place(src, dst)
    for folder in {d.parent for _, d in moves}:
        with contextlib.suppress(OSError):
            fsync_path(folder)
    for path in journal.get("cleanup", []):
        _remove(Path(path))


def commit(
    moves: Sequence[tuple[Path, Path]],
    *,
    describing: Sequence[Path] = (),
    cleanup: Sequence[Path] = (),
) -> None:
    """Rename staged, verified entries onto their targets, all of them or (after a kill) later.

    Parameters
    ----------
    moves : sequence of (source, target)
        In the order they must happen (data files before the header that names them). Sources must
        be complete and flushed; each target is in its source's folder.
    describing : sequence of Path
        Targets that describe the others (a JSON sidecar): an old one is removed before the first
        rename, so a kill between renames never leaves an old description beside new files.
    cleanup : sequence of Path
        Staging folders removed after the renames.

    Notes
    -----
    With more than one move, a journal is written (and flushed) beside the first target before any
    rename; :func:`recover` rolls a journal of a killed process forward.
    """
    moves = [(Path(s), Path(d)) for s, d in moves]
    journal = {
        "moves": [[str(s), str(d)] for s, d in moves],
        "describing": [i for i, (_, d) in enumerate(moves) if d in {Path(p) for p in describing}],
        "cleanup": [str(p) for p in cleanup],
    }
    journal_path = None
    target = moves[0][1] if moves else None
    if len(moves) > 1 or journal["describing"]:
        journal_path = target.with_name(f"{_temp_prefix(target)}{_random()}.journal")
        try:
            with open(journal_path, "w", encoding="utf-8") as fh:
                json.dump(journal, fh)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_path(target.parent)
        except OSError as exc:  # nothing was renamed yet: a partial journal must not stay behind
            with contextlib.suppress(OSError):
                journal_path.unlink()
            raise access_error(exc, target, "replace") from None
    try:
        _apply_journal(journal)
    except OSError as exc:  # the journal stays: the next write into this folder rolls it forward
        raise access_error(exc, target, "replace") from None
    if journal_path is not None:
        with contextlib.suppress(FileNotFoundError):
            journal_path.unlink()


def stage_dir(target: str | os.PathLike) -> Path:
    """A new private folder beside ``target`` to write its files under their final names.

    The target's folder is created if needed, and :func:`recover` runs on it first.

    Raises
    ------
    FileAccessError
        If the folder cannot be created or written (the message names it and says why).
    """
    target = Path(target)
    _make_parent(target)
    recover(target.parent)
    try:
        return Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise access_error(exc, target) from None


# ------------------------------------------------------------------------------ single entries
@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, verify: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffixes, so format detection by extension works on it. The
    file is flushed to the device and, when given, ``verify(tmp)`` must pass before the rename. If
    anything fails, the temporary file is removed and ``path`` is untouched; an :class:`OSError`
    is raised as :class:`~napari_medseg.errors.FileAccessError` naming ``path``.
    """
    target = Path(path)
    _make_parent(target)
    recover(target.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp" + _suffixes(target), dir=target.parent)
    except OSError as exc:
        raise access_error(exc, target) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_path(tmp)
        if verify is not None:
            verify(tmp)
        _give_default_mode(tmp, target, directory=False)
        os.replace(tmp, target)
        with contextlib.suppress(OSError):
            fsync_path(target.parent)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, MedsegError):
            raise
        raise access_error(exc, target) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` when the block succeeds.

    An existing folder at ``path`` is moved aside first and deleted only after the new one is in
    place, so a failure at any point leaves the old folder (or nothing) there. Callers decide
    whether an existing folder may be replaced at all (see :mod:`napari_medseg.outputs`).
    """
    target = Path(path)
    tmp = stage_dir(target)
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                fsync_path(Path(root) / name)
        _give_default_mode(tmp, target, directory=True)
        commit([(tmp, target)])
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, MedsegError):
            raise
        raise access_error(exc, target) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed and size-checked) and return the path.

    Raises
    ------
    FileAccessError
        If it cannot be written completely (no space, permission, ...); ``path`` is unchanged.
    """

    def complete(tmp: Path) -> None:
        if tmp.stat().st_size != len(data):
            raise FileAccessError(f"{path}: cannot write: only {tmp.stat().st_size} of {len(data)} bytes reached the device; nothing was changed")

    with atomic_path(path, verify=complete) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def copy_file_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy ``source`` to ``path`` atomically: flushed, its size checked, then renamed into place.

    Raises
    ------
    FileAccessError
        If it cannot be copied completely (no space, permission, ...); ``path`` is unchanged.
    """
    try:
        size = os.stat(source).st_size
    except OSError as exc:
        raise access_error(exc, source, "read") from None

    def complete(tmp: Path) -> None:
        if tmp.stat().st_size != size:
            raise FileAccessError(f"{path}: cannot write: only {tmp.stat().st_size} of {size} bytes reached the device; nothing was changed")

    with atomic_path(path, verify=complete) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)
