"""The paper's registration measures and a few more.

Shape similarity on binarised images (Grélard et al. 2023, Sect. 4): precision
``p = |common| / |registered target|``, recall ``r = |common| / |reference|`` and
``F = 2 p r / (p + r)``. Intensity fidelity: the mutual information between the original and the
registered target intensities from a 20-bin joint histogram. The authors' code (Esmraldi,
``esmraldi/registration.py: mutual_information``) uses the natural logarithm, so the values of the
paper's Tables 1 and 2, although labelled "bits" in the text, are in **nats**; both units are
reported here. Also: the Jacobian determinant of ``phi(x) = x + u(x)`` and, for label maps, Dice
and HD95 from :mod:`napari_medseg.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from napari_medseg.errors import InvalidInputError
from napari_medseg.registration.metric import normalize_spacing, udt_ssd

__all__ = [
    "OverlapScores",
    "overlap_scores",
    "mutual_information",
    "jacobian_determinant",
    "folding",
    "evaluate_registration",
    "label_scores",
    "displacement_magnitude",
    "registration_report",
]


@dataclass(frozen=True)
class OverlapScores:
    """Precision, recall and F-measure of a registered mask against the reference mask."""

    precision: float
    recall: float
    f_measure: float

    def to_dict(self) -> dict:
        return asdict(self)


def _same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise InvalidInputError(f"{names[0]} has shape {a.shape} but {names[1]} has shape {b.shape}; expected the same")


def overlap_scores(reference_mask: np.ndarray, registered_mask: np.ndarray) -> OverlapScores:
    """Precision, recall and F-measure as in the paper.

    Parameters
    ----------
    reference_mask : numpy.ndarray
        Binarised reference (fixed) image; non-zero is the object.
    registered_mask : numpy.ndarray
        Binarised registered target, same shape.

    Returns
    -------
    OverlapScores
        ``precision = |R & T| / |T|``, ``recall = |R & T| / |R|``, ``f_measure = 2pr/(p+r)``; a
        ratio with an empty denominator is 0.

    Raises
    ------
    InvalidInputError
        If the shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.array([1, 1, 1, 1, 0, 0], bool)
    >>> reg = np.array([0, 1, 1, 1, 1, 0], bool)
    >>> overlap_scores(ref, reg)
    OverlapScores(precision=0.75, recall=0.75, f_measure=0.75)
    """
    ref = np.asarray(reference_mask).astype(bool, copy=False)
    reg = np.asarray(registered_mask).astype(bool, copy=False)
    _same_shape(ref, reg, ("reference_mask", "registered_mask"))
    common = int(np.count_nonzero(ref & reg))
    n_reg, n_ref = int(np.count_nonzero(reg)), int(np.count_nonzero(ref))
    p = common / n_reg if n_reg else 0.0
    r = common / n_ref if n_ref else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return OverlapScores(p, r, f)


def mutual_information(a: np.ndarray, b: np.ndarray, *, bins: int = 20, base: float = math.e) -> float:
    """Mutual information of two images from their joint histogram (paper: 20 bins).

    Parameters
    ----------
    a, b : numpy.ndarray
        Images of the same shape (e.g. the original and the registered target).
    bins : int, default 20
        Bins per axis of the joint histogram (equal width over each image's range).
    base : float, default e
        Logarithm base: e gives nats (the authors' code, hence the paper's tables), 2 gives bits.

    Returns
    -------
    float
        ``sum p(x,y) log(p(x,y) / (p(x) p(y)))``.

    Raises
    ------
    InvalidInputError
        If the shapes differ, ``bins`` < 2, or an image holds NaN/Inf.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([0, 0, 1, 1.0])
    >>> round(mutual_information(a, a, bins=2), 6) == round(float(np.log(2)), 6)
    True
    >>> mutual_information(a, a, bins=2, base=2)
    1.0
    """
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    _same_shape(np.asarray(a), np.asarray(b), ("a", "b"))
    if int(bins) != bins or bins < 2:
        raise InvalidInputError(f"bins={bins!r}: expected an integer >= 2")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InvalidInputError("mutual_information: an image contains NaN or Inf values")
    hist, _, _ = np.histogram2d(x, y, bins=int(bins))
    pxy = hist / hist.sum()
    px = pxy.sum(axis=1, keepdims=True)
    py = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    mi = float(np.sum(pxy[nz] * np.log(pxy[nz] / (px @ py)[nz])))
    return mi / math.log(base)


def jacobian_determinant(displacement: np.ndarray, *, spacing_mm: float | Sequence[float] | None = None) -> np.ndarray:
    """Jacobian determinant of ``phi(x) = x + u(x)`` per voxel (central differences).

    Parameters
    ----------
    displacement : numpy.ndarray
        ``u``, shape ``(ndim, *shape)`` in mm, ndim 2 or 3.
    spacing_mm : float or sequence of float, optional
        Voxel size in mm per array axis (default 1).

    Returns
    -------
    numpy.ndarray of float64
        ``det(Id + grad u)``, shape ``shape``; <= 0 where the deformation folds.

    Raises
    ------
    InvalidInputError
        If the field is not ``(ndim, *shape)`` with ndim 2 or 3.

    Examples
    --------
    >>> import numpy as np
    >>> u = np.zeros((2, 5, 5)); u[1] = 0.5 * np.arange(5)[None, :]   # x stretched by 1.5
    >>> float(jacobian_determinant(u).mean())
    1.5
    """
    u = np.asarray(displacement, np.float64)
    if u.ndim not in (3, 4) or u.shape[0] != u.ndim - 1:
        raise InvalidInputError(f"displacement has shape {u.shape}; expected (ndim, *shape) with ndim 2 or 3")
    ndim = u.shape[0]
    sampling = normalize_spacing(spacing_mm, ndim)
    jac = np.empty((ndim, ndim, *u.shape[1:]))
    for i in range(ndim):
        grads = np.gradient(u[i], *sampling)
        for j in range(ndim):
            jac[i, j] = grads[j] + (1.0 if i == j else 0.0)
    if ndim == 2:
        return jac[0, 0] * jac[1, 1] - jac[0, 1] * jac[1, 0]
    return (
        jac[0, 0] * (jac[1, 1] * jac[2, 2] - jac[1, 2] * jac[2, 1])
        - jac[0, 1] * (jac[1, 0] * jac[2, 2] - jac[1, 2] * jac[2, 0])
        + jac[0, 2] * (jac[1, 0] * jac[2, 1] - jac[1, 1] * jac[2, 0])
    )


def folding(displacement: np.ndarray, *, spacing_mm: float | Sequence[float] | None = None) -> dict:
    """``{"jacobian_min": ..., "folding_percent": ...}``: the smallest Jacobian determinant and the
    percentage of voxels where it is <= 0."""
    det = jacobian_determinant(displacement, spacing_mm=spacing_mm)
    return {"jacobian_min": float(det.min()), "folding_percent": float(100.0 * np.count_nonzero(det <= 0) / det.size)}


def evaluate_registration(
    reference_mask: np.ndarray,
    registered_mask: np.ndarray,
    *,
    original: np.ndarray | None = None,
    registered: np.ndarray | None = None,
    reference_image: np.ndarray | None = None,
    displacement: np.ndarray | None = None,
    spacing_mm: float | Sequence[float] | None = None,
    bins: int = 20,
) -> dict:
    """All the measures in one JSON-ready dict.

    Parameters
    ----------
    reference_mask, registered_mask : numpy.ndarray
        Fixed mask and warped moving mask (same shape).
    original, registered : numpy.ndarray, optional
        The original target intensities (on the fixed grid, before deformable registration) and
        the registered ones: gives ``mutual_information_nats`` and ``mutual_information_bits``.
    reference_image : numpy.ndarray, optional
        With ``registered``: also the paper's shape measures on Otsu-thresholded intensities
        (``precision_intensity``, ``recall_intensity``, ``f_measure_intensity``).
    displacement : numpy.ndarray, optional
        The field: adds ``jacobian_min`` and ``folding_percent``.
    spacing_mm : float or sequence of float, optional
        Voxel size in mm per array axis (default 1).
    bins : int, default 20
        Mutual-information histogram bins.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f_measure``, ``udt_ssd`` and the optional keys above.

    Raises
    ------
    InvalidInputError
        If shapes differ.
    """
    out = overlap_scores(reference_mask, registered_mask).to_dict()
    out["udt_ssd"] = udt_ssd(np.asarray(reference_mask, bool), np.asarray(registered_mask, bool), spacing_mm)
    if original is not None and registered is not None:
        nats = mutual_information(original, registered, bins=bins)
        out["mutual_information_nats"] = nats
        out["mutual_information_bits"] = nats / math.log(2)
    if reference_image is not None and registered is not None:
        from skimage.filters import threshold_otsu

        ref = np.asarray(reference_image, np.float64)
        reg = np.asarray(registered, np.float64)
        scores = overlap_scores(ref > threshold_otsu(ref), reg > threshold_otsu(reg))
        out.update({f"{k}_intensity": v for k, v in scores.to_dict().items()})
    if displacement is not None:
        out.update(folding(displacement, spacing_mm=spacing_mm))
    return out


def label_scores(
    registered_labels: np.ndarray,
    reference_labels: np.ndarray,
    *,
    spacing_mm: float | Sequence[float],
    labels: Sequence[int] | None = None,
):
    """Dice and HD95 per labelled region after registration, from :mod:`napari_medseg.metrics`.

    Parameters
    ----------
    registered_labels : numpy.ndarray
        A label map of the moving image warped with nearest interpolation.
    reference_labels : numpy.ndarray
        The fixed image's label map, same shape.
    spacing_mm : float or sequence of float
        Voxel size in mm per array axis.
    labels : sequence of int, optional
        Labels to score (default: all non-zero labels present).

    Returns
    -------
    whatever ``napari_medseg.metrics.label_metrics`` returns (per-label Dice, HD95, ...).

    Raises
    ------
    InvalidInputError
        If the shapes differ, or if :mod:`napari_medseg.metrics` is not available.
    """
    reg = np.asarray(registered_labels)
    ref = np.asarray(reference_labels)
    _same_shape(reg, ref, ("registered_labels", "reference_labels"))
    try:
        from napari_medseg import metrics
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise InvalidInputError(f"label scores need napari_medseg.metrics, which is not available ({exc})") from None
    sampling = normalize_spacing(spacing_mm, reg.ndim, name="spacing_mm")
    return metrics.label_metrics(reg, ref, spacing_mm=sampling, labels=labels)


# --------------------------------------------------------------------------------------------------
# Volume-level helpers (the napari Register widget and the CLI report the same numbers)
# --------------------------------------------------------------------------------------------------


def displacement_magnitude(field):
    """The length of a displacement field's vector at every voxel, in mm.

    Parameters
    ----------
    field : Volume
        A field as written by :func:`~napari_medseg.registration.volumes.displacement_to_volume`
        (``register_volumes(...).field``, ``medseg register --field``): shape ``(z, y, x, 3)``,
        physical LPS displacements ``(x, y, z)`` in mm.

    Returns
    -------
    Volume
        ``(z, y, x)`` float32, ``sqrt(ux^2 + uy^2 + uz^2)`` in mm, on the field's geometry. The
        length does not depend on the direction cosines (they are orthonormal).

    Raises
    ------
    InvalidInputError
        If ``field`` does not have 3 components per voxel or holds NaN/Inf.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_medseg.volume import Geometry, Volume
    >>> u = np.zeros((1, 2, 2, 3), np.float32); u[0, 0, 0] = (3.0, 4.0, 0.0)
    >>> displacement_magnitude(Volume(u, Geometry())).array[0]
    array([[5., 0.],
           [0., 0.]], dtype=float32)
    """
    from napari_medseg.volume import Volume

    if not isinstance(field, Volume) or field.n_components != 3:
        got = f"{field.n_components} components" if isinstance(field, Volume) else type(field).__name__
        raise InvalidInputError(f"field: expected a displacement Volume with 3 components (x, y, z in mm), got {got}")
    vectors = np.asarray(field.array, np.float64)
    if not np.all(np.isfinite(vectors)):
        raise InvalidInputError("field: contains NaN or Inf displacements")
    magnitude = np.sqrt(np.sum(vectors * vectors, axis=-1)).astype(np.float32)
    return Volume(magnitude, field.geometry, {"medseg_quantity": "displacement magnitude (mm)"})


def registration_report(registration, *, moving_mask=None) -> dict:
    """The evaluation of a :func:`~napari_medseg.registration.volumes.register_volumes` run, before and after.

    The "after" values are exactly those of ``medseg register --json`` (the same
    :func:`evaluate_registration` call on the same arrays); the "before" values compare the fixed
    mask with the moving mask on the fixed grid, i.e. what the registration started from.

    Parameters
    ----------
    registration : VolumeRegistration
        What ``register_volumes`` returned.
    moving_mask : Volume or None, keyword-only
        The moving mask that was passed to ``register_volumes`` (on the moving grid; it is
        resampled onto the fixed grid with nearest-neighbour interpolation when the grids differ,
        as ``register_volumes(resample_moving=True)`` does). Default None: the Otsu mask of the
        moving image on the fixed grid, as ``register_volumes`` computes it.

    Returns
    -------
    dict
        JSON-ready: ``precision``, ``recall``, ``f_measure``, ``udt_ssd`` (mm^2),
        ``mutual_information_nats``, ``mutual_information_bits``, ``jacobian_min``,
        ``folding_percent``, ``iterations``, ``seconds``, ``diverged``, ``metric``,
        ``regularizer`` (the keys of ``medseg register --json``), plus ``precision_before``,
        ``recall_before``, ``f_measure_before`` and ``udt_ssd_before``.

    Raises
    ------
    InvalidInputError
        If ``moving_mask`` is not a single-component integer/bool Volume, or the masks are empty
        where a distance transform needs an object.
    """
    from napari_medseg.registration.register import auto_mask
    from napari_medseg.volume import Interpolation, Volume, resample_like

    fixed_volume = registration.warped
    result = registration.result
    single_slice = fixed_volume.shape[0] == 1
    spacing_mm = fixed_volume.spacing_zyx[1:] if single_slice else fixed_volume.spacing_zyx
    if moving_mask is None:
        before_mask = auto_mask(registration.moving_on_fixed)
    else:
        if not isinstance(moving_mask, Volume) or moving_mask.n_components != 1:
            raise InvalidInputError("moving_mask: expected a single-component label Volume or None")
        mask = moving_mask
        same = mask.shape == fixed_volume.shape and mask.geometry.isclose(fixed_volume.geometry, atol=1e-4)
        if not same:
            mask = resample_like(mask, fixed_volume, interpolation=Interpolation.NEAREST)
        before_mask = np.asarray(mask.array)[0] if single_slice else np.asarray(mask.array)
        before_mask = before_mask != 0
    scores = evaluate_registration(
        registration.fixed_mask,
        result.warped_mask,
        original=registration.moving_on_fixed,
        registered=result.warped,
        displacement=result.displacement,
        spacing_mm=spacing_mm,
    )
    before = overlap_scores(registration.fixed_mask, before_mask)
    return {
        "precision": scores["precision"],
        "recall": scores["recall"],
        "f_measure": scores["f_measure"],
        "mutual_information_nats": scores["mutual_information_nats"],
        "mutual_information_bits": scores["mutual_information_bits"],
        "udt_ssd": scores["udt_ssd"],
        "iterations": result.iterations,
        "seconds": round(result.seconds, 4),
        "diverged": result.diverged,
        "jacobian_min": scores["jacobian_min"],
        "folding_percent": scores["folding_percent"],
        "metric": str(result.parameters["metric"]),
        "regularizer": str(result.parameters["regularizer"]),
        "precision_before": before.precision,
        "recall_before": before.recall,
        "f_measure_before": before.f_measure,
        "udt_ssd_before": udt_ssd(np.asarray(registration.fixed_mask, bool), before_mask, spacing_mm),
    }
