"""Inference-time rewrites of a network that change its speed, not its function.

:func:`optimize_for_inference` returns a copy in eval mode with

* batch normalisation folded into the preceding convolution (exact up to float rounding);
* instance normalisation and the activation after it fused into one pass that reads the
  tensor in channels-last order (torch's ``instance_norm`` copies a channels-last tensor to
  channels-first and back: measured on the benchmark U-Net, 85 ms vs 40 ms per 16x96^3 tensor on
  2 AVX-512 cores);
* 1x1 convolutions computed as matrix products over the channels, and convolutions with fewer
  than 8 input channels run on zero-padded channels (oneDNN instead of a slow fallback);
* element-wise dropout layers drawing their masks faster (:class:`FastDropout`);
* parameters in channels-last memory format (oneDNN convolutions: 0.065 s vs 0.106 s for a
  16->16 3x3x3 convolution on 96^3).

For Monte-Carlo dropout whose only active dropout layer sits right before a 1x1 head (the cheap
placement), :func:`dropout_head_moments` computes the softmax moments of all samples of a patch in
one fused, cache-blocked pass, with masks taken from a per-patch pool (:func:`draw_keep_pool`).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "FastDropout",
    "FusedInstanceNormAct",
    "PointwiseConv",
    "channels_last_format",
    "draw_keep_pool",
    "dropout_head_moments",
    "optimize_for_inference",
    "pointwise_weights",
]


#: 2D channels-last instance norm sums by rows up to this many channels (benchmarks/predict_speed.py)
BLOCKED_SUM_MAX_CHANNELS_2D = 32


def channels_last_format(ndim: int) -> torch.memory_format:
    """``channels_last_3d`` for 5D tensors, ``channels_last`` for 4D, else ``contiguous_format``."""
    return {5: torch.channels_last_3d, 4: torch.channels_last}.get(ndim, torch.contiguous_format)


class FusedInstanceNormAct(nn.Module):
    """Instance normalisation followed by ReLU, LeakyReLU, PReLU or nothing, in few passes.

    Works for any memory format; for a channels-last input the statistics are reduced over the
    contiguous ``(B, voxels, C)`` view and the output stays channels-last.
    """

    def __init__(self, norm: nn.modules.instancenorm._InstanceNorm, act: nn.Module | None) -> None:
        super().__init__()
        self.eps = float(norm.eps)
        self.weight = norm.weight
        self.bias = norm.bias
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        channels_last = x.ndim in (4, 5) and x.is_contiguous(memory_format=channels_last_format(x.ndim)) and c > 1
        if channels_last:
            order = (0, *range(2, x.ndim), 1)
            xm = x.permute(order).reshape(b, -1, c)  # a view
            dim = 1
        else:
            xm = x.reshape(b, c, -1)
            dim = 2
        n = xm.shape[dim]
        # sums in float32 over blocks (one GEMV per depth slice), combined in float64, so that
        # E[x^2] - E[x]^2 keeps float32 accuracy; the sum of squares is the diagonal of the C x C
        # Gram matrix (one GEMM). Both are far faster than strided reductions (2.8 ms vs 45 ms
        # for the sums of a 16x96^3 tensor, 1 thread). Fall back to the two-pass formula when the
        # mean dominates the spread (cancellation).
        # 2D: the same blocking by rows when channels are few (measured on 16 x 160^2 slices, 16
        # channels: 104 ms vs 428 ms; with 128 channels the strided sum is faster)
        if channels_last and (x.ndim == 5 or c <= BLOCKED_SUM_MAX_CHANNELS_2D):
            blocks = xm.view(b, x.shape[2], -1, c)  # (B, D, H*W, C) or (B, H, W, C)
            ones = torch.ones(1, blocks.shape[2], dtype=x.dtype, device=x.device)
            sum64 = torch.matmul(ones, blocks).sum(dim=(1, 2), dtype=torch.float64)
        else:
            sum64 = xm.sum(dim, dtype=torch.float64)
        xt = xm if channels_last else xm.transpose(1, 2)  # (B, voxels, C)
        sumsq64 = torch.bmm(xt.transpose(1, 2), xt).diagonal(dim1=1, dim2=2).to(torch.float64)
        mean64 = sum64 / n
        var64 = sumsq64 / n - mean64 * mean64
        if bool((var64 < 0.1 * mean64 * mean64).any()):
            var, mean = torch.var_mean(xm, dim=dim, correction=0)
        else:
            var, mean = var64.to(x.dtype), mean64.to(x.dtype)
        scale = torch.rsqrt(var.clamp_min(0) + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        if channels_last:
            y = torch.addcmul(shift.unsqueeze(1), xm, scale.unsqueeze(1))
            y = y.view(b, *x.shape[2:], c).permute(0, x.ndim - 1, *range(1, x.ndim - 1))
        else:
            y = torch.addcmul(shift.unsqueeze(2), xm, scale.unsqueeze(2)).view(x.shape)
        act = self.act
        if act is None:
            return y
        if isinstance(act, nn.ReLU):
            return y.clamp_min_(0)
        if isinstance(act, nn.LeakyReLU):
            return F.leaky_relu_(y, act.negative_slope)
        return act(y)


class PointwiseConv(nn.Module):
    """A 1x1(x1) convolution computed as one matrix product over the channels of a channels-last
    input (21 ms vs 105 ms for 16 -> 4 channels on 96^3, 1 thread: torch has no fast
    channels-last kernel for it). The output is channels-first (contiguous), which is what a
    softmax over the labels wants when this is the head. Other layouts use the convolution."""

    def __init__(self, conv: nn.modules.conv._ConvNd) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.ndim in (4, 5) and x.is_contiguous(memory_format=channels_last_format(x.ndim))):
            return self.conv(x)
        b, c = x.shape[:2]
        xm = x.permute(0, *range(2, x.ndim), 1).reshape(b, -1, c)  # (B, voxels, C): a view
        weight = self.conv.weight.reshape(self.conv.out_channels, c)
        y = torch.matmul(weight, xm.transpose(1, 2))  # (B, out, voxels)
        if self.conv.bias is not None:
            y += self.conv.bias.view(1, -1, 1)
        return y.view(b, self.conv.out_channels, *x.shape[2:])


class ChannelPaddedConv(nn.Module):
    """A convolution with few input channels run with zero-padded inputs and weights (8
    channels): torch has no oneDNN path for 1 input channel and falls back to a slow kernel with
    a channels-first output (measured 150 ms vs about 60 ms for 1 -> 16 channels on 96^3, 1
    thread). The zeros add nothing, so the output is the same."""

    PAD_TO = 8

    def __init__(self, conv: nn.Conv3d | nn.Conv2d) -> None:
        super().__init__()
        self.conv = copy.deepcopy(conv)
        weight = conv.weight.data
        extra = torch.zeros(weight.shape[0], self.PAD_TO - weight.shape[1], *weight.shape[2:], dtype=weight.dtype, device=weight.device)
        self.conv.weight = nn.Parameter(torch.cat([weight, extra], dim=1), requires_grad=False)
        self.conv.in_channels = self.PAD_TO
        self.n_in = conv.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = torch.zeros(x.shape[0], self.PAD_TO - self.n_in, *x.shape[2:], dtype=x.dtype, device=x.device)
        xp = torch.cat([x, pad], dim=1).contiguous(memory_format=channels_last_format(x.ndim))
        return self.conv(xp)


class FastDropout(nn.Dropout):
    """Element-wise dropout that draws its mask from 16-bit random integers.

    Each voxel is kept with probability ``1 - p`` and kept values are scaled by ``1 / (1 - p)``,
    as with ``nn.Dropout``, but ``p`` is rounded to a multiple of 1/65536 (at most 7.7e-6 off)
    and the mask comes from 64-bit random integers split into four 16-bit ones, laid out in the
    input's memory order. Drawing the mask is the floor of a Monte-Carlo sample's cost: 28 ms vs
    76 ms (``torch.rand``) or 135 ms (``bernoulli_``) for a 16x96^3 tensor, 1 thread. Another
    random stream than ``nn.Dropout``, the same seed gives the same masks.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        drop = round(float(self.p) * 65536)
        if drop >= 65536:
            return torch.zeros_like(x)
        numel = x.numel()
        bits = torch.empty((numel + 3) // 4, dtype=torch.int64, device=x.device)
        bits.random_(-(2**63), 2**63 - 1)
        u = bits.view(torch.int16)[:numel]
        # work on the flat physical order of x (channels-last or contiguous), where every
        # element-wise op is a contiguous pass
        channels_last = x.ndim in (4, 5) and x.is_contiguous(memory_format=channels_last_format(x.ndim))
        if channels_last:
            order = (0, *range(2, x.ndim), 1)
            flat = x.permute(order).reshape(-1)
        else:
            flat = x.reshape(-1)
        # u is uniform on [-32768, 32767]: drop the lowest `drop` of the 65536 values
        out = torch.where(u >= drop - 32768, flat, 0.0).mul_(65536.0 / (65536 - drop))
        if channels_last:
            return out.view(x.shape[0], *x.shape[2:], x.shape[1]).permute(0, x.ndim - 1, *range(1, x.ndim - 1))
        return out.view(x.shape)


def pointwise_weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(weight (out, in), bias (out,) or None)`` when ``module`` is a 1x1(x1) convolution, else None.

    Recognises ``nn.Conv2d``/``nn.Conv3d`` with unit kernel and stride, no padding and one group,
    :class:`PointwiseConv`, and an ``nn.Sequential`` (e.g. a MONAI ``Convolution`` with
    ``conv_only=True``) whose only child is one of those.
    """
    while isinstance(module, nn.Sequential) and len(module) == 1:
        module = module[0]
    if isinstance(module, PointwiseConv):
        module = module.conv
    if not _is_pointwise(module):
        return None
    return module.weight.reshape(module.out_channels, module.in_channels), module.bias


def _drop_count(p: float) -> int:
    """``p`` as a count of the 65536 16-bit values (the rounding :class:`FastDropout` uses)."""
    return min(65536, max(0, round(float(p) * 65536)))


def draw_keep_pool(numel: int, *, p: float, n_samples: int, span: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[int]]:
    """A pool of Bernoulli keep bits and one offset per Monte-Carlo sample into it.

    Sample ``s`` keeps element ``e`` (``0 <= e < numel``) when ``pool[offsets[s] + e]`` is 1.
    The pool holds ``numel + n_samples * slot`` independent bits, each 1 with probability
    ``1 - p`` (``p`` rounded to a multiple of 1/65536, as :class:`FastDropout`); ``slot`` is at
    least ``numel / n_samples``. The offsets are ``s * slot + j_s`` with independent uniform jitters
    ``j_s`` in ``[0, slot - gap]``, ``gap = max(span, slot // 2)``, so any two offsets differ by at
    least ``gap``.

    Why this is element-wise Bernoulli dropout (the argument the tests check):

    * within one sample, distinct elements read distinct pool entries: the mask is i.i.d.
      Bernoulli(1 - p), exactly as ``nn.Dropout`` draws it;
    * an output voxel of a pointwise head depends on ``span`` consecutive elements (its
      channels, channels-last). Two samples read them from pool windows at least ``gap >= span``
      apart, i.e. from disjoint entries, so the samples of every voxel are i.i.d.: the per-voxel
      mean, mean square and mean entropy are unbiased Monte-Carlo estimates with the usual
      ``1/N`` variance, and the variance map keeps its meaning;
    * the only reuse is across voxels: the entries voxel ``v`` uses in sample ``s`` come back
      (channel-shifted) in sample ``t`` at the voxel ``(offsets[s] - offsets[t]) / span`` further on,
      at least ``gap / span`` voxels away (3 slices of a 96^3 patch with 16 samples). That couples
      the Monte-Carlo errors of a few far-apart voxel pairs through one shared sample out of
      ``n_samples``; no per-voxel expectation changes (linearity), neighbouring voxels share
      nothing, and the random jitters make it unlikely that two sample pairs couple the same
      voxel pair (equally spaced offsets would repeat one shift for all pairs: echoes). A
      fresh pool is drawn per patch, so patches (and the overlapping windows blended into one
      voxel) are independent.

    Drawing the pool costs about two mask draws per patch instead of one per sample.

    Parameters
    ----------
    numel : int
        Elements each sample masks.
    p : float in [0, 1]
        Drop probability.
    n_samples : int
        Monte-Carlo samples (>= 1).
    span : int
        Elements one output depends on (the channel count of a pointwise head).
    device : torch.device or str, default "cpu"

    Returns
    -------
    pool : torch.Tensor
        1D uint8 of zeros and ones.
    offsets : list of int
        ``n_samples`` offsets, increasing.

    Notes
    -----
    The bits come from numpy's SFC64 generator seeded from torch's global generator, so
    ``torch.manual_seed`` fixes them. SFC64 gives 64 bits in about 1.7 ns on one core, 4x faster
    than torch's mt19937 ``random_`` (measured: 12 ms vs 51 ms for a 2 x 16 x 96^3 pool).
    """
    n_samples = max(1, int(n_samples))
    span = max(1, int(span))
    slot = max(math.ceil(numel / n_samples), 2 * span)
    gap = max(span, slot // 2)
    jitter = torch.randint(0, slot - gap + 1, (n_samples,)).tolist()
    offsets = [s * slot + int(j) for s, j in enumerate(jitter)]
    size = numel + n_samples * slot
    seed = int(torch.randint(0, 2**62, (1,)).item())
    raw = np.random.SFC64(seed).random_raw((size + 3) // 4).view(np.int16)[:size]
    drop = _drop_count(p)
    if drop <= 0 or drop >= 65536:  # keep all / nothing (the threshold would not fit int16)
        return torch.full((size,), int(drop <= 0), dtype=torch.uint8, device=device), offsets
    # raw is uniform on [-32768, 32767]: drop the lowest `drop` of the 65536 values
    keep = torch.from_numpy(raw) >= drop - 32768
    return keep.view(torch.uint8).to(device), offsets


#: masked elements (all samples) per voxel block of :func:`dropout_head_moments`: 4 MB of float32
_HEAD_BLOCK_ELEMENTS = 1 << 20
#: run the blocks on Python threads (one torch thread each) instead of torch's intra-op threads
_HEAD_THREADED_BLOCKS = True


def _head_workers(device: torch.device, n_vox: int, block: int) -> int:
    if not _HEAD_THREADED_BLOCKS or device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), math.ceil(n_vox / block)))


def _with_inference_mode(fn):
    """``fn`` run under the caller's grad mode (grad mode is thread-local)."""
    inference = torch.is_inference_mode_enabled()
    grad = torch.is_grad_enabled()

    def wrapped(*args):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(*args)

    return wrapped


def dropout_head_moments(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    p: float,
    n_samples: int,
    with_moments: bool = True,
    cancel=None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Sums over Monte-Carlo samples of softmax(head(dropout(x))) moments, for a 1x1 head.

    Each sample is ``logits_s = W (m_s * x) / (1 - p) + b`` with an element-wise Bernoulli keep
    mask ``m_s`` (not channel-wise), as ``nn.Dropout`` followed by a 1x1 convolution; the masks
    come from :func:`draw_keep_pool`. The samples of a block of voxels are computed together
    while the block is in cache: mask (one multiply per sample), head (one matrix product for
    all samples), softmax, entropy and the sums over samples.

    Measured (16 samples of a 16x96^3 state, 4 labels, old and new interleaved in one process,
    medians of 3-5 runs on 2 AVX-512 cores shared with other jobs, so noisy): 1 thread 449 ms vs
    2151 ms for the per-sample loop (FastDropout, PointwiseConv, log-softmax, entropy, sums), i.e.
    28 ms vs 134 ms per patch and sample; 2 threads 455 ms vs 3288 ms (28 vs 206 ms per sample).
    The multiply by the uint8 keep pool costs about 4 ms per sample where ``torch.where`` on fresh
    16-bit draws cost 17 ms plus the 15 ms draw. With torch's own 2 intra-op threads instead of
    blocks on Python threads the same kernel took 5944 ms on the loaded machine: every small op
    ends at a barrier that waits for a descheduled thread.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, *spatial)`` the input of the dropout layer (any memory format; not modified).
    weight : torch.Tensor
        ``(L, C)`` head weights.
    bias : torch.Tensor or None
        ``(L,)`` head bias.
    p : float in [0, 1]
        Drop probability (rounded to a multiple of 1/65536).
    n_samples : int
        Monte-Carlo samples S >= 1.
    with_moments : bool, default True
        Also return the sums of ``p^2`` and of the entropy.
    cancel : object with ``is_set()``, optional
        Checked between voxel blocks.

    Returns
    -------
    sum_p : torch.Tensor
        ``(B, L, *spatial)`` float32 contiguous, the sum over samples of the probabilities.
    sum_p2 : torch.Tensor or None
        ``(B, L, *spatial)`` the sum of squared probabilities (None unless ``with_moments``).
    sum_h : torch.Tensor or None
        ``(B, *spatial)`` the sum of the samples' entropies in nats (None unless ``with_moments``).

    Raises
    ------
    CancelledError
        If ``cancel`` is set.
    """
    from napari_medseg.progress import check_cancelled

    n_samples = max(1, int(n_samples))
    b, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    n_vox = math.prod(spatial)
    n_out = weight.shape[0]
    drop = _drop_count(p)
    keep_scale = 0.0 if drop >= 65536 else 65536.0 / (65536 - drop)
    w = (weight.detach().float() * keep_scale).to(x.device)
    shift = (bias.detach().float() if bias is not None else torch.zeros(n_out)).to(x.device).view(n_out, 1)
    # rows of (voxel, channels) in the channels-last order: a view when x is channels-last
    rows = x.detach().float().movedim(1, -1).reshape(b, n_vox * c)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    sum_p = torch.empty(b, n_out, n_vox, device=x.device)
    sum_p2 = torch.empty(b, n_out, n_vox, device=x.device) if with_moments else None
    sum_h = torch.empty(b, n_vox, device=x.device) if with_moments else None
    block = max(64, _HEAD_BLOCK_ELEMENTS // (n_samples * c))
    workers = _head_workers(x.device, n_vox, block)

    def run_blocks(item: int, flat: torch.Tensor, pool: torch.Tensor, offsets: list[int], starts) -> None:
        masked_buffer = torch.empty(n_samples * min(block, n_vox) * c, device=x.device)
        for v0 in starts:  # shared iterator: each block goes to the next free worker
            check_cancelled(cancel, "inference")
            nv = min(block, n_vox - v0)
            e0, e1 = v0 * c, (v0 + nv) * c
            masked = masked_buffer[: n_samples * nv * c].view(n_samples, nv * c)
            xb = flat[e0:e1]
            for s, offset in enumerate(offsets):
                torch.mul(xb, pool[offset + e0:offset + e1], out=masked[s])
            # (L, S * nv): labels first, so the softmax below is a pass over L planes
            z = torch.addmm(shift, w, masked.view(n_samples * nv, c).t())
            z -= z.amax(0)
            e = z.exp()
            total = e.sum(0)
            prob = e.div_(total)
            prob3 = prob.view(n_out, n_samples, nv)
            torch.sum(prob3, 1, out=sum_p[item, :, v0:v0 + nv])
            if with_moments:
                torch.sum(prob3 * prob3, 1, out=sum_p2[item, :, v0:v0 + nv])
                # H = log(sum exp z) - sum_l p_l z_l (z: the logits minus their maximum)
                h = total.log_().sub_((prob * z).sum(0))
                torch.sum(h.view(n_samples, nv), 0, out=sum_h[item, v0:v0 + nv])

    for item in range(b):
        pool, offsets = draw_keep_pool(n_vox * c, p=p, n_samples=n_samples, span=c, device=x.device)
        starts = iter(range(0, n_vox, block))
        if workers <= 1:
            run_blocks(item, rows[item], pool, offsets, starts)
            continue
        # blocks on `workers` Python threads, each running torch single-threaded: the ops of a
        # block are small, and intra-op threads would meet at a barrier after every one of them
        # (on a loaded 2-core machine that stalled the kernel 2-10x)
        from concurrent.futures import ThreadPoolExecutor

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool_executor:
                futures = [
                    pool_executor.submit(_with_inference_mode(run_blocks), item, rows[item], pool, offsets, starts)
                    for _ in range(workers)
                ]
                for future in futures:
                    future.result()
        finally:
            torch.set_num_threads(threads)
    shape = (b, n_out, *spatial)
    return (
        sum_p.view(shape),
        sum_p2.view(shape) if with_moments else None,
        sum_h.view(b, *spatial) if with_moments else None,
    )


def _is_thin(conv: nn.Module) -> bool:
    return (
        type(conv) in (nn.Conv2d, nn.Conv3d)
        and conv.in_channels < ChannelPaddedConv.PAD_TO
        and conv.groups == 1
        and any(k > 1 for k in conv.kernel_size)
    )


def _is_pointwise(conv: nn.Module) -> bool:
    return (
        isinstance(conv, (nn.Conv2d, nn.Conv3d))
        and all(k == 1 for k in conv.kernel_size)
        and all(s == 1 for s in conv.stride)
        and all(p == 0 for p in conv.padding)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


_WRAPPERS = (PointwiseConv, ChannelPaddedConv, FastDropout)


def _replace_pointwise(module: nn.Module, _seen: set[int] | None = None) -> None:
    # a module may be reachable twice (MONAI's DynUNet lists its blocks again in skip_layers):
    # rewrite each object once, so a wrapped conv is never wrapped again
    seen = set() if _seen is None else _seen
    if id(module) in seen or isinstance(module, _WRAPPERS):
        return
    seen.add(id(module))
    for name, child in list(module.named_children()):
        if isinstance(child, _WRAPPERS):
            continue
        if _is_pointwise(child):
            setattr(module, name, PointwiseConv(child))
        elif _is_thin(child):
            setattr(module, name, ChannelPaddedConv(child))
        elif type(child) is nn.Dropout and not child.inplace:
            fast = FastDropout(child.p)
            fast.train(child.training)
            setattr(module, name, fast)
        else:
            _replace_pointwise(child, seen)


def _fuse_adn(module: nn.Module) -> None:
    """Rewrite MONAI ``Convolution`` blocks (``conv`` + ``adn``) in place."""
    for child in list(module.children()):
        _fuse_adn(child)
    conv = getattr(module, "conv", None)
    adn = getattr(module, "adn", None)
    if conv is None or not isinstance(adn, nn.Sequential) or not isinstance(conv, nn.modules.conv._ConvNd):
        return
    names = list(adn._modules)
    norm = adn._modules.get("N")
    act = adn._modules.get("A")
    if norm is None or set(names) - {"N", "A"} or (names and names[0] != "N"):
        return
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats and not conv.transposed:
        module.conv = fuse_conv_bn_eval(conv, norm)
        adn._modules["N"] = nn.Identity()
    elif isinstance(norm, nn.modules.instancenorm._InstanceNorm) and not norm.track_running_stats:
        if act is None or isinstance(act, (nn.ReLU, nn.LeakyReLU, nn.PReLU)):
            module.adn = FusedInstanceNormAct(norm, act)


def optimize_for_inference(network: nn.Module, *, device: torch.device | str = "cpu", channels_last: bool = True) -> nn.Module:
    """A faster copy of ``network`` for inference (``network`` itself is not modified).

    Parameters
    ----------
    network : torch.nn.Module
        Any network; MONAI ``Convolution`` blocks (ours and MONAI's nets) get their batch norm
        folded and instance norm + activation fused.
    device : torch.device or str, default "cpu"
        Where the copy goes.
    channels_last : bool, default True
        Store 4D/5D convolution weights channels-last.

    Returns
    -------
    torch.nn.Module
        In eval mode on ``device``; its outputs equal ``network``'s to float rounding.
    """
    net = copy.deepcopy(network).eval()
    with torch.no_grad():
        _fuse_adn(net)
        _replace_pointwise(net)
    net = net.to(device)
    if channels_last:
        for m in net.modules():
            if isinstance(m, nn.modules.conv._ConvNd) and m.weight.ndim in (4, 5):
                m.weight.data = m.weight.data.contiguous(memory_format=channels_last_format(m.weight.ndim))
    return net
