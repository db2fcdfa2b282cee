"""Read MALDI mass-spectrometry images (imzML + ibd) with pyimzML.

An ion image sums, per pixel, the intensities of the peaks within a tolerance of an m/z value
(tolerance in ppm of the m/z, or in Da); optional total-ion-current (TIC) normalisation divides by
each pixel's summed intensity. Images come back as :class:`~napari_medseg.volume.Volume` of shape
``(1, y, x)`` (or ``(1, y, x, n)`` for several ions) with the pixel size of the file (imzML
stores micrometres; 1 mm is assumed, with a warning, when the file gives none).

pyimzML is an optional dependency (``pip install napari-medseg[imzml]``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.volume import Geometry, Volume

__all__ = ["ImzML", "open_imzml", "ion_image", "ion_images", "mean_spectrum", "tic_image", "is_imzml"]


def is_imzml(path: str | os.PathLike) -> bool:
    """True if ``path`` ends with ``.imzML`` (any case)."""
    return str(path).lower().endswith(".imzml")


def _parser_class():
    try:
        from pyimzml.ImzMLParser import ImzMLParser
    except ImportError:  # pragma: no cover - depends on the environment
        raise InvalidInputError(
            "reading imzML needs the optional dependency pyimzML: pip install 'napari-medseg[imzml]'"
        ) from None
    return ImzMLParser


@dataclass
class ImzML:
    """An opened imzML file: spectra, pixel coordinates and pixel size.

    Attributes
    ----------
    path : pathlib.Path
    shape : tuple of int
        ``(y, x)`` image size.
    coordinates : numpy.ndarray
        ``(n_spectra, 2)`` zero-based ``(y, x)`` pixel of each spectrum.
    pixel_size_mm : tuple of float
        ``(y, x)`` in mm.
    mz_range : tuple of float
        Smallest and largest m/z over all spectra.
    """

    path: Path
    parser: object
    shape: tuple[int, int]
    coordinates: np.ndarray
    pixel_size_mm: tuple[float, float]
    mz_range: tuple[float, float]

    def spectrum(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(mzs, intensities)`` of spectrum ``index``."""
        mzs, ints = self.parser.getspectrum(index)  # type: ignore[attr-defined]
        return np.asarray(mzs, np.float64), np.asarray(ints, np.float64)

    def geometry(self) -> Geometry:
        """Geometry of the ion images: the pixel size, origin 0, identity direction."""
        return Geometry((self.pixel_size_mm[1], self.pixel_size_mm[0], 1.0))


def open_imzml(path: str | os.PathLike) -> ImzML:
    """Open an imzML file (its ``.ibd`` must sit next to it).

    Raises
    ------
    FileFormatError
        If the file is missing, has no spectra or cannot be parsed.
    InvalidInputError
        If pyimzML is not installed.
    """
    from napari_medseg.headers import check_regular_file

    p = Path(path)
    check_regular_file(p)  # a FIFO or device would block the parser forever
    for ibd in {p.with_suffix(".ibd"), p.with_suffix(".IBD")}:
        if os.path.lexists(ibd):
            check_regular_file(ibd)
    parser_cls = _parser_class()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = parser_cls(str(p))
    except Exception as exc:  # noqa: BLE001 - pyimzML raises many kinds on bad files
        raise FileFormatError(f"{p}: cannot read this imzML file ({type(exc).__name__}: {exc})") from None
    coords = np.asarray(parser.coordinates, np.int64)
    if coords.size == 0:
        raise FileFormatError(f"{p}: the imzML file holds no spectrum")
    yx = np.stack([coords[:, 1] - 1, coords[:, 0] - 1], axis=1)
    shape = (int(yx[:, 0].max()) + 1, int(yx[:, 1].max()) + 1)
    meta = getattr(parser, "imzmldict", {}) or {}
    sx, sy = meta.get("pixel size x"), meta.get("pixel size y", meta.get("pixel size x"))
    if sx:
        pixel = (float(sy) / 1000.0, float(sx) / 1000.0)  # imzML pixel size is in micrometres
    else:
        warnings.warn(f"{p}: no pixel size in the imzML file; assuming 1 mm", UserWarning, stacklevel=2)
        pixel = (1.0, 1.0)
    low, high = np.inf, -np.inf
    for i in range(len(coords)):
        mzs, _ = parser.getspectrum(i)
        if len(mzs):
            low, high = min(low, float(np.min(mzs))), max(high, float(np.max(mzs)))
    if not np.isfinite(low):
        raise FileFormatError(f"{p}: every spectrum is empty")
    return ImzML(p, parser, shape, yx, pixel, (low, high))


def _as_imzml(source) -> ImzML:
    return source if isinstance(source, ImzML) else open_imzml(source)


def _tolerance_da(mz: float, tolerance_ppm: float | None, tolerance_da: float | None) -> float:
    if (tolerance_ppm is None) == (tolerance_da is None):
        raise InvalidInputError("give exactly one of tolerance_ppm and tolerance_da")
    tol = tolerance_ppm if tolerance_ppm is not None else tolerance_da
    if not (np.isfinite(tol) and tol > 0):
        name = "tolerance_ppm" if tolerance_ppm is not None else "tolerance_da"
        raise InvalidInputError(f"{name}={tol!r}: expected a finite value > 0")
    return float(mz) * float(tolerance_ppm) * 1e-6 if tolerance_ppm is not None else float(tolerance_da)


