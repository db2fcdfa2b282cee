"""Networks written as a flat list of stages, so they can be split at their first dropout layer.

A stage maps a state ``(x, skips)`` to a new state: ``x`` is the tensor flowing down the network
(``(B, C, *spatial)``) and ``skips`` the tuple of skip-connection tensors still waiting for their
decoder level. Because the whole forward pass is this list, everything before the first *active*
dropout layer (the deterministic prefix) can be computed once per patch and only the stochastic
suffix re-run for each Monte-Carlo sample (:meth:`StagedNetwork.forward_prefix`,
:meth:`StagedNetwork.forward_suffix`). When that suffix is only an element-wise dropout layer and
a 1x1 convolution (dropout before the head), :meth:`StagedNetwork.dropout_head` exposes it, so
all samples can be computed in one fused pass
(:func:`napari_medseg.networks._fast.dropout_head_moments`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_medseg.networks._fast import FastDropout, pointwise_weights

__all__ = [
    "Apply",
    "DropoutHead",
    "PopConcat",
    "PushSkip",
    "Stage",
    "StagedNetwork",
    "State",
    "is_dropout",
    "repeat_state",
]

#: ``(x, skips)``: the running tensor and the pending skip tensors, deepest last.
State = tuple[torch.Tensor, tuple[torch.Tensor, ...]]


def is_dropout(module: nn.Module) -> bool:
    """True for every torch dropout layer (``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ...)."""
    return isinstance(module, (nn.modules.dropout._DropoutNd,))


class Stage(nn.Module):
    """One step of a :class:`StagedNetwork`: ``forward(x, skips) -> (x, skips)``."""

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...]) -> State:  # pragma: no cover - abstract
        raise NotImplementedError


class Apply(Stage):
    """Apply ``module`` to ``x``; the skips pass through unchanged."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...]) -> State:
        return self.module(x), skips


class PushSkip(Stage):
    """Keep ``x`` as the next skip connection."""

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...]) -> State:
        return x, (*skips, x)


class PopConcat(Stage):
    """Concatenate ``x`` with the deepest pending skip along the channel axis (skip first)."""

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...]) -> State:
        return torch.cat((skips[-1], x), dim=1), skips[:-1]


def repeat_state(state: State, times: int) -> State:
    """The state with every tensor repeated ``times`` along the batch axis (sample-major order).

    Row ``s * B + b`` of the result is row ``b`` of the input, so a suffix run on it draws
    ``times`` independent dropout masks per patch in one call.
    """
    if times == 1:
        return state
    x, skips = state

    def rep(t: torch.Tensor) -> torch.Tensor:
        out = t.repeat((times,) + (1,) * (t.ndim - 1))
        if t.ndim == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
            out = out.contiguous(memory_format=torch.channels_last_3d)
        elif t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    return rep(x), tuple(rep(s) for s in skips)


@dataclass(frozen=True)
class DropoutHead:
    """The stochastic suffix of a :class:`StagedNetwork` when it is ``dropout -> 1x1 conv``.

    Attributes
    ----------
    index : int
        Stage index of the dropout layer (the prefix is ``stages[:index]``).
    p : float
        The dropout layer's current drop probability.
    weight : torch.Tensor
        ``(out_channels, in_channels)`` head weights.
    bias : torch.Tensor or None
        ``(out_channels,)`` head bias.
    """

    index: int
    p: float
    weight: torch.Tensor
    bias: torch.Tensor | None


class StagedNetwork(nn.Module):
    """A network whose forward pass is ``stages`` applied in order to ``(x, ())``.

    Parameters
    ----------
    stages : sequence of Stage
        The steps, input to output.
    spatial_dims : int
        2 or 3.
    in_channels, out_channels : int
        Channels of the input and of the output logits.
    """

    def __init__(self, stages: list[Stage], *, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)

    def run(self, state: State, start: int = 0, stop: int | None = None) -> State:
        """Apply ``stages[start:stop]`` to ``state``."""
        x, skips = state
        for stage in self.stages[start:stop]:
            x, skips = stage(x, skips)
        return x, skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for an input ``(B, in_channels, *spatial)``."""
        out, _ = self.run((x, ()))
        return out

    def split_index(self) -> int:
        """Index of the first stage holding a dropout layer that is in train mode with ``p > 0``.

        ``len(stages)`` when no dropout layer is active (the whole network is deterministic).
        """
        for index, stage in enumerate(self.stages):
            for module in stage.modules():
                if is_dropout(module) and module.training and float(module.p) > 0:
                    return index
        return len(self.stages)

    def forward_prefix(self, x: torch.Tensor) -> State:
        """The state after every stage before the first active dropout layer (deterministic)."""
        return self.run((x, ()), 0, self.split_index())

    def forward_suffix(self, state: State) -> torch.Tensor:
        """Logits from a state returned by :meth:`forward_prefix` (draws new dropout masks)."""
        out, _ = self.run(state, self.split_index(), None)
        return out

    def dropout_head(self) -> DropoutHead | None:
        """The suffix as a :class:`DropoutHead` when it is an element-wise dropout then a 1x1 conv.

        None when no dropout layer is active, when the first active one is not element-wise
        (``Dropout1d/2d/3d`` drop whole channels, ``AlphaDropout`` is not a mask) or when any
        other stage follows it.
        """
        index = self.split_index()
        if index + 2 != len(self.stages):
            return None
        drop, head = self.stages[index], self.stages[index + 1]
        if not (isinstance(drop, Apply) and isinstance(head, Apply) and type(drop.module) in (nn.Dropout, FastDropout)):
            return None
        weights = pointwise_weights(head.module)
        if weights is None:
            return None
        return DropoutHead(index=index, p=float(drop.module.p), weight=weights[0], bias=weights[1])
