"""Inference-time rewrites of a network that change its speed, not its function.

:func:`optimize_for_inference` returns a copy in eval mode with

* batch normalisation folded into the preceding convolution (exact up to float rounding);
* instance normalisation and the activation after it fused into one pass that reads the
  tensor in channels-last order (torch's ``instance_norm`` copies a channels-last tensor to
  channels-first and back: measured on the benchmark U-Net, 85 ms vs 40 ms per 16x96^3 tensor on
  2 AVX-512 cores);
* parameters in channels-last memory format (oneDNN convolutions: 0.065 s vs 0.106 s for a
  16->16 3x3x3 convolution on 96^3).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["optimize_for_inference", "FusedInstanceNormAct", "channels_last_format"]


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
        # sums in float32 over blocks, combined in float64, so that E[x^2] - E[x]^2 keeps float32
        # accuracy (measured: 2e-6 max error vs torch's instance_norm); the sum of squares is the
        # diagonal of the C x C Gram matrix (one GEMM, far faster than a strided reduction);
        # fall back to the two-pass formula when the mean dominates the spread (cancellation)
        sum64 = x.sum(dim=tuple(range(3, x.ndim))).sum(-1, dtype=torch.float64) if x.ndim > 3 else xm.sum(dim, dtype=torch.float64)
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
    net = net.to(device)
    if channels_last:
        for m in net.modules():
            if isinstance(m, nn.modules.conv._ConvNd) and m.weight.ndim in (4, 5):
                m.weight.data = m.weight.data.contiguous(memory_format=channels_last_format(m.weight.ndim))
    return net