def ion_images(
    source: str | os.PathLike | ImzML,
    mz_values: Sequence[float],
    *,
    tolerance_ppm: float | None = None,
    tolerance_da: float | None = None,
    tic_normalize: bool = False,
) -> Volume:
    """Ion images of several m/z values: per pixel, the sum of intensities with
    ``|m/z - value| <= tolerance``.

    Parameters
    ----------
    source : path or ImzML
        The imzML file.
    mz_values : sequence of float
        Target m/z values.
    tolerance_ppm, tolerance_da : float
        Exactly one: the half-width of the window in ppm of each m/z value, or in Da.
    tic_normalize : bool, default False
        Divide each pixel by its total ion current (sum of all its intensities; 0 stays 0).

    Returns
    -------
    Volume
        ``(1, y, x)`` for one value, ``(1, y, x, n)`` for several; float32; pixels without a
        spectrum are 0. Metadata ``mz`` lists the values.

    Raises
    ------
    InvalidInputError
        If a value lies outside the spectra's m/z range, or the tolerance is missing or not > 0.
    FileFormatError
        If the file cannot be read.
    """
    data = _as_imzml(source)
    values = [float(v) for v in mz_values]
    if not values:
        raise InvalidInputError("mz_values: give at least one m/z value")
    windows = []
    for mz in values:
        tol = _tolerance_da(mz, tolerance_ppm, tolerance_da)
        low, high = data.mz_range
        if not np.isfinite(mz) or mz + tol < low or mz - tol > high:
            raise InvalidInputError(
                f"m/z {mz:g} is outside the spectra's m/z range {low:g}-{high:g} of {data.path.name}"
            )
        windows.append((mz - tol, mz + tol))
    out = np.zeros((*data.shape, len(values)), np.float32)
    for i, (y, x) in enumerate(data.coordinates):
        mzs, ints = data.spectrum(i)
        order = np.argsort(mzs, kind="stable") if np.any(np.diff(mzs) < 0) else None
        if order is not None:
            mzs, ints = mzs[order], ints[order]
        csum = np.concatenate([[0.0], np.cumsum(ints)])
        for k, (lo, hi) in enumerate(windows):
            a, b = np.searchsorted(mzs, lo, "left"), np.searchsorted(mzs, hi, "right")
            out[y, x, k] = csum[b] - csum[a]
        if tic_normalize:
            tic = csum[-1]
            out[y, x] = out[y, x] / tic if tic > 0 else 0.0
    array = out[None, ..., 0] if len(values) == 1 else out[None]
    meta = {"mz": ",".join(f"{v:g}" for v in values), "source": str(data.path)}
    meta["tolerance"] = f"{tolerance_ppm:g} ppm" if tolerance_ppm is not None else f"{tolerance_da:g} Da"
    if tic_normalize:
        meta["normalization"] = "TIC"
    return Volume(array, data.geometry(), meta)


def ion_image(
    source: str | os.PathLike | ImzML,
    mz: float,
    *,
    tolerance_ppm: float | None = None,
    tolerance_da: float | None = None,
    tic_normalize: bool = False,
) -> Volume:
    """One ion image ``(1, y, x)``; see :func:`ion_images`.

    Raises
    ------
    InvalidInputError
        If ``mz`` is outside the spectra's range or the tolerance is invalid.
    """
    return ion_images(source, [mz], tolerance_ppm=tolerance_ppm, tolerance_da=tolerance_da, tic_normalize=tic_normalize)


def tic_image(source: str | os.PathLike | ImzML) -> Volume:
    """Total ion current per pixel, ``(1, y, x)`` float32."""
    data = _as_imzml(source)
    out = np.zeros(data.shape, np.float32)
    for i, (y, x) in enumerate(data.coordinates):
        out[y, x] = float(np.sum(data.spectrum(i)[1]))
    return Volume(out[None], data.geometry(), {"source": str(data.path), "image": "TIC"})


def mean_spectrum(source: str | os.PathLike | ImzML, *, bin_width_da: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean spectrum over all pixels.

    Parameters
    ----------
    source : path or ImzML
    bin_width_da : float, optional
        When spectra do not share one m/z axis (processed mode), intensities are summed into
        bins of this width (default 0.01 Da); continuous-mode files use their common axis.

    Returns
    -------
    (mzs, mean_intensities) : tuple of numpy.ndarray

    Raises
    ------
    InvalidInputError
        If ``bin_width_da`` is not > 0.
    """
    data = _as_imzml(source)
    n = len(data.coordinates)
    first_mzs, first = data.spectrum(0)
    common = bin_width_da is None
    total = first.copy()
    for i in range(1, n):
        mzs, ints = data.spectrum(i)
        if not common or mzs.shape != first_mzs.shape or not np.array_equal(mzs, first_mzs):
            common = False
            break
        total += ints
    if common:
        return first_mzs, total / n
    width = 0.01 if bin_width_da is None else float(bin_width_da)
    if not (np.isfinite(width) and width > 0):
        raise InvalidInputError(f"bin_width_da={bin_width_da!r}: expected a finite value > 0")
    low, high = data.mz_range
    edges = np.arange(low, high + width, width)
    if edges.size < 2:
        edges = np.array([low, low + width])
    sums = np.zeros(edges.size - 1)
    for i in range(n):
        mzs, ints = data.spectrum(i)
        sums += np.histogram(mzs, bins=edges, weights=ints)[0]
    return 0.5 * (edges[:-1] + edges[1:]), sums / n
