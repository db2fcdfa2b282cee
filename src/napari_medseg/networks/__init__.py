"""The network architectures a model card can name, built from the card's fields.

:func:`build_network` is the one entry point. Names:

``"unet"``
    :class:`UNet`, a configurable 2D/3D U-Net (channels, strides, convolutions per level,
    normalisation, activation, placeable dropout).
``"isaksson_unet"``
    :func:`isaksson_unet`, the U-Net variant of the mixup paper (Isaksson et al. 2022, Sect. 2.4).
``"buchwald_unet2d"``
    :func:`buchwald_unet2d`, the 2D slice U-Net of Buchwald et al. (Sect. 2.2.2).
``"monai.<ClassName>"``
    Any network class of :mod:`monai.networks.nets` (``UNet``, ``BasicUNet``, ``SegResNet``, ...)
    built from its own keyword arguments; used for imported MONAI bundles.

Our own networks are :class:`StagedNetwork` s and can be split at their first active dropout
layer (:func:`split_network`), which lets Monte-Carlo dropout reuse the deterministic prefix.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from napari_medseg._options import close_matches_message
from napari_medseg.errors import InvalidInputError
from napari_medseg.networks._fast import optimize_for_inference
from napari_medseg.networks._staged import StagedNetwork, State, is_dropout, repeat_state
from napari_medseg.networks.unet import (
    DropoutPlacement,
    UNet,
    buchwald_unet2d,
    check_dropout_rate,
    isaksson_unet,
    resolve_placement,
)

__all__ = [
    "build_network",
    "network_names",
    "UNet",
    "StagedNetwork",
    "State",
    "DropoutPlacement",
    "isaksson_unet",
    "buchwald_unet2d",
    "dropout_layers",
    "split_network",
    "repeat_state",
    "is_dropout",
    "optimize_for_inference",
]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "isaksson_unet": isaksson_unet,
    "buchwald_unet2d": buchwald_unet2d,
}
_MONAI_PREFIX = "monai."
# keyword names MONAI networks use for their dropout probability
_MONAI_DROPOUT_KWARGS = ("dropout", "dropout_prob", "dropout_rate")


def network_names() -> list[str]:
    """The names :func:`build_network` accepts (besides ``"monai.<ClassName>"``)."""
    return sorted(_BUILDERS)


def _accepted_params(builder: Callable) -> tuple[set[str], bool]:
    """Keyword names ``builder`` takes and whether it forwards ``**params`` to :class:`UNet`."""
    signature = inspect.signature(builder)
    names = {n for n, p in signature.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    forwards = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    if forwards:
        names |= _accepted_params(UNet)[0]
    names.discard("self")
    return names, forwards


def _check_params(name: str, params: dict, accepted: set[str]) -> None:
    for key in params:
        if key not in accepted:
            choices = sorted(accepted - {"spatial_dims", "in_channels", "out_channels"})
            raise InvalidInputError(
                f"network {name!r} has no parameter {key!r}{close_matches_message(key, choices)}; "
                f"its parameters are: {', '.join(choices)}"
            )


def _build_monai(class_name: str, *, spatial_dims: int, in_channels: int, out_channels: int,
                 dropout_rate: float, dropout_placement: Sequence[str], params: dict) -> nn.Module:
    import monai.networks.nets as nets

    available = sorted(n for n in dir(nets) if isinstance(getattr(nets, n), type) and issubclass(getattr(nets, n), nn.Module))
    cls = getattr(nets, class_name, None)
    if cls is None or class_name not in available:
        raise InvalidInputError(
            f"network 'monai.{class_name}': monai.networks.nets has no network {class_name!r}{close_matches_message(class_name, available)}"
        )
    accepted = {n for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    _check_params(f"monai.{class_name}", params, accepted)
    if dropout_placement:
        raise InvalidInputError(
            f"network 'monai.{class_name}': dropout_placement={list(dropout_placement)!r} is not supported for MONAI "
            "networks (their dropout layers sit where the class puts them); leave it empty and set dropout_rate"
        )
    kwargs = dict(params)
    for key, value in (("spatial_dims", spatial_dims), ("in_channels", in_channels), ("out_channels", out_channels)):
        if key in accepted:
            kwargs.setdefault(key, value)
    if dropout_rate > 0:
        key = next((k for k in _MONAI_DROPOUT_KWARGS if k in accepted), None)
        if key is None:
            raise InvalidInputError(f"network 'monai.{class_name}' takes no dropout rate; use dropout_rate=0")
        kwargs.setdefault(key, dropout_rate)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise InvalidInputError(f"network 'monai.{class_name}': cannot build it with {kwargs!r}: {exc}") from None


def build_network(
    name: str,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    dropout_rate: float = 0.0,
    dropout_placement: Sequence[str] = (),
    **params,
) -> nn.Module:
    """Build the network a model card names, with freshly initialised weights.

    Parameters
    ----------
    name : str
        ``"unet"``, ``"isaksson_unet"``, ``"buchwald_unet2d"`` or ``"monai.<ClassName>"``.
    spatial_dims : {2, 3}
        2 for slice-wise networks, 3 for volumetric ones.
    in_channels : int
        Input channels (the card's channels).
    out_channels : int
        Output logits, one per label including background.
    dropout_rate : float, default 0.0
        Drop probability in [0, 1) of the dropout layers; it can be changed at inference.
    dropout_placement : sequence of {"encoder", "bottleneck", "decoder", "head"}, default ()
        Where our networks create dropout layers (must be empty for ``monai.*`` networks, which
        receive ``dropout_rate`` as their own ``dropout`` argument).
    **params
        Architecture parameters (the card's ``architecture.params``), e.g. ``channels``,
        ``strides``, ``convs_per_level``, ``norm`` for ``"unet"``.

    Returns
    -------
    torch.nn.Module
        In training mode, on the CPU. It maps ``(B, in_channels, *spatial)`` to
        ``(B, out_channels, *spatial)`` logits.

    Raises
    ------
    InvalidInputError
        If ``name`` or a parameter is unknown (with a "did you mean"), or a value is invalid.

    Examples
    --------
    >>> net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8))
    >>> net(torch.zeros(1, 1, 8, 8, 8)).shape
    torch.Size([1, 2, 8, 8, 8])
    """
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"network name={name!r}: expected a non-empty string")
    rate = check_dropout_rate(dropout_rate)
    if name.startswith(_MONAI_PREFIX):
        return _build_monai(
            name[len(_MONAI_PREFIX):], spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            dropout_rate=rate, dropout_placement=tuple(dropout_placement or ()), params=params,
        )
    builder = _BUILDERS.get(name)
    if builder is None:
        raise InvalidInputError(
            f"unknown network {name!r}{close_matches_message(name, network_names())}; "
            f"expected one of {', '.join(network_names())} or 'monai.<ClassName>'"
        )
    accepted, _ = _accepted_params(builder)
    _check_params(name, params, accepted)
    resolve_placement(dropout_placement)  # validate early with a did-you-mean
    try:
        return builder(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            dropout_rate=rate, dropout_placement=tuple(dropout_placement or ()), **params,
        )
    except TypeError as exc:
        raise InvalidInputError(f"network {name!r}: {exc}") from None


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """Every dropout layer of ``model``, in module order."""
    return [m for m in model.modules() if is_dropout(m)]


def split_network(model: nn.Module) -> tuple[Callable[[torch.Tensor], State], Callable[[State], torch.Tensor]]:
    """Split ``model`` at its first active dropout layer into ``(prefix, suffix)``.

    ``suffix(prefix(x))`` equals ``model(x)``. For a :class:`StagedNetwork` the prefix is every
    stage before the first dropout layer that is in train mode with ``p > 0``, so it is
    deterministic and can be computed once for several Monte-Carlo samples. Any other module is
    split trivially (the prefix returns the input, the suffix is the whole network).
    """
    if isinstance(model, StagedNetwork):
        index = model.split_index()
        return (lambda x: model.run((x, ()), 0, index)), (lambda state: model.run(state, index, None)[0])
    return (lambda x: (x, ())), (lambda state: model(state[0]))
