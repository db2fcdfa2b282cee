"""Run registry models on a volume: probabilities, labels and uncertainty on the input's own grid.

:func:`predict` is the one entry point the faces call. It

1. stacks the input channels, checks them against the model card (channel count, finite
   values, a 3D model needs more than one slice) and warns (:class:`CardMismatchWarning`) when
   the spacing or orientation differs from the card's;
2. reorients (axis permutation and flips only) and resamples (linear) to the card's orientation
   and spacing, and normalises the intensities as the card says (:func:`normalize_intensities`);
3. runs a sliding window (:func:`sliding_window_moments`) with the card's patch size, overlap and
   Gaussian blending, 2D models slice by slice, optionally with Monte-Carlo dropout, test-time
   flips and an ensemble of models;
4. brings the blended moments back to the input grid (linear interpolation of probabilities) and
   takes labels as the argmax there.

The sliding window reproduces :func:`monai.inferers.sliding_window_inference` (same patch grid,
same Gaussian importance map, same zero padding of volumes smaller than a patch) and is faster:
see ``benchmarks/inference.py``. Its speed comes from a channels-last copy of the network with
fused normalisation (:func:`napari_medseg.networks.optimize_for_inference`), batched patches
under :func:`torch.inference_mode`, and, for Monte-Carlo dropout, from computing everything
before the first dropout layer once per patch and only the rest once per sample; when that rest
is dropout before a 1x1 head, all samples of a patch run as one fused, cache-blocked pass with
masks from a per-patch pool (:func:`napari_medseg.networks._fast.dropout_head_moments`).

Memory: the stitching buffers live on the CPU in float32 (the smallest dtype that accumulates
weighted probabilities without visible error; float16 would lose 1e-3): ``C + 1`` values per
voxel of the model grid, plus ``C + 1`` more with Monte-Carlo/TTA/ensemble moments; entropy,
variance and labels are computed slab by slab. A 512 x 512 x 300 int16 CT with a 2-class model
peaked at 2.05 GB RSS on the CPU (``python benchmarks/inference.py --memory``; target 4 GB).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_medseg import __version__
from napari_medseg._options import look_up_option
from napari_medseg._validate import MAX_BATCH_SIZE  # noqa: F401 - re-exported (old name)
from napari_medseg._validate import check_overlap as _check_overlap
from napari_medseg._validate import check_positive_int as _check_positive_int
from napari_medseg.errors import InvalidInputError
from napari_medseg.networks import StagedNetwork, optimize_for_inference, split_network
from napari_medseg.networks._fast import channels_last_format, dropout_head_moments
from napari_medseg._validate import check_dropout_rate
from napari_medseg.progress import (
    CancelEvent,
    ProgressCallback,
    check_cancelled,
    report,
)
from napari_medseg.registry import card_warnings
from napari_medseg._validate import check_mc_samples
from napari_medseg.uncertainty import mc_dropout, summarize_moments
from napari_medseg.volume import Geometry, Volume, check_same_grid, reorient, resample

if TYPE_CHECKING:  # pragma: no cover
    from napari_medseg.registry import ModelCard, NormalizationSpec, RegistryModel

__all__ = [
    "Device",
    "CardMismatchWarning",
    "card_warnings",
    "Prediction",
    "WindowMoments",
    "predict",
    "resolve_device",
    "sliding_window_moments",
    "normalize_intensities",
    "patch_grid",
    "gaussian_importance_map",
    "flip_axes_sets",
    "provenance_metadata",
]

#: Gaussian blending: sigma = 0.125 x patch side, as MONAI and nnU-Net
SIGMA_SCALE = 0.125


class Device(StrEnum):
    """Where the network runs: ``auto`` picks CUDA, then MPS, then the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class CardMismatchWarning(UserWarning):
    """The input differs from what the model card expects (spacing, orientation); it is adapted."""


