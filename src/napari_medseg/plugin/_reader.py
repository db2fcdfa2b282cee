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

DICOM (read by :mod:`napari_medseg.dicom`, as dcm2niix does): a folder (series may sit in
subfolders) gives one layer per series, named by its series description (or number); a series
that cannot be read as a regular grid (a gap, a duplicate, tilt ...) gives an error notification
naming it and the other series still open. A 4D series (DWI, fMRI, several mosaic files) becomes
one 4D layer ``(volume, z, y, x)`` with a volume slider. A single ``.dcm`` file opens the series
it belongs to in its folder. A DICOM
Segmentation (SEG) file becomes a Labels layer with its segment names and colours.

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

from napari_medseg.dicom import is_dicom_file as _is_dicom_file
from napari_medseg.dicom_seg import is_dicom_seg
from napari_medseg.errors import MedsegError
from napari_medseg.multivolume import MultiVolume
from napari_medseg.plugin._layers import (
    HEADER_KEY,
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


def _is_dicom_folder(path: Path, depth: int = 3) -> bool:
    """A folder holding a DICOM file among its first entries, or in its first subfolders (cheap: no series scan)."""
    try:
        entries = sorted(path.iterdir())[:40]
    except OSError:
        return False
    files = [p for p in entries if p.is_file()][:20]
    if any(p.name.lower().endswith(".dcm") or _is_dicom_file(p) for p in files):
        return True
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")][:10]
    return depth > 0 and any(_is_dicom_folder(p, depth - 1) for p in folders)


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
    if path.is_dir() or (path.is_file() and path.name.lower().endswith(".dcm") and not is_dicom_seg(path)):
        return _dicom_layers(path)
    return _layers_of(path, read_volume(path), layer_name(path))


def _layers_of(path: Path, volume, name: str) -> list[LayerData]:
    if isinstance(volume, MultiVolume):
        return [_multivolume_layer(volume, name)]
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


def _multivolume_layer(series: MultiVolume, name: str) -> LayerData:
    """One 4D image layer ``(volume, z, y, x)``: the spatial axes placed as a 3D volume's are."""
    _, kwargs, kind = image_layer_data(series.volume(0), name=name)
    kwargs["metadata"][HEADER_KEY] = {str(k): str(v) for k, v in series.metadata.items()}
    rotate = np.eye(4)
    rotate[1:, 1:] = kwargs["rotate"]
    kwargs.update(
        scale=(1.0, *kwargs["scale"]),
        translate=(0.0, *kwargs["translate"]),
        rotate=rotate,
        units=("pixel", *kwargs["units"]),
        axis_labels=("volume", *kwargs["axis_labels"]),
    )
    _notify_geometry(series, name)
    return series.array, kwargs, kind


def _series_name(info, path: Path, several: bool) -> str:
    base = info.description or (f"series {info.number}" if info.number is not None else layer_name(path))
    return f"{base} (#{info.number})" if several and info.number is not None else base


def _dicom_layers(path: Path) -> list[LayerData]:
    """One layer per series of a DICOM folder, or the series a single DICOM file belongs to."""
    from napari_medseg.dicom import list_series, read_series

    if path.is_file():
        alone = list_series(path)
        if not alone:
            raise MedsegError(f"{path}: not a DICOM image file")
        in_folder = [s for s in list_series(path.parent) if s.uid == alone[0].uid and not s.problem]
        info = in_folder[0] if in_folder else alone[0]
        return _layers_of(path, read_series(info), layer_name(path))
    found = list_series(path)
    if not found:
        raise MedsegError(f"{path}: no DICOM series found in this folder or its subfolders")
    layers: list[LayerData] = []
    problems = [info.describe() for info in found if info.problem]
    for info in found:
        if not info.problem:
            layers.extend(_layers_of(path, read_series(info), _series_name(info, path, len(found) > 1)))
    if problems:
        from napari.utils.notifications import show_error

        show_error(f"MedSeg could not open {len(problems)} of {len(found)} series in {path}: " + "; ".join(problems))
    return layers


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
