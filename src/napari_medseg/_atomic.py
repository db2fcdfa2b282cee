"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A crash, a full disk or a cancel in the middle of a write leaves the previous file (or no file)
in place, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_directory", "write_text_atomic", "write_bytes_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _give_default_mode(tmp: Path, target: Path, *, directory: bool) -> None:
    # mkstemp/mkdtemp create private (0600/0700) entries; outputs get the mode a plain open()
    # would give them, or keep the mode of the file they replace
    if target.exists():
        mode = target.stat().st_mode & 0o7777
    else:
        mode = (0o777 if directory else 0o666) & ~_umask()
    os.chmod(tmp, mode)


def _suffixes(path: Path) -> str:
    # keep every suffix (".nii.gz", ".seg.nrrd") so writers that dispatch on the name still work
    return "".join(path.suffixes) if path.suffixes else ""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffixes, so format detection by extension works on it. If
    the block raises, the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + _suffixes(target), dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _give_default_mode(tmp, target, directory=False)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` when the block succeeds.

    An existing folder at ``path`` is moved aside first and deleted only after the new one is in
    place, so a failure at any point leaves the old folder (or nothing) there.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _give_default_mode(tmp, target, directory=True)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))
