"""napari reader for medical volumes: NIfTI, NRRD (and Slicer ``.seg.nrrd``), MetaImage, DICOM, imzML.

:func:`napari_get_reader` returns ``None`` for anything it cannot read, otherwise a function that
reads the path(s) with :func:`napari_medseg.volume.read_volume` and returns napari
``LayerDataTuple``s built by :mod:`._layers` (spacing as ``scale``, origin as ``translate``, flips
as ``rotate``, units mm, the exact geometry, file header and provenance in ``metadata``).

Image or labels:

- ``.seg.nrrd`` files and files carrying Slicer segment fields become a Labels layer with the
  segment names (``layer.features``, shown in the status bar) and colours
  (a ``DirectLabelColormap``);
- an integer file whose name says it is a label map (``label``, ``seg``, ``mask``, ``roi``,
  ``annotation`` as a word of the name) becomes a Labels layer;
- everything else is an Image layer (multi-component volumes become one layer per component).

DICOM: a folder is read as its largest series; a single ``.dcm`` file opens the series it
belongs to in its folder; a DICOM Segmentation (SEG) file becomes a Labels layer with its segment
names and colours.

imzML: a reader cannot ask for an m/z, so it returns the total-ion-current (TIC) image plus one
ion image per m/z. The m/z values come from the environment variable ``MEDSEG_IMZML_MZ``
(comma-separated, e.g. ``"885.55,766.54"``) when it is set; otherwise from the ``MEDSEG_IMZML_TOP``
(default 3) highest peaks of the mean spectrum. The window half-width is ``MEDSEG_IMZML_PPM``
(default 10 ppm) of the m/z, and at least 0.005 Da (half the 0.01 Da bin of a processed-mode mean
spectrum, so a peak found there is not missed). The Register
widget extracts ion images at any other m/z.

A file that cannot be read gives a napari error notification naming the file and the reason;
the reader then returns napari's "nothing to add" value (``[(None,)]``) so napari neither
crashes nor reports a second, vaguer error. An oblique or axis-permuted volume gives a notice
(:func:`._layers.geometry_notice`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.dicom_seg import is_dicom_seg
from napari_medseg.errors import MedsegError
from napari_medseg.plugin._layers import (
    geometry_notice,
    image_layer_data,
    label_style,
    labels_layer_data,
)
from napari_medseg.volume import (
    Volume,
    as_label_array,
    read_volume,
    segments_from_metadata,
)

__all__ = ["napari_get_reader", "read_paths", "layer_name"]

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
_LABEL_WORDS = re.compile(r"(^|[^a-z])(labels?|labelmap|seg|segs|segmentation|mask|masks|roi|annotations?)([^a-z]|$)")
_ENV_MZ = "MEDSEG_IMZML_MZ"
_ENV_TOP = "MEDSEG_IMZML_TOP"
_ENV_PPM = "MEDSEG_IMZML_PPM"
_MIN_TOLERANCE_DA = 0.005

LayerData = tuple[Any, dict, str]


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_folder(path: Path) -> bool:
    """A folder holding at least one DICOM file among its first entries (cheap: no series scan)."""
    try:
        entries = sorted(p for p in path.iterdir() if p.is_file())[:20]
    except OSError:
        return False
    return any(p.name.lower().endswith(".dcm") or _is_dicom_file(p) for p in entries)


def _readable(path: str | os.PathLike) -> bool:
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".imzml"):
        return True
    if p.is_dir():
        return _is_dicom_folder(p)
    return name.endswith(_VOLUME_SUFFIXES)


def napari_get_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Callable[..., list] | None:
    """The reader function for ``path`` (one path or a list), or None if it is not ours.

    Parameters
    ----------
    path : str, path-like or list of them
        What napari asks to open: a file, a DICOM folder, or several of them.

    Returns
    -------
    callable or None
        :func:`read_paths` when every path has a supported extension (or is a folder of DICOM
        files); None otherwise (napari then asks other readers).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_readable(p) for p in paths):
        return None
    return read_paths


def layer_name(path: str | os.PathLike) -> str:
    """The layer name for a file: its name without the (double) extension."""
    p = Path(path)
    name = p.name
    lower = name.lower()
    for suffix in (*_VOLUME_SUFFIXES, ".imzml"):
        if lower.endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _looks_like_labels(path: Path, volume: Volume) -> bool:
    if volume.array.ndim != 3 or not (np.issubdtype(volume.array.dtype, np.integer) or volume.array.dtype == bool):
        return False
    if path.name.lower().endswith(".seg.nrrd") or segments_from_metadata(volume.metadata):
        return True
    return bool(_LABEL_WORDS.search(layer_name(path).lower()))


