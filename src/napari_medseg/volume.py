"""Volumes with their geometry: read, write, resample and reorient without losing a header.

A :class:`Volume` is a numpy array in ``(z, y, x)`` order (``(z, y, x, c)`` for multi-component
images) plus a :class:`Geometry`: spacing, origin and direction *exactly as SimpleITK reports
them*, i.e. in ``(x, y, z)`` order, in millimetres, in the LPS patient frame. The array axis order
and the geometry order are therefore reversed; :attr:`Geometry.spacing_zyx` gives the spacing in
array order, which is what array functions (``metrics``, ``postprocess``, ``registration``) take as
``spacing_mm``.

Supported formats (chosen by extension): NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``,
``.nhdr``; ``.seg.nrrd`` is read as a label map and written with Slicer segment fields), MetaImage
(``.mha``, ``.mhd``), DICOM (a folder holding one or more series, or a single ``.dcm`` file) and 2D
images (``.png``, ``.tif``, ``.tiff``, ``.jpg``, ``.bmp``) read as single-slice volumes.
Writing is atomic and verified: the file is written under a temporary name in the target folder,
checked complete and renamed (see :func:`write_volume` and :mod:`napari_medseg.outputs`).
DICOM Segmentation files, whatever their name, are read as label maps by
:mod:`napari_medseg.dicom_seg`. DICOM attributes reach a written header only through the
allow-list of :mod:`napari_medseg.dicom_tags` unless ``keep_dicom_tags=True``.
"""

from __future__ import annotations

import contextlib
import functools
import locale
import math
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medseg._options import look_up_option
from napari_medseg._validate import check_spacing_mm
from napari_medseg.dicom_tags import dicom_metadata, filter_metadata
from napari_medseg.errors import FileFormatError, GeometryMismatchError, InvalidInputError
from napari_medseg.headers import check_allocation, check_geometry_fields, check_metaimage_header, check_nrrd_header, check_regular_file, check_sitk_claim
from napari_medseg.nifti import read_nifti, split_nifti_fields, write_nifti_image

__all__ = [
    "Geometry",
    "Volume",
    "Interpolation",
    "SUPPORTED_SUFFIXES",
    "read_volume",
    "read_labels",
    "write_volume",
    "volume_format",
    "from_sitk",
    "to_sitk",
    "resample",
    "resample_like",
    "resample_to_spacing",
    "reorient",
    "check_same_grid",
    "as_label_array",
    "segments_from_metadata",
]

#: Extensions this module reads and writes, longest first so ``.seg.nrrd`` wins over ``.nrrd``.
SUPPORTED_SUFFIXES = (
    ".seg.nrrd",
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".dcm",
    ".png",
    ".tiff",
    ".tif",
    ".jpg",
    ".jpeg",
    ".bmp",
)
_IMAGE_2D_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
# header keys that describe the file format itself; they are not carried from one file to another
_FORMAT_KEY_PREFIXES = ("NRRD_", "ITK_", "nifti", "dim[", "pixdim[", "srow_", "qform", "sform", "qto_", "sto_")
_NIFTI_KEYS = {
    "aux_file", "bitpix", "cal_max", "cal_min", "datatype", "descrip", "intent_code", "intent_name",
    "intent_p1", "intent_p2", "intent_p3", "qoffset_x", "qoffset_y", "qoffset_z", "quatern_b",
    "quatern_c", "quatern_d", "scl_inter", "scl_slope", "slice_code", "slice_duration", "slice_end",
    "slice_start", "toffset", "vox_offset", "xyzt_units", "xyzt_units_name", "intent_code_name",
    "datatype_name", "type", "dimension", "space", "space directions", "space origin", "kinds",
    "endian", "encoding", "sizes", "modality",
}
_NIFTI_KEYS |= {"qfac", "dim_info", "nifti_type"}  # ITK's NIfTI reader reports these too: never carry them to NRRD/MHA


# ----------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid sits in patient space, as SimpleITK reports it.

    Parameters
    ----------
    spacing : tuple of 3 float
        Voxel size in millimetres along ``(x, y, z)`` (SimpleITK order; array order is reversed).
        Every value must be finite and > 0.
    origin : tuple of 3 float
        Physical position (mm, LPS) of the centre of voxel ``(0, 0, 0)``, in ``(x, y, z)`` order.
    direction : tuple of 9 float
        Row-major 3x3 direction cosine matrix; column ``i`` is the unit vector of index axis ``i``
        (x, y, z) in LPS. It must be orthonormal to 1e-4.

    Raises
    ------
    InvalidInputError
        If a value is missing, not finite, a spacing is not positive or the direction is not
        orthonormal.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = tuple(float(d) for d in self.direction)
        check_spacing_mm(spacing, 3, name="spacing", order="x y z order")  # the one spacing check
        if len(origin) != 3 or not all(math.isfinite(o) for o in origin):
            raise InvalidInputError(f"origin={self.origin!r}: expected 3 finite values (mm, x y z order)")
        if len(direction) != 9 or not all(math.isfinite(d) for d in direction):
            raise InvalidInputError(f"direction={self.direction!r}: expected 9 finite values (row-major 3x3)")
        matrix = np.asarray(direction).reshape(3, 3)
        if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-4):
            raise InvalidInputError(f"direction={self.direction!r} is not an orthonormal 3x3 matrix")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in mm in array axis order ``(z, y, x)``: what array functions take as ``spacing_mm``."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix (columns are the x, y, z index axes in LPS)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def orientation(self) -> str:
        """Three-letter orientation code (e.g. ``"LPS"``, ``"RAS"``): where each index axis points to.

        For an oblique direction this is the closest axis-aligned orientation.
        """
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    @property
    def is_oblique(self) -> bool:
        """True if the direction is not a signed permutation matrix (to 1e-6)."""
        m = np.abs(self.direction_matrix)
        return not np.allclose(m, np.round(m), atol=1e-6)

    @property
    def voxel_volume_mm3(self) -> float:
        """The volume of one voxel in mm^3."""
        return float(np.prod(self.spacing))

    def index_to_physical(self) -> np.ndarray:
        """4x4 matrix mapping a homogeneous ``(x, y, z)`` index to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def affine_zyx(self) -> np.ndarray:
        """4x4 matrix mapping an array index ``(z, y, x)`` to physical ``(z, y, x)`` LPS mm.

        This is the ``affine`` a napari layer needs to place an oblique volume exactly.
        """
        flip = np.eye(4)[[2, 1, 0, 3]]
        return flip @ self.index_to_physical() @ flip

    def isclose(self, other: Geometry, *, atol: float = 1e-6) -> bool:
        """True if spacing, origin and direction agree to ``atol`` (mm, and unitless for direction)."""
        return (
            np.allclose(self.spacing, other.spacing, rtol=0, atol=atol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=atol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=atol)
        )

    def describe(self) -> str:
        """One line: spacing, origin and orientation, for messages."""
        sp = ", ".join(f"{s:g}" for s in self.spacing)
        org = ", ".join(f"{o:g}" for o in self.origin)
        oblique = " (oblique)" if self.is_oblique else ""
        return f"spacing ({sp}) mm, origin ({org}) mm, orientation {self.orientation}{oblique}"

    def to_dict(self) -> dict:
        """A JSON-ready dict with ``spacing``, ``origin``, ``direction`` and ``orientation``."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "orientation": self.orientation,
        }


