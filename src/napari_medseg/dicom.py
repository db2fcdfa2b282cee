"""DICOM series from real scanners: find them, check them and read them as dcm2niix does.

What is read (geometry in the project's convention: SimpleITK-style ``(x, y, z)`` spacing, origin
and direction, mm, LPS; see :mod:`napari_medseg.volume`):

- **classic series** (one 2D image per file): slices sorted along the normal of
  ImageOrientationPatient (row x column); the origin is the first slice's ImagePositionPatient and
  the slice spacing the distance between the first and last slice over their count;
- **multi-volume classic series** (the same positions repeated: DWI, fMRI, multi-echo): a 4D
  :class:`~napari_medseg.multivolume.MultiVolume` ``(t, z, y, x)``; volumes are ordered by
  TemporalPositionIdentifier, AcquisitionNumber, InstanceNumber;
- **Siemens mosaics** (ImageType contains ``MOSAIC``): demosaiced with nibabel's
  :class:`~nibabel.nicom.dicomwrappers.MosaicWrapper` (NumberOfImagesInMosaic from the CSA image
  header, a ``ceil(sqrt(n))`` tile grid, the corrected position of the first slice, the slice
  normal from the cross product of ImageOrientationPatient with the sign of the CSA
  SliceNormalVector); one file is one volume, several files a 4D series;
- **enhanced multi-frame images** (per-frame functional groups: Siemens XA, Philips, highdicom's
  legacy-converted images): each frame is placed by its PlanePositionSequence and ordered by
  position and by TemporalPositionIndex / DimensionIndexValues; one file per volume or per series.

What is refused (:class:`SeriesIntegrityError`, exit code 2 in the CLI, naming the files): a
missing slice (a gap over 1.5 times the regular step: the median, or the smallest step when it
is at least half the median), uneven spacing (a slice more than
:data:`POSITION_TOLERANCE_MM` off a regular grid), a duplicate position that is not a multi-volume
pattern, mixed orientations, sizes or pixel spacings, CT gantry tilt (slice positions not along the
normal), a folder holding several series when none is chosen (:class:`AmbiguousSeriesError`, which
lists them), and folders with more than ``max_files`` files.

Headers are scanned with ``stop_before_pixels``; pixel data is read only for the chosen series.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.multivolume import MultiVolume
from napari_medseg.volume import Geometry, Volume

__all__ = [
    "SeriesInfo",
    "SeriesIntegrityError",
    "AmbiguousSeriesError",
    "POSITION_TOLERANCE_MM",
    "MAX_FILES",
    "MAX_DEPTH",
    "list_series",
    "find_series",
    "series_files",
    "series_datasets",
    "read_series",
    "read_dicom",
    "read_dicom_volume",
    "is_dicom_file",
]

#: How far (mm) a slice may sit off the regular grid, or off the slice normal, before the series is refused.
POSITION_TOLERANCE_MM = 0.02
#: At most this many files are scanned under a folder (a whole PACS export is refused, not walked for hours).
MAX_FILES = 50_000
#: At most this many folder levels below the given folder are searched.
MAX_DEPTH = 6
_SAME_POSITION_MM = 0.01
_GAP_FACTOR = 1.5
_ORIENTATION_TOL = 1e-4
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.481", "1.2.840.10008.5.1.4.1.1.88", "1.2.840.10008.5.1.4.1.1.11")
_DICOM_SUFFIXES = ("", ".dcm", ".ima", ".dicom")


class SeriesIntegrityError(InvalidInputError):
    """A DICOM series cannot be one regular grid: a gap, a duplicate, uneven spacing, tilt, mixed images."""


class AmbiguousSeriesError(InvalidInputError):
    """A folder holds several series and none was chosen; the message lists them."""


# ----------------------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class _Frame:
    """One 2D image of a series: a classic file or one frame of an enhanced multi-frame file."""

    path: Path
    frame: int | None  # index in a multi-frame file, None for a single-frame file
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) as DICOM stores it
    rows: int
    columns: int
    order: tuple  # sorts the volumes that share a position


@dataclass(frozen=True)
class _FileHeader:
    path: Path
    series_uid: str
    series_number: int | None
    description: str
    modality: str
    rows: int
    columns: int
    mosaic: bool
    enhanced: bool
    frames: tuple[_Frame, ...]
    slice_spacing: float | None  # SpacingBetweenSlices, else SliceThickness
    n_frames: int = 1
    samples: int = 1  # SamplesPerPixel: 3 for colour images


def _number(value: Any, default: float | None = None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _ints(value: Any) -> tuple[int, ...]:
    """A multi-valued integer attribute as a tuple (pydicom gives a single value as a plain int)."""
    if value is None or value == "":
        return ()
    values = value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str) else [value]
    return tuple(int(v) for v in values)


def _first(sequence_owner: Any, name: str) -> Any:
    seq = getattr(sequence_owner, name, None)
    return seq[0] if seq else None


def _functional(frame_group: Any, shared: Any, sequence: str, attribute: str) -> Any:
    """An attribute from a per-frame functional group, else from the shared one."""
    for group in (frame_group, shared):
        item = _first(group, sequence) if group is not None else None
        if item is not None and attribute in item:
            return item.get(attribute)
    return None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` starts with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _read_header(path: Path) -> _FileHeader | None:
    """The header facts of one file, or None if it is not a DICOM image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            if path.suffix.lower() not in _DICOM_SUFFIXES or path.name.upper() == "DICOMDIR":
                return None
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (PermissionError, IsADirectoryError) as exc:
        from napari_medseg._atomic import access_error

        raise access_error(exc, path, "read") from None
    except Exception:  # noqa: BLE001 - anything pydicom cannot parse is not a DICOM image for us
        return None
    try:
        return _header_facts(path, ds)
    except Exception:  # noqa: BLE001 - a header too broken to describe an image
        return None


