"""Regularisers of the variational registration update ``u <- R(u + tau * f)``.

``elastic`` (the paper's choice): the semi-implicit step of the Navier-Lamé operator
``A[u] = mu * Lap(u) + (mu + lambda) * grad(div u)``,

    u <- (Id - tau * A)^-1 (u + tau * f),

solved exactly per frequency with FFTs (periodic boundary), with the finite-difference symbols of
ITK's VariationalRegistrationElasticRegularizer: ``(2 cos(w) - 2) / h^2`` for second derivatives
along an axis and ``-sin(w_i) sin(w_j) / (h_i h_j)`` for mixed ones. As in ITK with image spacing
on, the operator is multiplied by the mean squared voxel spacing, so ``mu`` and ``lambda`` are
dimensionless and act the same at every pyramid level; for ``tau = 1`` this is exactly ITK's
``(Id - A)^-1`` that the authors' code uses.

``diffusive``: the same with ``A = alpha * Lap`` (cheaper, no coupling between components).
``gaussian``: ``u <- G_sigma * (u + tau * f)`` (the demons-style smoother, cheapest).

:func:`~napari_medseg.registration.register` takes one of the frozen parameter objects
:class:`Elastic`, :class:`Diffusive` or :class:`Gaussian` (each checks its own parameters when it
is made); per pyramid level the object builds the solver for that grid (:meth:`Elastic.operator`:
:class:`ElasticRegularizer`, ...). The time step ``tau`` is not part of the object: it belongs to
the update ``u + tau * f`` and is shared by all three.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from napari_medseg._options import look_up_option
from napari_medseg.errors import InvalidInputError

__all__ = [
    "Regularizer",
    "Elastic",
    "Diffusive",
    "Gaussian",
    "RegularizerParameters",
    "regularizer_from_options",
    "ElasticRegularizer",
    "DiffusiveRegularizer",
    "GaussianRegularizer",
]

_WORKERS = max(1, min(os.cpu_count() or 1, 8))


class Regularizer(StrEnum):
    """Regulariser of :func:`napari_medseg.registration.register`: ``elastic`` (default, the
    paper's), ``gaussian`` or ``diffusive``."""

    ELASTIC = "elastic"
    GAUSSIAN = "gaussian"
    DIFFUSIVE = "diffusive"


def _frequency_symbols(shape: Sequence[int], spacing_mm: Sequence[float]):
    """Per axis: ``L_k = (2 - 2 cos w_k) / h_k^2`` and ``s_k = sin(w_k) / h_k``, broadcastable to
    the ``rfftn`` output shape (last axis halved)."""
    ndim = len(shape)
    lap, sin = [], []
    for axis, (n, h) in enumerate(zip(shape, spacing_mm)):
        if axis == ndim - 1:
            w = 2.0 * np.pi * np.arange(n // 2 + 1) / n
        else:
            w = 2.0 * np.pi * np.fft.fftfreq(n)
        view = [1] * ndim
        view[axis] = w.size
        lap.append(((2.0 - 2.0 * np.cos(w)) / h**2).reshape(view))
        sin.append((np.sin(w) / h).reshape(view))
    return lap, sin


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}={value!r}: expected a number") from None
    ok = np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise InvalidInputError(f"{name}={value!r}: expected a finite value {'>= 0' if allow_zero else '> 0'}")
    return value


class ElasticRegularizer:
    """``u -> (Id - tau * h^2 * A)^-1 u`` for the Navier-Lamé operator ``A`` on one grid.

    The 2x2 (2D) or 3x3 (3D) symmetric inverse is precomputed once per grid, so each call costs
    ``ndim`` forward and ``ndim`` inverse real FFTs plus ``ndim^2`` multiply-adds per frequency.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (2D or 3D).
    spacing_mm : sequence of float
        Voxel size in mm per array axis.
    mu, lambda_ : float
        Lamé constants (mu > 0, lambda >= 0; dimensionless, see the module notes).
    tau : float
        Time step (> 0).

    Raises
    ------
    InvalidInputError
        If a parameter is out of range.
    """

    def __init__(self, shape: Sequence[int], spacing_mm: Sequence[float], *, mu: float, lambda_: float, tau: float) -> None:
        mu = _check_positive("mu", mu)
        lambda_ = _check_positive("lambda_", lambda_, allow_zero=True)
        tau = _check_positive("tau", tau)
        self.shape = tuple(int(n) for n in shape)
        ndim = len(self.shape)
        h2 = float(np.mean(np.square(spacing_mm)))
        lap, sin = _frequency_symbols(self.shape, spacing_mm)
        total = sum(lap)
        c = tau * h2
        # M = Id + c * (mu * sum(L) * Id + (mu + lambda) * G),  G_ii = L_i,  G_ij = s_i s_j
        m = [[None] * ndim for _ in range(ndim)]
        for i in range(ndim):
            m[i][i] = 1.0 + c * (mu * total + (mu + lambda_) * lap[i])
            for j in range(i + 1, ndim):
                m[i][j] = m[j][i] = c * (mu + lambda_) * sin[i] * sin[j]
        full = np.broadcast_shapes(*[np.shape(t) for t in lap])
        m = [[np.broadcast_to(m[i][j], full) for j in range(ndim)] for i in range(ndim)]
        if ndim == 2:
            det = m[0][0] * m[1][1] - m[0][1] ** 2
            inv = {(0, 0): m[1][1] / det, (1, 1): m[0][0] / det, (0, 1): -m[0][1] / det}
        elif ndim == 3:
            a, b, cc = m[0][0], m[0][1], m[0][2]
            d, e, f = m[1][1], m[1][2], m[2][2]
            c00 = d * f - e * e
            c01 = cc * e - b * f
            c02 = b * e - cc * d
            det = a * c00 + b * c01 + cc * c02
            inv = {
                (0, 0): c00 / det, (0, 1): c01 / det, (0, 2): c02 / det,
                (1, 1): (a * f - cc * cc) / det, (1, 2): (b * cc - a * e) / det,
                (2, 2): (a * d - b * b) / det,
            }
        else:
            raise InvalidInputError(f"the elastic regulariser needs a 2D or 3D grid, got shape {self.shape}")
        self._inv = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inv.items()}
        self.ndim = ndim

    def __call__(self, field: np.ndarray) -> np.ndarray:
        """Apply the solve to ``field`` of shape ``(ndim, *shape)``; returns a new float32 array."""
        axes = tuple(range(1, self.ndim + 1))
        spectrum = sfft.rfftn(field, axes=axes, workers=_WORKERS)
        out = np.empty_like(spectrum)
        for i in range(self.ndim):
            acc = None
            for j in range(self.ndim):
                w = self._inv[(min(i, j), max(i, j))]
                term = spectrum[j] * w
                acc = term if acc is None else acc.__iadd__(term)
            out[i] = acc
        return sfft.irfftn(out, s=self.shape, axes=axes, workers=_WORKERS).astype(np.float32, copy=False)