# ------------------------------------------------------------------------------------------- volume
@dataclass(frozen=True, eq=False)
class Volume:
    """A voxel array with the geometry that places it in patient space.

    Parameters
    ----------
    array : numpy.ndarray
        ``(z, y, x)`` for scalar images, ``(z, y, x, c)`` for multi-component images (RGB, vector).
    geometry : Geometry
        Spacing, origin and direction (SimpleITK order, mm, LPS).
    metadata : mapping of str to str
        Header fields that travel with the volume (NRRD/MHA key-value pairs, Slicer segment fields,
        provenance). Format-internal fields of the file it came from are not kept.

    Raises
    ------
    InvalidInputError
        If ``array`` is not 3D or 4D.
    """

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim not in (3, 4):
            raise InvalidInputError(
                f"Volume array must be (z, y, x) or (z, y, x, c); got shape {array.shape}"
            )
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(z, y, x)``."""
        return tuple(self.array.shape[:3])  # type: ignore[return-value]

    @property
    def n_components(self) -> int:
        """Number of components per voxel (1 for scalar images)."""
        return 1 if self.array.ndim == 3 else int(self.array.shape[3])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in mm in array axis order."""
        return self.geometry.spacing_zyx

    def derive(self, array: np.ndarray, *, metadata: Mapping[str, str] | None = None) -> Volume:
        """A new Volume on the same grid with another array (same spatial shape required).

        Raises
        ------
        GeometryMismatchError
            If ``array``'s spatial shape differs from this volume's.
        """
        array = np.asarray(array)
        if tuple(array.shape[:3]) != self.shape:
            raise GeometryMismatchError(
                f"derived array has spatial shape {array.shape[:3]}, expected {self.shape}"
            )
        merged = dict(self.metadata)
        if metadata:
            merged.update(metadata)
        return Volume(array, self.geometry, merged)


def from_sitk(image: sitk.Image, *, metadata: Mapping[str, str] | None = None) -> Volume:
    """Convert a 2D or 3D SimpleITK image to a :class:`Volume` (2D becomes one slice).

    Raises
    ------
    InvalidInputError
        If the image has more than 3 dimensions (other than a trailing size-1 axis).
    """
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim == 2:
        array = sitk.GetArrayFromImage(image)[None]
        sx, sy = image.GetSpacing()
        ox, oy = image.GetOrigin()
        d = image.GetDirection()
        geometry = Geometry((sx, sy, 1.0), (ox, oy, 0.0), (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0))
    elif dim == 3:
        array = sitk.GetArrayFromImage(image)
        geometry = Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    else:
        raise InvalidInputError(
            f"expected a 2D or 3D image; got a {dim}D image of size {image.GetSize()} "
            "(split 4D series into 3D volumes first)"
        )
    return Volume(array, geometry, metadata or {})


def to_sitk(volume: Volume) -> sitk.Image:
    """Convert a :class:`Volume` to a 3D SimpleITK image with the same geometry."""
    array = volume.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=volume.array.ndim == 4)
    image.SetSpacing(volume.geometry.spacing)
    image.SetOrigin(volume.geometry.origin)
    image.SetDirection(volume.geometry.direction)
    return image


# ------------------------------------------------------------------------------------------- format
class VolumeFormat(StrEnum):
    NIFTI = "nifti"
    NRRD = "nrrd"
    SEG_NRRD = "seg.nrrd"
    METAIMAGE = "metaimage"
    DICOM = "dicom"
    IMAGE_2D = "image2d"


def volume_format(path: str | os.PathLike) -> VolumeFormat:
    """The format a path names, by extension (a folder or a name without extension is DICOM).

    Raises
    ------
    FileFormatError
        If the extension is not supported; the message lists the supported ones.
    """
    p = Path(path)
    name = p.name.lower()
    if p.is_dir() or (not p.suffix and not p.exists()):
        return VolumeFormat.DICOM
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            if suffix == ".seg.nrrd":
                return VolumeFormat.SEG_NRRD
            if suffix in (".nii", ".nii.gz"):
                return VolumeFormat.NIFTI
            if suffix in (".nrrd", ".nhdr"):
                return VolumeFormat.NRRD
            if suffix in (".mha", ".mhd"):
                return VolumeFormat.METAIMAGE
            if suffix == ".dcm":
                return VolumeFormat.DICOM
            return VolumeFormat.IMAGE_2D
    raise FileFormatError(
        f"{p}: unsupported file type {''.join(p.suffixes) or '(no extension)'!r}; "
        f"expected one of {', '.join(SUPPORTED_SUFFIXES)} or a DICOM folder"
    )


def _sitk_error(path: Path, exc: Exception) -> FileFormatError:
    text = str(exc)
    detail = text.split("sitk::ERROR:", 1)[1] if "sitk::ERROR:" in text else text.strip().splitlines()[-1]
    detail = " ".join(detail.split())[:200] or "unreadable"
    return FileFormatError(f"{path}: cannot read the file; it is truncated, corrupt or not a valid image ({detail})")


