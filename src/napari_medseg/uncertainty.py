"""Monte-Carlo dropout and the uncertainty maps computed from several probability samples.

With ``S`` probability samples ``p_s`` per voxel (Monte-Carlo dropout samples, test-time flips,
ensemble members, or all of them together) the maps are, in nats:

* mean probability ``p = mean_s p_s``;
* predictive entropy ``H[p] = -sum_c p_c log p_c`` (total uncertainty);
* mutual information ``MI = H[p] - mean_s H[p_s]`` (the epistemic part: how much the samples
  disagree), never negative;
* per-label variance ``var_c = mean_s p_{s,c}^2 - p_c^2``.

The sliding-window engine does not keep the samples: it keeps their moments ``mean p``,
``mean p^2`` and ``mean H[p_s]`` per voxel (:func:`summarize_moments` turns them into the maps),
which is exact and blends across overlapping patches as a weighted mixture of samples.

References
----------
Y. Gal and Z. Ghahramani, "Dropout as a Bayesian approximation", ICML 2016.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from torch import nn

from napari_medseg.errors import InvalidInputError
from napari_medseg.labelmaps import labels_from_probabilities  # noqa: F401 - re-exported (its home before)
from napari_medseg.networks import dropout_layers
from napari_medseg._validate import MAX_MC_SAMPLES, check_dropout_rate, check_mc_samples  # torch-free; old names kept
from napari_medseg._validate import check_spacing_mm

__all__ = [
    "UncertaintyKind",
    "mc_dropout",
    "check_mc_samples",
    "MAX_MC_SAMPLES",
    "entropy",
    "summarize_samples",
    "summarize_moments",
    "UncertainRegion",
    "uncertain_regions",
    "labels_from_probabilities",
]

#: probabilities below this count as 0 in ``p log p`` (avoids log(0))
_TINY = 1e-12


class UncertaintyKind(StrEnum):
    """The uncertainty maps :func:`napari_medseg.inference.predict` returns."""

    ENTROPY = "entropy"
    MUTUAL_INFORMATION = "mutual_information"
    VARIANCE = "variance"


@contextlib.contextmanager
def mc_dropout(model: nn.Module, *, rate: float | None = None) -> Iterator[nn.Module]:
    """Enable only the dropout layers of ``model`` (optionally at another rate) inside the block.

    Every other layer keeps its mode (batch norm keeps using its running statistics). On exit the
    train/eval flag and ``p`` of each dropout layer are restored, also when the block raises.

    Parameters
    ----------
    model : torch.nn.Module
        A network with dropout layers (usually in eval mode).
    rate : float in [0, 1), optional
        Drop probability to use inside the block (default: each layer's own ``p``).

    Yields
    ------
    torch.nn.Module
        ``model`` itself.

    Raises
    ------
    InvalidInputError
        If ``model`` has no dropout layer (its card must place some) or ``rate`` is outside
        [0, 1).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0)).eval()
    >>> with mc_dropout(net, rate=0.5):
    ...     net[1].training, net[1].p
    (True, 0.5)
    >>> net[1].training, net[1].p
    (False, 0.0)
    """
    if rate is not None:
        rate = check_dropout_rate(rate, name="dropout rate")
    layers = dropout_layers(model)
    if not layers:
        raise InvalidInputError(
            f"{type(model).__name__} has no dropout layer, so Monte-Carlo dropout cannot sample it; "
            "use a model whose card places dropout layers (dropout.placement), or mc_samples=0"
        )
    saved = [(layer, layer.training, layer.p) for layer in layers]
    try:
        for layer in layers:
            layer.train(True)
            if rate is not None:
                layer.p = rate
        yield model
    finally:
        for layer, training, p in saved:
            layer.train(training)
            layer.p = p


def _slabs(n: int, per_item: int, budget: int = 1 << 24) -> list[slice]:
    """Slices of ``range(n)`` holding at most ``budget`` elements each (at least one item)."""
    step = max(1, budget // max(1, per_item))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def entropy(probabilities: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` (the label axis).

    Parameters
    ----------
    probabilities : numpy.ndarray
        Non-negative values summing to 1 along ``axis``.
    axis : int, default -1

    Returns
    -------
    numpy.ndarray
        float32, ``probabilities``' shape without ``axis``; 0 for a one-hot vector, ``log C`` for
        a uniform one. Large arrays are processed in slabs along their first axis, so the
        temporaries stay small.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    axis = axis % max(p.ndim, 1)
    if p.ndim < 2 or axis == 0:
        return -np.sum(p * np.log(np.maximum(p, _TINY)), axis=axis, dtype=np.float32)
    out = np.empty(p.shape[:axis] + p.shape[axis + 1:], np.float32)
    for sl in _slabs(p.shape[0], p[0].size):
        q = p[sl]
        out[sl] = -np.sum(q * np.log(np.maximum(q, _TINY)), axis=axis, dtype=np.float32)
    return out


def summarize_moments(
    mean_p: np.ndarray,
    mean_p2: np.ndarray | None = None,
    mean_entropy: np.ndarray | None = None,
    *,
    axis: int = -1,
) -> dict[str, np.ndarray]:
    """Uncertainty maps from per-voxel moments of the probability samples.

    Parameters
    ----------
    mean_p : numpy.ndarray
        Mean probability over samples, labels along ``axis``, e.g. ``(z, y, x, C)``.
    mean_p2 : numpy.ndarray, optional
        Mean of the squared probabilities, same shape (needed for ``variance``).
    mean_entropy : numpy.ndarray, optional
        Mean over samples of each sample's entropy, ``mean_p``'s shape without ``axis`` (needed
        for ``mutual_information``).
    axis : int, default -1
        The label axis.

    Returns
    -------
    dict of str to numpy.ndarray
        ``"entropy"`` always; ``"variance"`` (per label, ``mean_p``'s shape) when ``mean_p2`` is
        given and ``"mutual_information"`` when ``mean_entropy`` is given; all float32, the
        variance and the mutual information clipped at 0 against rounding.
    """
    out = {"entropy": entropy(mean_p, axis=axis)}
    if mean_p2 is not None:
        variance = np.array(mean_p2, dtype=np.float32, copy=True)
        mean_p = np.asarray(mean_p, dtype=np.float32)
        if variance.ndim == 0:
            variance = np.maximum(variance - mean_p * mean_p, 0.0)
        else:
            for sl in _slabs(variance.shape[0], variance[0].size):  # no full-size temporaries
                variance[sl] -= np.square(mean_p[sl])
                np.maximum(variance[sl], 0.0, out=variance[sl])
        out["variance"] = variance
    if mean_entropy is not None:
        out["mutual_information"] = np.maximum(out["entropy"] - np.asarray(mean_entropy, np.float32), 0.0)
    return out


def summarize_samples(samples: np.ndarray, *, sample_axis: int = 0, label_axis: int = -1) -> dict[str, np.ndarray]:
    """Mean probability and uncertainty maps from stacked probability samples.

    Parameters
    ----------
    samples : numpy.ndarray
        ``S`` probability maps stacked along ``sample_axis``, labels along ``label_axis``
        (e.g. ``(S, z, y, x, C)``).

    Returns
    -------
    dict of str to numpy.ndarray
        ``"mean"``, ``"entropy"``, ``"mutual_information"`` and ``"variance"`` (float32).

    Examples
    --------
    Two confident samples that disagree: the mean is uniform, entropy and mutual information
    are ``log 2`` and each label's variance is 0.25.

    >>> s = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> maps = summarize_samples(s)
    >>> maps["mean"].tolist(), maps["variance"].tolist()
    ([0.5, 0.5], [0.25, 0.25])
    >>> round(float(maps["entropy"]), 4), round(float(maps["mutual_information"]), 4)
    (0.6931, 0.6931)
    """
    s = np.asarray(samples, dtype=np.float32)
    if s.ndim < 2:
        raise InvalidInputError(f"samples has shape {s.shape}: expected at least (S, C)")
    label_axis = label_axis % s.ndim
    mean_p = s.mean(axis=sample_axis)
    out_axis = label_axis - 1 if label_axis > sample_axis % s.ndim else label_axis
    maps = summarize_moments(
        mean_p, np.square(s).mean(axis=sample_axis), entropy(s, axis=label_axis).mean(axis=sample_axis), axis=out_axis
    )
    return {"mean": mean_p, **maps}


def torch_entropy(probabilities: torch.Tensor, log_probabilities: torch.Tensor, *, dim: int = 1) -> torch.Tensor:
    """``-sum p log p`` along ``dim`` for torch tensors (``log_probabilities`` from log_softmax)."""
    return -(probabilities * log_probabilities).sum(dim=dim)


# --------------------------------------------------------------------------- uncertain regions
@dataclass(frozen=True)
class UncertainRegion:
    """One connected region of high uncertainty (see :func:`uncertain_regions`).

    Attributes
    ----------
    region_id : int
        Rank of the region, 1 for the most uncertain (largest ``total``).
    centroid_zyx : tuple of 3 float
        Centroid in voxel indices ``(z, y, x)`` (unweighted mean of the region's voxels).
    centroid_mm : tuple of 3 float
        ``centroid_zyx * spacing_mm``: millimetres from the centre of voxel ``(0, 0, 0)`` along the
        array axes (add the origin and apply the direction for patient coordinates).
    n_voxels : int
        Number of voxels in the region.
    volume_mm3 : float
        ``n_voxels`` times the voxel volume.
    mean, max : float
        Mean and maximum uncertainty over the region (the map's unit, e.g. nats).
    total : float
        ``mean * volume_mm3``: the uncertainty integrated over the region (unit x mm^3), the
        ranking key.
    """

    region_id: int
    centroid_zyx: tuple[float, float, float]
    centroid_mm: tuple[float, float, float]
    n_voxels: int
    volume_mm3: float
    mean: float
    max: float
    total: float


def _check_spacing(spacing_mm: Sequence[float], ndim: int) -> tuple[float, ...]:
    return check_spacing_mm(spacing_mm, ndim)  # the one spacing check (napari_medseg._validate)


def uncertain_regions(
    uncertainty: np.ndarray,
    *,
    spacing_mm: Sequence[float],
    threshold: float | None = None,
    n: int = 10,
    min_size_mm3: float = 0.0,
) -> list[UncertainRegion]:
    """The ``n`` most uncertain connected regions of an uncertainty map.

    Voxels with ``uncertainty >= threshold`` are grouped into face-connected components
    (:func:`scipy.ndimage.label`, 6-connectivity in 3D); components smaller than
    ``min_size_mm3`` are dropped and the rest are ranked by their integrated uncertainty
    ``mean * volume_mm3`` (largest first, ties broken by the larger maximum).

    Parameters
    ----------
    uncertainty : numpy.ndarray
        ``(z, y, x)`` map (entropy or mutual information, >= 0). Not modified.
    spacing_mm : sequence of 3 float, keyword-only
        Voxel size in mm in array order ``(z, y, x)``.
    threshold : float, optional, keyword-only
        Minimum uncertainty of a region's voxels. Default: half the map's maximum. A map whose
        maximum is 0 (no uncertainty anywhere) has no region.
    n : int, default 10, keyword-only
        At most this many regions are returned.
    min_size_mm3 : float, default 0.0, keyword-only
        Regions with a smaller volume are ignored.

    Returns
    -------
    list of UncertainRegion
        At most ``n``, most uncertain first.

    Raises
    ------
    InvalidInputError
        If the map is not 3D or holds NaN/Inf, the spacing is not 3 positive values, ``n`` is
        not a positive integer, or ``threshold`` / ``min_size_mm3`` is negative or not finite.

    Examples
    --------
    >>> u = np.zeros((1, 4, 6), np.float32)
    >>> u[0, 1:3, 1:3] = 0.5
    >>> u[0, 0, 5] = 1.0
    >>> [(r.region_id, r.centroid_zyx, r.volume_mm3, r.max) for r in uncertain_regions(u, spacing_mm=(2, 1, 1))]
    [(1, (0.0, 1.5, 1.5), 8.0, 0.5), (2, (0.0, 0.0, 5.0), 2.0, 1.0)]
    """
    from scipy import ndimage

    u = np.asarray(uncertainty)
    if u.ndim != 3:
        raise InvalidInputError(f"uncertainty has shape {u.shape}: expected a (z, y, x) map")
    if not np.issubdtype(u.dtype, np.number) or not np.all(np.isfinite(u)):
        raise InvalidInputError("uncertainty: expected finite real values (no NaN or Inf)")
    spacing = _check_spacing(spacing_mm, 3)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidInputError(f"n={n!r}: expected an integer >= 1")
    if not (math.isfinite(min_size_mm3) and min_size_mm3 >= 0):
        raise InvalidInputError(f"min_size_mm3={min_size_mm3!r}: expected a finite value >= 0")
    peak = float(u.max()) if u.size else 0.0
    if threshold is None:
        if peak <= 0:
            return []
        threshold = 0.5 * peak
    elif not (math.isfinite(threshold) and threshold >= 0):
        raise InvalidInputError(f"threshold={threshold!r}: expected a finite value >= 0")
    mask = u >= threshold
    if threshold == 0:  # every voxel would be "uncertain": only strictly positive ones count
        mask &= u > 0
    components, count = ndimage.label(mask)
    if count == 0:
        return []
    flat = components.ravel()
    inside = flat > 0
    ids = flat[inside]
    values = u.ravel()[inside].astype(np.float64)
    n_vox = np.bincount(ids, minlength=count + 1)[1:]
    sums = np.bincount(ids, weights=values, minlength=count + 1)[1:]
    maxima = np.full(count + 1, -np.inf)
    np.maximum.at(maxima, ids, values)
    maxima = maxima[1:]
    coords = np.nonzero(components)  # C order, the same order as ``ids``
    centroids = np.stack([np.bincount(ids, weights=c, minlength=count + 1)[1:] for c in coords], axis=1)
    centroids /= n_vox[:, None]
    voxel_mm3 = float(np.prod(spacing))
    volumes = n_vox * voxel_mm3
    means = sums / n_vox
    totals = means * volumes
    keep = np.nonzero(volumes >= min_size_mm3)[0]
    order = keep[np.lexsort((-maxima[keep], -totals[keep]))][: int(n)]
    return [
        UncertainRegion(
            region_id=rank,
            centroid_zyx=tuple(float(c) for c in centroids[i]),
            centroid_mm=tuple(float(c) * s for c, s in zip(centroids[i], spacing)),
            n_voxels=int(n_vox[i]),
            volume_mm3=float(volumes[i]),
            mean=float(means[i]),
            max=float(maxima[i]),
            total=float(totals[i]),
        )
        for rank, i in enumerate(order, start=1)
    ]