class DiffusiveRegularizer:
    """``u -> (Id - tau * h^2 * alpha * Lap)^-1 u`` per component, solved by FFT.

    Raises
    ------
    InvalidInputError
        If ``alpha`` or ``tau`` is not > 0.
    """

    def __init__(self, shape: Sequence[int], spacing_mm: Sequence[float], *, alpha: float, tau: float) -> None:
        alpha = _check_positive("alpha", alpha)
        tau = _check_positive("tau", tau)
        self.shape = tuple(int(n) for n in shape)
        lap, _ = _frequency_symbols(self.shape, spacing_mm)
        h2 = float(np.mean(np.square(spacing_mm)))
        self._inv = (1.0 / (1.0 + tau * h2 * alpha * sum(lap))).astype(np.float32)
        self.ndim = len(self.shape)

    def __call__(self, field: np.ndarray) -> np.ndarray:
        axes = tuple(range(1, self.ndim + 1))
        spectrum = sfft.rfftn(field, axes=axes, workers=_WORKERS)
        spectrum *= self._inv
        return sfft.irfftn(spectrum, s=self.shape, axes=axes, workers=_WORKERS).astype(np.float32, copy=False)


class GaussianRegularizer:
    """``u -> G_sigma * u`` per component (``sigma`` in voxels, ``mode="nearest"``).

    Raises
    ------
    InvalidInputError
        If ``sigma_vox`` is not > 0.
    """

    def __init__(self, shape: Sequence[int], spacing_mm: Sequence[float], *, sigma_vox: float) -> None:
        self.sigma_vox = _check_positive("sigma_vox", sigma_vox)
        self.shape = tuple(int(n) for n in shape)

    def __call__(self, field: np.ndarray) -> np.ndarray:
        out = np.empty(field.shape, np.float32)
        for i in range(field.shape[0]):
            ndimage.gaussian_filter(field[i], self.sigma_vox, output=out[i], mode="nearest", truncate=3.0)
        return out