def _nifti_data_end(path: Path) -> int | None:
    """Byte offset where a NIfTI file's voxel data should end (None if nibabel cannot parse it)."""
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception:  # noqa: BLE001 - SimpleITK's error is reported instead
        return None
    n_voxels = int(np.prod(header.get_data_shape()))
    return int(header.get_data_offset()) + n_voxels * header.get_data_dtype().itemsize


def _check_nifti_complete(path: Path) -> None:
    """Raise if a NIfTI file holds less voxel data than its header promises.

    SimpleITK silently zero-fills truncated ``.nii`` and ``.nii.gz`` files (seen with SimpleITK
    2.5), which would be a silent wrong result; a streaming decompression costs about 0.3 s per
    100 MB and is the only way to know a gzip stream is complete.
    """
    import zlib

    expected = _nifti_data_end(path)
    if expected is None:
        return
    if path.name.lower().endswith(".gz"):
        import gzip

        # bounded: 16 MiB at a time, and no further than the header's promise (a gzip bomb stops there)
        total = 0
        try:
            with gzip.open(path, "rb") as fh:
                while total < expected and (chunk := fh.read(min(1 << 24, expected - total))):
                    total += len(chunk)
        except (EOFError, zlib.error, gzip.BadGzipFile):
            pass
        complete = total >= expected
        size = total
    else:
        size = path.stat().st_size
        complete = size >= expected
    if not complete:
        raise FileFormatError(
            f"{path}: cannot read the file; it is truncated, corrupt or not a valid image "
            f"(header promises {expected} bytes of header and data, the file holds {size})"
        )


