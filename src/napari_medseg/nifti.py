"""NIfTI-1 and NIfTI-2 read as the standard and nibabel do: geometry from sform/qform, bounded data reads.

Geometry (the NIfTI standard, as nibabel's ``img.affine`` / ``header.get_best_affine()``):

1. ``sform_code > 0``: the sform (``srow_x``, ``srow_y``, ``srow_z``). A sheared sform (axes not
   orthogonal) cannot be held by a :class:`~napari_medseg.volume.Geometry`: the qform is used with a
   warning, or the file is refused when there is no qform.
2. else ``qform_code > 0``: the qform (quaternion, ``qoffset_*``, ``pixdim[1:4]``, qfac in
   ``pixdim[0]``). A negative or zero ``pixdim[1:4]`` is refused (nibabel refuses it too; it must
   not silently flip an axis); a qfac other than -1, 0 or 1 is refused (0 is read as 1).
3. else: ``pixdim`` only, with nibabel's Analyze-style affine (x flipped, centred on the grid), and a
   warning that the file has no orientation.

When both codes are set and the two transforms place the grid's corners more than 1e-3 mm apart, a
:class:`NiftiGeometryWarning` names both codes. Spatial units (``xyzt_units``) of metres or microns
are converted to millimetres. The RAS affine becomes LPS, as SimpleITK reports geometry.

Voxel data are read here rather than by SimpleITK: the claimed size is checked against the file
(uncompressed) and the memory budget before anything is allocated, ``.gz`` data are decompressed
straight into a buffer of exactly the claimed size (a gzip bomb cannot make the reader use more),
truncated or corrupt streams are refused, NaN voxels are kept, and ``scl_slope``/``scl_inter``
scaling is applied: to an integer array when slope and intercept are integers (a uint16 with
slope 2 reads as exact integers, and is written back as integers, not floats), else to float32
(raw types of up to 16 bits) or float64.

The qform/sform codes travel in the volume's metadata (``nifti_qform_code``,
``nifti_sform_code``); :func:`split_nifti_fields` takes them out before a write, so no NIfTI-only
key reaches an NRRD or MetaImage header, and :func:`apply_nifti_fields` puts them into a written
NIfTI file.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.headers import check_claimed_bytes, check_geometry_fields, format_bytes, unreadable

__all__ = [
    "NiftiGeometryWarning",
    "NiftiGeometry",
    "XFORM_CODE_NAMES",
    "read_nifti_header",
    "nifti_geometry",
    "read_nifti",
    "split_nifti_fields",
    "apply_nifti_fields",
    "write_nifti_image",
    "QFORM_KEY",
    "SFORM_KEY",
]

#: NIfTI transform codes and their names.
XFORM_CODE_NAMES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}
QFORM_KEY, SFORM_KEY = "nifti_qform_code", "nifti_sform_code"
#: metadata keys that only mean something in a NIfTI header
_NIFTI_FIELD_KEYS = (QFORM_KEY, SFORM_KEY)
_DISAGREE_MM = 1e-3
_MAX_VOX_OFFSET = 1 << 30  # extensions larger than 1 GiB are not a header
_UNIT_TO_MM = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 1e-3}  # unknown, meter, mm, micron
_CHUNK = 1 << 24


class NiftiGeometryWarning(UserWarning):
    """A NIfTI header's transforms disagree, are sheared or missing; the message says which was used."""


@dataclass(frozen=True)
class NiftiGeometry:
    """The transform chosen from a NIfTI header.

    Attributes
    ----------
    affine_ras : ndarray (4, 4)
        Voxel index (i, j, k) to RAS millimetres.
    source : str
        ``"sform"``, ``"qform"`` or ``"pixdim"``.
    qform_code, sform_code : int
        The header's codes.
    """

    affine_ras: np.ndarray
    source: str
    qform_code: int
    sform_code: int


def _code_name(code: int) -> str:
    return f"{code} ({XFORM_CODE_NAMES.get(code, 'non-standard')})"


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _corrupt(path: Path, detail: str) -> FileFormatError:
    return FileFormatError(f"{path}: cannot read the file; it is truncated, corrupt or not a valid image ({detail})")