def _volume_layers(path: Path) -> list[LayerData]:
    if path.is_file() and path.name.lower().endswith(".dcm") and not is_dicom_seg(path):
        volume = _read_dicom_file_series(path)
    else:
        volume = read_volume(path)
    name = layer_name(path)
    if _looks_like_labels(path, volume):
        try:
            array = as_label_array(volume.array, name=str(path))
        except MedsegError:  # negative values: an integer image after all
            array = None
        if array is not None:
            segments = segments_from_metadata(volume.metadata)
            style = label_style({v: n for v, (n, _) in segments.items()}, {v: c for v, (_, c) in segments.items()}) if segments else {}
            layers = [labels_layer_data(Volume(array, volume.geometry, volume.metadata), name=name, **style)]
            _notify_geometry(volume, name)
            return layers
    _notify_geometry(volume, name)
    return [image_layer_data(volume, name=name)]


def _read_dicom_file_series(path: Path) -> Volume:
    """The series a single DICOM file belongs to, read from its folder."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    uid = None
    try:
        reader.ReadImageInformation()
        if reader.HasMetaDataKey("0020|000e"):
            uid = reader.GetMetaData("0020|000e").strip().rstrip("\x00")
    except RuntimeError:
        uid = None
    if uid:
        try:
            return read_volume(path.parent, series_uid=uid)
        except MedsegError:
            pass
    return read_volume(path)


def _notify_geometry(volume: Volume, name: str) -> None:
    notice = geometry_notice(volume.geometry, name)
    if notice:
        from napari.utils.notifications import show_info

        show_info(notice)


# ------------------------------------------------------------------------------------- imzML
def _env_mz_values() -> list[float] | None:
    text = os.environ.get(_ENV_MZ, "").strip()
    if not text:
        return None
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise MedsegError(f"{_ENV_MZ}={text!r}: expected comma-separated m/z values, e.g. '885.55,766.54'") from None
    return values or None


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise MedsegError(f"{name}={text!r}: expected a number") from None
    if not (np.isfinite(value) and value > 0):
        raise MedsegError(f"{name}={text!r}: expected a number > 0")
    return value


def _top_peaks(mzs: np.ndarray, intensities: np.ndarray, count: int) -> list[float]:
    """The m/z of the ``count`` highest local maxima of a spectrum (scipy.signal.find_peaks)."""
    from scipy.signal import find_peaks

    peaks, _ = find_peaks(np.concatenate([[-np.inf], intensities, [-np.inf]]))
    peaks = peaks - 1
    peaks = peaks[intensities[peaks] > 0]
    best = peaks[np.argsort(intensities[peaks], kind="stable")[::-1][:count]]
    return sorted(float(mzs[i]) for i in best)


def _imzml_layers(path: Path) -> list[LayerData]:
    from napari_medseg.registration.imzml import (
        ion_images,
        mean_spectrum,
        open_imzml,
        tic_image,
    )

    data = open_imzml(path)
    name = layer_name(path)
    layers = [image_layer_data(tic_image(data), name=f"{name} TIC", colormap="viridis")]
    ppm = _env_number(_ENV_PPM, 10.0)
    mz_values = _env_mz_values()
    if mz_values is None:
        mzs, mean = mean_spectrum(data)
        mz_values = _top_peaks(mzs, mean, int(_env_number(_ENV_TOP, 3)))
    for mz in mz_values:
        tolerance_da = max(mz * ppm * 1e-6, _MIN_TOLERANCE_DA)
        ion = ion_images(data, [mz], tolerance_da=tolerance_da)
        layers.append(image_layer_data(ion, name=f"{name} m/z {mz:.4f}", colormap="magma"))
    return layers


# -------------------------------------------------------------------------------------- reading
def _read_one(path: Path) -> list[LayerData]:
    if path.name.lower().endswith(".imzml"):
        return _imzml_layers(path)
    return _volume_layers(path)


def read_paths(path: str | os.PathLike | Sequence[str | os.PathLike], *, stack: bool = False) -> list:
    """Read one or several paths into napari ``LayerDataTuple``s.

    Parameters
    ----------
    path : str, path-like or list of them
        Files or DICOM folders accepted by :func:`napari_get_reader`.
    stack : bool, default False
        Ignored (each volume is already 3D); napari passes it.

    Returns
    -------
    list of tuple
        ``(data, kwargs, layer_type)`` per layer; ``[(None,)]`` (napari's "no layer") when
        nothing could be read, after an error notification naming each file and the reason.
    """
    from napari.utils.notifications import show_error

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list = []
    for p in paths:
        p = Path(p)
        try:
            layers.extend(_read_one(p))
        except (MedsegError, ValueError, OSError, RuntimeError) as exc:
            show_error(f"MedSeg could not open {p}: {exc}")
    return layers or [(None,)]