def _read_nifti_with_nibabel(path: Path) -> Volume:
    """NIfTI-2 (and other NIfTI variants SimpleITK has no reader for) through nibabel."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a corrupt file for the user
        raise FileFormatError(f"{path}: cannot read the file; it is truncated, corrupt or not a valid image ({exc})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidInputError(
            f"{path}: expected a 2D or 3D image; got a {data.ndim}D image of shape {data.shape} "
            "(split 4D series into 3D volumes first)"
        )
    lps = np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3, :]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    direction = lps[:, :3] / spacing
    try:
        geometry = Geometry(tuple(spacing), tuple(lps[:, 3]), tuple(direction.ravel()))
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}: the NIfTI affine has shear, which a volume cannot hold ({exc})") from None
    return Volume(np.ascontiguousarray(data.transpose(2, 1, 0)), geometry)


def _kept_metadata(image: sitk.Image | sitk.ImageFileReader, *, keep_dicom_tags: bool = False) -> dict[str, str]:
    kept = {}
    for key in image.GetMetaDataKeys():
        if key.startswith(_FORMAT_KEY_PREFIXES) or key in _NIFTI_KEYS:
            continue
        kept[key] = image.GetMetaData(key)
    # DICOM attributes (a single .dcm file, or a header that carries them): the allow-list only
    return filter_metadata(kept, keep_dicom_tags=keep_dicom_tags)


_itk_quiet_lock = threading.Lock()
_itk_quiet_depth = 0
_itk_saved_display = True


@contextlib.contextmanager
def quiet_itk_warnings():
    """Switch ITK's warning display off for the block, then back to what it was.

    ITK prints warnings for harmless header quirks (e.g. non-orthogonal qform rounding) to stderr;
    our reads and writes silence them, but only for themselves: the setting belongs to the host
    process (Slicer, napari, a script), so it is restored when the last of any overlapping blocks
    (other threads' reads) ends.
    """
    global _itk_quiet_depth, _itk_saved_display
    with _itk_quiet_lock:
        if _itk_quiet_depth == 0:
            _itk_saved_display = bool(sitk.ProcessObject.GetGlobalWarningDisplay())
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
        _itk_quiet_depth += 1
    try:
        yield
    finally:
        with _itk_quiet_lock:
            _itk_quiet_depth -= 1
            if _itk_quiet_depth == 0:
                sitk.ProcessObject.SetGlobalWarningDisplay(_itk_saved_display)


def _keeps_locale(function):
    """Restore the process locale after ``function``: GDCM (SimpleITK's DICOM IO) sets it to "C",
    which would silently switch Python's default text encoding to ASCII for the rest of the process
    (a napari session, a test run) after the first DICOM read or write. ITK's warnings are off
    during ``function`` only (:func:`quiet_itk_warnings`)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        saved = locale.setlocale(locale.LC_ALL)
        try:
            with quiet_itk_warnings():
                return function(*args, **kwargs)
        finally:
            if locale.setlocale(locale.LC_ALL) != saved:
                with contextlib.suppress(locale.Error):
                    locale.setlocale(locale.LC_ALL, saved)

    return wrapper


def _read_dicom_folder(folder: Path, series_uid: str | None, *, keep_dicom_tags: bool = False) -> Volume:
    # scanner series (mosaic, multi-volume, enhanced, integrity checks) live in napari_medseg.dicom
    from napari_medseg.dicom import find_series, read_dicom_volume

    volume = read_dicom_volume(folder, series_uid=series_uid)
    if keep_dicom_tags:  # asked for explicitly: every attribute of the series' first file
        import pydicom

        first = find_series(folder, series_uid=series_uid).files[0]
        tags = dicom_metadata(pydicom.dcmread(first, stop_before_pixels=True), keep_dicom_tags=True)
        volume = Volume(volume.array, volume.geometry, {**volume.metadata, **tags})
    return volume


def _check_files_readable(folder: Path) -> None:
    """Raise FileAccessError if files in ``folder`` cannot be opened (GDCM just sees no series)."""
    from napari_medseg._atomic import access_error

    for entry in os.scandir(folder):
        if entry.is_file():
            try:
                os.close(os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK))
            except OSError as exc:
                raise access_error(exc, entry.path, "read") from None


def _check_readable(p: Path) -> None:
    """Say why ``p`` cannot be read: missing is not the same as permission denied."""
    from napari_medseg._atomic import access_error

    try:
        if p.is_dir():
            os.listdir(p)
        else:  # non-blocking: opening a FIFO must not wait for a writer
            os.close(os.open(p, os.O_RDONLY | os.O_NONBLOCK))
    except FileNotFoundError:
        raise FileFormatError(f"{p}: file not found") from None
    except OSError as exc:
        raise access_error(exc, p, "read") from None


@_keeps_locale
def read_volume(path: str | os.PathLike, *, series_uid: str | None = None, keep_dicom_tags: bool = False) -> Volume:
    """Read an image file or a DICOM folder into a :class:`Volume`.

    Parameters
    ----------
    path : str or path-like
        A file of a supported format, or a folder of DICOM files.
    series_uid : str, optional
        For a DICOM folder holding several series, the SeriesInstanceUID to read (required then;
        see :mod:`napari_medseg.dicom` for series numbers, 4D series and what is refused).
    keep_dicom_tags : bool, default False
        Keep every DICOM attribute in the metadata, patient-identifying ones included. By default
        only the allow-list of :mod:`napari_medseg.dicom_tags` is kept.

    Returns
    -------
    Volume
        The voxel array in ``(z, y, x[, c])`` order and the geometry SimpleITK reports; 2D images
        become a single slice (z spacing 1 mm).

    Raises
    ------
    FileFormatError
        If the file is missing, its type unsupported, or it is truncated or corrupt.
    InvalidInputError
        If the image is 4D (or more) where a 3D volume is needed.
    """
    p = Path(path)
    p = Path(path)
    _check_readable(p)
    from napari_medseg import dicom_seg

    if p.is_file() and dicom_seg.is_dicom_seg(p):  # a DICOM Segmentation: a label map with segment names
        return dicom_seg.read_dicom_seg(p)
    fmt = volume_format(p)
    if fmt == VolumeFormat.DICOM:
        return _read_dicom_folder(p, series_uid, keep_dicom_tags=keep_dicom_tags)
    if p.is_dir():
        raise FileFormatError(f"{p}: is a folder but not a DICOM series")
    # headers are checked before any voxel is read (napari_medseg.headers, napari_medseg.nifti)
    file_size = check_regular_file(p).st_size
    if fmt == VolumeFormat.NIFTI:
        nifti_volume, nifti_geometry, nifti_metadata = read_nifti(p, file_size=file_size)
        if nifti_volume is not None:
            return nifti_volume
    elif fmt in (VolumeFormat.NRRD, VolumeFormat.SEG_NRRD):
        check_nrrd_header(p, file_size)
    elif fmt == VolumeFormat.METAIMAGE:
        check_metaimage_header(p, file_size)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
        check_sitk_claim(p, reader)
        image = reader.Execute()
    except RuntimeError as exc:
        if fmt == VolumeFormat.NIFTI and "Unable to determine ImageIO reader" in str(exc):
            volume = _read_nifti_with_nibabel(p)
            return Volume(volume.array, nifti_geometry, nifti_metadata)
        raise _sitk_error(p, exc) from None
    if fmt == VolumeFormat.NIFTI:
        _check_nifti_complete(p)
    try:
        volume = from_sitk(image, metadata=_kept_metadata(reader, keep_dicom_tags=keep_dicom_tags))
    except InvalidInputError as exc:
        raise InvalidInputError(f"{p}: {exc}") from None
    if fmt == VolumeFormat.NIFTI:  # vector/RGB voxels came from SimpleITK; the geometry from the header
        volume = Volume(volume.array, nifti_geometry, {**volume.metadata, **nifti_metadata})
    g = volume.geometry
    check_geometry_fields(p, spacing=g.spacing, origin=g.origin, direction=g.direction_matrix)
    if fmt == VolumeFormat.NIFTI and np.issubdtype(volume.array.dtype, np.floating):
        _restore_nifti_nans(p, volume.array)
    if fmt == VolumeFormat.NIFTI and reader.HasMetaDataKey("descrip"):
        # multi-component compact maps keep their scale in descrip (see _set_nifti_scale)
        notes = dict(t.split("=", 1) for t in reader.GetMetaData("descrip").split() if t.startswith("medseg_") and "=" in t)
        if "medseg_scale" in notes and np.issubdtype(volume.array.dtype, np.integer):
            volume = volume.derive(volume.array, metadata={**volume.metadata, **notes})
    if "medseg_scale" in volume.metadata and np.issubdtype(volume.array.dtype, np.integer):
        volume = _apply_header_scale(volume, p)  # compact maps (napari_medseg.compact); NIfTI's scl_slope SimpleITK applies
    return volume


def _apply_header_scale(volume: Volume, path: Path) -> Volume:
    try:
        scale = float(volume.metadata["medseg_scale"])
        offset = float(volume.metadata.get("medseg_offset", "0"))
    except ValueError:
        raise FileFormatError(f"{path}: header field medseg_scale={volume.metadata['medseg_scale']!r} is not a number") from None
    array = volume.array.astype(np.float32)
    array *= np.float32(scale)
    if offset:
        array += np.float32(offset)
    return volume.derive(array)


def _set_nifti_scale(path: Path, slope: float, inter: float, *, vector: bool) -> None:
    """Store a compact map's scale in a NIfTI-1 header SimpleITK wrote (it cannot itself).

    Scalar images get the standard ``scl_slope`` / ``scl_inter``, which every NIfTI reader applies.
    Vector images (``intent_code`` 1007) get the scale in ``descrip`` only: ITK 5.4 (SimpleITK
    2.5, 3D Slicer) corrupts memory reading a vector NIfTI with a slope; medseg's reader applies it.
    """
    import gzip
    import struct

    compressed = path.name.lower().endswith(".gz")
    data = bytearray(gzip.decompress(path.read_bytes()) if compressed else path.read_bytes())
    if struct.unpack_from("<i", data, 0)[0] != 348:
        raise InvalidInputError(f"{path}: not a little-endian NIfTI-1 header; cannot store the scale")
    note = f"medseg_scale={slope!r} medseg_offset={inter!r}".encode()[:79]
    data[148:228] = note + b"\0" * (80 - len(note))
    if not vector:
        struct.pack_into("<ff", data, 112, slope, inter)
    path.write_bytes(gzip.compress(bytes(data), compresslevel=6, mtime=0) if compressed else bytes(data))


def _restore_nifti_nans(path: Path, array: np.ndarray) -> None:
    """Put back the NaN/Inf voxels that SimpleITK's NIfTI reader turns into 0 (seen with SimpleITK 2.5).

    A NaN must reach the user's checks (inference refuses or masks it explicitly) instead of
    silently becoming a valid intensity.
    """
    import nibabel as nib

    data = np.asanyarray(nib.load(str(path)).dataobj)
    data = data.reshape(data.shape[:3] + (-1,))[..., 0] if data.ndim > 3 else data
    bad = ~np.isfinite(data)
    if bad.any():
        data_zyx, bad_zyx = data.transpose(2, 1, 0), bad.transpose(2, 1, 0)
        if bad_zyx.shape == array.shape[:3]:
            array[bad_zyx] = data_zyx[bad_zyx]


def as_label_array(array: np.ndarray, *, name: str = "labels") -> np.ndarray:
    """Check that ``array`` holds non-negative integer labels and return it in the smallest uint type.

    Raises
    ------
    InvalidInputError
        If the array has several components, non-integer, negative or non-finite values.
    """
    array = np.asarray(array)
    if array.ndim == 4:
        raise InvalidInputError(f"{name}: a label image must have one component per voxel; got {array.shape[3]}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InvalidInputError(f"{name}: label image contains NaN or Inf values")
        if not np.array_equal(array, np.round(array)):
            bad = array[array != np.round(array)].ravel()[:3]
            raise InvalidInputError(
                f"{name}: label image has non-integer values (e.g. {', '.join(f'{v:g}' for v in bad)}); "
                "expected integer label values"
            )
    elif not np.issubdtype(array.dtype, np.integer):
        raise InvalidInputError(f"{name}: label image has dtype {array.dtype}; expected integers")
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = float(array.min()), float(array.max())
    if low < 0:
        raise InvalidInputError(f"{name}: label image has negative values (min {low:g}); expected labels >= 0")
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if high <= np.iinfo(dtype).max:
            return array.astype(dtype, copy=array.dtype != dtype)
    raise InvalidInputError(f"{name}: label values up to {high:g} do not fit an unsigned 64-bit integer")


@_keeps_locale
def read_labels(path: str | os.PathLike, *, series_uid: str | None = None, keep_dicom_tags: bool = False) -> Volume:
    """Read a label map: like :func:`read_volume`, then check values are non-negative integers.

    Returns
    -------
    Volume
        A volume whose array has the smallest unsigned integer dtype holding its labels.

    Raises
    ------
    FileFormatError, InvalidInputError
        As :func:`read_volume`; also if the values are not non-negative integers (the message
        names the file).
    """
    volume = read_volume(path, series_uid=series_uid, keep_dicom_tags=keep_dicom_tags)
    array = as_label_array(volume.array, name=str(path))
    return Volume(array, volume.geometry, volume.metadata)


def segments_from_metadata(metadata: Mapping[str, str]) -> dict[int, tuple[str, tuple[float, float, float] | None]]:
    """Label value -> (name, colour) from Slicer ``.seg.nrrd`` fields (``SegmentN_Name`` ...)."""
    segments: dict[int, tuple[str, tuple[float, float, float] | None]] = {}
    index = 0
    while f"Segment{index}_LabelValue" in metadata:
        value = int(metadata[f"Segment{index}_LabelValue"])
        name = metadata.get(f"Segment{index}_Name", f"Segment_{value}")
        colour = None
        if f"Segment{index}_Color" in metadata:
            colour = tuple(float(c) for c in metadata[f"Segment{index}_Color"].split())  # type: ignore[assignment]
        segments[value] = (name, colour)
        index += 1
    return segments


def _segment_metadata(
    array: np.ndarray,
    label_names: Mapping[int, str] | None,
    label_colors: Mapping[int, tuple[float, float, float]] | None,
) -> dict[str, str]:
    values = [int(v) for v in np.unique(array) if v != 0]
    if label_names:
        values = sorted(set(values) | {int(v) for v in label_names if int(v) != 0})
    meta: dict[str, str] = {}
    rng = np.random.default_rng(0)
    for i, value in enumerate(values):
        name = (label_names or {}).get(value, f"Segment_{value}")
        colour = (label_colors or {}).get(value) or tuple(rng.uniform(0.2, 1.0, 3))
        meta[f"Segment{i}_ID"] = f"Segment_{value}"
        meta[f"Segment{i}_Name"] = str(name)
        meta[f"Segment{i}_LabelValue"] = str(value)
        meta[f"Segment{i}_Layer"] = "0"
        meta[f"Segment{i}_Color"] = " ".join(f"{float(c):.6g}" for c in colour)
        meta[f"Segment{i}_NameAutoGenerated"] = "0"
        meta[f"Segment{i}_ColorAutoGenerated"] = "0" if label_colors else "1"
    meta["Segmentation_MasterRepresentation"] = "Binary labelmap"
    meta["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    return meta


def _check_dicom_writable(volume: Volume, folder: Path) -> None:
    array = volume.array
    if array.ndim != 3:
        raise InvalidInputError(f"{folder}: DICOM output needs a scalar volume; got {volume.n_components} components")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise InvalidInputError(
            f"{folder}: DICOM output supports integer images; got {array.dtype} "
            "(write NIfTI, NRRD or MetaImage for floating-point data)"
        )
    if array.dtype in (np.int32, np.int64, np.uint32, np.uint64):
        low, high = int(array.min()), int(array.max())
        if low < -32768 or high > 65535 or (low < 0 and high > 32767):
            raise InvalidInputError(f"{folder}: values {low}..{high} do not fit DICOM's 16-bit pixels")


def _write_dicom_series(volume: Volume, folder: Path) -> None:
    array = volume.array
    image = to_sitk(volume)
    if array.dtype in (np.int32, np.int64, np.uint32, np.uint64):
        low, high = int(array.min()), int(array.max())
        image = sitk.Cast(image, sitk.sitkInt16 if low < 0 or high <= 32767 else sitk.sitkUInt16)
    stamp = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    series_uid = "1.2.826.0.1.3680043.2.1125." + str(int(time.time() * 1e6)) + f".{os.getpid()}"
    g = volume.geometry
    d = g.direction
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    common = {
        "0008|0020": stamp[0], "0008|0030": stamp[1], "0008|0021": stamp[0], "0008|0031": stamp[1],
        "0008|0060": volume.metadata.get("dicom_modality", "OT"),
        "0008|103e": volume.metadata.get("dicom_series_description", "napari-medseg"),
        "0020|000e": series_uid, "0020|000d": series_uid + ".1", "0020|0037": orientation,
        "0018|0050": f"{g.spacing[2]:.10g}", "0020|0011": "1",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in common.items():
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        slice_image.SetMetaData("0028|0030", f"{g.spacing[1]:.10g}\\{g.spacing[0]:.10g}")
        writer.SetFileName(str(folder / f"slice_{k:05d}.dcm"))
        writer.Execute(slice_image)


@_keeps_locale
def write_volume(
    volume: Volume,
    path: str | os.PathLike,
    *,
    compress: bool = True,
    label_names: Mapping[int, str] | None = None,
    label_colors: Mapping[int, tuple[float, float, float]] | None = None,
    keep_dicom_tags: bool = False,
) -> Path:
    """Write ``volume`` to exactly ``path``, atomically and verified, keeping geometry and metadata.

    The file (with its ``.raw``/``.zraw`` data file for ``.mhd``/``.nhdr``, or the DICOM folder) is
    written under a temporary name beside ``path``, flushed and checked complete (a NIfTI file
    against its header, since SimpleITK does not report a short NIfTI write), then renamed into
    place; a failure leaves an existing file byte-identical and no temporary entry behind.

    Parameters
    ----------
    volume : Volume
        What to write.
    path : str or path-like
        Target file; its extension picks the format. A name without extension (or an existing
        folder) writes a DICOM series into that folder (integer images only).
    compress : bool, default True
        Compress the voxel data where the format allows (``.nii`` is never compressed).
    label_names, label_colors : mapping, optional
        For ``.seg.nrrd``: segment name and RGB colour (0-1) per label value, so 3D Slicer shows
        named segments.
    keep_dicom_tags : bool, default False
        Write every DICOM attribute of the metadata into the header; by default those not on the
        allow-list of :mod:`napari_medseg.dicom_tags` (patient name, IDs, dates...) are dropped.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    FileFormatError
        If the extension is unsupported.
    InvalidInputError
        If the data cannot be stored in that format (e.g. a multi-slice volume as PNG, floats as
        DICOM, non-integer labels as ``.seg.nrrd``), or the name would not be written as given
        (see :func:`napari_medseg.outputs.check_output_name`: an upper-case extension, an existing
        folder for a file, a non-empty folder this program did not write for DICOM).
    FileAccessError
        If the system refuses or cuts the write (no space, quota, file size limit, read-only,
        permission); the message names ``path`` and the reason.
    """
    from napari_medseg._atomic import commit
    from napari_medseg.outputs import check_output_name

    target = Path(path)
    check_output_name(target, option="path")
    folder, moves = _stage_volume(
        volume, target, compress=compress, label_names=label_names, label_colors=label_colors, keep_dicom_tags=keep_dicom_tags
    )
    try:
        commit(moves, cleanup=[folder])
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return target


def _write_failure(target: Path, folder: Path, detail: str, needed_bytes: int, *, known_only: bool = False):
    """The FileAccessError for a write SimpleITK failed (or reported as done but left short).

    SimpleITK's messages rarely carry the system's reason, so the device's free space and the
    process's file size limit are checked to name it. With ``known_only``, None when no reason of
    the system is found (the failure is the format's: the caller reports that).
    """
    import resource

    from napari_medseg.errors import FileAccessError

    reason = None if known_only else detail
    with contextlib.suppress(OSError):
        stat = os.statvfs(folder)
        free = stat.f_bavail * stat.f_frsize
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if "No space" in detail or free < max(needed_bytes, 1 << 16):
            reason = f"no space left on the device ({free} bytes free)"
        elif "too large" in detail or (soft != resource.RLIM_INFINITY and soft < needed_bytes + (1 << 16)):
            reason = f"file too large for the process's file size limit (ulimit -f: {soft} bytes)"
        elif "Permission denied" in detail:
            reason = "permission denied"
        elif "Read-only" in detail:
            reason = "read-only file system"
        elif "quota" in detail.lower():
            reason = "disk quota exceeded"
    if reason is None:
        return None
    return FileAccessError(f"{target}: cannot write: {reason}; nothing was changed")


def _verify_staged(fmt: VolumeFormat, staged: list[Path], volume: Volume, compressed: bool) -> str | None:
    """Why a staged write is incomplete, or None: every file flushed and non-empty, NIfTI data
    complete per its header (SimpleITK does not report a short NIfTI write), uncompressed data at
    least as large as the array."""
    from napari_medseg._atomic import fsync_path

    for file in staged:
        if not file.exists():
            return f"{file.name} was not written"
        fsync_path(file)
        if file.stat().st_size == 0:
            return f"{file.name} is empty"
    if fmt == VolumeFormat.NIFTI:
        if _nifti_data_end(staged[-1]) is None:
            return "the NIfTI header cannot be read back"
        try:
            _check_nifti_complete(staged[-1])
        except FileFormatError as exc:
            return str(exc).rsplit("(", 1)[-1].rstrip(")")
    elif not compressed and fmt in (VolumeFormat.METAIMAGE, VolumeFormat.NRRD):
        if sum(f.stat().st_size for f in staged) < volume.array.nbytes:
            return f"the data is shorter than the {volume.array.nbytes} bytes of the image"
    return None


def _stage_volume(
    volume: Volume,
    path: str | os.PathLike,
    *,
    compress: bool = True,
    label_names: Mapping[int, str] | None = None,
    label_colors: Mapping[int, tuple[float, float, float]] | None = None,
    keep_dicom_tags: bool = False,
) -> tuple[Path, list[tuple[Path, Path]]]:
    """Write ``volume`` for ``path`` into a new staging folder beside it and verify it.

    Returns the staging folder and the ``(staged, target)`` renames that put it in place (data
    files first). Nothing at ``path`` is touched; on failure the staging folder is removed.
    """
    from napari_medseg._atomic import access_error, fsync_path, stage_dir
    from napari_medseg.outputs import check_output_name, written_files

    target = Path(path)
    fmt = check_output_name(path, option="path")
    array = volume.array
    # no identifying DICOM attribute is written unless asked for (napari_medseg.dicom_tags)
    metadata = filter_metadata(volume.metadata, keep_dicom_tags=keep_dicom_tags)
    metadata, nifti_codes = split_nifti_fields(metadata)  # NIfTI-only keys never reach other formats
    if fmt == VolumeFormat.DICOM:
        _check_dicom_writable(volume, target)
        folder = stage_dir(target)
        try:
            with _quiet_c_stderr():
                _write_dicom_series(Volume(volume.array, volume.geometry, metadata), folder)
            problem = None
            for file in sorted(folder.iterdir()):
                fsync_path(file)
                if file.stat().st_size < array[0].size * 2:
                    problem = f"{file.name} holds {file.stat().st_size} bytes, less than one slice of pixels"
                    break
            if problem:
                raise _write_failure(target, folder, problem, array.size * 2)
            from napari_medseg._atomic import _give_default_mode

            _give_default_mode(folder, target, directory=True)
        except RuntimeError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            detail = str(exc).strip().splitlines()[-1]
            failure = _write_failure(target, target.parent, detail, array.size * 2, known_only=True)
            raise (failure or InvalidInputError(f"{target}: cannot write this image as DICOM ({detail})")) from None
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise access_error(exc, target) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder, [(folder, target)]
    if fmt == VolumeFormat.SEG_NRRD:
        array = as_label_array(array, name=str(target))
        if label_names is None and label_colors is None:
            label_names = {v: n for v, (n, _) in segments_from_metadata(metadata).items()} or None
            label_colors = {v: c for v, (_, c) in segments_from_metadata(metadata).items() if c} or None
        metadata = {k: v for k, v in metadata.items() if not k.startswith(("Segment", "Segmentation_"))}
        metadata.update(_segment_metadata(array, label_names, label_colors))
    if fmt == VolumeFormat.IMAGE_2D:
        if volume.shape[0] != 1 and target.suffix.lower() not in (".tif", ".tiff"):
            raise InvalidInputError(f"{target}: a {volume.shape[0]}-slice volume cannot be written as a 2D image")
    image = to_sitk(Volume(array, volume.geometry))
    if fmt == VolumeFormat.IMAGE_2D and volume.shape[0] == 1:
        image = image[:, :, 0]
    for key, value in metadata.items():
        image.SetMetaData(key, value)
    use_compression = compress and not target.name.lower().endswith(".nii")
    targets = written_files(target, compress=use_compression)
    # a single-file format is written under a plain name and renamed: SimpleITK rewrites names
    # such as x.nii.gz.nii.gz (to x.nii.gz) or z.img.nii.gz (to an Analyze pair z.hdr/z.img); a
    # header + data pair keeps the target's stem because the header names its data file
    suffix = next(s for s in SUPPORTED_SUFFIXES if target.name.lower().endswith(s))
    staged_names = [t.name for t in targets] if len(targets) > 1 else ["image" + suffix]
    folder = stage_dir(target)
    try:
        try:
            with _quiet_c_stderr():
                if fmt == VolumeFormat.NIFTI:  # keeps the qform/sform codes (SimpleITK alone writes 1, 1)
                    write_nifti_image(image, folder / staged_names[-1], nifti_codes, use_compression=use_compression)
                else:
                    sitk.WriteImage(image, str(folder / staged_names[-1]), use_compression)
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[-1]
            failure = _write_failure(target, folder, detail, array.nbytes, known_only=True)
            if failure is not None:
                raise failure from None
            raise InvalidInputError(f"{target}: cannot write this image in this format ({detail})") from None
        if fmt == VolumeFormat.NIFTI and "medseg_scale" in metadata and np.issubdtype(array.dtype, np.integer):
            # compact maps (napari_medseg.compact): the scale SimpleITK cannot store itself
            _set_nifti_scale(folder / staged_names[-1], float(metadata["medseg_scale"]),
                             float(metadata.get("medseg_offset", "0")), vector=array.ndim == 4)
        produced = sorted(f.name for f in folder.iterdir())
        if produced != sorted(staged_names):
            raise InvalidInputError(
                f"{target}: the writer produced {', '.join(produced)} instead of {', '.join(staged_names)}; nothing was changed"
            )
        staged = [folder / n for n in staged_names]
        problem = _verify_staged(fmt, staged, Volume(array, volume.geometry), use_compression)
        if problem:
            raise _write_failure(target, folder, problem, array.nbytes)
        for file, final in zip(staged, targets):
            _give_default_mode_file(file, final)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise access_error(exc, target) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, list(zip(staged, targets))


@contextlib.contextmanager
def _quiet_c_stderr():
    """Silence what the C writers print on a failed write (\"** ERROR: NWAD: wrote only...\",
    \"MetaImage: M_WriteElementsData...\"): the failure is reported once, as a FileAccessError."""
    import sys

    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (a GUI, a captured stream)
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _give_default_mode_file(tmp: Path, target: Path) -> None:
    from napari_medseg._atomic import _give_default_mode

    _give_default_mode(tmp, target, directory=False)


# ------------------------------------------------------------------------------ resample / reorient
class Interpolation(StrEnum):
    """How values are interpolated when resampling.

    ``linear`` and ``bspline`` for images, ``nearest`` for labels (exact values), ``label`` for
    label maps resampled with a per-label Gaussian vote (smoother boundaries, still label values).
    """

    LINEAR = "linear"
    NEAREST = "nearest"
    LABEL = "label"
    BSPLINE = "bspline"


_SITK_INTERPOLATORS = {
    Interpolation.LINEAR: sitk.sitkLinear,
    Interpolation.NEAREST: sitk.sitkNearestNeighbor,
    Interpolation.LABEL: sitk.sitkLabelGaussian,
    Interpolation.BSPLINE: sitk.sitkBSpline,
}


def resample(
    volume: Volume,
    *,
    geometry: Geometry,
    shape: tuple[int, int, int],
    interpolation: Interpolation | str = Interpolation.LINEAR,
    default_value: float = 0.0,
    extrapolate_nearest: bool = False,
) -> Volume:
    """Resample ``volume`` onto the grid given by ``geometry`` and ``shape`` (z, y, x).

    Parameters
    ----------
    volume : Volume
        The volume to resample; its metadata is kept.
    geometry : Geometry
        Target spacing, origin and direction.
    shape : tuple of 3 int
        Target array shape ``(z, y, x)``.
    interpolation : {"linear", "nearest", "label", "bspline"}, default "linear"
        See :class:`Interpolation`. Integer outputs of ``linear``/``bspline`` are rounded by
        SimpleITK's cast to the input dtype.
    default_value : float, default 0
        Value of voxels that fall outside the input.
    extrapolate_nearest : bool, default False
        Give voxels outside the input the nearest edge value instead of ``default_value`` (what
        probability maps need at the rim of a grid).

    Raises
    ------
    InvalidInputError
        If ``interpolation`` is unknown, ``shape`` is not 3 positive integers, or the output would
        not fit in the memory this process can have (checked before allocating).
    """
    mode = look_up_option(interpolation, Interpolation, name="interpolation")
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise InvalidInputError(f"shape={shape!r}: expected 3 positive integers (z, y, x)")
    n_out = int(np.prod([int(n) for n in shape], dtype=object)) * volume.n_components * volume.array.dtype.itemsize
    check_allocation(n_out, what=f"resampling to a {' x '.join(str(int(n)) for n in shape)} grid (z, y, x)")
    image = to_sitk(volume)
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(geometry.spacing)
    resampler.SetOutputOrigin(geometry.origin)
    resampler.SetOutputDirection(geometry.direction)
    resampler.SetSize([int(shape[2]), int(shape[1]), int(shape[0])])
    resampler.SetInterpolator(_SITK_INTERPOLATORS[mode])
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetUseNearestNeighborExtrapolator(bool(extrapolate_nearest))
    resampler.SetOutputPixelType(image.GetPixelID())
    out = resampler.Execute(image)
    return Volume(sitk.GetArrayFromImage(out), geometry, volume.metadata)


def resample_like(
    volume: Volume, reference: Volume | tuple[Geometry, tuple[int, int, int]], *, interpolation: Interpolation | str = Interpolation.LINEAR, default_value: float = 0.0
) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid (a Volume, or a ``(geometry, shape)`` pair)."""
    if isinstance(reference, Volume):
        geometry, shape = reference.geometry, reference.shape
    else:
        geometry, shape = reference
    return resample(volume, geometry=geometry, shape=shape, interpolation=interpolation, default_value=default_value)


def resample_to_spacing(
    volume: Volume,
    spacing: tuple[float, float, float],
    *,
    interpolation: Interpolation | str = Interpolation.LINEAR,
    default_value: float = 0.0,
) -> Volume:
    """Resample ``volume`` to a new voxel spacing, keeping origin, direction and physical extent.

    Parameters
    ----------
    spacing : tuple of 3 float
        Target spacing in mm, ``(x, y, z)`` order like :attr:`Geometry.spacing`.

    Notes
    -----
    The first voxel centre stays at the origin; the new size is ``round(size * old / new)`` per
    axis (at least 1). Resampling back with :func:`resample_like` onto the original volume
    restores its grid exactly.
    """
    new_geometry = Geometry(spacing, volume.geometry.origin, volume.geometry.direction)
    shape = resampled_size(volume.shape, volume.geometry.spacing, new_geometry.spacing)
    return resample(volume, geometry=new_geometry, shape=shape, interpolation=interpolation, default_value=default_value)


def resampled_size(
    shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[int, int, int]:
    """The array shape ``(z, y, x)`` that covers ``shape`` at ``new_spacing``: per axis
    ``round(size * spacing / new_spacing)``, at least 1 (both spacings ``(x, y, z)`` mm, like
    :attr:`Geometry.spacing`). The one size formula of resampling (and of the model grid)."""
    size_xyz = [max(1, int(round(n * o / s))) for n, o, s in zip(tuple(shape)[:3][::-1], spacing, new_spacing)]
    return tuple(size_xyz[::-1])


def reorient(volume: Volume, orientation: str = "RAS") -> Volume:
    """Permute and flip the array so its index axes point to ``orientation`` (e.g. "RAS", "LPS").

    Only axis permutations and flips happen (no interpolation), so reorienting back to the
    original code gives the identical array and geometry. For an oblique volume the closest
    axis-aligned orientation is used.

    Raises
    ------
    InvalidInputError
        If ``orientation`` is not three letters, one from each of R/L, A/P and S/I.
    """
    code = str(orientation).upper()
    axes = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    if len(code) != 3 or any(c not in axes for c in code) or len({axes[c] for c in code}) != 3:
        raise InvalidInputError(
            f"orientation={orientation!r}: expected three letters, one each of R/L, A/P and S/I (e.g. 'RAS', 'LPS')"
        )
    oriented = sitk.DICOMOrient(to_sitk(volume), code)
    out = from_sitk(oriented, metadata=volume.metadata)
    return out


def check_same_grid(a: Volume, b: Volume, *, names: tuple[str, str] = ("first", "second"), atol: float = 1e-4) -> None:
    """Raise :class:`GeometryMismatchError` unless ``a`` and ``b`` share shape and geometry.

    Parameters
    ----------
    atol : float, default 1e-4
        Tolerance in mm (and for direction cosines); headers round-trip through float32 in NIfTI.
    """
    problems = []
    if a.shape != b.shape:
        problems.append(f"shape {a.shape} vs {b.shape}")
    ga, gb = a.geometry, b.geometry
    if not np.allclose(ga.spacing, gb.spacing, rtol=0, atol=atol):
        problems.append(f"spacing {tuple(round(s, 6) for s in ga.spacing)} vs {tuple(round(s, 6) for s in gb.spacing)} mm")
    if not np.allclose(ga.origin, gb.origin, rtol=0, atol=atol):
        problems.append(f"origin {tuple(round(s, 4) for s in ga.origin)} vs {tuple(round(s, 4) for s in gb.origin)} mm")
    if not np.allclose(ga.direction, gb.direction, rtol=0, atol=atol):
        problems.append(f"direction {ga.orientation} vs {gb.orientation}")
    if problems:
        raise GeometryMismatchError(f"{names[0]} and {names[1]} are not on the same grid: " + "; ".join(problems))