def _header_facts(path: Path, ds: Any) -> _FileHeader | None:
    sop_class = str(ds.get("SOPClassUID", ""))
    uid = str(ds.get("SeriesInstanceUID", "")).strip()
    if "Rows" not in ds or "Columns" not in ds or not uid or sop_class == _SEG_SOP_CLASS:
        return None
    if sop_class.startswith(_NON_IMAGE_SOP_PREFIXES) or path.name.upper() == "DICOMDIR":
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    number = ds.get("SeriesNumber")
    acquisition = _number(ds.get("AcquisitionNumber"), 0.0)
    instance = _number(ds.get("InstanceNumber"), 0.0)
    temporal = _number(ds.get("TemporalPositionIdentifier"), 0.0)
    spacing = _number(ds.get("SpacingBetweenSlices")) or _number(ds.get("SliceThickness"))
    frames: list[_Frame] = []
    enhanced = "PerFrameFunctionalGroupsSequence" in ds
    if enhanced:
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
            content = _first(group, "FrameContentSequence")
            temporal_index = _number(content.get("TemporalPositionIndex"), 0.0) if content is not None else 0.0
            dims = _ints(content.get("DimensionIndexValues")) if content is not None else ()
            frame_spacing = _number(_functional(group, shared, "PixelMeasuresSequence", "SpacingBetweenSlices")) or _number(
                _functional(group, shared, "PixelMeasuresSequence", "SliceThickness")
            )
            spacing = spacing or frame_spacing
            frames.append(
                _Frame(
                    path,
                    index,
                    _floats(_functional(group, shared, "PlanePositionSequence", "ImagePositionPatient"), 3),
                    _floats(_functional(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                    _floats(_functional(group, shared, "PixelMeasuresSequence", "PixelSpacing"), 2),
                    rows,
                    columns,
                    (temporal_index, dims, acquisition, instance, str(path), index),
                )
            )
    else:
        frames.append(
            _Frame(
                path,
                None,
                _floats(ds.get("ImagePositionPatient"), 3),
                _floats(ds.get("ImageOrientationPatient"), 6),
                _floats(ds.get("PixelSpacing"), 2) or _floats(ds.get("ImagerPixelSpacing"), 2),
                rows,
                columns,
                (temporal, (), acquisition, instance, str(path), 0),
            )
        )
    return _FileHeader(
        path=path,
        series_uid=uid,
        series_number=int(number) if isinstance(number, (int, float)) or str(number or "").strip().lstrip("-").isdigit() else None,
        description=str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip(),
        rows=rows,
        columns=columns,
        mosaic="MOSAIC" in image_type and not enhanced,
        enhanced=enhanced,
        frames=tuple(frames),
        slice_spacing=spacing,
        n_frames=int(_number(ds.get("NumberOfFrames"), 1) or 1),
        samples=int(_number(ds.get("SamplesPerPixel"), 1) or 1),
    )


# ----------------------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found under a folder.

    Attributes
    ----------
    uid : str
        SeriesInstanceUID.
    number : int or None
        SeriesNumber.
    description : str
        SeriesDescription (ProtocolName when empty).
    modality : str
        Modality (``MR``, ``CT`` ...).
    kind : str
        ``"classic"`` (one image per file), ``"mosaic"`` (Siemens mosaic) or ``"enhanced"``
        (multi-frame with functional groups).
    files : tuple of Path
        The series' files, sorted by name.
    shape : tuple of 3 int or None
        ``(z, y, x)`` of one volume; None if the series cannot be read (see ``problem``).
    n_volumes : int or None
        Number of volumes (1 for a 3D series).
    problem : str or None
        Why the series would be refused on reading (gap, duplicate, tilt ...), else None.
    """

    uid: str
    number: int | None
    description: str
    modality: str
    kind: str
    files: tuple[Path, ...]
    shape: tuple[int, int, int] | None
    n_volumes: int | None
    problem: str | None = None
    _headers: tuple[_FileHeader, ...] = field(default=(), repr=False, compare=False)
    _layout: Any = field(default=None, repr=False, compare=False)  # the _Plan found while listing

    def to_dict(self) -> dict:
        """A JSON-ready dict (files as a count and the common folder)."""
        folders = {str(f.parent) for f in self.files}
        return {
            "uid": self.uid,
            "number": self.number,
            "description": self.description,
            "modality": self.modality,
            "kind": self.kind,
            "n_files": len(self.files),
            "folder": folders.pop() if len(folders) == 1 else os.path.commonpath([str(f) for f in self.files]),
            "shape": list(self.shape) if self.shape else None,
            "volumes": self.n_volumes,
            "problem": self.problem,
        }

    def describe(self) -> str:
        """One line for messages: number, description, modality, size, volumes, UID."""
        size = "x".join(map(str, self.shape)) if self.shape else "unreadable"
        vols = f", {self.n_volumes} volumes" if self.n_volumes and self.n_volumes > 1 else ""
        problem = f" [refused: {self.problem}]" if self.problem else ""
        return (
            f"#{self.number if self.number is not None else '?'} {self.description or '(no description)'!r} "
            f"{self.modality or '?'} {size}{vols} ({len(self.files)} files) uid {self.uid}{problem}"
        )


def _walk(folder: Path, max_files: int, max_depth: int) -> list[Path]:
    """Regular files under ``folder`` (hidden entries skipped), at most ``max_depth`` levels down.

    The walk is lazy so the depth limit prunes it, and only regular files are listed: opening a
    FIFO or a device found in a folder would block or read forever.
    """
    import stat

    files: list[Path] = []
    root_depth = len(folder.parts)
    try:
        # pruning ``dirnames`` in place keeps the walk itself within max_depth (no symlinked folders)
        for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise_walk_error):
            depth = len(Path(dirpath).parts) - root_depth
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < max_depth else []
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                try:
                    if not stat.S_ISREG(path.stat().st_mode):
                        continue
                except OSError:
                    continue  # a dangling link
                files.append(path)
                if len(files) > max_files:
                    raise FileFormatError(
                        f"{folder}: more than {max_files} files in this folder and its subfolders; "
                        "point at the folder of one study or series"
                    )
    except OSError as exc:
        from napari_medseg._atomic import access_error

        raise access_error(exc, exc.filename or folder, "read") from None
    return files


def _raise_walk_error(exc: OSError) -> None:
    raise exc


def _scan(folder: Path, max_files: int, max_depth: int) -> dict[str, list[_FileHeader]]:
    by_uid: dict[str, list[_FileHeader]] = {}
    for path in _walk(folder, max_files, max_depth):
        if not path.is_file():
            continue
        header = _read_header(path)
        if header is not None:
            by_uid.setdefault(header.series_uid, []).append(header)
    return by_uid


def _series_info(uid: str, headers: list[_FileHeader]) -> SeriesInfo:
    headers = sorted(headers, key=lambda h: str(h.path))
    first = headers[0]
    kind = "mosaic" if any(h.mosaic for h in headers) else "enhanced" if any(h.enhanced for h in headers) else "classic"
    shape = n_volumes = problem = plan = None
    try:
        plan = _plan(headers, kind)
        shape, n_volumes = plan.shape, plan.n_volumes
    except InvalidInputError as exc:
        problem = str(exc)
    return SeriesInfo(
        uid=uid,
        number=first.series_number,
        description=first.description,
        modality=first.modality,
        kind=kind,
        files=tuple(h.path for h in headers),
        shape=shape,
        n_volumes=n_volumes,
        problem=problem,
        _headers=tuple(headers),
        _layout=plan,
    )


def list_series(
    folder: str | os.PathLike, *, max_files: int = MAX_FILES, max_depth: int = MAX_DEPTH
) -> list[SeriesInfo]:
    """Every DICOM image series under ``folder`` (searched recursively), sorted by series number.

    Parameters
    ----------
    folder : str or path-like
        A series folder, a study folder, or a folder whose series sit in subfolders. A single
        DICOM file lists the series of that file alone.
    max_files : int, default :data:`MAX_FILES`
        Refuse folders holding more files than this (all files count, DICOM or not).
    max_depth : int, default :data:`MAX_DEPTH`
        How many folder levels below ``folder`` are searched.

    Returns
    -------
    list of SeriesInfo
        One per SeriesInstanceUID; a series that cannot be read as a regular grid is listed with
        its ``problem``. Non-image objects (SEG, RT, SR, presentation states) are not listed.

    Raises
    ------
    FileFormatError
        If ``folder`` does not exist or cannot be read, or holds more than ``max_files`` files.
    """
    p = Path(folder)
    if not p.exists():
        raise FileFormatError(f"{p}: file not found")
    if p.is_file():
        header = _read_header(p)
        by_uid = {header.series_uid: [header]} if header is not None else {}
    else:
        if not os.access(p, os.R_OK | os.X_OK):
            raise FileFormatError(f"{p}: cannot read the folder (permission denied)")
        by_uid = _scan(p, max_files, max_depth)
    infos = [_series_info(uid, headers) for uid, headers in by_uid.items()]
    return sorted(infos, key=lambda s: (s.number if s.number is not None else 1 << 30, s.description, s.uid))


def _listing(series: Sequence[SeriesInfo]) -> str:
    return "; ".join(s.describe() for s in series)


def find_series(
    path: str | os.PathLike, *, series_uid: str | None = None, series_number: int | None = None
) -> SeriesInfo:
    """The one series under ``path`` that the caller means.

    Parameters
    ----------
    path : str or path-like
        A DICOM folder (searched as :func:`list_series` does) or file.
    series_uid, series_number : optional
        Which series to take when there are several; both may be given (both must match).

    Raises
    ------
    FileFormatError
        If no DICOM image series is found.
    AmbiguousSeriesError
        If several series are found and none (or more than one) matches the choice; the message
        lists them all.
    InvalidInputError
        If no series matches the choice.
    """
    found = list_series(path)
    if not found:
        raise FileFormatError(f"{path}: no DICOM series found (no DICOM image files in it or {MAX_DEPTH} levels of subfolders)")
    chosen = [
        s
        for s in found
        if (series_uid is None or s.uid == str(series_uid).strip())
        and (series_number is None or s.number == int(series_number))
    ]
    wanted = " and ".join(
        part
        for part in (
            f"SeriesInstanceUID {series_uid!r}" if series_uid is not None else "",
            f"SeriesNumber {series_number}" if series_number is not None else "",
        )
        if part
    )
    if not chosen:
        raise InvalidInputError(f"{path}: no series with {wanted}; found {len(found)}: {_listing(found)}")
    if len(chosen) > 1:
        how = f"{len(chosen)} series match {wanted}" if wanted else f"holds {len(chosen)} series"
        raise AmbiguousSeriesError(
            f"{path}: {how}; choose one with --series-uid (or --series-number where unique): {_listing(chosen)}"
        )
    return chosen[0]


# ------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class _Plan:
    """How the frames of a series make a (4D) grid: ``frames[v][z]`` and the geometry."""

    kind: str
    geometry: Geometry
    frames: tuple[tuple[_Frame, ...], ...]  # [volume][slice]; mosaic: [volume][0]
    shape: tuple[int, int, int]

    @property
    def n_volumes(self) -> int:
        return len(self.frames)


def _names(frames: Sequence[_Frame], limit: int = 3) -> str:
    names = [f.path.name + (f" frame {f.frame + 1}" if f.frame is not None else "") for f in frames[:limit]]
    more = f" and {len(frames) - limit} more" if len(frames) > limit else ""
    return ", ".join(names) + more


def _plan(headers: Sequence[_FileHeader], kind: str) -> _Plan:
    if kind == "mosaic":
        return _plan_mosaic(headers)
    frames = [f for h in headers for f in h.frames]
    where = headers[0].path.parent if len({h.path.parent for h in headers}) == 1 else Path(os.path.commonpath([str(h.path) for h in headers]))
    colour = [h for h in headers if h.samples != 1]
    if colour:
        raise SeriesIntegrityError(
            f"{where}: colour images (SamplesPerPixel {colour[0].samples}: {_names([colour[0].frames[0]], 1)}) "
            "are not read as volumes"
        )
    multi = [h for h in headers if h.n_frames > 1 and not h.enhanced]
    if multi:
        raise SeriesIntegrityError(
            f"{where}: {_names([multi[0].frames[0]], 1)} holds {multi[0].n_frames} frames without per-frame "
            "positions (a cine or ultrasound loop?); it cannot be placed as a volume"
        )
    if len(frames) == 1:
        frames = _unplaced_single_frame(frames)
    _check_same(frames, where)
    row = np.asarray(frames[0].orientation[:3])
    col = np.asarray(frames[0].orientation[3:])
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.5:
        raise SeriesIntegrityError(f"{where}: ImageOrientationPatient {frames[0].orientation} has parallel row and column cosines")
    normal = normal / np.linalg.norm(normal)
    distances = np.array([np.dot(f.position, normal) for f in frames])
    order = np.argsort(distances, kind="stable")
    # group the frames that share a position (within _SAME_POSITION_MM)
    groups: list[list[int]] = [[int(order[0])]]
    for a, b in zip(order[:-1], order[1:]):
        if distances[b] - distances[a] > _SAME_POSITION_MM:
            groups.append([])
        groups[-1].append(int(b))
    counts = [len(g) for g in groups]
    n_volumes = counts[0]
    if len(set(counts)) > 1:
        n_volumes = max(set(counts), key=counts.count)
        odd = next(g for g in groups if len(g) != n_volumes)
        odd_frames = [frames[i] for i in odd]
        what = "duplicate slice position" if len(odd) > n_volumes else "missing slice"
        raise SeriesIntegrityError(
            f"{where}: {what}: {len(odd)} images at {distances[odd[0]]:.4f} mm along the slice normal "
            f"({_names(odd_frames)}) where the other {len(groups) - 1} positions hold {n_volumes} each"
        )
    # volume v = the v-th image at each position, in acquisition order
    for g in groups:
        g.sort(key=lambda i: frames[i].order)
    positions = np.array([frames[g[0]].position for g in groups])
    centres = distances[[g[0] for g in groups]]
    first = positions[0]
    n_slices = len(groups)
    if n_slices > 1:
        steps = np.diff(centres)
        median = float(np.median(steps))
        # with few slices the median is one of two steps; the smallest step is then the reference
        reference = float(steps.min()) if steps.min() >= 0.5 * median else median
        big = int(np.argmax(steps))
        if steps[big] > _GAP_FACTOR * reference:
            before, after = frames[groups[big][0]], frames[groups[big + 1][0]]
            raise SeriesIntegrityError(
                f"{where}: missing slice: a gap of {steps[big]:.4g} mm between {before.path.name} "
                f"({centres[big]:.4f} mm) and {after.path.name} ({centres[big + 1]:.4f} mm) along the slice normal, "
                f"where the regular step is {reference:.4g} mm"
            )
        step = float((centres[-1] - centres[0]) / (n_slices - 1))
        off_grid = np.abs(centres - (centres[0] + step * np.arange(n_slices)))
        worst = int(np.argmax(off_grid))
        if off_grid[worst] > POSITION_TOLERANCE_MM:
            raise SeriesIntegrityError(
                f"{where}: uneven slice spacing: {frames[groups[worst][0]].path.name} sits {off_grid[worst]:.4g} mm "
                f"off a regular {step:.4g} mm grid (steps from {steps.min():.4g} to {steps.max():.4g} mm; "
                f"tolerance {POSITION_TOLERANCE_MM} mm)"
            )
        in_plane = positions - first - np.outer(centres - centres[0], normal)
        drift = np.linalg.norm(in_plane, axis=1)
        if drift.max() > POSITION_TOLERANCE_MM:
            k = int(np.argmax(drift))
            angle = math.degrees(math.atan2(drift[k], centres[k] - centres[0]))
            raise SeriesIntegrityError(
                f"{where}: slice positions are not along the slice normal (gantry tilt of about {angle:.2f} degrees, "
                f"{drift[k]:.4g} mm in-plane shift at {frames[groups[k][0]].path.name}); "
                "tilted CT is not read (resample it with dcm2niix, which writes a _Tilt_ file)"
            )
        volumes = [[frames[g[v]] for g in groups] for v in range(n_volumes)]
    else:
        step = headers[0].slice_spacing or 1.0
        volumes = [[frames[i]] for i in groups[0]]
    row_spacing, col_spacing = frames[0].pixel_spacing
    direction = np.column_stack([row, col, normal])
    geometry = Geometry((col_spacing, row_spacing, step), tuple(first), tuple(direction.ravel()))
    return _Plan(kind, geometry, tuple(tuple(v) for v in volumes), (n_slices, frames[0].rows, frames[0].columns))


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.5g}" for v in values) + ")"


def _unplaced_single_frame(frames: Sequence[_Frame]) -> list[_Frame]:
    """A lone projection image (CR, DX, secondary capture) without a position: placed at the origin, axial."""
    f = frames[0]
    return [
        _Frame(
            f.path, f.frame, f.position or (0.0, 0.0, 0.0), f.orientation or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            f.pixel_spacing or (1.0, 1.0), f.rows, f.columns, f.order,
        )
    ]


def _check_same(frames: Sequence[_Frame], where: Path) -> None:
    for attribute, label in (("position", "ImagePositionPatient"), ("orientation", "ImageOrientationPatient"), ("pixel_spacing", "PixelSpacing")):
        missing = [f for f in frames if getattr(f, attribute) is None]
        if missing:
            raise SeriesIntegrityError(f"{where}: no valid {label} in {_names(missing)}; the slices cannot be placed")
    sizes: dict[tuple[int, int], list[_Frame]] = {}
    for f in frames:
        sizes.setdefault((f.rows, f.columns), []).append(f)
    if len(sizes) > 1:
        parts = "; ".join(f"{r}x{c}: {_names(fs)}" for (r, c), fs in sizes.items())
        raise SeriesIntegrityError(f"{where}: mixed image sizes in one series ({parts})")
    ref = np.asarray(frames[0].orientation)
    other = [f for f in frames if not np.allclose(f.orientation, ref, atol=_ORIENTATION_TOL)]
    if other:
        raise SeriesIntegrityError(
            f"{where}: mixed orientations in one series: {_names([frames[0]], 1)} has ImageOrientationPatient "
            f"{_fmt(ref)}, {_names(other)} {_fmt(other[0].orientation)} "
            "(a localizer?)"
        )
    spacing = np.asarray(frames[0].pixel_spacing)
    other = [f for f in frames if not np.allclose(f.pixel_spacing, spacing, rtol=0, atol=1e-4)]
    if other:
        raise SeriesIntegrityError(
            f"{where}: mixed PixelSpacing in one series: {_fmt(spacing)} in {_names([frames[0]], 1)}, "
            f"{_fmt(other[0].pixel_spacing)} in {_names(other)}"
        )


def _mosaic_wrapper(ds: Any, path: Path):
    import warnings

    with warnings.catch_warnings():  # nibabel calls its DICOM readers experimental; we use the mosaic part only
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader, dicomwrappers

    try:
        csa = csareader.get_csa_header(ds, "image")
    except csareader.CSAReadError as exc:
        raise FileFormatError(f"{path}: Siemens mosaic with an unreadable CSA image header ({exc})") from None
    n_mosaic = None
    if csa is not None:
        n_mosaic = csareader.get_n_mosaic(csa)
    if not n_mosaic:
        # (0019,100A) NumberOfImagesInMosaic in the "SIEMENS MR HEADER" private block
        element = ds.get((0x0019, 0x100A))
        n_mosaic = int(_number(element.value if element is not None else None, 0) or 0) or None
    if not n_mosaic:
        raise FileFormatError(
            f"{path}: ImageType says MOSAIC but neither the CSA header nor (0019,100A) gives NumberOfImagesInMosaic"
        )
    wrapper = dicomwrappers.MosaicWrapper(ds, csa_header=csa or {}, n_mosaic=int(n_mosaic))
    if ds.Rows % wrapper.mosaic_size or ds.Columns % wrapper.mosaic_size:
        raise FileFormatError(
            f"{path}: a {ds.Rows}x{ds.Columns} mosaic cannot hold a {wrapper.mosaic_size}x{wrapper.mosaic_size} "
            f"grid of {n_mosaic} images"
        )
    return wrapper


def _mosaic_geometry(wrapper: Any, path: Path) -> Geometry:
    try:
        affine = np.asarray(wrapper.affine, dtype=float)  # (row, column, slice) index -> LPS mm
    except Exception as exc:  # noqa: BLE001 - nibabel's WrapperError / precision errors
        raise FileFormatError(f"{path}: cannot place the mosaic's slices ({exc})") from None
    columns = affine[:3, [1, 0, 2]]  # x = column index, y = row index, z = slice
    spacing = np.linalg.norm(columns, axis=0)
    return Geometry(tuple(spacing), tuple(affine[:3, 3]), tuple((columns / spacing).ravel()))


def _plan_mosaic(headers: Sequence[_FileHeader]) -> _Plan:
    import pydicom

    where = headers[0].path.parent
    geometries = []
    for h in headers:
        ds = pydicom.dcmread(h.path, stop_before_pixels=True)
        wrapper = _mosaic_wrapper(ds, h.path)
        geometries.append((h, _mosaic_geometry(wrapper, h.path), wrapper.image_shape))
    _, geometry, shape = geometries[0]
    for h, g, s in geometries[1:]:
        if s != shape or not g.isclose(geometry, atol=1e-4):
            raise SeriesIntegrityError(
                f"{where}: mosaic files of one series disagree: {headers[0].path.name} is {shape} at {geometry.describe()}, "
                f"{h.path.name} is {s} at {g.describe()}"
            )
    ordered = sorted((h.frames[0] for h in headers), key=lambda f: f.order)
    rows, cols, n = shape
    return _Plan("mosaic", geometry, tuple((f,) for f in ordered), (int(n), int(rows), int(cols)))


# ----------------------------------------------------------------------------------------- reading
def _scaled(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    if slope == 1 and intercept == 0:
        return values
    return values.astype(np.float64) * slope + intercept


def _pixel_array(ds: Any, path: Path) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing decoders, truncated pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        detail = " ".join(str(exc).split())[:300]
        raise FileFormatError(
            f"{path}: cannot decode the pixel data (transfer syntax {name}; {detail}); compressed DICOM needs "
            "pydicom's decoder plugins (pylibjpeg, python-gdcm), or decompress it with dcmdjpeg / gdcmconv --raw"
        ) from None


def _frame_scaling(ds: Any, frame: int | None) -> tuple[float, float]:
    slope = _number(ds.get("RescaleSlope"), 1.0)
    intercept = _number(ds.get("RescaleIntercept"), 0.0)
    if frame is not None:
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        group = ds.PerFrameFunctionalGroupsSequence[frame]
        s = _number(_functional(group, shared, "PixelValueTransformationSequence", "RescaleSlope"))
        i = _number(_functional(group, shared, "PixelValueTransformationSequence", "RescaleIntercept"))
        slope = s if s is not None else slope
        intercept = i if i is not None else intercept
    return float(slope), float(intercept)


def _fit_dtype(stacks: list[np.ndarray], scaled: bool, raw_dtype: np.dtype) -> np.dtype:
    if not scaled:
        return raw_dtype
    if all(np.array_equal(a, np.round(a)) for a in stacks):
        low = min(float(a.min()) for a in stacks if a.size)
        high = max(float(a.max()) for a in stacks if a.size)
        for dtype in (np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return np.dtype(dtype)
    # float32 where it holds the rescaled values exactly, else float64 (what dcm2niix/nibabel compute)
    if all(np.array_equal(a.astype(np.float32), a) for a in stacks):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _read_plan(plan: _Plan, info: SeriesInfo, volumes: Sequence[int]) -> list[np.ndarray]:
    """The ``(z, y, x)`` arrays of the chosen volumes of a planned series."""
    import pydicom

    if plan.kind == "mosaic":
        out = []
        for v in volumes:
            frame = plan.frames[v][0]
            ds = pydicom.dcmread(frame.path)
            wrapper = _mosaic_wrapper(ds, frame.path)
            _pixel_array(ds, frame.path)
            out.append(np.asarray(wrapper.get_data()).transpose(2, 0, 1))
        return out
    needed = {(f.path, f.frame) for v in volumes for f in plan.frames[v]}
    by_file: dict[Path, list[int | None]] = {}
    for path, frame in needed:
        by_file.setdefault(path, []).append(frame)
    images: dict[tuple[Path, int | None], np.ndarray] = {}
    any_scaled = False
    raw_dtype = None
    for path, frame_list in by_file.items():
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # noqa: BLE001 - a file that changed since the scan
            raise FileFormatError(f"{path}: cannot read the DICOM file ({exc})") from None
        pixels = _pixel_array(ds, path)
        raw_dtype = pixels.dtype if raw_dtype is None else np.promote_types(raw_dtype, pixels.dtype)
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InvalidInputError(f"{path}: colour DICOM images (SamplesPerPixel {ds.SamplesPerPixel}) are not read as volumes")
        for frame in frame_list:
            image = pixels if frame is None else (pixels[frame] if pixels.ndim == 3 else pixels)
            slope, intercept = _frame_scaling(ds, frame)
            any_scaled |= not (slope == 1 and intercept == 0)
            images[(path, frame)] = _scaled(np.asarray(image), slope, intercept)
    stacks = [np.stack([images[(f.path, f.frame)] for f in plan.frames[v]]) for v in volumes]
    dtype = _fit_dtype(stacks, any_scaled, np.dtype(raw_dtype))
    return [s.astype(dtype, copy=False) for s in stacks]


def _metadata(info: SeriesInfo, plan: _Plan) -> dict[str, str]:
    # only what identifies the acquisition, never the patient
    meta = {
        "dicom_series_uid": info.uid,
        "dicom_n_files": str(len(info.files)),
        "dicom_kind": info.kind,
    }
    if info.number is not None:
        meta["dicom_series_number"] = str(info.number)
    if info.modality:
        meta["dicom_modality"] = info.modality
    if info.description:
        meta["dicom_series_description"] = info.description
    if plan.n_volumes > 1:
        meta["dicom_n_volumes"] = str(plan.n_volumes)
    # the acquisition attributes of the allow-list (napari_medseg.dicom_tags), then only what may
    # reach an output: no UID, description or patient attribute unless the user asks for them
    from napari_medseg.dicom_tags import dicom_metadata, filter_metadata

    with contextlib.suppress(Exception):  # a header that read once reads again; never fail on extras
        import pydicom

        meta.update(dicom_metadata(pydicom.dcmread(info.files[0], stop_before_pixels=True)))
    return filter_metadata(meta)


def _check_volume_index(volume: int, n_volumes: int, path: Any) -> int:
    if isinstance(volume, bool) or not isinstance(volume, (int, np.integer)) or not 0 <= int(volume) < n_volumes:
        raise InvalidInputError(
            f"{path}: volume={volume!r} is out of range; this series has {n_volumes} volume"
            f"{'s' if n_volumes != 1 else ''} (0-based: 0..{n_volumes - 1})"
        )
    return int(volume)


def _chosen(path: Path, series_uid: str | None, series_number: int | None) -> tuple[SeriesInfo, _Plan]:
    info = find_series(path, series_uid=series_uid, series_number=series_number)
    if info.problem:
        raise SeriesIntegrityError(info.problem)
    return info, info._layout or _plan(info._headers, info.kind)


def read_series(info: SeriesInfo, *, volume: int | None = None) -> Volume | MultiVolume:
    """Read a series found by :func:`list_series` (no second folder scan).

    Parameters
    ----------
    info : SeriesInfo
        One entry of :func:`list_series`.
    volume : int, optional
        Read only this 0-based volume (a 3D :class:`Volume`); by default the whole series.

    Raises
    ------
    SeriesIntegrityError
        If the series has a ``problem``.
    """
    if info.problem:
        raise SeriesIntegrityError(info.problem)
    plan = info._layout or _plan(info._headers, info.kind)
    metadata = _metadata(info, plan)
    if volume is not None:
        k = _check_volume_index(volume, plan.n_volumes, info.uid)
        [array] = _read_plan(plan, info, [k])
        if plan.n_volumes > 1:
            metadata["dicom_volume"] = str(k)
        return Volume(array, plan.geometry, metadata)
    arrays = _read_plan(plan, info, range(plan.n_volumes))
    if plan.n_volumes == 1:
        return Volume(arrays[0], plan.geometry, metadata)
    return MultiVolume(np.stack(arrays), plan.geometry, metadata)


def read_dicom(
    path: str | os.PathLike, *, series_uid: str | None = None, series_number: int | None = None
) -> Volume | MultiVolume:
    """Read one DICOM series as a :class:`Volume` (3D) or a :class:`MultiVolume` (4D).

    Parameters
    ----------
    path : str or path-like
        A DICOM folder (series may sit in subfolders) or a single DICOM file (read alone).
    series_uid, series_number : optional
        Which series, when the folder holds several.

    Returns
    -------
    Volume or MultiVolume
        A 3D volume for a single-volume series; a ``(t, z, y, x)`` MultiVolume otherwise. The
        metadata holds the series UID, number, description, modality and kind, no patient data.

    Raises
    ------
    FileFormatError, AmbiguousSeriesError, SeriesIntegrityError, InvalidInputError
        See the module docstring for what is refused.
    """
    return read_series(find_series(path, series_uid=series_uid, series_number=series_number))


def read_dicom_volume(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    series_number: int | None = None,
    volume: int | None = None,
) -> Volume:
    """Read one 3D volume of a DICOM series (only the chosen volume's pixels are decoded).

    Parameters
    ----------
    volume : int, optional
        0-based volume of a multi-volume series; required when the series has several volumes.

    Raises
    ------
    InvalidInputError
        If the series is 4D and ``volume`` is None (the message names the number of volumes and
        the ``--volume`` option), or ``volume`` is out of range; and as :func:`read_dicom`.
    """
    p = Path(path)
    info = find_series(p, series_uid=series_uid, series_number=series_number)
    if volume is None:
        if info.n_volumes and info.n_volumes > 1:
            raise InvalidInputError(
                f"{p}: series {info.number if info.number is not None else info.uid} is 4D with {info.n_volumes} volumes; "
                f"choose one with --volume K (0-based, 0..{info.n_volumes - 1})"
            )
        volume = 0
    return read_series(info, volume=volume)


def series_files(
    path: str | os.PathLike, *, series_uid: str | None = None, series_number: int | None = None
) -> list[list[tuple[Path, int | None]]]:
    """The files (and frame numbers) of a series in reading order: ``[volume][slice] -> (path, frame)``.

    ``frame`` is the 0-based frame of a multi-frame file, None for a single-frame file (a mosaic
    volume is one file: one entry per volume). This is the order of the voxel array's slices
    (slice ``z`` of volume ``t`` of :func:`read_dicom`'s result), for objects such as DICOM SEG
    that must reference the source instances.
    """
    info, plan = _chosen(Path(path), series_uid, series_number)
    return [[(f.path, f.frame) for f in v] for v in plan.frames]


def series_datasets(
    path: str | os.PathLike, *, series_uid: str | None = None, series_number: int | None = None, volume: int = 0
) -> list:
    """The pydicom datasets of one volume of a series, sorted as the slices of its voxel array.

    Headers only (``stop_before_pixels``); one dataset per file, so a multi-frame or mosaic
    volume gives one dataset. ``volume`` is 0-based.
    """
    import pydicom

    order = series_files(path, series_uid=series_uid, series_number=series_number)
    k = _check_volume_index(volume, len(order), path)
    seen: list[Path] = []
    for file, _ in order[k]:
        if file not in seen:
            seen.append(file)
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in seen]
