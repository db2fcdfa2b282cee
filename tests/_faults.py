"""Shared helpers of the fault-injection tests (test_faults_writes*.py): the CLI in a child process
or in this one, digests of the user's files, leftover temporaries, a real small tmpfs, and a child
script that SIGKILLs itself at a chosen point of a run's output commit."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in extra.items()}}


def _cli(*args, prefix=(), **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "napari_medseg.cli", *map(str, args)],
        capture_output=True, text=True, encoding="utf-8", env=_env(), **kwargs,
    )


def _main(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI in this process (for checks that need no process of their own: cheaper)."""
    from napari_medseg.cli import main

    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, captured.out, captured.err)


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hash): the user's files."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and ".medseg-" not in str(path.relative_to(folder)):
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".medseg-" in p.name]


@pytest.fixture
def tmpfs(tmp_path):
    """A real, small file system (2 MiB tmpfs) mounted under ``tmp_path``; unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root in a mount namespace): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave_bytes: int) -> None:
    """Fill the file system until about ``leave_bytes`` are free."""
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize
    with open(mount / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))


_KILLER = """
import os, signal, sys
import napari_medseg.outputs as outputs

where, targets = sys.argv[1], set(sys.argv[2].split(","))
if where == "before-commit":
    def commit(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    outputs.commit = commit
elif where == "between-renames":
    real = os.replace
    def replace(src, dst, **kwargs):
        real(src, dst, **kwargs)
        if os.path.basename(str(dst)) in targets:  # the first of the user's files is replaced
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
from napari_medseg.cli import main
sys.exit(main(sys.argv[3:]))
"""
