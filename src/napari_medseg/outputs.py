"""Output checks before work, and writing a run's outputs together.

Every command that writes (the CLI, the napari and Slicer faces) calls :func:`check_outputs` before
it reads a model or computes anything, and writes a run's files with :func:`write_outputs`:

* :func:`written_files` is every file a target really produces (a ``.mhd`` header and its
  ``.raw``/``.zraw``, a ``.nhdr`` and its ``.raw``/``.raw.gz``, a DICOM series folder);
* :func:`check_output_name` refuses a name that would not be written exactly as given (an
  upper-case extension SimpleITK cannot read back, an existing folder where a file is meant, a
  non-empty folder the project did not write as a DICOM target);
* :func:`check_outputs` compares every output with every input and with each other after
  resolving symlinks, hard links (same device and inode) and companion files, and checks that each
  output folder can be written;
* :func:`write_outputs` stages every file beside its target, verifies them all, and renames them as
  one group through :func:`napari_medseg._atomic.commit` (the sidecar last, an old sidecar removed
  first).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from napari_medseg._atomic import TEMP_MARK, access_error, commit, fsync_path, stage_dir
from napari_medseg.errors import FileAccessError, InvalidInputError, os_error_reason

__all__ = [
    "written_files",
    "check_output_name",
    "check_outputs",
    "check_prediction_outputs",
    "sidecar_path",
    "write_outputs",
    "stage_file",
    "write_file",
    "is_project_dicom_folder",
]

#: names of the slice files write_volume puts in a DICOM series folder
_DICOM_SLICE_RE = re.compile(r"^slice_\d{5}\.dcm$")


def _format_suffix(path: Path) -> str:
    from napari_medseg.volume import SUPPORTED_SUFFIXES

    lower = path.name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[-len(suffix):]
    return ""


def written_files(path: str | os.PathLike, *, compress: bool = True) -> list[Path]:
    """Every file (or the folder, for DICOM) that ``write_volume(volume, path)`` creates or replaces.

    Data files come before the header that names them.
    """
    from napari_medseg.volume import VolumeFormat, volume_format

    target = Path(path)
    if volume_format(target) == VolumeFormat.DICOM:
        return [target]
    suffix = _format_suffix(target).lower()
    stem = target.name[: -len(suffix)] if suffix else target.name
    if suffix == ".mhd":
        return [target.with_name(stem + (".zraw" if compress else ".raw")), target]
    if suffix == ".nhdr":
        return [target.with_name(stem + (".raw.gz" if compress else ".raw")), target]
    return [target]


def is_project_dicom_folder(folder: str | os.PathLike) -> bool:
    """True if ``folder`` is empty or holds only the slice files ``write_volume`` writes there."""
    try:
        names = [n for n in os.listdir(folder) if TEMP_MARK not in n]
    except OSError as exc:
        raise access_error(exc, folder, "read the folder") from None
    return all(_DICOM_SLICE_RE.match(n) for n in names)


def _is_folder_target(target: Path, fmt) -> bool:
    """A DICOM series folder: no file extension (an existing folder named x.nii.gz is not one)."""
    from napari_medseg.volume import VolumeFormat

    return fmt == VolumeFormat.DICOM and not _format_suffix(target)


def check_output_name(path: str | os.PathLike, *, option: str = "OUT"):
    """Refuse an output name that would not be written exactly as given; return its format.

    Raises
    ------
    FileFormatError
        If the extension is not supported.
    InvalidInputError
        If the extension is not in lower case (SimpleITK writes ``x.MHA`` as ``x.mhd`` + ``x.zraw``
        and reads neither ``.MHA`` nor ``.NII``), if a file target is an existing folder, or if a
        DICOM target is an existing file or a non-empty folder this project did not write.
    """
    from napari_medseg.volume import volume_format

    target = Path(path)
    if target.name in ("", ".", "..") or (str(path).endswith(("/", os.sep)) and _format_suffix(target)):
        raise InvalidInputError(f"{option}={path}: expected a file name (or a folder for a DICOM series)")
    fmt = volume_format(target)
    if _is_folder_target(target, fmt):
        if target.is_dir():
            if not is_project_dicom_folder(target):
                raise InvalidInputError(
                    f"{option}={target}: is an existing folder with other files in it; a DICOM series is only "
                    "written into a new or empty folder (or one this program wrote), so nothing is deleted"
                )
        elif target.exists() or target.is_symlink():
            raise InvalidInputError(f"{option}={target}: exists and is not a folder; give a new folder for a DICOM series")
        return fmt
    suffix = _format_suffix(target)
    if suffix and suffix != suffix.lower():
        raise InvalidInputError(
            f"{option}={target}: write the extension in lower case ({target.name[: -len(suffix)]}{suffix.lower()}); "
            f"SimpleITK would not write (or read back) {suffix!r} under that name"
        )
    for produced in written_files(target):
        if produced.is_dir() and not produced.is_symlink():
            raise InvalidInputError(f"{option}={target}: {produced} is an existing folder; expected a file name")
    return fmt


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
        inode = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    return real, inode


def _same(a: Path, b: Path) -> bool:
    ra, ia = _identity(a)
    rb, ib = _identity(b)
    return ra == rb or (ia is not None and ia == ib)


def _hard_link_into(path: Path, folder: Path) -> bool:
    """True if ``path`` is a hard link to a file under the input folder ``folder`` (a DICOM series).

    Only an existing file with more than one link can be one, so the folder is walked (as deep as
    the DICOM reader looks) only then.
    """
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_nlink < 2 or not os.path.isdir(folder):
        return False
    from napari_medseg.dicom import MAX_DEPTH

    root_depth = os.path.realpath(folder).count(os.sep)
    for root, dirs, names in os.walk(os.path.realpath(folder)):
        if root.count(os.sep) - root_depth >= MAX_DEPTH:
            dirs.clear()
        for name in names:
            with contextlib.suppress(OSError):
                other = os.stat(os.path.join(root, name), follow_symlinks=False)
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return True
    return False


def _inside(child: Path, folder: Path) -> bool:
    return Path(os.path.realpath(child)).is_relative_to(os.path.realpath(folder))


def _flatten(items: Mapping[str, str | os.PathLike | Sequence | None]) -> list[tuple[str, Path]]:
    flat = []
    for name, value in items.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        flat.extend((name, Path(v)) for v in values if v is not None)
    return flat


def _check_folder_writable(folder: Path, option: str, target: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FileAccessError(f"{option}={target}: cannot write there: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".write-check{TEMP_MARK}{os.getpid()}-", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FileAccessError(f"{option}={target}: cannot write in {existing}: {os_error_reason(exc)}") from None


def check_outputs(
    outputs: Mapping[str, str | os.PathLike | None],
    inputs: Mapping[str, str | os.PathLike | Sequence | None] = {},  # noqa: B006 - read only
    *,
    files: Mapping[str, str | os.PathLike | None] = {},  # noqa: B006 - read only
    compress: bool = True,
) -> None:
    """Check a command's outputs before any work: names, folders, and no output hits an input.

    Parameters
    ----------
    outputs : mapping of option name to path
        Volume outputs (written with ``write_volume``), e.g. ``{"OUT": ..., "--probabilities": ...}``;
        ``None`` values are skipped.
    inputs : mapping of option name to path or list of paths
        Everything the command reads (files or DICOM folders); ``None`` values are skipped.
    files : mapping of option name to path
        Other outputs (a JSON sidecar, a CSV table).
    compress : bool, default True
        As passed to ``write_volume`` (it decides the ``.mhd`` companion's name).

    Raises
    ------
    InvalidInputError
        If a name is refused (:func:`check_output_name`), an output is an input or another output
        (also through a symlink, a hard link or a ``.mhd``/``.nhdr`` companion file), a DICOM output
        folder holds an input, or a file output is an existing folder.
    FileAccessError
        If an output's folder cannot be written (read-only, permission denied, not a folder).
    """
    produced: list[tuple[str, Path, bool]] = []  # (option, path, is a DICOM folder)
    for option, path in _flatten(outputs):
        fmt = check_output_name(path, option=option)
        is_folder = _is_folder_target(path, fmt)
        produced.extend((option, p, is_folder) for p in written_files(path, compress=compress))
    for option, path in _flatten(files):
        if path.is_dir():
            raise InvalidInputError(f"{option}={path}: is a folder; expected a file name")
        produced.append((option, path, False))
    for i, (option, path, is_folder) in enumerate(produced):
        for other_option, other, other_folder in produced[:i]:
            if _same(path, other) or (is_folder and _inside(other, path)) or (other_folder and _inside(path, other)):
                what = other_option if other == Path(outputs.get(other_option, other) or other) else f"{other_option}'s {other.name}"
                raise InvalidInputError(
                    f"{option}={path}: would overwrite {what} ({other}); give each output its own file"
                )
        for input_option, source in _flatten(inputs):
            if _same(path, source) or (is_folder and _inside(source, path)) or _hard_link_into(path, source):
                raise InvalidInputError(
                    f"{option}={path}: would overwrite the input {input_option}={source}; "
                    "choose an output that is not an input"
                )
    for folder in {p.parent for _, p, _ in produced}:
        option, target = next((o, p) for o, p, _ in produced if p.parent == folder)
        _check_folder_writable(folder, option, target)


def sidecar_path(labels: str | os.PathLike) -> Path:
    """The JSON sidecar of a prediction written to ``labels``: ``labels`` + ``.json``."""
    return Path(str(labels) + ".json")


def check_prediction_outputs(
    labels: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    *,
    probabilities: str | os.PathLike | None = None,
    uncertainty: str | os.PathLike | None = None,
    names: tuple[str, str, str, str] = ("OUT", "--probabilities", "--uncertainty", "IN"),
) -> Path:
    """:func:`check_outputs` for one prediction (labels, sidecar, probabilities, uncertainty).

    Probabilities and uncertainty are floating-point multi-component volumes, so they need NIfTI,
    NRRD or MetaImage. ``names`` are the option names used in messages. Returns the sidecar path.

    Raises
    ------
    InvalidInputError, FileAccessError
        As :func:`check_outputs`, or for a probability/uncertainty format that cannot hold floats.
    """
    from napari_medseg.volume import VolumeFormat, volume_format

    sidecar = sidecar_path(labels)
    extras = {names[1]: probabilities, names[2]: uncertainty}
    check_outputs({names[0]: labels, **extras}, {names[3]: list(inputs)}, files={f"{names[0]}.json (the sidecar)": sidecar})
    for option, path in extras.items():
        if path is not None and volume_format(path) not in (VolumeFormat.NIFTI, VolumeFormat.NRRD, VolumeFormat.METAIMAGE):
            raise InvalidInputError(f"{option}={path}: floating-point maps need .nii.gz, .nii, .nrrd, .mha or .mhd")
    return sidecar


def _stage_text(path: Path, text: str) -> tuple[Path, list[tuple[Path, Path]]]:
    folder = stage_dir(path)
    staged = folder / path.name
    data = text.encode("utf-8")
    try:
        with open(staged, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if staged.stat().st_size != len(data):
            raise FileAccessError(f"{path}: cannot write: the file is incomplete on the device; nothing was changed")
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise access_error(exc, path) from None
    return folder, [(staged, path)]


def stage_file(
    path: str | os.PathLike,
    writer: Callable[[Path], None],
    verify: Callable[[Path], None] | None = None,
    *,
    staged_name: str | None = None,
) -> tuple[Path, list[tuple[Path, Path]]]:
    """Let ``writer`` write ``path``'s content into a new staging folder beside it, and verify it.

    ``writer(staged)`` is given a path in the staging folder named like ``path`` (or
    ``staged_name``: a plain name for writers that rewrite names such as ``x.nii.gz.nii.gz``) and
    must write only that file; the file is
    then flushed, must be non-empty, and ``verify(staged)`` (when given) must pass. Returns the
    staging folder and the ``(staged, target)`` rename for :func:`~napari_medseg._atomic.commit`.
    Nothing at ``path`` is touched; on failure the staging folder is removed.

    Raises
    ------
    FileAccessError
        If the system refuses or cuts the write (the message names ``path`` and the reason).
    """
    target = Path(path)
    folder = stage_dir(target)
    staged = folder / (staged_name or target.name)
    try:
        writer(staged)
        produced = sorted(p.name for p in folder.iterdir())
        if produced != [staged.name]:
            raise InvalidInputError(f"{target}: the writer produced {', '.join(produced) or 'nothing'}; nothing was changed")
        fsync_path(staged)
        if staged.stat().st_size == 0:
            raise FileAccessError(f"{target}: cannot write: the file is empty on the device; nothing was changed")
        if verify is not None:
            verify(staged)
        from napari_medseg._atomic import _give_default_mode

        _give_default_mode(staged, target, directory=False)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise access_error(exc, target) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, [(staged, target)]


def write_file(
    path: str | os.PathLike,
    writer: Callable[[Path], None],
    verify: Callable[[Path], None] | None = None,
    *,
    staged_name: str | None = None,
) -> Path:
    """Write one file through ``writer`` exactly at ``path``, verified, then renamed into place.

    See :func:`stage_file`; a failure leaves an existing ``path`` byte-identical and no temporary
    entry behind.
    """
    folder, moves = stage_file(path, writer, verify, staged_name=staged_name)
    try:
        commit(moves, cleanup=[folder])
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Path(path)


def write_outputs(
    volumes: Iterable[tuple[object, str | os.PathLike, Mapping]] = (),
    texts: Iterable[tuple[str | os.PathLike, str]] = (),
    files: Iterable[tuple[str | os.PathLike, Callable[[Path], None], Callable[[Path], None] | None]] = (),
) -> list[Path]:
    """Write several volumes and text files so that they change together or not at all.

    Each file is written under a temporary name beside its target and verified (flushed; NIfTI
    data checked against its header; sizes checked); only when every file is complete are they
    renamed into place, text files (the sidecar describing the others) last, through a journal that
    the next write into the folder rolls forward if this process is killed between two renames.
    An old text file at a target is removed before the first rename, so it never describes a mix of
    old and new files.

    Parameters
    ----------
    volumes : iterable of (Volume, path, keyword arguments of ``write_volume``)
    texts : iterable of (path, text)
    files : iterable of (path, writer, verify)
        Files written by a callback (a DICOM SEG), staged with :func:`stage_file`; ``verify`` may
        be None.

    Returns
    -------
    list of Path
        The targets: volumes, then ``files``, then texts.

    Raises
    ------
    FileAccessError
        If a file cannot be written completely (no space, quota, permission...); nothing changed.
    InvalidInputError, FileFormatError
        As :func:`napari_medseg.volume.write_volume`; nothing changed.
    """
    from napari_medseg.volume import _stage_volume

    staged_folders: list[Path] = []
    moves: list[tuple[Path, Path]] = []
    targets: list[Path] = []
    describing: list[Path] = []
    try:
        for volume, path, kwargs in volumes:
            folder, volume_moves = _stage_volume(volume, path, **dict(kwargs))
            staged_folders.append(folder)
            moves.extend(volume_moves)
            targets.append(Path(path))
        for path, writer, verify in files:
            folder, file_moves = stage_file(path, writer, verify)
            staged_folders.append(folder)
            moves.extend(file_moves)
            targets.append(Path(path))
        for path, text in texts:
            folder, text_moves = _stage_text(Path(path), text)
            staged_folders.append(folder)
            moves.extend(text_moves)
            targets.append(Path(path))
            describing.append(Path(path))
        commit(moves, describing=describing, cleanup=[f for f in staged_folders if f.exists()])
    except BaseException:
        for folder in staged_folders:
            with contextlib.suppress(OSError):
                if folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)
        raise
    for folder in {t.parent for t in targets}:
        with contextlib.suppress(OSError):
            fsync_path(folder)
    return targets
