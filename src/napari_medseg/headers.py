"""Header sanity checks run before any voxel is read: file type, geometry fields, claimed sizes.

A header is data written by someone else. Before a reader allocates or decodes anything, this
module checks

- that the path is a regular file (a FIFO, device or socket named ``x.nii.gz`` would block a
  reader forever): :func:`check_regular_file`, with :func:`os.stat`, which never blocks;
- that spacing, origin and direction fields are finite, plausible (spacing between
  :data:`MIN_SPACING_MM` and :data:`MAX_SPACING_MM`) and orthonormal, naming the field that is not
  (:func:`check_geometry_fields`); SimpleITK would turn a NaN or zero spacing into 1 mm, a
  negative MetaImage spacing into a silent axis flip and a NaN offset into 0;
- that the size a header claims (dimensions x voxel type) fits the file (uncompressed data) and
  the memory this process may still use (:func:`check_claimed_bytes`, :func:`memory_budget_bytes`),
  so a 66-byte header claiming 1500^3 voxels is refused before allocating 3 GB.

NRRD and MetaImage headers are parsed here (:func:`check_nrrd_header`, :func:`check_metaimage_header`);
NIfTI headers in :mod:`napari_medseg.nifti`.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_medseg.errors import FileFormatError, InvalidInputError

__all__ = [
    "MIN_SPACING_MM",
    "MAX_SPACING_MM",
    "MAX_ABS_ORIGIN_MM",
    "ORTHONORMAL_ATOL",
    "check_regular_file",
    "memory_budget_bytes",
    "check_claimed_bytes",
    "check_allocation",
    "check_geometry_fields",
    "check_nrrd_header",
    "check_metaimage_header",
    "format_bytes",
    "unreadable",
]

#: Smallest voxel size accepted from a header, in mm (1 nm): below it a header is corrupt.
MIN_SPACING_MM = 1e-6
#: Largest voxel size accepted from a header, in mm (100 m): above it resampling to any model's
#: grid would run for hours.
MAX_SPACING_MM = 1e5
#: Largest distance of an origin from the scanner's centre accepted from a header (10 km).
MAX_ABS_ORIGIN_MM = 1e7
#: Tolerance of ``D.T @ D == I`` for a direction matrix (the same as :class:`~napari_medseg.volume.Geometry`).
ORTHONORMAL_ATOL = 1e-4
# a text header longer than this is not a header
_MAX_TEXT_HEADER_BYTES = 1 << 20


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human string (``"3.4 GB"``)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def unreadable(path: str | os.PathLike, exc: OSError) -> FileFormatError:
    """The one-line error for a file the OS will not let us read (permission, I/O error), with the
    true reason: an unreadable file is neither missing nor corrupt."""
    return FileFormatError(f"{path}: cannot read the file: {exc.strerror or exc}")


def check_regular_file(path: str | os.PathLike) -> os.stat_result:
    """Refuse anything but a regular file (after links), without opening it.

    Parameters
    ----------
    path : str or path-like
        The file a reader is about to open.

    Returns
    -------
    os.stat_result
        Its status (``st_size`` is what uncompressed data is checked against).

    Raises
    ------
    FileFormatError
        If the path does not exist, or is a FIFO, socket, character or block device (opening one
        could block forever or read an endless stream), or a folder.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileFormatError(f"{p}: file not found") from None
    except OSError as exc:
        raise unreadable(p, exc) from None
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return st
    if stat.S_ISDIR(mode):
        raise FileFormatError(f"{p}: is a folder, expected an image file")
    kind = (
        "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a character device" if stat.S_ISCHR(mode)
        else "a block device" if stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise FileFormatError(f"{p}: is {kind}, not a regular file; refusing to read it")


def _cgroup_bytes_left() -> int | None:
    # a container's memory limit (cgroup v2) is invisible to psutil.virtual_memory()
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def memory_budget_bytes() -> int:
    """Bytes this process can still allocate: the least of the machine's available memory
    (psutil), the container's limit (cgroup v2) and the address-space limit (``RLIMIT_AS``)."""
    import psutil

    budget = int(psutil.virtual_memory().available)
    cgroup = _cgroup_bytes_left()
    if cgroup is not None:
        budget = min(budget, cgroup)
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            budget = min(budget, max(0, int(soft) - int(psutil.Process().memory_info().vms)))
    except (ImportError, OSError, ValueError):
        pass
    return budget


def check_claimed_bytes(
    path: str | os.PathLike,
    claimed_bytes: int,
    *,
    what: str,
    available_bytes: int | None = None,
    needed_bytes: int | None = None,
) -> None:
    """Refuse a header whose claimed voxel data cannot be in the file or in memory.

    Parameters
    ----------
    path : str or path-like
        The file, for the message.
    claimed_bytes : int
        Voxel data the header promises (dimensions x bytes per voxel).
    what : str
        What was claimed, for the message (e.g. ``"1500 x 1500 x 1500 uint8 voxels"``).
    available_bytes : int, optional
        Bytes of voxel data the file holds (uncompressed data only); ``None`` skips this check.
    needed_bytes : int, optional
        Memory reading needs (default ``claimed_bytes``), checked against
        :func:`memory_budget_bytes`.

    Raises
    ------
    FileFormatError
        If the file holds fewer bytes than claimed (truncated or a lying header).
    InvalidInputError
        If reading would need more memory than this process can have.
    """
    if available_bytes is not None and available_bytes < claimed_bytes:
        raise FileFormatError(
            f"{path}: cannot read the file; it is truncated, corrupt or its header lies (the header claims "
            f"{what} ({format_bytes(claimed_bytes)}), the file holds {format_bytes(max(0, available_bytes))} of voxel data)"
        )
    needed = claimed_bytes if needed_bytes is None else needed_bytes
    budget = memory_budget_bytes()
    if needed > budget:
        raise InvalidInputError(
            f"{path}: the header claims {what}; reading it needs {format_bytes(needed)} of memory "
            f"but only {format_bytes(budget)} is available; refusing to read it"
        )


def check_allocation(n_bytes: int, *, what: str) -> None:
    """Refuse to allocate ``n_bytes`` for ``what`` when this process cannot have that much memory.

    Raises
    ------
    InvalidInputError
        Naming ``what``, the bytes needed and the bytes available.
    """
    budget = memory_budget_bytes()
    if n_bytes > budget:
        raise InvalidInputError(
            f"{what} needs {format_bytes(n_bytes)} of memory but only {format_bytes(budget)} is available"
        )


def check_geometry_fields(
    path: str | os.PathLike,
    *,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: np.ndarray | None = None,
    fields: tuple[str, str, str] = ("spacing", "origin", "direction"),
) -> None:
    """Refuse non-finite, non-positive or absurd spacing, a non-finite origin or a
    non-orthonormal direction, naming the header field.

    Parameters
    ----------
    path : str or path-like
        The file, for the message.
    spacing : sequence of float, optional
        Voxel sizes (mm); each must be finite and in ``[MIN_SPACING_MM, MAX_SPACING_MM]``.
    origin : sequence of float, optional
        Must be finite and within ``MAX_ABS_ORIGIN_MM``.
    direction : ndarray (3, 3) or (2, 2), optional
        Unit axis vectors as columns (or rows); must be finite and orthonormal to 1e-4.
    fields : tuple of 3 str
        The header's names for spacing, origin and direction, used in messages.

    Raises
    ------
    FileFormatError
        Naming the file, the field and its value.
    """
    if spacing is not None:
        values = [float(s) for s in spacing]
        for i, s in enumerate(values):
            if not math.isfinite(s) or s <= 0:
                raise FileFormatError(
                    f"{path}: header field {fields[0]} = {_fmt(values)}: value {i} is {s:g}; "
                    "expected finite voxel sizes > 0 mm"
                )
            if not MIN_SPACING_MM <= s <= MAX_SPACING_MM:
                raise FileFormatError(
                    f"{path}: header field {fields[0]} = {_fmt(values)}: value {i} is {s:g} mm, outside "
                    f"the plausible range [{MIN_SPACING_MM:g}, {MAX_SPACING_MM:g}] mm"
                )
    if origin is not None:
        values = [float(o) for o in origin]
        if not all(math.isfinite(o) for o in values):
            raise FileFormatError(f"{path}: header field {fields[1]} = {_fmt(values)}: expected finite values (mm)")
        if any(abs(o) > MAX_ABS_ORIGIN_MM for o in values):
            raise FileFormatError(
                f"{path}: header field {fields[1]} = {_fmt(values)}: more than {MAX_ABS_ORIGIN_MM:g} mm from the origin"
            )
    if direction is not None:
        m = np.asarray(direction, dtype=float)
        if not np.all(np.isfinite(m)):
            raise FileFormatError(f"{path}: header field {fields[2]} has non-finite values: {_fmt(m.ravel())}")
        if not np.allclose(m.T @ m, np.eye(m.shape[1]), atol=ORTHONORMAL_ATOL):
            raise FileFormatError(
                f"{path}: header field {fields[2]} = {_fmt(m.ravel())} is not orthonormal (sheared or "
                "scaled axes); refusing to guess the geometry"
            )


def _fmt(values) -> str:
    return "(" + " ".join(f"{float(v):g}" for v in values) + ")"


# --------------------------------------------------------------------------------- text headers
def _read_text_header(path: Path, *, end: re.Pattern[bytes]) -> tuple[bytes, int]:
    """The header bytes up to (not including) the match of ``end``, and where the data starts."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_MAX_TEXT_HEADER_BYTES)
    except OSError as exc:
        raise unreadable(path, exc) from None
    match = end.search(head)
    if match is None:
        if len(head) >= _MAX_TEXT_HEADER_BYTES:
            raise FileFormatError(f"{path}: no end of header within the first {format_bytes(_MAX_TEXT_HEADER_BYTES)}")
        return head, len(head)
    return head[: match.start()], match.end()


def _floats(path: Path, field: str, text: str) -> list[float]:
    try:
        return [float(v) for v in re.split(r"[\s,()]+", text.strip()) if v]
    except ValueError:
        raise FileFormatError(f"{path}: header field {field} = {text.strip()!r}: expected numbers") from None


def _ints(path: Path, field: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split()]
    except ValueError:
        raise FileFormatError(f"{path}: header field {field} = {text.strip()!r}: expected integers") from None


def _check_sizes(path: Path, field: str, sizes: list[int]) -> None:
    if not sizes or any(s < 1 for s in sizes):
        raise FileFormatError(f"{path}: header field {field} = {' '.join(map(str, sizes))}: expected sizes >= 1")


_NRRD_TYPE_BYTES = {}
for _names, _n in (
    (("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    (("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
      "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    (("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4),
    (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
      "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"), 8),
):
    for _name in _names:
        _NRRD_TYPE_BYTES[_name] = _n
# NRRD axis kinds that are not spatial (their spacing is "nan" by convention)
_NRRD_NON_DOMAIN_KINDS = {
    "list", "point", "vector", "covariant-vector", "normal", "stub", "scalar", "complex", "2-vector", "3-color",
    "rgb-color", "hsv-color", "xyz-color", "4-color", "rgba-color", "3-vector", "3-gradient", "3-normal",
    "4-vector", "quaternion", "2d-symmetric-matrix", "2d-masked-symmetric-matrix", "2d-matrix",
    "2d-masked-matrix", "3d-symmetric-matrix", "3d-masked-symmetric-matrix", "3d-matrix", "3d-masked-matrix",
}


def check_nrrd_header(path: str | os.PathLike, file_size: int) -> None:
    """Check an NRRD header's geometry fields and claimed size before SimpleITK reads it.

    Raises
    ------
    FileFormatError, InvalidInputError
        A non-finite, non-positive or absurd ``spacings`` / ``space directions`` / ``space origin``,
        non-orthogonal axes, a claimed size the file or memory cannot hold, or a detached data
        file that is not a regular file.
    """
    p = Path(path)
    header, data_start = _read_text_header(p, end=re.compile(rb"\r?\n\r?\n"))
    fields: dict[str, str] = {}
    for raw in header.decode("latin-1").splitlines()[1:]:
        key, sep, value = raw.partition(":")
        if sep and not raw.startswith("#") and not value.startswith("="):  # not comments, not key:=value
            fields[key.strip().lower()] = value.strip()
    if "sizes" not in fields or "type" not in fields:
        return  # SimpleITK reports the malformed header
    sizes = _ints(p, "sizes", fields["sizes"])
    _check_sizes(p, "sizes", sizes)
    kinds = fields.get("kinds", "").split()
    domain = [i for i in range(len(sizes)) if i >= len(kinds) or kinds[i].lower() not in _NRRD_NON_DOMAIN_KINDS]
    if "spacings" in fields:
        values = [v for v in fields["spacings"].split()]
        spacing = []
        for i in domain:
            if i < len(values):
                try:
                    spacing.append(float(values[i]))
                except ValueError:
                    raise FileFormatError(f"{p}: header field spacings = {fields['spacings']!r}: expected numbers") from None
        check_geometry_fields(p, spacing=spacing, fields=("spacings", "", ""))
    if "space directions" in fields:
        vectors = re.findall(r"\(([^)]*)\)", fields["space directions"])
        matrix = np.array([_floats(p, "space directions", v) for v in vectors], dtype=float) if vectors else None
        if matrix is not None and matrix.ndim == 2 and matrix.size:
            norms = np.linalg.norm(matrix, axis=1) if np.all(np.isfinite(matrix)) else np.full(len(matrix), np.nan)
            check_geometry_fields(p, spacing=norms, fields=("space directions (vector lengths)", "", ""))
            check_geometry_fields(p, direction=(matrix / norms[:, None]).T, fields=("", "", "space directions"))
    if "space origin" in fields:
        check_geometry_fields(p, origin=_floats(p, "space origin", fields["space origin"]), fields=("", "space origin", ""))
    item = _NRRD_TYPE_BYTES.get(fields["type"].lower())
    if item is None:
        return
    claimed = int(np.prod(sizes, dtype=object)) * item
    what = f"{' x '.join(map(str, sizes))} voxels of type {fields['type']}"
    encoding = fields.get("encoding", "raw").lower()
    available = None
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file:
        if len(data_file.split()) > 1 or data_file.upper().startswith("LIST"):
            data_file = None  # a file pattern or list: SimpleITK resolves it
        else:
            target = (p.parent / data_file) if not os.path.isabs(data_file) else Path(data_file)
            data_size = check_regular_file(target).st_size
            available = data_size
    else:
        available = file_size - data_start
    skip = fields.get("byte skip")
    if encoding != "raw" or (skip is not None and skip.strip() != "0"):
        available = None  # compressed or positioned data: only the memory check applies
    check_claimed_bytes(p, claimed, what=what, available_bytes=available)


_MET_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def check_metaimage_header(path: str | os.PathLike, file_size: int) -> None:
    """Check a MetaImage header's geometry fields and claimed size before SimpleITK reads it.

    A negative ``ElementSpacing`` is refused: SimpleITK would silently flip that axis.

    Raises
    ------
    FileFormatError, InvalidInputError
        As :func:`check_nrrd_header`, for ``ElementSpacing``, ``ElementSize``, ``Offset``
        (``Origin``, ``Position``) and ``TransformMatrix`` (``Rotation``, ``Orientation``).
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(_MAX_TEXT_HEADER_BYTES)
    except OSError as exc:
        raise unreadable(p, exc) from None
    # ElementDataFile is the header's last line; LOCAL data starts right after it
    tail = re.search(rb"ElementDataFile\s*=\s*([^\r\n]*)\r?\n?", head, re.IGNORECASE)
    if tail is None:
        return  # SimpleITK reports the malformed header
    header, data_start = head[: tail.start()], tail.end()
    fields: dict[str, str] = {}
    for raw in header.decode("latin-1").splitlines():
        key, sep, value = raw.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if "dimsize" not in fields:
        return
    sizes = _ints(p, "DimSize", fields["dimsize"])
    _check_sizes(p, "DimSize", sizes)
    for key, name in (("elementspacing", "ElementSpacing"), ("elementsize", "ElementSize")):
        if key in fields:
            check_geometry_fields(p, spacing=_floats(p, name, fields[key]), fields=(name, "", ""))
    for key, name in (("offset", "Offset"), ("origin", "Origin"), ("position", "Position")):
        if key in fields:
            check_geometry_fields(p, origin=_floats(p, name, fields[key]), fields=("", name, ""))
    for key, name in (("transformmatrix", "TransformMatrix"), ("rotation", "Rotation"), ("orientation", "Orientation")):
        if key in fields:
            values = _floats(p, name, fields[key])
            n = int(round(math.sqrt(len(values))))
            if n * n == len(values) and n >= 2:
                check_geometry_fields(p, direction=np.array(values).reshape(n, n), fields=("", "", name))
    item = _MET_TYPE_BYTES.get(fields.get("elementtype", "").upper())
    if item is None:
        return
    try:
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        channels = 1
    if channels < 1:
        raise FileFormatError(f"{p}: header field ElementNumberOfChannels = {channels}: expected >= 1")
    claimed = int(np.prod(sizes, dtype=object)) * item * channels
    what = f"{' x '.join(map(str, sizes))} voxels of type {fields['elementtype']}" + (f" x {channels} channels" if channels > 1 else "")
    data_file = tail.group(1).decode("latin-1").strip()
    compressed = fields.get("compresseddata", "false").lower() == "true"
    available = None
    if data_file.upper() == "LOCAL":
        available = file_size - data_start
    elif data_file.upper() != "LIST" and "%" not in data_file and len(data_file.split()) == 1:
        target = (p.parent / data_file) if not os.path.isabs(data_file) else Path(data_file)
        available = check_regular_file(target).st_size
    if compressed or fields.get("headersize", "0").strip() not in ("0", ""):
        available = None
    check_claimed_bytes(p, claimed, what=what, available_bytes=available)


def check_sitk_claim(path: str | os.PathLike, reader) -> None:
    """Refuse an image whose size, as SimpleITK's ``ReadImageInformation`` reports it, does not fit
    in memory (any format SimpleITK reads: PNG, TIFF, a single DICOM file, NRRD, MetaImage).

    Parameters
    ----------
    reader : SimpleITK.ImageFileReader
        After ``ReadImageInformation()``, before ``Execute()``.
    """
    import SimpleITK as sitk

    size = [int(n) for n in reader.GetSize()]
    probe = sitk.Image([1] * max(2, len(size)), reader.GetPixelID(), reader.GetNumberOfComponents())
    bytes_per_voxel = sitk.GetArrayViewFromImage(probe).nbytes
    claimed = int(np.prod(size, dtype=object)) * bytes_per_voxel
    check_claimed_bytes(path, claimed, what=f"{' x '.join(map(str, size))} voxels of {bytes_per_voxel} bytes")