def read_nifti_header(path: str | os.PathLike):
    """The NIfTI-1 or NIfTI-2 header of a single-file NIfTI (``.nii``, ``.nii.gz``), unchecked.

    Only the header block is read (at most 540 bytes are decompressed); extensions are skipped.

    Returns
    -------
    nibabel.nifti1.Nifti1Header or nibabel.nifti2.Nifti2Header

    Raises
    ------
    FileFormatError
        If the file is not a single-file NIfTI or its header is truncated.
    """
    from nibabel.nifti1 import Nifti1Header
    from nibabel.nifti2 import Nifti2Header

    p = Path(path)
    try:
        with _open(p) as fh:
            block = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
            raise unreadable(p, exc) from None
        raise _corrupt(p, str(exc) or type(exc).__name__) from None
    if len(block) < 4:
        raise _corrupt(p, f"{len(block)} bytes, too short for a NIfTI header")
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", block[:4])[0]
        if size in (348, 540):
            break
    else:
        raise _corrupt(p, "not a NIfTI header: sizeof_hdr is neither 348 nor 540")
    if len(block) < size:
        raise _corrupt(p, f"the header is cut after {len(block)} of {size} bytes")
    klass = Nifti1Header if size == 348 else Nifti2Header
    header = klass(binaryblock=block[:size], endianness=endian, check=False)
    magic = bytes(header["magic"])[:3]
    if magic not in (b"n+1", b"n+2"):
        raise _corrupt(p, f"magic {bytes(header['magic'])!r} is not a single-file NIfTI ('n+1' or 'n+2')")
    return header


def _ndim_and_shape(path: Path, header) -> tuple[int, list[int]]:
    dim = [int(d) for d in header["dim"]]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise FileFormatError(f"{path}: header field dim[0] = {ndim}: expected 1 to 7 dimensions")
    shape = dim[1 : ndim + 1]
    for i, n in enumerate(shape, start=1):
        if n < 1:
            raise FileFormatError(f"{path}: header field dim[{i}] = {n}: expected a size >= 1")
    return ndim, shape


def _complete_columns(lin: np.ndarray, ndim: int) -> np.ndarray:
    """Give a 1D/2D image's unused axes a unit column orthogonal to the others (pixdim may be 0 there)."""
    lin = lin.copy()
    for axis in range(max(ndim, 1), 3):
        if np.linalg.norm(lin[:, axis]) > 0:
            continue
        others = [lin[:, a] / np.linalg.norm(lin[:, a]) for a in range(3) if a != axis and np.linalg.norm(lin[:, a]) > 0]
        if len(others) == 2:
            column = np.cross(others[0], others[1]) if axis == 2 else np.cross(others[1], others[0])
        else:
            column = np.eye(3)[:, axis]
        lin[:, axis] = column
    return lin


