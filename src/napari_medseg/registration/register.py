"""Multi-resolution variational (deformable) registration with the UDT-SSD metric.

The deformation is ``phi(x) = x + u(x)`` with ``u`` in millimetres (array axis order); images are
warped backwards with linear interpolation, ``T_u(x) = T(x + u(x))``. Each iteration computes the
metric's force ``f`` and updates ``u <- R(u + tau * f)`` with the regulariser ``R`` (elastic by
default, see :mod:`.regularizers`). A Gaussian pyramid (factor 2 per axis while the axis keeps at
least 8 voxels) runs coarse to fine; masks and distance transforms are recomputed per level and
the field is linearly upsampled between levels. A level stops after ``max_iterations`` or when
the metric plateaus (the slope of a line fitted to the last ``plateau_window`` values, relative
to their mean, is above ``-plateau_tol`` per iteration).

Divergence check: if the metric becomes non-finite or stays above ``divergence_factor`` times its
value at the start of the level for ``divergence_patience`` consecutive iterations, the run stops,
the field with the best metric is kept, a :class:`RegistrationWarning` is issued and
``result.diverged`` is True. A level also stops when the metric reaches 0 (nothing left to do).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_medseg._options import look_up_option
from napari_medseg.errors import GeometryMismatchError, InvalidInputError
from napari_medseg.progress import CancelEvent, ProgressCallback, check_cancelled, report
from napari_medseg.registration.metric import (
    ForceGradient,
    _gradient,
    Metric,
    check_mask,
    distance_transform,
    local_scale,
    normalize_spacing,
    ssd,
    ssd_force,
)
from napari_medseg.registration.regularizers import Elastic, Regularizer, RegularizerParameters, regularizer_from_options

__all__ = [
    "RegistrationResult",
    "RegistrationWarning",
    "register",
    "warp",
    "auto_mask",
    "identity_grid",
]


class RegistrationWarning(UserWarning):
    """A registration stopped early because it diverged (the best field was kept)."""


@dataclass
class RegistrationResult:
    """What :func:`register` returns.

    Attributes
    ----------
    displacement : numpy.ndarray of float32
        ``u``, shape ``(ndim, *fixed.shape)``, in mm, component ``i`` along array axis ``i``:
        fixed voxel ``x`` maps to the moving position ``x + u(x)``.
    warped : numpy.ndarray of float32
        The moving image warped onto the fixed grid (linear interpolation).
    warped_mask : numpy.ndarray of bool
        ``[M_T(x + u(x)) >= 0.5]``.
    metric_history : list of float
        The metric value at each iteration (``1/2 sum`` of squared differences; DT metrics in mm^2,
        intensity on [0, 1] images), coarse level first.
    level_history : list of int
        The pyramid level of each entry of ``metric_history`` (0 is the finest).
    iterations : int
        Total iterations over all levels.
    iterations_per_level : list of int
        Iterations done at each level, coarse first.
    seconds : float
        Wall time of the whole registration.
    diverged : bool
        True if the divergence check stopped the run (the best field was kept).
    parameters : dict
        The parameters used, JSON-ready.
    """

    displacement: np.ndarray
    warped: np.ndarray
    warped_mask: np.ndarray
    metric_history: list[float] = field(default_factory=list)
    level_history: list[int] = field(default_factory=list)
    iterations: int = 0
    iterations_per_level: list[int] = field(default_factory=list)
    seconds: float = 0.0
    diverged: bool = False
    parameters: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------- helpers
def identity_grid(shape: Sequence[int]) -> np.ndarray:
    """Voxel coordinates of every voxel, shape ``(ndim, *shape)``, float32."""
    return np.indices(shape, dtype=np.float32)


def warp(
    image: np.ndarray,
    displacement: np.ndarray,
    *,
    spacing_mm: float | Sequence[float] | None = None,
    order: int = 1,
    grid: np.ndarray | None = None,
) -> np.ndarray:
    """Backward-warp ``image``: ``out(x) = image(x + u(x))`` (``u`` in mm, array axis order).

    Parameters
    ----------
    image : numpy.ndarray
        2D or 3D array on the same grid as the field.
    displacement : numpy.ndarray
        Shape ``(ndim, *image.shape)``, mm.
    spacing_mm : float or sequence of float, optional
        Voxel size in mm per array axis (default 1).
    order : int, default 1
        Interpolation order: 1 linear, 0 nearest (label maps).
    grid : numpy.ndarray, optional
        :func:`identity_grid` of the shape, reused across calls.

    Returns
    -------
    numpy.ndarray
        float32 for ``order=1``; the input dtype for ``order=0``. Samples outside the image take
        the value of the nearest border voxel.

    Raises
    ------
    InvalidInputError
        If the field's shape does not match.
    """
    image = np.asarray(image)
    if displacement.shape != (image.ndim, *image.shape):
        raise InvalidInputError(
            f"displacement has shape {displacement.shape}; expected {(image.ndim, *image.shape)} for an image of shape {image.shape}"
        )
    sampling = normalize_spacing(spacing_mm, image.ndim)
    if grid is None:
        grid = identity_grid(image.shape)
    coords = np.empty_like(grid)
    for axis in range(image.ndim):
        np.divide(displacement[axis], np.float32(sampling[axis]), out=coords[axis])
        coords[axis] += grid[axis]
    if order == 0:
        return ndimage.map_coordinates(image, coords, order=0, mode="nearest", prefilter=False)
    src = image if image.dtype == np.float32 else image.astype(np.float32)
    return ndimage.map_coordinates(src, coords, order=1, mode="nearest", output=np.float32, prefilter=False)


def auto_mask(image: np.ndarray, *, fill_holes: bool = True) -> np.ndarray:
    """Object mask of ``image`` by Otsu thresholding (``image > otsu``), holes filled.

    Raises
    ------
    InvalidInputError
        If the image is constant (no threshold exists).
    """
    from skimage.filters import threshold_otsu

    image = np.asarray(image, np.float32)
    if float(image.max()) == float(image.min()):
        raise InvalidInputError("cannot threshold a constant image into a mask; give the mask explicitly")
    mask = image > threshold_otsu(image)
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def _level_factors(shape: Sequence[int], levels: int) -> list[tuple[int, ...]]:
    """Per level (finest first), the per-axis ratio to the next finer level (1 or 2)."""
    ratios = []
    current = list(shape)
    for _ in range(levels - 1):
        r = tuple(2 if n >= 16 else 1 for n in current)
        ratios.append(r)
        current = [math.ceil(n / k) for n, k in zip(current, r)]
    return ratios


def _downsample(image: np.ndarray, ratio: Sequence[int]) -> np.ndarray:
    """Gaussian-smooth (sigma = ratio/2 voxels) and sample at the centres of ``ratio`` blocks."""
    sigma = [0.5 * r if r > 1 else 0.0 for r in ratio]
    smooth = ndimage.gaussian_filter(image.astype(np.float32, copy=False), sigma, mode="nearest")
    new_shape = [math.ceil(n / r) for n, r in zip(image.shape, ratio)]
    coords = np.indices(new_shape, dtype=np.float32)
    for axis, r in enumerate(ratio):
        coords[axis] = coords[axis] * r + (r - 1) / 2.0
    return ndimage.map_coordinates(smooth, coords, order=1, mode="nearest", output=np.float32, prefilter=False)


def _upsample_field(u: np.ndarray, ratio: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    coords = np.indices(shape, dtype=np.float32)
    for axis, r in enumerate(ratio):
        coords[axis] = (coords[axis] + 0.5) / r - 0.5
    out = np.empty((u.shape[0], *shape), np.float32)
    for i in range(u.shape[0]):
        ndimage.map_coordinates(u[i], coords, output=out[i], order=1, mode="nearest", prefilter=False)
    return out


def _rescale01(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros(image.shape, np.float32)
    return ((image - low) / (high - low)).astype(np.float32)


def _check_image(image, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise InvalidInputError(f"{name}: expected a 2D (y, x) or 3D (z, y, x) array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InvalidInputError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InvalidInputError(f"{name}: contains {bad} NaN or Inf value(s); fill or mask them before registration")
    return array.astype(np.float32, copy=False)


def _plateaued(values: list[float], window: int, tol: float) -> bool:
    if window < 2 or len(values) < window:
        return False
    y = np.asarray(values[-window:], np.float64)
    scale = float(np.mean(np.abs(y)))
    if scale == 0.0:
        return True
    slope = np.polyfit(np.arange(window, dtype=np.float64), y, 1)[0]
    return slope / scale > -tol


# --------------------------------------------------------------------------------------- register
def register(
    fixed: np.ndarray,
    moving: np.ndarray,
    *,
    fixed_mask: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    metric: Metric | str = Metric.UDT,
    regularizer: RegularizerParameters | Regularizer | str = Elastic(),
    tau: float = 1.0,
    levels: int = 3,
    max_iterations: int | Sequence[int] = 400,
    spacing_mm: float | Sequence[float] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
    force_gradient: ForceGradient | str = ForceGradient.WARPED,
    scale_invariant: bool = False,
    plateau_window: int = 10,
    plateau_tol: float = 1e-3,
    divergence_factor: float = 2.0,
    divergence_patience: int = 5,
    initial_displacement: np.ndarray | None = None,
) -> RegistrationResult:
    """Deformably register ``moving`` (target T) onto ``fixed`` (reference I).

    Parameters
    ----------
    fixed, moving : numpy.ndarray
        2D ``(y, x)`` or 3D ``(z, y, x)`` images of the same shape and spacing (intensities may
        have nothing in common). Not modified.
    fixed_mask, moving_mask : numpy.ndarray, optional
        Object masks M_I and M_T (non-zero = object), same shape. Default: Otsu threshold of the
        image with holes filled (:func:`auto_mask`). Masks must not be empty nor touch the border.
    metric : {"udt", "dt", "intensity", "reference"}, default "udt"
        See :class:`~napari_medseg.registration.metric.Metric`.
    regularizer : Elastic, Diffusive or Gaussian, default ``Elastic()``
        The regulariser with its parameters (:mod:`napari_medseg.registration.regularizers`):
        ``Elastic(mu=0.5, lambda_=0.5)`` (Lamé constants, defaults of the authors' code; the
        paper gives no values), ``Diffusive(alpha=0.5)`` or ``Gaussian(sigma_vox=sqrt(0.5))``.
        A name ("elastic", "diffusive", "gaussian") means that regulariser with its defaults.
    tau : float, default 1.0
        Time step of ``u <- R(u + tau * f)`` (authors' code default).
    levels : int, default 3
        Pyramid levels (authors' code default).
    max_iterations : int or sequence of int, default 400
        Maximum iterations per level (authors' code default), or one value per level, coarse
        first.
    spacing_mm : float or sequence of float, optional
        Voxel size in mm per array axis (default 1 mm).
    progress : callable, optional
        ``progress(done, total)`` after each iteration; ``total`` is the maximum over all levels.
    cancel : object with ``is_set()``, optional
        Checked every iteration; raises :class:`~napari_medseg.errors.CancelledError`.
    force_gradient : {"warped", "fixed", "symmetric"}, default "warped"
        Gradient of the SSD force: ``grad D_u`` (paper), ``grad D_I``, or their mean.
    scale_invariant : bool, default False
        DT metrics: divide every DT by the reference's local object scale (the inscribed-ball
        radius at the nearest skeleton point of the fixed mask, computed once per level) and
        multiply by its smallest value, so thin structures pull as hard as thick ones and no
        force exceeds the plain DT's. Equals the plain DT for an object of one scale.
    plateau_window : int, default 10
        Iterations in the plateau test (0 or 1 disables it).
    plateau_tol : float, default 1e-3
        A level stops when the metric decreases by less than this fraction of its mean per
        iteration over the window.
    divergence_factor : float, default 2.0
        Divergence when the metric exceeds this multiple of its value at the start of the level ...
    divergence_patience : int, default 5
        ... for this many consecutive iterations.
    initial_displacement : numpy.ndarray, optional
        Starting field ``(ndim, *shape)`` in mm.

    Returns
    -------
    RegistrationResult
        Field, warped image and mask, metric history, iteration counts, time, divergence flag.

    Raises
    ------
    InvalidInputError
        For images that are not 2D/3D or hold NaN/Inf, empty masks, masks touching the image
        border, unknown ``metric``/``regularizer``/``force_gradient``, and out-of-range numbers.
    GeometryMismatchError
        If ``fixed``, ``moving`` and the masks do not all have the same shape.
    CancelledError
        If ``cancel`` is set.

    Warns
    -----
    RegistrationWarning
        If the run diverged (stopped early, best field kept).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:48, :48]
    >>> fixed = (((yy - 24) / 14) ** 2 + ((xx - 24) / 10) ** 2 <= 1).astype(np.float32)
    >>> moving = (((yy - 24) / 12) ** 2 + ((xx - 24) / 12) ** 2 <= 1).astype(np.float32)
    >>> result = register(fixed, moving, levels=2, max_iterations=50)
    >>> from napari_medseg.registration.evaluate import overlap_scores
    >>> overlap_scores(fixed > 0, result.warped_mask).f_measure > 0.95
    True
    """
    start = time.perf_counter()
    metric_kind = look_up_option(metric, Metric, name="metric")
    regularizer = regularizer_from_options(regularizer)
    grad_kind = look_up_option(force_gradient, ForceGradient, name="force_gradient")
    fixed_a = _check_image(fixed, "fixed")
    moving_a = _check_image(moving, "moving")
    if fixed_a.shape != moving_a.shape:
        raise GeometryMismatchError(
            f"fixed has shape {fixed_a.shape} but moving has shape {moving_a.shape}; resample moving onto the "
            "fixed grid first (register_volumes(..., resample_moving=True) or 'medseg register --resample')"
        )
    sampling = normalize_spacing(spacing_mm, fixed_a.ndim)
    for name, value in (("tau", tau), ("divergence_factor", divergence_factor)):
        if not (np.isfinite(value) and value > 0):
            raise InvalidInputError(f"{name}={value!r}: expected a finite value > 0")
    if int(levels) != levels or levels < 1:
        raise InvalidInputError(f"levels={levels!r}: expected an integer >= 1")
    levels = int(levels)
    if np.isscalar(max_iterations):
        iters = [int(max_iterations)] * levels  # type: ignore[arg-type]
    else:
        iters = [int(i) for i in max_iterations]  # type: ignore[union-attr]
        if len(iters) != levels:
            raise InvalidInputError(f"max_iterations={max_iterations!r}: expected one value per level ({levels})")
    if any(i < 0 for i in iters):
        raise InvalidInputError(f"max_iterations={max_iterations!r}: expected integers >= 0")

    masks = []
    for name, mask, image in (("fixed_mask", fixed_mask, fixed_a), ("moving_mask", moving_mask, moving_a)):
        if mask is None:
            try:
                mask = auto_mask(image)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{name} (from thresholding {name.split('_')[0]}): {exc}") from None
        mask = np.asarray(mask)
        if mask.shape != fixed_a.shape:
            raise GeometryMismatchError(f"{name} has shape {mask.shape}; expected the images' shape {fixed_a.shape}")
        masks.append(check_mask(mask, name=name))
    fixed_mask_a, moving_mask_a = masks

    # ---- pyramid (finest first)
    ratios = _level_factors(fixed_a.shape, levels)
    pyr = [(fixed_a, moving_a, fixed_mask_a.astype(np.float32), moving_mask_a.astype(np.float32), sampling)]
    for r in ratios:
        f, m, fm, mm, sp = pyr[-1]
        pyr.append((_downsample(f, r), _downsample(m, r), _downsample(fm, r), _downsample(mm, r),
                    tuple(s * k for s, k in zip(sp, r))))
    weight = None  # scale-invariant DT: min local scale / reference local scale, per level

    def dtrans(mask: np.ndarray, sp) -> np.ndarray:
        dist = distance_transform(mask, sp)
        return dist if weight is None else dist * weight

    total = int(sum(iters))
    done = 0
    history: list[float] = []
    level_hist: list[int] = []
    per_level: list[int] = []
    diverged = False
    u = None
    for level in range(levels - 1, -1, -1):
        f_img, m_img, f_mk, m_mk, sp = pyr[level]
        shape = f_img.shape
        fm_bin = f_mk >= 0.5
        if not fm_bin.any():
            raise InvalidInputError(
                f"fixed_mask vanishes at pyramid level {level} (object too small for {levels} levels); use fewer levels"
            )
        grid = identity_grid(shape)
        if u is None:
            if initial_displacement is not None:
                init = np.asarray(initial_displacement, np.float32)
                if init.shape != (fixed_a.ndim, *fixed_a.shape):
                    raise InvalidInputError(
                        f"initial_displacement has shape {init.shape}; expected {(fixed_a.ndim, *fixed_a.shape)}"
                    )
                u = init.copy()
                for lv in range(1, level + 1):  # bring it down to this level
                    u = np.stack([_downsample(c, ratios[lv - 1]) for c in u])
            else:
                u = np.zeros((len(shape), *shape), np.float32)
        else:
            u = _upsample_field(u, ratios[level], shape)
        regul = regularizer.operator(shape, sp, tau=tau)

        # fixed-side quantities, computed once per level
        if scale_invariant:
            scale = local_scale(fm_bin, sp)
            weight = (scale[fm_bin].min() / scale).astype(np.float32)
        if metric_kind == Metric.INTENSITY:
            f_ref = _rescale01(f_img)
            m_src = _rescale01(m_img)
            kappa = np.float32(np.mean(np.square(sp)))  # (F - M) grad M * h^2 has units of mm
        else:
            f_ref = dtrans(fm_bin, sp)
            kappa = np.float32(1.0)
            if metric_kind in (Metric.DT, Metric.REFERENCE):
                m_src = dtrans(m_mk >= 0.5, sp)
        fixed_grad = None
        if grad_kind != ForceGradient.WARPED:
            fixed_grad = _gradient(f_ref, sp)
        ref_threshold = min(sp)

        best_value, best_u = math.inf, u.copy()
        above = 0
        level_values: list[float] = []
        n_done = 0
        for _ in range(iters[levels - 1 - level]):
            check_cancelled(cancel, "registration")
            if metric_kind == Metric.UDT:
                warped_mask = warp(m_mk, u, spacing_mm=sp, grid=grid) >= 0.5
                current = dtrans(warped_mask, sp)
            elif metric_kind == Metric.DT:
                current = warp(m_src, u, spacing_mm=sp, grid=grid)
            elif metric_kind == Metric.REFERENCE:
                warped_dt = warp(m_src, u, spacing_mm=sp, grid=grid)
                new_dt = dtrans(warped_dt >= ref_threshold, sp)
                low, high = float(warped_dt.min()), float(warped_dt.max())
                nlow, nhigh = float(new_dt.min()), float(new_dt.max())
                if high > low:
                    current = ((warped_dt - low) * np.float32((nhigh - nlow) / (high - low)) + np.float32(nlow)).astype(np.float32)
                else:
                    current = warped_dt
            else:
                current = warp(m_src, u, spacing_mm=sp, grid=grid)
            value = ssd(f_ref, current)
            history.append(value)
            level_hist.append(level)
            level_values.append(value)
            n_done += 1
            done += 1
            if not np.isfinite(value) or not np.all(np.isfinite(u)):
                diverged = True
            elif value < best_value:
                best_value = value
                best_u = u.copy()
            if np.isfinite(value) and value > divergence_factor * level_values[0]:
                above += 1
                diverged = diverged or above >= divergence_patience
            else:
                above = 0
            if diverged:
                u = best_u
                break
            report(progress, done, total)
            if value == 0.0 or _plateaued(level_values, plateau_window, plateau_tol):
                break
            force = ssd_force(f_ref, current, spacing_mm=sp, gradient=grad_kind, fixed_gradient=fixed_grad)
            step = np.float32(tau) * kappa
            force *= step
            force += u
            u = regul(force)
        per_level.append(n_done)
        if diverged:
            warnings.warn(
                f"registration diverged at pyramid level {level} after {n_done} iteration(s) (metric "
                f"{level_values[-1]:.4g} vs best {best_value:.4g}); stopped and kept the best field. "
                "Try a smaller tau or a stronger regularisation",
                RegistrationWarning,
                stacklevel=2,
            )
            # carry the best field to the finest grid without further iterations
            for lv in range(level - 1, -1, -1):
                u = _upsample_field(u, ratios[lv], pyr[lv][0].shape)
            break
    report(progress, total, total)

    grid = identity_grid(fixed_a.shape)
    warped_img = warp(moving_a, u, spacing_mm=sampling, grid=grid)
    warped_mask = warp(moving_mask_a.astype(np.float32), u, spacing_mm=sampling, grid=grid) >= 0.5
    params = {
        "metric": str(metric_kind), **regularizer.to_dict(), "tau": tau,
        "levels": levels, "max_iterations": iters, "spacing_mm": list(sampling),
        "force_gradient": str(grad_kind), "scale_invariant": scale_invariant,
        "plateau_window": plateau_window, "plateau_tol": plateau_tol,
    }
    return RegistrationResult(
        displacement=u,
        warped=warped_img,
        warped_mask=warped_mask,
        metric_history=history,
        level_history=level_hist,
        iterations=int(sum(per_level)),
        iterations_per_level=per_level,
        seconds=time.perf_counter() - start,
        diverged=diverged,
        parameters=params,
    )
