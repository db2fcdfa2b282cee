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
from collections.abc import Iterator
from enum import StrEnum

import numpy as np
import torch
from torch import nn

from napari_medseg.errors import InvalidInputError
from napari_medseg.networks import dropout_layers
from napari_medseg.networks.unet import check_dropout_rate

__all__ = [
    "UncertaintyKind",
    "mc_dropout",
    "check_mc_samples",
    "entropy",
    "summarize_samples",
    "summarize_moments",
]

#: probabilities below this count as 0 in ``p log p`` (avoids log(0))
_TINY = 1e-12


class UncertaintyKind(StrEnum):
    """The uncertainty maps :func:`napari_medseg.inference.predict` returns."""

    ENTROPY = "entropy"
    MUTUAL_INFORMATION = "mutual_information"
    VARIANCE = "variance"


def check_mc_samples(mc_samples: int) -> int:
    """Return ``mc_samples`` as an int, or raise :class:`InvalidInputError` unless it is >= 0."""
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)):
        raise InvalidInputError(f"mc_samples={mc_samples!r}: expected an integer >= 0 (0 = deterministic)")
    if mc_samples < 0:
        raise InvalidInputError(f"mc_samples={mc_samples!r}: expected an integer >= 0 (0 = deterministic)")
    return int(mc_samples)


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