def _split(path: Path, affine: np.ndarray, ndim: int, fields: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spacing, direction (columns) and origin of a 4x4 affine, checked; names ``fields`` when not."""
    lin = affine[:3, :3]
    if not np.all(np.isfinite(affine[:3, :])):
        raise FileFormatError(f"{path}: header field {fields[2]} has non-finite values")
    lin = _complete_columns(lin, ndim)
    spacing = np.linalg.norm(lin, axis=0)
    check_geometry_fields(path, spacing=spacing, fields=(fields[0], "", ""))
    direction = lin / spacing
    check_geometry_fields(path, origin=affine[:3, 3], direction=direction, fields=("", fields[1], fields[2]))
    return spacing, direction, affine[:3, 3]


def _qform(path: Path, header, ndim: int) -> np.ndarray:
    qfac = float(header["pixdim"][0])
    if qfac not in (-1.0, 0.0, 1.0):
        raise FileFormatError(f"{path}: header field pixdim[0] (qfac) = {qfac:g}: expected 1 or -1")
    pixdim = [float(v) for v in header["pixdim"][1:4]]
    check_geometry_fields(path, spacing=pixdim[: min(ndim, 3)], fields=("pixdim[1:4]", "", ""))
    quatern = [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d")]
    offset = [float(header[k]) for k in ("qoffset_x", "qoffset_y", "qoffset_z")]
    if not all(math.isfinite(v) for v in quatern):
        raise FileFormatError(f"{path}: header field quatern_b/c/d = ({' '.join(f'{v:g}' for v in quatern)}): expected finite values")
    check_geometry_fields(path, origin=offset, fields=("", "qoffset_x/y/z", ""))
    fixed = header.copy()
    if qfac == 0:
        fixed["pixdim"][0] = 1.0  # the standard and nibabel read qfac 0 as 1
    try:
        return fixed.get_qform()
    except Exception as exc:  # noqa: BLE001 - nibabel's HeaderDataError/ValueError for a bad quaternion
        raise FileFormatError(f"{path}: header field quatern_b/c/d = ({' '.join(f'{v:g}' for v in quatern)}): not a rotation ({exc})") from None


def _corners(shape: list[int]) -> np.ndarray:
    extent = [max(n - 1, 0) for n in (shape + [1, 1, 1])[:3]]
    return np.array([[i, j, k, 1.0] for i in (0, extent[0]) for j in (0, extent[1]) for k in (0, extent[2])]).T


def nifti_geometry(path: str | os.PathLike, header) -> NiftiGeometry:
    """Choose and check the voxel-to-RAS transform of a NIfTI header (see the module docstring).

    Raises
    ------
    FileFormatError
        Naming the header field: non-finite ``srow_*``, ``quatern_*`` or ``qoffset_*``; a zero,
        negative, non-finite or absurd spacing; a sheared sform without a qform.

    Warns
    -----
    NiftiGeometryWarning
        If the sform and qform disagree by more than 1e-3 mm, the sform is sheared (the qform is
        used), or neither is set.
    """
    p = Path(path)
    ndim, shape = _ndim_and_shape(p, header)
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    units = _UNIT_TO_MM.get(int(header["xyzt_units"]) & 7, 1.0)
    scale = np.diag([units, units, units, 1.0])
    if scode != 0:
        sform = scale @ header.get_sform()
        sheared = False
        try:
            _split(p, sform, ndim, ("sform (srow_x/y/z column lengths)", "sform (srow_x/y/z offsets)", "sform (srow_x/y/z)"))
        except FileFormatError as exc:
            if "not orthonormal" not in str(exc):
                raise
            sheared = True
        if sheared:
            if qcode == 0:
                raise FileFormatError(
                    f"{p}: the sform (srow_x/y/z, sform_code {_code_name(scode)}) is sheared and there is no qform "
                    "(qform_code 0); a volume cannot hold a sheared grid, refusing to guess"
                )
            qform = scale @ _qform(p, header, ndim)
            _split(p, qform, ndim, ("pixdim[1:4]", "qoffset_x/y/z", "quatern_b/c/d"))
            warnings.warn(
                f"{p}: the sform (sform_code {_code_name(scode)}) is sheared; using the qform "
                f"(qform_code {_code_name(qcode)}) instead",
                NiftiGeometryWarning,
                stacklevel=3,
            )
            return NiftiGeometry(qform, "qform", qcode, scode)
        if qcode != 0:
            try:
                qform = scale @ _qform(p, header, ndim)
            except FileFormatError:
                qform = None  # not used; nibabel ignores it too
            if qform is not None:
                corners = _corners(shape)
                gap = float(np.max(np.linalg.norm((sform @ corners - qform @ corners)[:3], axis=0)))
                if not gap <= _DISAGREE_MM:
                    warnings.warn(
                        f"{p}: the sform (sform_code {_code_name(scode)}) and the qform (qform_code "
                        f"{_code_name(qcode)}) place voxels up to {gap:.4g} mm apart; using the sform, as the "
                        "NIfTI standard and nibabel do",
                        NiftiGeometryWarning,
                        stacklevel=3,
                    )
        return NiftiGeometry(sform, "sform", qcode, scode)
    if qcode != 0:
        qform = scale @ _qform(p, header, ndim)
        _split(p, qform, ndim, ("pixdim[1:4]", "qoffset_x/y/z", "quatern_b/c/d"))
        return NiftiGeometry(qform, "qform", qcode, scode)
    pixdim = [float(v) for v in header["pixdim"][1:4]]
    check_geometry_fields(p, spacing=pixdim[: min(ndim, 3)], fields=("pixdim[1:4]", "", ""))
    base = header.copy()
    base["pixdim"][1:4] = [v if i < ndim else (v if v > 0 else 1.0) for i, v in enumerate(pixdim)]
    affine = scale @ base.get_base_affine()
    if affine.shape != (4, 4):
        full = np.eye(4)
        n = affine.shape[0] - 1
        full[:n, :n], full[:n, 3] = affine[:n, :n], affine[:n, n]
        affine = full
    warnings.warn(
        f"{p}: no qform or sform (both codes 0): the orientation is unknown; using pixdim with nibabel's "
        "convention (x flipped, centred on the grid)",
        NiftiGeometryWarning,
        stacklevel=3,
    )
    return NiftiGeometry(affine, "pixdim", qcode, scode)


def _scaling(path: Path, header) -> tuple[float, float] | None:
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope == 0 or math.isnan(slope):
        return None  # the standard: no scaling
    if not math.isfinite(slope) or not math.isfinite(inter):
        raise FileFormatError(f"{path}: header fields scl_slope = {slope:g}, scl_inter = {inter:g}: expected finite values")
    if slope == 1 and inter == 0:
        return None
    return slope, inter


def _scaled_dtype(raw: np.dtype, slope: float, inter: float) -> np.dtype:
    """Integers stay integers when slope and intercept are integers (the smallest type holding every
    scaled raw value); otherwise float32 for raw types of up to 16 bits, float64 above."""
    if raw.kind in "ui" and float(slope).is_integer() and float(inter).is_integer():
        info = np.iinfo(raw)
        ends = [int(slope) * int(info.min) + int(inter), int(slope) * int(info.max) + int(inter)]
        low, high = min(ends), max(ends)
        for candidate in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64):
            ci = np.iinfo(candidate)
            if ci.min <= low and high <= ci.max:
                return np.dtype(candidate)
    return np.dtype(np.float32 if raw.itemsize <= 2 and raw.kind in "ui" else np.float64)


def _read_exactly(path: Path, fh, buffer: memoryview, offset: int, compressed: bool) -> None:
    if compressed:
        left = offset
        while left > 0:
            got = len(fh.read(min(left, _CHUNK)))
            if got == 0:
                raise _corrupt(path, f"the stream ends inside the {offset}-byte header and extensions")
            left -= got
    else:
        fh.seek(offset)
    filled = 0
    while filled < len(buffer):
        got = fh.readinto(buffer[filled : filled + _CHUNK])
        if not got:
            raise _corrupt(path, f"the voxel data end after {format_bytes(filled)} of {format_bytes(len(buffer))}")
        filled += got
    if compressed:
        # reach the end of the stream (bounded) so its CRC is checked; trailing data beyond that is ignored
        fh.read(1 << 20)


def read_nifti(path: str | os.PathLike, *, file_size: int):
    """Read a single-file NIfTI-1 or NIfTI-2 into a :class:`~napari_medseg.volume.Volume`.

    Parameters
    ----------
    path : str or path-like
        A ``.nii`` or ``.nii.gz`` file (already checked to be a regular file).
    file_size : int
        Its size in bytes (from :func:`os.stat`).

    Returns
    -------
    volume : Volume or None
        ``None`` for images this reader leaves to SimpleITK (vector, RGB and complex voxels);
        the caller then reads the voxels with SimpleITK and uses ``geometry`` and ``metadata``.
    geometry : Geometry
        The geometry chosen from the header.
    metadata : dict
        The transform codes to keep (see :func:`split_nifti_fields`).

    Raises
    ------
    FileFormatError, InvalidInputError
        Bad header fields (named), a size the file or memory cannot hold, truncated or corrupt
        data, a 4D image.
    """
    from napari_medseg.volume import Volume

    p = Path(path)
    header = read_nifti_header(p)
    ndim, shape = _ndim_and_shape(p, header)
    choice = nifti_geometry(p, header)
    geometry = nifti_volume_geometry(p, choice, ndim)
    full = (shape + [1] * 7)[:7]
    if full[3] > 1:
        raise InvalidInputError(
            f"{p}: expected a 2D or 3D image; got a {ndim}D image of shape {tuple(shape)} "
            "(split 4D series into 3D volumes first)"
        )
    try:
        dtype = header.get_data_dtype()
    except Exception as exc:  # noqa: BLE001 - nibabel raises for an unknown datatype code
        raise FileFormatError(f"{p}: header field datatype = {int(header['datatype'])}: not a NIfTI data type ({exc})") from None
    metadata = nifti_fields(choice)
    if dtype.fields is not None or dtype.kind not in "uif" or any(n > 1 for n in full[4:]):
        # SimpleITK reads these voxels; their claimed size is still checked against memory first
        all_bytes = int(np.prod(full, dtype=object)) * dtype.itemsize
        check_claimed_bytes(p, all_bytes, what=f"{' x '.join(map(str, shape))} voxels of {dtype.itemsize} bytes")
        return None, geometry, metadata
    n_voxels = int(np.prod(full[:3], dtype=object))
    claimed = n_voxels * dtype.itemsize
    try:
        offset = int(header.get_data_offset())
    except (ValueError, OverflowError):
        raise FileFormatError(f"{p}: header field vox_offset = {header['vox_offset']}: expected a byte offset") from None
    offset = max(offset, int(header["sizeof_hdr"]) + 4)
    if offset > _MAX_VOX_OFFSET:
        raise FileFormatError(f"{p}: header field vox_offset = {offset}: the voxel data cannot start after {format_bytes(_MAX_VOX_OFFSET)}")
    scaling = _scaling(p, header)
    out_dtype = _scaled_dtype(dtype, *scaling) if scaling else dtype
    compressed = p.name.lower().endswith(".gz")
    what = f"{' x '.join(map(str, full[:3]))} voxels of {dtype.newbyteorder('=').name}"
    check_claimed_bytes(
        p,
        claimed,
        what=what,
        available_bytes=None if compressed else file_size - offset,
        needed_bytes=claimed + (n_voxels * out_dtype.itemsize if scaling else 0),
    )
    buffer = np.empty(claimed, dtype=np.uint8)
    try:
        with _open(p) as fh:
            _read_exactly(p, fh, memoryview(buffer), offset, compressed)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
            raise unreadable(p, exc) from None
        raise _corrupt(p, str(exc) or type(exc).__name__) from None
    array = buffer.view(dtype)
    if not dtype.isnative:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    array = array.reshape(full[2], full[1], full[0])  # x varies fastest in the file
    if scaling:
        slope, inter = scaling
        scaled = array.astype(out_dtype)
        if out_dtype.kind in "ui":
            scaled *= out_dtype.type(int(slope))
            scaled += out_dtype.type(int(inter))
        else:
            scaled *= out_dtype.type(slope)
            scaled += out_dtype.type(inter)
        array = scaled
    return Volume(array, geometry, metadata), geometry, metadata


def nifti_volume_geometry(path: Path, choice: NiftiGeometry, ndim: int):
    """The LPS :class:`~napari_medseg.volume.Geometry` of a chosen NIfTI transform."""
    from napari_medseg.volume import Geometry

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ choice.affine_ras
    fields = {
        "sform": ("sform (srow_x/y/z column lengths)", "sform (srow_x/y/z offsets)", "sform (srow_x/y/z)"),
        "qform": ("pixdim[1:4]", "qoffset_x/y/z", "quatern_b/c/d"),
        "pixdim": ("pixdim[1:4]", "pixdim", "pixdim"),
    }[choice.source]
    spacing, direction, origin = _split(path, lps, ndim, fields)
    return Geometry(tuple(spacing), tuple(origin), tuple(direction.ravel()))


def nifti_fields(choice: NiftiGeometry) -> dict[str, str]:
    """The metadata that keeps a file's transform codes on a round trip (none for a file without codes)."""
    if choice.source == "pixdim":
        return {}  # written back with SimpleITK's codes: the geometry, not the missing codes, is kept
    return {QFORM_KEY: str(choice.qform_code), SFORM_KEY: str(choice.sform_code)}


def split_nifti_fields(metadata: Mapping[str, str]) -> tuple[dict[str, str], dict[str, int]]:
    """Separate the NIfTI-only fields from other metadata (so they never reach NRRD/MHA headers).

    Returns
    -------
    other : dict
        Every other key.
    codes : dict
        ``{"qform_code": int, "sform_code": int}`` for the keys present with a valid code (0-5).
    """
    other, codes = {}, {}
    for key, value in metadata.items():
        if key in _NIFTI_FIELD_KEYS:
            try:
                code = int(value)
            except ValueError:
                continue
            if code in XFORM_CODE_NAMES:
                codes[key.removeprefix("nifti_")] = code
        else:
            other[key] = value
    return other, codes


#: the codes SimpleITK writes
_SITK_CODES = {"qform_code": 1, "sform_code": 1}


def write_nifti_image(image, path: str | os.PathLike, codes: Mapping[str, int], *, use_compression: bool = True) -> None:
    """Write a SimpleITK image as NIfTI with the given ``qform_code``/``sform_code``.

    SimpleITK always writes codes 1, 1. When other codes must be kept, the file is written
    uncompressed, its header patched in place (:func:`apply_nifti_fields`) and, for ``.nii.gz``,
    compressed here (zlib level 6 for integer images, 1 for floating point). Meant for a
    path inside a private temporary folder; no other file is left there.

    Parameters
    ----------
    image : SimpleITK.Image
    path : str or path-like
        ``.nii`` or ``.nii.gz``.
    codes : mapping
        ``{"qform_code": int, "sform_code": int}`` (from :func:`split_nifti_fields`); may be empty.
    use_compression : bool, default True
        Passed to SimpleITK when no codes need keeping.
    """
    import SimpleITK as sitk

    p = Path(path)
    if not codes or all(_SITK_CODES.get(k) == v for k, v in codes.items()):
        sitk.WriteImage(image, str(p), use_compression)
        return
    gz = p.name.lower().endswith(".gz")
    plain = p.with_name(p.name[:-3]) if gz else p
    sitk.WriteImage(image, str(plain), False)
    apply_nifti_fields(plain, codes)
    if gz:
        # level 6 (SimpleITK's size) for integer images, whose runs compress fast; level 1 for floating
        # point, where Python's zlib at level 6 is several times slower than SimpleITK and gains little
        floating = image.GetPixelIDValue() in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64)
        try:
            with open(plain, "rb") as src, open(p, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1 if floating else 6, mtime=0) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        finally:
            plain.unlink(missing_ok=True)


def apply_nifti_fields(path: str | os.PathLike, codes: Mapping[str, int]) -> None:
    """Set ``qform_code``/``sform_code`` in a NIfTI file just written (SimpleITK always writes 1, 1).

    A ``.nii`` is patched in place (the header block only); a ``.nii.gz`` is re-streamed through
    gzip into a sibling file that replaces it. Nothing is done when the codes already match.
    Meant for a file in a private temporary folder, before it is moved into place.
    """
    if not codes:
        return
    p = Path(path)
    header = read_nifti_header(p)
    if all(int(header[k]) == v for k, v in codes.items()):
        return
    for key, value in codes.items():
        header[key] = value
    block = header.binaryblock
    if not p.name.lower().endswith(".gz"):
        with open(p, "r+b") as fh:
            fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        return
    tmp = p.with_name(p.name + ".codes")
    with gzip.open(p, "rb") as src, open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as dst:
        src.read(len(block))
        dst.write(block)
        shutil.copyfileobj(src, dst, _CHUNK)
    os.replace(tmp, p)