@dataclass(frozen=True)
class Elastic:
    """The elastic (Navier-Lamé) regulariser, the paper's choice and the default.

    Parameters
    ----------
    mu : float, default 0.5
        Lamé constant, > 0 (dimensionless, see the module notes; the authors' code default ``-m``).
    lambda_ : float, default 0.5
        Lamé constant, >= 0 (the authors' code default ``-b``).

    Raises
    ------
    InvalidInputError
        If ``mu`` or ``lambda_`` is out of range (the message names it).
    """

    kind: ClassVar[Regularizer] = Regularizer.ELASTIC
    mu: float = 0.5
    lambda_: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "mu", _check_positive("mu", self.mu))
        object.__setattr__(self, "lambda_", _check_positive("lambda_", self.lambda_, allow_zero=True))

    def operator(self, shape: Sequence[int], spacing_mm: Sequence[float], *, tau: float) -> ElasticRegularizer:
        """The solver ``(Id - tau * h^2 * A)^-1`` on one grid (``spacing_mm`` in array order)."""
        return ElasticRegularizer(shape, spacing_mm, mu=self.mu, lambda_=self.lambda_, tau=tau)

    def to_dict(self) -> dict:
        """JSON-ready: the name and the parameters (``lambda`` as the CLI spells it)."""
        return {"regularizer": str(self.kind), "mu": self.mu, "lambda": self.lambda_}


@dataclass(frozen=True)
class Diffusive:
    """The diffusive regulariser ``A = alpha * Lap`` (cheaper; the authors' code default ``-r 1``).

    Parameters
    ----------
    alpha : float, default 0.5
        Weight, > 0 (the authors' code default ``-a``).

    Raises
    ------
    InvalidInputError
        If ``alpha`` is not a finite value > 0.
    """

    kind: ClassVar[Regularizer] = Regularizer.DIFFUSIVE
    alpha: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _check_positive("alpha", self.alpha))

    def operator(self, shape: Sequence[int], spacing_mm: Sequence[float], *, tau: float) -> DiffusiveRegularizer:
        """The solver ``(Id - tau * h^2 * alpha * Lap)^-1`` on one grid."""
        return DiffusiveRegularizer(shape, spacing_mm, alpha=self.alpha, tau=tau)

    def to_dict(self) -> dict:
        return {"regularizer": str(self.kind), "alpha": self.alpha}


@dataclass(frozen=True)
class Gaussian:
    """The Gaussian (demons-style) smoother ``u <- G_sigma * u``; ``tau`` only scales the force.

    Parameters
    ----------
    sigma_vox : float, default sqrt(0.5)
        Standard deviation in voxels, > 0 (the authors' code default variance 0.5, ``-v``).

    Raises
    ------
    InvalidInputError
        If ``sigma_vox`` is not a finite value > 0.
    """

    kind: ClassVar[Regularizer] = Regularizer.GAUSSIAN
    sigma_vox: float = float(np.sqrt(0.5))

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma_vox", _check_positive("sigma_vox", self.sigma_vox))

    def operator(self, shape: Sequence[int], spacing_mm: Sequence[float], *, tau: float) -> GaussianRegularizer:
        """The smoother on one grid (``tau`` is not used by the smoothing itself)."""
        return GaussianRegularizer(shape, spacing_mm, sigma_vox=self.sigma_vox)

    def to_dict(self) -> dict:
        return {"regularizer": str(self.kind), "sigma_vox": self.sigma_vox}


RegularizerParameters = Elastic | Diffusive | Gaussian


def regularizer_from_options(
    kind: Regularizer | str | RegularizerParameters = Regularizer.ELASTIC,
    *,
    mu: float = 0.5,
    lambda_: float = 0.5,
    alpha: float = 0.5,
    sigma_vox: float = float(np.sqrt(0.5)),
) -> RegularizerParameters:
    """The regulariser object named ``kind`` from flat options (a face's flags or controls).

    Only the chosen regulariser's own options are used (``mu``/``lambda_`` for elastic, ``alpha``
    for diffusive, ``sigma_vox`` for gaussian); an object is returned unchanged.

    Raises
    ------
    InvalidInputError
        If ``kind`` is unknown (with a did-you-mean) or one of its options is out of range.
    """
    if isinstance(kind, (Elastic, Diffusive, Gaussian)):
        return kind
    mode = look_up_option(kind, Regularizer, name="regularizer")
    if mode == Regularizer.ELASTIC:
        return Elastic(mu=mu, lambda_=lambda_)
    if mode == Regularizer.DIFFUSIVE:
        return Diffusive(alpha=alpha)
    return Gaussian(sigma_vox=sigma_vox)