def resolve_device(device: str | Device | torch.device = "auto") -> torch.device:
    """The torch device for ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Raises
    ------
    InvalidInputError
        If the name is unknown or that device is not available on this machine.
    """
    if isinstance(device, torch.device):
        return device
    text = str(device).strip().lower()
    base, _, index = text.partition(":")
    kind = look_up_option(base, Device, name="device")
    cuda_ok = torch.cuda.is_available()
    mps_ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if kind == Device.AUTO:
        return torch.device("cuda" if cuda_ok else "mps" if mps_ok else "cpu")
    if kind == Device.CUDA and not cuda_ok:
        raise InvalidInputError(f"device={device!r}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    if kind == Device.MPS and not mps_ok:
        raise InvalidInputError(f"device={device!r}: MPS is not available on this machine (use 'auto' or 'cpu')")
    return torch.device(f"{kind.value}:{index}" if index else kind.value)


# ------------------------------------------------------------------------------------ patch grid
def _axis_starts(size: int, patch: int, overlap: float) -> list[int]:
    if patch >= size:
        return [0]
    interval = max(int(patch * (1.0 - overlap)), 1)
    count = next(d for d in range(size) if d * interval + patch >= size) + 1
    return [min(d * interval, size - patch) for d in range(count)]


def patch_grid(image_shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Start indices of the patches covering ``image_shape`` (MONAI's dense patch grid).

    Parameters
    ----------
    image_shape, patch_size : sequence of int
        Same length; every image side must be >= the patch side (pad first).
    overlap : float in [0, 1)
        Fraction of a patch shared with its neighbour; the step is ``int(patch * (1 - overlap))``
        and the last patch is moved back to end at the border.

    Returns
    -------
    list of tuple of int
        In C order (last axis fastest), as MONAI enumerates them.

    Examples
    --------
    >>> patch_grid((160,), (96,), 0.25)
    [(0,), (64,)]
    """
    starts = [_axis_starts(int(s), int(p), float(overlap)) for s, p in zip(image_shape, patch_size)]
    return list(itertools.product(*starts))


def gaussian_importance_map(patch_size: Sequence[int], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """The Gaussian blending weights of one patch (sigma = 0.125 x side, minimum 1e-3).

    This is :func:`monai.data.utils.compute_importance_map` in ``"gaussian"`` mode, so blended
    outputs match MONAI's sliding window.
    """
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(int(p) for p in patch_size), mode="gaussian", sigma_scale=SIGMA_SCALE, device=device)


def flip_axes_sets(spatial_dims: int, enabled: bool) -> list[tuple[int, ...]]:
    """Tensor axes to flip for test-time augmentation: every subset of the spatial axes.

    For a ``(B, C, *spatial)`` tensor; ``[()]`` (no flip) when ``enabled`` is false.

    Examples
    --------
    >>> flip_axes_sets(2, True)
    [(), (2,), (3,), (2, 3)]
    """
    axes = list(range(2, 2 + spatial_dims))
    if not enabled:
        return [()]
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


# -------------------------------------------------------------------------------- sliding window
@dataclass(frozen=True)
class WindowMoments:
    """Per-voxel moments of the probability samples, blended over patches.

    Attributes
    ----------
    mean_p : numpy.ndarray
        ``(z, y, x, C)`` float32, the mean probability (sums to 1 over C).
    mean_p2 : numpy.ndarray or None
        ``(z, y, x, C)`` float32, the mean squared probability (None for a single sample).
    mean_entropy : numpy.ndarray or None
        ``(z, y, x)`` float32, the mean of each sample's entropy in nats (None for one sample).
    n_samples : int
        Samples per voxel: models x flips x max(1, Monte-Carlo samples).
    """

    mean_p: np.ndarray
    mean_p2: np.ndarray | None
    mean_entropy: np.ndarray | None
    n_samples: int


#: Most patches one network call takes (a larger batch only holds more patches in memory at once).
def sliding_window_moments(
    image: np.ndarray,
    networks: nn.Module | Sequence[nn.Module],
    *,
    patch_size: Sequence[int],
    spatial_dims: int = 3,
    overlap: float = 0.25,
    batch_size: int = 1,
    mc_samples: int = 0,
    dropout_rate: float | None = None,
    tta_flips: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    optimize: bool = True,
    reuse_prefix: bool = True,
    axis_order: str = "zyx",
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
) -> WindowMoments:
    """Sliding-window inference with Gaussian blending, returning probability moments.

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, z, y, x)`` normalised intensities (any real dtype; used as float32, not modified).
    networks : torch.nn.Module or sequence of them
        Each maps ``(B, C, *patch)`` to ``(B, L, *patch)`` logits; several are an ensemble
        (averaged in probability space). They are not modified (an optimised copy runs).
    patch_size : sequence of int
        ``(z, y, x)`` for 3D networks, ``(y, x)`` for 2D networks (run slice by slice).
    spatial_dims : {2, 3}, default 3
        The networks' dimensionality.
    overlap : float in [0, 1), default 0.25
    batch_size : int, default 1
        Patches (3D) or slices (2D) per network call, at most ``MAX_BATCH_SIZE`` (4096).
    mc_samples : int, default 0
        Monte-Carlo dropout samples per patch; 0 is deterministic.
    dropout_rate : float in [0, 1), optional
        Dropout rate during Monte-Carlo sampling (default: the networks' own).
    tta_flips : bool, default False
        Also run every flip of the spatial axes and average (a second source of samples).
    seed : int, default 0
        Seeds the dropout masks; the same seed and parameters give the same maps. The global
        torch random state is restored afterwards.
    device : str or torch.device, default "cpu"
    optimize : bool, default True
        Run a channels-last copy with folded/fused normalisation (see
        :func:`~napari_medseg.networks.optimize_for_inference`).
    reuse_prefix : bool, default True
        With Monte-Carlo dropout, compute the layers before the first dropout layer once per
        patch (False re-runs the whole network per sample, for comparison).
    axis_order : {"zyx", "xyz"}, default "zyx"
        The networks' spatial axis order (the card's ``axis_order``). ``"xyz"`` (MONAI-trained
        networks: the image's i, j, k) reverses the spatial axes of every patch on the way in and
        of every output on the way out; ``patch_size`` stays in array order.
    progress : callable(done, total), optional
        Called after each batch of patches.
    cancel : object with ``is_set()``, optional
        Checked between batches and between samples.

    Returns
    -------
    WindowMoments
        On the ``(z, y, x)`` grid of ``image``.

    Raises
    ------
    InvalidInputError
        For invalid parameters, an image that is not 4D, or a network without dropout layers
        when ``mc_samples > 0``.
    CancelledError
        If ``cancel`` is set.
    """
    nets = [networks] if isinstance(networks, nn.Module) else list(networks)
    if not nets:
        raise InvalidInputError("networks: expected at least one network")
    image = np.asarray(image)
    if image.ndim != 4:
        raise InvalidInputError(f"image has shape {image.shape}: expected (C, z, y, x)")
    if spatial_dims not in (2, 3):
        raise InvalidInputError(f"spatial_dims={spatial_dims!r}: expected 2 or 3")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != spatial_dims or any(p < 1 for p in patch):
        raise InvalidInputError(f"patch_size={tuple(patch_size)!r}: expected {spatial_dims} positive sides")
    overlap = _check_overlap(overlap)
    batch_size = _check_positive_int(batch_size, "batch_size")
    mc_samples = check_mc_samples(mc_samples)
    if dropout_rate is not None:
        dropout_rate = check_dropout_rate(dropout_rate)
    device = resolve_device(device)
    if axis_order not in ("zyx", "xyz"):
        raise InvalidInputError(f"axis_order={axis_order!r}: expected 'zyx' or 'xyz'")
    reverse = axis_order == "xyz"
    patch3 = patch if spatial_dims == 3 else (1, *patch)

    # pad to at least one patch (zeros, split evenly: MONAI's constant padding)
    shape = image.shape[1:]
    pads = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(shape, patch3)]
    padded = np.pad(image, [(0, 0), *pads]) if any(sum(p) for p in pads) else image
    grid_shape = padded.shape[1:]
    positions = patch_grid(grid_shape, patch3, overlap)

    flips = flip_axes_sets(spatial_dims, tta_flips)
    samples_per_pass = max(1, mc_samples)
    n_samples = len(nets) * len(flips) * samples_per_pass
    with_moments = n_samples > 1

    run_nets = [optimize_for_inference(n, device=device) if optimize else _eval_copy(n, device) for n in nets]
    memory_format = channels_last_format(2 + spatial_dims) if optimize else torch.contiguous_format
    importance = gaussian_importance_map(patch, device=device)
    importance3 = importance if spatial_dims == 3 else importance.unsqueeze(0)
    importance_np = importance3.cpu().numpy()

    n_out: int | None = None
    acc_p = acc_p2 = acc_h = None
    weight = np.zeros(grid_shape, np.float32)
    n_batches = math.ceil(len(positions) / batch_size)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(int(seed))
        for b in range(n_batches):
            check_cancelled(cancel, "inference")
            batch_pos = positions[b * batch_size:(b + 1) * batch_size]
            x = np.stack(
                [padded[:, z:z + patch3[0], y:y + patch3[1], w:w + patch3[2]] for z, y, w in batch_pos]
            ).astype(np.float32, copy=False)
            xt = torch.from_numpy(x)
            if spatial_dims == 2:
                xt = xt[:, :, 0]
            if reverse:  # the network's axis order: (B, C, x, y, z) / (B, C, x, y)
                xt = xt.permute(0, 1, *range(xt.ndim - 1, 1, -1))
            xt = xt.to(device).contiguous(memory_format=memory_format)
            sum_p, sum_p2, sum_h = _patch_samples(
                xt, run_nets, flips=flips, mc_samples=mc_samples, dropout_rate=dropout_rate,
                with_moments=with_moments, reuse_prefix=reuse_prefix, cancel=cancel,
            )
            if reverse:  # back to array order (reversing the spatial axes is its own inverse)
                sum_p = sum_p.permute(0, 1, *range(sum_p.ndim - 1, 1, -1))
                sum_p2 = None if sum_p2 is None else sum_p2.permute(0, 1, *range(sum_p2.ndim - 1, 1, -1))
                sum_h = None if sum_h is None else sum_h.permute(0, *range(sum_h.ndim - 1, 0, -1))
            if n_out is None:
                n_out = sum_p.shape[1]
                acc_p = np.zeros((*grid_shape, n_out), np.float32)
                if with_moments:
                    acc_p2 = np.zeros((*grid_shape, n_out), np.float32)
                    acc_h = np.zeros(grid_shape, np.float32)
            scale = importance / n_samples  # mean over samples times the blending weight
            _accumulate(acc_p, sum_p, scale, batch_pos, patch3, spatial_dims, channels=True)
            if with_moments:
                _accumulate(acc_p2, sum_p2, scale, batch_pos, patch3, spatial_dims, channels=True)
                _accumulate(acc_h, sum_h, scale, batch_pos, patch3, spatial_dims, channels=False)
            for z, y, w in batch_pos:
                weight[z:z + patch3[0], y:y + patch3[1], w:w + patch3[2]] += importance_np
            report(progress, b + 1, n_batches)
    # normalise by the summed weights, slab by slab (no full-size temporaries), then crop the padding
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, shape))
    for z0 in range(0, grid_shape[0], 16):
        sl = slice(z0, z0 + 16)
        inv = 1.0 / weight[sl]
        acc_p[sl] *= inv[..., None]
        if with_moments:
            acc_p2[sl] *= inv[..., None]
            acc_h[sl] *= inv
    del weight
    padded_any = any(sum(p) for p in pads)

    def cropped(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else (np.ascontiguousarray(a[crop]) if padded_any else a)

    return WindowMoments(mean_p=cropped(acc_p), mean_p2=cropped(acc_p2), mean_entropy=cropped(acc_h), n_samples=n_samples)


def _eval_copy(network: nn.Module, device: torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(network).eval().to(device)


def _patch_samples(
    x: torch.Tensor,
    nets: list[nn.Module],
    *,
    flips: list[tuple[int, ...]],
    mc_samples: int,
    dropout_rate: float | None,
    with_moments: bool,
    reuse_prefix: bool,
    cancel: CancelEvent | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Sums over all samples of p, p^2 and entropy for one batch of patches ``x``.

    Returns ``(B, C, *patch)`` and ``(B, *patch)`` contiguous tensors: labels first, so the
    softmax is a pass over C planes (49 ms vs 3 ms for a 4x96^3 log-softmax with labels last).

    With Monte-Carlo dropout whose only active layer is an element-wise dropout right before a
    1x1 head (:meth:`StagedNetwork.dropout_head`), the samples of a patch are computed in one
    fused pass on the CPU (:func:`~napari_medseg.networks._fast.dropout_head_moments`: 28 ms vs
    134 ms per patch and sample for 16x96^3 features and 4 labels, 1 thread of a busy 2-core
    machine); otherwise the suffix after the first dropout layer runs once per sample.
    """
    totals: list[torch.Tensor | None] = [None, None, None]

    def add(p: torch.Tensor, p2: torch.Tensor | None, h: torch.Tensor | None, axes: tuple[int, ...]) -> None:
        if axes:
            p = p.flip(axes)
            p2 = p2.flip(axes) if p2 is not None else None
            h = h.flip([a - 1 for a in axes]) if h is not None else None
        if totals[0] is None:
            totals[0] = p.contiguous()
            if with_moments:
                totals[1] = p2.contiguous() if p2 is not None else p * p
                totals[2] = h.contiguous()
        else:
            totals[0] += p
            if with_moments:
                if p2 is not None:
                    totals[1] += p2
                else:
                    totals[1].addcmul_(p, p)
                totals[2] += h

    for net in nets:
        context = mc_dropout(net, rate=dropout_rate) if mc_samples > 0 else contextlib.nullcontext()
        with context:
            head = None
            if mc_samples > 0 and reuse_prefix and x.device.type == "cpu" and isinstance(net, StagedNetwork):
                head = net.dropout_head()
            if head is not None:
                for axes in flips:
                    check_cancelled(cancel, "inference")
                    features, _ = net.run((x.flip(axes) if axes else x, ()), 0, head.index)
                    p, p2, h = dropout_head_moments(
                        features, head.weight, head.bias, p=head.p, n_samples=mc_samples,
                        with_moments=with_moments, cancel=cancel,
                    )
                    add(p, p2, h, axes)
                continue
            if reuse_prefix:
                prefix, suffix = split_network(net)
            else:
                prefix, suffix = (lambda t: (t, ())), (lambda state, _n=net: _n(state[0]))
            for axes in flips:
                state = prefix(x.flip(axes) if axes else x)
                for _ in range(max(1, mc_samples)):
                    check_cancelled(cancel, "inference")
                    logits = suffix(state).float().contiguous()
                    logp = F.log_softmax(logits, dim=1)
                    p = logp.exp()
                    h = None
                    if with_moments:
                        h = (p * logp).sum(dim=1).neg_()
                    add(p, None, h, axes)
    return totals[0], totals[1], totals[2]


def _accumulate(
    acc: np.ndarray,
    values: torch.Tensor,
    scale: torch.Tensor,
    positions: Sequence[tuple[int, int, int]],
    patch3: tuple[int, int, int],
    spatial_dims: int,
    *,
    channels: bool,
) -> None:
    """``acc[patch] += values * scale`` for each patch of the batch (values on any device).

    ``values`` is ``(B, C, *patch)`` when ``channels`` else ``(B, *patch)``; ``scale`` is
    ``patch``-shaped (2D networks: ``(y, x)``).
    """
    weighted = values * scale
    if channels:
        weighted = weighted.movedim(1, -1)  # (B, *patch, C) like acc
    if spatial_dims == 2:
        weighted = weighted.unsqueeze(1)
    weighted = weighted.cpu()
    target = torch.from_numpy(acc)
    for i, (z, y, w) in enumerate(positions):
        target[z:z + patch3[0], y:y + patch3[1], w:w + patch3[2]] += weighted[i]


# ------------------------------------------------------------------------------- normalisation
def normalize_intensities(array: np.ndarray, spec: NormalizationSpec | None) -> np.ndarray:
    """Normalise each channel of ``array`` as a model card says.

    Parameters
    ----------
    array : numpy.ndarray
        ``(C, ...)`` intensities (not modified).
    spec : NormalizationSpec or None
        ``kind``: ``zscore`` ``(x - mean) / std``; ``percentile`` maps the
        ``[lower_percentile, upper_percentile]`` percentiles to [0, 1]; ``ct_window`` maps
        ``[window_center - window_width / 2, window_center + window_width / 2]`` to [0, 1];
        ``minmax`` maps [min, max] to [0, 1]; ``none`` (or ``spec=None``) keeps the values.
        ``nonzero_only`` computes statistics on non-zero voxels (and keeps zeros at zero for
        ``zscore``); ``clip`` clips the [0, 1] kinds to [0, 1].

    Returns
    -------
    numpy.ndarray
        float32, same shape. A constant channel becomes zeros (no division by zero).
    """
    out = np.array(array, dtype=np.float32, copy=True)
    kind = "none" if spec is None else str(getattr(spec.kind, "value", spec.kind))
    if kind == "none":
        return out
    nonzero_only = bool(getattr(spec, "nonzero_only", False))
    clip = bool(getattr(spec, "clip", True))
    for c in range(out.shape[0]):
        channel = out[c]
        mask = channel != 0 if nonzero_only else None
        values = channel[mask] if mask is not None else channel.ravel()
        if values.size == 0:
            continue
        if kind == "zscore":
            mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
            channel -= mean
            channel *= 1.0 / std if std > 0 else 0.0
            if mask is not None:
                channel[~mask] = 0.0
            continue
        if kind == "percentile":
            lo, hi = (float(v) for v in np.percentile(values, [spec.lower_percentile, spec.upper_percentile]))
        elif kind == "ct_window":
            lo = float(spec.window_center) - float(spec.window_width) / 2
            hi = float(spec.window_center) + float(spec.window_width) / 2
        elif kind == "minmax":
            lo, hi = float(values.min()), float(values.max())
        else:
            raise InvalidInputError(f"normalization kind={kind!r}: expected zscore, percentile, ct_window, minmax or none")
        channel -= lo
        channel *= 1.0 / (hi - lo) if hi > lo else 0.0
        if clip:
            np.clip(channel, 0.0, 1.0, out=channel)
    return out


# ----------------------------------------------------------------------------------------- predict
@dataclass(frozen=True)
class Prediction:
    """What :func:`predict` returns, everything on the input's grid.

    Attributes
    ----------
    labels : Volume
        ``(z, y, x)`` label values of the card (smallest unsigned dtype), argmax of the
        probabilities.
    probabilities : Volume
        ``(z, y, x, C)`` float32 mean probabilities, channel ``i`` for the ``i``-th label value
        in ascending order.
    uncertainty : dict of str to Volume
        ``"entropy"`` (``(z, y, x)``, nats) always; ``"mutual_information"`` (``(z, y, x)``) and
        ``"variance"`` (``(z, y, x, C)``, per label) when more than one sample was drawn
        (``mc_samples > 0``, ``tta_flips`` or an ensemble).
    provenance : dict
        Models (name, version, sha256, source), parameters, package version, device, warnings.
    """

    labels: Volume
    probabilities: Volume
    uncertainty: dict[str, Volume]
    provenance: dict = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """What was doubtful about the input (card mismatches), as messages: returned as data, so a
        caller in a worker thread never has to catch ``warnings`` (which is process-global)."""
        return [str(m) for m in self.provenance.get("warnings", [])]


def _as_models(model) -> list[RegistryModel]:
    from napari_medseg.registry import RegistryModel, load_model

    items = list(model) if isinstance(model, (list, tuple)) else [model]
    if not items:
        raise InvalidInputError("model: expected at least one model")
    out = []
    for item in items:
        if isinstance(item, RegistryModel):
            out.append(item)
        elif isinstance(item, str) or hasattr(item, "__fspath__"):
            out.append(load_model(item))
        else:
            raise InvalidInputError(f"model={item!r}: expected a RegistryModel, a registry name or a model folder")
    return out


def _stack_input(volume_or_volumes) -> Volume:
    if isinstance(volume_or_volumes, Volume):
        return volume_or_volumes
    volumes = list(volume_or_volumes)
    if not volumes or not all(isinstance(v, Volume) for v in volumes):
        raise InvalidInputError("volume_or_volumes: expected a Volume or a list of Volumes (one per channel)")
    if len(volumes) == 1:
        return volumes[0]
    for i, v in enumerate(volumes[1:], start=1):
        check_same_grid(volumes[0], v, names=("channel 0", f"channel {i}"))
    parts = [v.array[..., None] if v.array.ndim == 3 else v.array for v in volumes]
    return Volume(np.concatenate([p.astype(np.float32, copy=False) for p in parts], axis=-1), volumes[0].geometry, volumes[0].metadata)


def _preprocessing_key(card: ModelCard) -> str:
    return json.dumps(
        {
            "spacing": card.spacing,
            "orientation": card.orientation,
            "normalization": card.normalization.model_dump(mode="json"),
            "patch_size": list(card.patch_size),
            "spatial_dims": card.spatial_dims,
            "overlap": card.overlap,
        },
        sort_keys=True,
    )


def _check_input(volume: Volume, models: list[RegistryModel]) -> None:
    first = models[0].card
    for m in models[1:]:
        if m.card.label_values != first.label_values:
            raise InvalidInputError(
                f"ensemble: model {m.card.name!r} has labels {m.card.label_values}, model {first.name!r} has "
                f"{first.label_values}; ensemble members must predict the same labels"
            )
        if m.card.in_channels != first.in_channels:
            raise InvalidInputError(
                f"ensemble: model {m.card.name!r} takes {m.card.in_channels} channels, {first.name!r} takes "
                f"{first.in_channels}; ensemble members must take the same channels"
            )
    if volume.n_components != first.in_channels:
        names = ", ".join(f"{c.name} ({c.modality})" for c in first.channels)
        raise InvalidInputError(
            f"model {first.name!r} expects {first.in_channels} input channel(s) [{names}], the input has "
            f"{volume.n_components}; pass one volume per channel in the card's order"
        )
    if not np.issubdtype(volume.array.dtype, np.number) or np.issubdtype(volume.array.dtype, np.complexfloating):
        raise InvalidInputError(f"input dtype {volume.array.dtype}: expected real numbers")
    if np.issubdtype(volume.array.dtype, np.floating):
        finite = np.isfinite(volume.array)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise InvalidInputError(
                f"the input has {bad} NaN or infinite voxel(s); replace them (e.g. with the background value) "
                "before segmenting"
            )
    for m in models:
        if m.card.spatial_dims == 3 and 1 in volume.shape:
            raise InvalidInputError(
                f"model {m.card.name!r} is a 3D model but the input is a single slice (shape {volume.shape}); "
                "use a 2D model, or a volume with several slices"
            )


def _resample_sitk(volume: Volume, geometry: Geometry, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear resampling onto (geometry, shape); points outside take the nearest edge value."""
    return resample(volume, geometry=geometry, shape=shape, interpolation="linear", extrapolate_nearest=True).array


def _to_model_grid(volume: Volume, card: ModelCard) -> tuple[Volume, bool]:
    """Reorient and resample ``volume`` to the card's orientation and spacing.

    Returns the volume on the model grid and whether it was resampled (False: at most an exact
    axis permutation/flip happened).
    """
    vol = volume
    if card.orientation is not None and vol.geometry.orientation != card.orientation.upper():
        vol = reorient(vol, card.orientation.upper())
    if card.spacing is not None and not np.allclose(vol.geometry.spacing, card.spacing, rtol=1e-6, atol=1e-9):
        g = vol.geometry
        target = Geometry(card.spacing, g.origin, g.direction)
        size_xyz = [max(1, int(round(n * o / s))) for n, o, s in zip(vol.shape[::-1], g.spacing, target.spacing)]
        as_float = Volume(vol.array.astype(np.float32, copy=False), g)
        return Volume(_resample_sitk(as_float, target, tuple(size_xyz[::-1])), target), True
    return vol, False


def _to_input_grid(array: np.ndarray, model_grid: Volume, resampled: bool, volume: Volume) -> np.ndarray:
    """Bring an array on the model grid (``(z, y, x[, c])``) back onto ``volume``'s grid."""
    if model_grid.shape == volume.shape and model_grid.geometry.isclose(volume.geometry, atol=1e-5):
        return array
    on_model = Volume(array, model_grid.geometry)
    if not resampled:  # only reoriented: undo the permutation exactly
        back = reorient(on_model, volume.geometry.orientation)
        if back.shape == volume.shape and back.geometry.isclose(volume.geometry, atol=1e-4):
            return back.array
    return _resample_sitk(on_model, volume.geometry, volume.shape)


def provenance_metadata(provenance: dict) -> dict[str, str]:
    """Header key-value pairs (NRRD/MHA metadata) that record a prediction's provenance.

    Keys: ``medseg_model`` (comma-separated names), ``medseg_model_sha256`` (comma-separated),
    ``medseg_version`` and ``medseg_provenance`` (the whole record as JSON).
    """
    models = provenance.get("models", [])
    return {
        "medseg_model": ",".join(m["name"] for m in models),
        "medseg_model_sha256": ",".join(m["sha256"] for m in models),
        "medseg_version": str(provenance.get("version", __version__)),
        "medseg_provenance": json.dumps(provenance, sort_keys=True),
    }


def _argmax_labels(mean_p: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Label values of the most probable channel, slab by slab (no int64 full-size temporary)."""
    values = np.asarray(label_values)
    values = values.astype(_label_dtype(int(values.max())))
    out = np.empty(mean_p.shape[:-1], values.dtype)
    step = max(1, (1 << 22) // max(1, mean_p[0].size))
    for z in range(0, mean_p.shape[0], step):
        out[z:z + step] = values[np.argmax(mean_p[z:z + step], axis=-1)]
    return out


def _label_dtype(max_value: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def predict(
    volume_or_volumes: Volume | Sequence[Volume],
    model: RegistryModel | str | Sequence[RegistryModel | str],
    *,
    device: str = "auto",
    overlap: float | None = None,
    batch_size: int | None = None,
    mc_samples: int = 0,
    dropout_rate: float | None = None,
    tta_flips: bool = False,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
    warn: bool = True,
) -> Prediction:
    """Segment a volume with one model or an ensemble; everything comes back on its grid.

    Parameters
    ----------
    volume_or_volumes : Volume or sequence of Volume
        The input: one Volume (``(z, y, x)``, or ``(z, y, x, c)`` with the card's channels), or
        one scalar Volume per channel on the same grid, in the card's channel order. Not modified.
    model : RegistryModel, str, or a sequence of them
        Registry model(s) or registry names / model folders. Several models form an ensemble
        averaged in probability space; they must share labels and channels (each uses its own
        card's spacing, orientation, normalisation and patch size).
    device : {"auto", "cpu", "cuda", "mps"}, default "auto"
    overlap : float in [0, 1), optional
        Patch overlap (default: each card's ``overlap``).
    batch_size : int, optional
        Patches per network call (default: 1 for 3D models on the CPU, 4 on a GPU; 16 slices
        for 2D models).
    mc_samples : int, default 0
        Monte-Carlo dropout samples N; 0 is deterministic. Needs dropout layers in the card.
    dropout_rate : float in [0, 1), optional
        Dropout rate for Monte-Carlo sampling (default: the card's ``dropout.rate``).
    tta_flips : bool, default False
        Test-time augmentation by flipping every combination of spatial axes.
    seed : int, default 0
        The same seed and parameters give the same maps.
    progress : callable(done, total), optional
        Called after each batch of patches; ``total`` covers every model.
    cancel : object with ``is_set()``, optional
        Checked between batches and between samples.
    warn : bool, default True
        Also issue each card mismatch as a ``CardMismatchWarning``. They are always returned as
        data (:attr:`Prediction.warnings`); faces that predict in a worker thread pass False and
        show ``Prediction.warnings`` on their main thread.

    Returns
    -------
    Prediction
        Labels, probabilities, uncertainty and provenance on the input's exact grid.

    Raises
    ------
    InvalidInputError
        Unknown model name (close matches listed), wrong channel count, NaN/Inf voxels, a
        single-slice input to a 3D model, ``mc_samples < 0``, a dropout rate outside [0, 1),
        an overlap outside [0, 1), an unavailable device, or Monte-Carlo dropout on a model
        without dropout layers.
    IntegrityError
        If a model's weights do not match their sha256.
    CancelledError
        If ``cancel`` is set (nothing is written by this function).

    Notes
    -----
    Handling of awkward inputs: a volume smaller than the patch is padded with zeros (after
    normalisation) and cropped back; a 3D volume given to a 2D model is segmented slice by slice
    along the card's ``z`` axis (after reorientation); a single-slice volume given to a 3D model
    is refused, because zero padding would feed the model mostly empty context.
    """
    models = _as_models(model)
    mc_samples = check_mc_samples(mc_samples)
    if dropout_rate is not None:
        dropout_rate = check_dropout_rate(dropout_rate)
    if overlap is not None:
        overlap = _check_overlap(overlap)
    if batch_size is not None:
        batch_size = _check_positive_int(batch_size, "batch_size")
    torch_device = resolve_device(device)
    if any(m.card.nnunet is not None for m in models):
        return _predict_nnunet(_stack_input(volume_or_volumes), models, torch_device, mc_samples=mc_samples,
                               tta_flips=tta_flips, progress=progress, cancel=cancel)
    volume = _stack_input(volume_or_volumes)
    _check_input(volume, models)
    if any(m.card.bundle is not None for m in models):
        return _predict_bundle(volume, models, torch_device, warn=warn, overlap=overlap, batch_size=batch_size,
                               mc_samples=mc_samples, tta_flips=tta_flips, progress=progress, cancel=cancel)

    messages: list[str] = []
    for m in models:
        for msg in card_warnings(volume, m.card):
            if msg not in messages:
                messages.append(msg)
                if warn:
                    warnings.warn(msg, CardMismatchWarning, stacklevel=2)

    groups: dict[str, list[RegistryModel]] = {}
    for m in models:
        groups.setdefault(_preprocessing_key(m.card), []).append(m)
    first = models[0].card

    totals = {"p": None, "p2": None, "h": None, "n": 0}
    done_before = 0
    base = Volume(volume.array, volume.geometry)  # normalize_intensities makes the float32 copy
    grand_total = _count_batches(volume, groups, overlap, batch_size, torch_device)

    for members in groups.values():
        card = members[0].card
        on_grid, resampled = _to_model_grid(base, card)
        channels_first = np.moveaxis(on_grid.array, -1, 0) if on_grid.array.ndim == 4 else on_grid.array[None]
        image = normalize_intensities(channels_first, card.normalization)
        del channels_first
        networks = [m.load_network("cpu") for m in members]
        bs = batch_size or _default_batch_size(card, torch_device)

        def group_progress(done: int, total: int, _offset=done_before) -> None:
            report(progress, _offset + done, grand_total)

        moments = sliding_window_moments(
            image, networks, patch_size=card.patch_size, spatial_dims=card.spatial_dims,
            overlap=card.overlap if overlap is None else overlap, batch_size=bs, mc_samples=mc_samples,
            dropout_rate=dropout_rate, tta_flips=tta_flips, seed=seed, device=torch_device,
            axis_order=card.axis_order, progress=group_progress if progress is not None else None, cancel=cancel,
        )
        del image
        _check_finite(moments.mean_p, members)
        done_before += _group_batches(on_grid.shape, card, overlap, bs)
        weight = moments.n_samples
        for key, arr in (("p", moments.mean_p), ("p2", moments.mean_p2), ("h", moments.mean_entropy)):
            if key != "p" and arr is None and len(groups) > 1:
                arr = moments.mean_p * moments.mean_p if key == "p2" else _entropy(moments.mean_p)
            if arr is None:
                continue
            back = _to_input_grid(arr, on_grid, resampled, volume)
            if totals[key] is None:
                totals[key] = back * weight if len(groups) > 1 else back
            else:
                totals[key] += back * weight
        totals["n"] += weight
        del moments

    n_total = totals["n"]
    if len(groups) > 1:
        for key in ("p", "p2", "h"):
            totals[key] /= n_total
    mean_p = totals["p"]
    maps = summarize_moments(mean_p, totals["p2"] if n_total > 1 else None, totals["h"] if n_total > 1 else None)
    labels = _argmax_labels(mean_p, first.label_values)

    provenance = {
        "package": "napari-medseg",
        "version": __version__,
        "models": [
            {"name": m.card.name, "version": m.card.version, "sha256": m.sha256, "source": str(getattr(m.source, "value", m.source))}
            for m in models
        ],
        "parameters": {
            "device": str(torch_device),
            "overlap": overlap,
            "batch_size": batch_size,
            "mc_samples": mc_samples,
            "dropout_rate": dropout_rate,
            "tta_flips": bool(tta_flips),
            "seed": int(seed),
            "n_samples": int(n_total),
        },
        "labels": {str(v): first.labels[v].name for v in first.label_values},
        "warnings": messages,
    }
    meta = provenance_metadata(provenance)
    geometry = volume.geometry
    uncertainty = {name: Volume(arr, geometry, meta) for name, arr in maps.items()}
    return Prediction(
        labels=Volume(labels, geometry, meta),
        probabilities=Volume(mean_p, geometry, meta),
        uncertainty=uncertainty,
        provenance=provenance,
    )


def _check_finite(mean_p: np.ndarray, members: Sequence[RegistryModel]) -> None:
    """Refuse NaN/inf network outputs (broken weights or a broken card), which would otherwise
    become an empty label map reported as a result. One pass over the merged probabilities, one
    label plane at a time.

    Raises
    ------
    InvalidInputError
        Naming the model(s).
    """
    if all(np.isfinite(plane).all() for plane in mean_p):
        return
    names = ", ".join(repr(m.card.name) for m in members)
    raise InvalidInputError(
        f"model {names} gave NaN or inf outputs on this input (broken weights or card values); no output was written"
    )


def _predict_bundle(volume: Volume, models: list[RegistryModel], device: torch.device, *, warn: bool, overlap: float | None,
                    batch_size: int | None, mc_samples: int, tta_flips: bool, progress, cancel) -> Prediction:
    """An imported MONAI bundle runs its own chain (:func:`napari_medseg.bundles.predict_bundle`)."""
    from napari_medseg.bundles import predict_bundle

    names = ", ".join(repr(m.card.name) for m in models if m.card.bundle is not None)
    if len(models) > 1:
        raise InvalidInputError(f"model: {names} is an imported MONAI bundle, which runs alone (not in an ensemble)")
    if mc_samples or tta_flips:
        raise InvalidInputError(
            f"mc_samples/tta_flips: model {names} is an imported MONAI bundle, run exactly as MONAI runs it; "
            "Monte-Carlo dropout and test-time flips are not part of that"
        )
    messages = card_warnings(volume, models[0].card)
    if warn:
        for msg in messages:
            warnings.warn(msg, CardMismatchWarning, stacklevel=3)
    prediction = predict_bundle(volume, models[0], device=device, overlap=overlap, batch_size=batch_size,
                                progress=progress, cancel=cancel)
    prediction.provenance["warnings"] = [*prediction.provenance.get("warnings", []), *messages]
    return prediction


def _entropy(p: np.ndarray) -> np.ndarray:
    from napari_medseg.uncertainty import entropy

    return entropy(p)


def _group_batches(shape: tuple[int, int, int], card: ModelCard, overlap: float | None, batch_size: int) -> int:
    patch3 = tuple(card.patch_size) if card.spatial_dims == 3 else (1, *card.patch_size)
    grid = tuple(max(s, p) for s, p in zip(shape, patch3))
    n = len(patch_grid(grid, patch3, card.overlap if overlap is None else overlap))
    return math.ceil(n / batch_size)


def _default_batch_size(card: ModelCard, device: torch.device) -> int:
    """1 patch on the CPU (no gain from more, measured), 4 on a GPU; 16 slices for 2D models."""
    if card.spatial_dims == 2:
        return 16
    return 1 if device.type == "cpu" else 4


def _count_batches(volume: Volume, groups: dict, overlap: float | None, batch_size: int | None, device: torch.device) -> int:
    total = 0
    for members in groups.values():
        card = members[0].card
        shape = _model_grid_shape(volume, card)
        total += _group_batches(shape, card, overlap, batch_size or _default_batch_size(card, device))
    return total


def _model_grid_shape(volume: Volume, card: ModelCard) -> tuple[int, int, int]:
    g = volume.geometry
    shape_xyz = list(volume.shape[::-1])
    spacing = list(g.spacing)
    if card.orientation is not None and g.orientation != card.orientation.upper():
        probe = reorient(Volume(np.zeros((1, 1, 1), np.uint8), g), card.orientation.upper()).geometry
        perm = np.argmax(np.abs(probe.direction_matrix.T @ g.direction_matrix), axis=1)
        shape_xyz = [shape_xyz[i] for i in perm]
        spacing = [spacing[i] for i in perm]
    if card.spacing is not None and not np.allclose(spacing, card.spacing, rtol=1e-6, atol=1e-9):
        shape_xyz = [max(1, int(round(n * o / s))) for n, o, s in zip(shape_xyz, spacing, card.spacing)]
    return tuple(shape_xyz[::-1])


def _predict_nnunet(volume: Volume, models: list[RegistryModel], device: torch.device, *, mc_samples: int,
                    tta_flips: bool, progress, cancel) -> Prediction:
    """An imported nnU-Net model runs nnU-Net's own pipeline (:func:`napari_medseg.nnunet.predict_nnunet`)."""
    from napari_medseg.nnunet import predict_nnunet

    names = ", ".join(repr(m.card.name) for m in models if m.card.nnunet is not None)
    if len(models) > 1:
        raise InvalidInputError(f"model: {names} is an imported nnU-Net model, which runs alone (its folds are its ensemble)")
    if mc_samples or tta_flips:
        raise InvalidInputError(
            f"mc_samples/tta_flips: model {names} is an imported nnU-Net model, run exactly as nnUNetv2_predict "
            "(it mirrors on its own allowed axes; the folds give the uncertainty)"
        )
    return predict_nnunet(volume, models[0], device=device, progress=progress, cancel=cancel)
