"""Importing the models users have (MONAI bundles, nnU-Net v2 result folders) without blocking Slicer.

An import builds the model's network, loads its weights and runs one small forward pass (torch,
MONAI, nnunetv2): seconds to minutes, and libraries that must not load into Slicer's GUI process.
So :func:`start_import` runs the same command as the CLI, ``medseg models import-bundle FOLDER
--add`` (:func:`napari_medseg.registry.add_monai_bundle`) or ``medseg models import-nnunet FOLDER
--add`` (:func:`napari_medseg.registry.add_nnunet`), as a child process; the widget calls
:meth:`ImportTask.poll` from a ``qt.QTimer`` and scripts call :meth:`ImportTask.wait`. The child
stages the converted model in a temporary folder and adds it atomically, so a refused folder leaves
the registry unchanged; its one-line reason becomes :attr:`ImportTask.error`.

No Qt and no torch here (``tests/medseg_slicer`` runs it with the ``slicer-core`` wheel).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO

from napari_medseg._options import look_up_option
from napari_medseg.errors import InvalidInputError, MedsegError

__all__ = ["ImportKind", "ImportTask", "import_argv", "start_import"]


class ImportKind(StrEnum):
    """What a folder holds: a MONAI bundle or an nnU-Net v2 result folder."""

    BUNDLE = "bundle"
    NNUNET = "nnunet"


_COMMANDS = {ImportKind.BUNDLE: "import-bundle", ImportKind.NNUNET: "import-nnunet"}
_WHAT = {ImportKind.BUNDLE: "MONAI bundle", ImportKind.NNUNET: "nnU-Net"}
# "medseg models: error: <reason>": the CLI's one-line refusal (exit 2)
_ERROR_PREFIX = re.compile(r"^medseg [\w -]*?: (?:internal )?error: ")
_IMPORTED_AS = re.compile(r"^imported .* as (\S+) ", re.MULTILINE)


def import_argv(
    kind: str | ImportKind,
    folder: str | os.PathLike,
    *,
    python: str | os.PathLike | None = None,
    name: str | None = None,
    folds: Sequence[int | str] | None = None,
    force: bool = False,
) -> list[str]:
    """The ``medseg models import-bundle|import-nnunet FOLDER --add`` command line.

    Raises
    ------
    InvalidInputError
        If ``kind`` is unknown, ``folder`` is not a folder, or ``folds`` is given for a bundle
        (checked here, before a child starts).
    """
    kind = look_up_option(kind, ImportKind, name="kind")
    path = Path(folder)
    if not path.is_dir():
        raise InvalidInputError(f"folder={str(path)!r}: expected an existing {_WHAT[kind]} folder")
    if folds and kind is ImportKind.BUNDLE:
        raise InvalidInputError("folds: only nnU-Net result folders have folds, not MONAI bundles")
    argv = [str(python or sys.executable), "-m", "napari_medseg.cli", "models", _COMMANDS[kind], str(path), "--add"]
    if folds:
        argv += ["--folds", *map(str, folds)]
    if name:
        argv += ["--name", name]
    if force:
        argv.append("--force")
    return argv


@dataclass
class ImportTask:
    """One import running in a child process, and what came of it.

    Attributes
    ----------
    kind : ImportKind
    folder : pathlib.Path
        The bundle or result folder being imported.
    model : str or None
        The registry name of the imported model, once done.
    error : str or None
        The one-line reason, once failed (``error_type`` is the matching exception class:
        :class:`~napari_medseg.errors.InvalidInputError` for a refused folder).
    """

    kind: ImportKind
    folder: Path
    process: subprocess.Popen
    deadline: float
    before: frozenset[str]
    names: Callable[[], list[str]]
    requested_name: str | None = None
    model: str | None = None
    error: str | None = None
    error_type: type[MedsegError] = MedsegError
    _out: IO[bytes] | None = field(default=None, repr=False)
    _err: IO[bytes] | None = field(default=None, repr=False)

    @property
    def is_final(self) -> bool:
        """Whether the import has ended (``model`` or ``error`` is set)."""
        return self.model is not None or self.error is not None

    @property
    def description(self) -> str:
        """``"<MONAI bundle|nnU-Net> import of <folder>"``: how messages name this import."""
        return f"{_WHAT[self.kind]} import of {self.folder}"

    def poll(self) -> bool:
        """Check the child without blocking; return :attr:`is_final`.

        A child past its deadline is killed and the task fails.
        """
        if self.is_final:
            return True
        code = self.process.poll()
        if code is None:
            if time.monotonic() < self.deadline:
                return False
            self.process.kill()
            self.process.wait()
            self._finish(None)
            return True
        self._finish(code)
        return True

    def wait(self, interval_s: float = 0.2) -> str:
        """Block until the import ends; return the model's name.

        Raises
        ------
        InvalidInputError
            If the folder was refused (the child's one-line reason: unsafe checkpoint, transform or
            network outside the allow-lists, missing file, ...).
        MedsegError
            If the child failed otherwise or ran past its deadline.
        """
        while not self.poll():
            time.sleep(interval_s)
        if self.error is not None:
            raise self.error_type(self.error)
        return self.model

    def cancel(self) -> None:
        """Stop the child (nothing reaches the registry: the model is added only at the end)."""
        if not self.is_final and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            self._finish(None, reason="cancelled")

    def _finish(self, code: int | None, *, reason: str | None = None) -> None:
        stdout, stderr = (_read_and_close(f) for f in (self._out, self._err))
        if code == 0:
            found = _IMPORTED_AS.search(stdout)
            added = sorted(set(self.names()) - self.before)
            self.model = self.requested_name or (found.group(1) if found else added[0] if added else "?")
            return
        if code is None:
            reason = reason or "did not finish in time and was stopped"
        else:
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            reason = _ERROR_PREFIX.sub("", lines[-1]) if lines else f"exit code {code}"
            self.error_type = InvalidInputError if code == 2 else MedsegError
        self.error = f"{self.description}: {reason}"


def _read_and_close(fh: IO[bytes] | None) -> str:
    if fh is None:
        return ""
    try:
        fh.seek(0)
        return fh.read().decode("utf-8", errors="replace")
    finally:
        fh.close()


def start_import(
    kind: str | ImportKind,
    folder: str | os.PathLike,
    *,
    names: Callable[[], list[str]],
    python: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    folds: Sequence[int | str] | None = None,
    force: bool = False,
    timeout_s: float = 600.0,
) -> ImportTask:
    """Start importing ``folder`` into the user models folder in a child process.

    Parameters
    ----------
    kind : {"bundle", "nnunet"}
    folder : path
        A MONAI bundle (``configs/``, ``models/``) or an nnU-Net v2 result folder
        (``dataset.json``, ``plans.json``, ``fold_K/``).
    names : callable
        Returns the registry's model names (to tell which one the import added).
    python : path, optional
        The child's interpreter (``PythonSlicer`` in Slicer; default ``sys.executable``).
    env : mapping, optional
        Extra environment variables for the child (e.g. ``MEDSEG_USER_MODELS``).
    name, folds, force
        As ``medseg models import-bundle|import-nnunet`` ``--name``, ``--folds``, ``--force``.
    timeout_s : float, default 600
        The child is killed after this long.

    Raises
    ------
    InvalidInputError
        As :func:`import_argv`, or if ``timeout_s`` is not positive.
    """
    if not timeout_s > 0:
        raise InvalidInputError(f"timeout_s={timeout_s!r}: expected a positive number of seconds")
    argv = import_argv(kind, folder, python=python, name=name, folds=folds, force=force)
    before = frozenset(names())
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # files, not pipes: a chatty child never blocks
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                               env={**os.environ, **dict(env or {})})
    return ImportTask(kind=look_up_option(kind, ImportKind, name="kind"), folder=Path(folder), process=process,
                      deadline=time.monotonic() + float(timeout_s), before=before, names=names,
                      requested_name=name, _out=out, _err=err)
