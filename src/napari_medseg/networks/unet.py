"""A configurable 2D/3D U-Net built from MONAI convolution blocks, with placeable dropout.

The network is a :class:`~napari_medseg.networks._staged.StagedNetwork`: a flat list of stages, so
the inference engine can split it at the first active dropout layer and re-run only the part
after it for each Monte-Carlo sample.

Layout for ``channels=(c0, ..., cL)`` (L down-sampling steps)::

    level 0     [conv block c0 (stride first_stride)]  -> skip 0   [dropout: "encoder"]
    level i     [down] [conv block ci]                 -> skip i   [dropout: "encoder"]
    bottleneck  [down] [conv block cL]                             [dropout: "bottleneck"]
    decoder i   [up-conv c(i+1) -> ci] [concat skip i] [conv block ci]  [dropout: "decoder"]
    head        [dropout: "head"] [1x1 conv c0 -> out] (a transposed conv when first_stride > 1)

Encoder dropout acts on the tensor that goes down to the next level, after its skip was kept, so
skip connections stay deterministic and the decoder's first levels can be reused across
Monte-Carlo samples when dropout sits only in the deep decoder or before the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from monai.networks.blocks import Convolution
from torch import nn

from napari_medseg._options import look_up_option
from napari_medseg._validate import check_dropout_rate  # torch-free; importable from here (old name)
from napari_medseg.errors import InvalidInputError
from napari_medseg.networks._staged import Apply, PopConcat, PushSkip, Stage, StagedNetwork

__all__ = ["DropoutPlacement", "Norm", "Activation", "Downsample", "UNet", "isaksson_unet", "buchwald_unet2d"]


class DropoutPlacement(StrEnum):
    """Where dropout layers sit: after encoder levels, after the bottleneck, after decoder levels,
    or right before the final 1x1 convolution."""

    ENCODER = "encoder"
    BOTTLENECK = "bottleneck"
    DECODER = "decoder"
    HEAD = "head"


class Norm(StrEnum):
    """Normalisation layer after each convolution."""

    INSTANCE = "instance"
    BATCH = "batch"
    NONE = "none"


class Activation(StrEnum):
    """Activation after each convolution's normalisation."""

    RELU = "relu"
    PRELU = "prelu"
    LEAKYRELU = "leakyrelu"


class Downsample(StrEnum):
    """How a level halves the resolution: a strided first convolution or a max pooling."""

    STRIDED = "strided"
    MAXPOOL = "maxpool"


_NORM = {Norm.INSTANCE: ("instance", {"affine": True}), Norm.BATCH: "batch", Norm.NONE: None}
_ACT = {Activation.RELU: "relu", Activation.PRELU: "prelu", Activation.LEAKYRELU: ("leakyrelu", {"negative_slope": 0.01})}


def _int_tuple(value, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value]))
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name}={value!r}: expected integers") from None
    if any(v < minimum for v in out):
        raise InvalidInputError(f"{name}={value!r}: every value must be >= {minimum}")
    return out


def resolve_placement(placement: Sequence[str] | str | None) -> frozenset[DropoutPlacement]:
    """Parse dropout placements (``"encoder"``, ``"bottleneck"``, ``"decoder"``, ``"head"``).

    Raises
    ------
    InvalidInputError
        If a value is not one of the four places (with a "did you mean").
    """
    if placement is None:
        return frozenset()
    if isinstance(placement, str):
        placement = [placement]
    return frozenset(look_up_option(p, DropoutPlacement, name="dropout_placement") for p in placement)


class UNet(StagedNetwork):
    """A 2D/3D U-Net whose dropout layers can sit in the encoder, bottleneck, decoder and/or head.

    Parameters
    ----------
    spatial_dims : {2, 3}
        2 for ``(B, C, H, W)`` inputs, 3 for ``(B, C, D, H, W)``.
    in_channels, out_channels : int
        Input channels (modalities) and output channels (one logit per label, background included).
    channels : sequence of int, default (16, 32, 64, 128, 256)
        Feature channels per level, the last one is the bottleneck; at least 2 values.
    strides : int or sequence of int, default 2
        Down-sampling factor of each step (``len(channels) - 1`` values, or one for all). An input
        side must be divisible by ``first_stride * prod(strides)``.
    kernel_size : int, default 3
        Convolution kernel size (odd).
    convs_per_level : int, default 2
        Convolutions in each encoder and decoder level.
    bottleneck_convs : int, optional
        Convolutions in the bottleneck (default: ``convs_per_level``).
    norm : {"instance", "batch", "none"}, default "instance"
    act : {"relu", "prelu", "leakyrelu"}, default "relu"
    downsample : {"strided", "maxpool"}, default "strided"
        Strided first convolution of a level, or a max pooling before it.
    first_stride : int, default 1
        Stride of the very first convolution; > 1 makes level 0 work at reduced resolution and
        the head up-sample back with a transposed convolution (Isaksson et al. 2022).
    dropout_rate : float, default 0.0
        Drop probability of every dropout layer, in [0, 1); it can be changed at inference
        (:func:`napari_medseg.uncertainty.mc_dropout`).
    dropout_placement : sequence of {"encoder", "bottleneck", "decoder", "head"}, default ()
        Where dropout layers are created. Layers are created even when ``dropout_rate`` is 0 so
        that a rate can be set at inference.
    dropout_levels : int, optional
        Limit "encoder" and "decoder" dropout to the ``dropout_levels`` deepest levels (default:
        every level). Deep decoder dropout keeps Monte-Carlo sampling cheap.

    Raises
    ------
    InvalidInputError
        For an invalid value of any parameter (the message names it).
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: int | Sequence[int] = 2,
        kernel_size: int = 3,
        convs_per_level: int = 2,
        bottleneck_convs: int | None = None,
        norm: str = "instance",
        act: str = "relu",
        downsample: str = "strided",
        first_stride: int = 1,
        dropout_rate: float = 0.0,
        dropout_placement: Sequence[str] = (),
        dropout_levels: int | None = None,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise InvalidInputError(f"spatial_dims={spatial_dims!r}: expected 2 or 3")
        (in_channels,) = _int_tuple(in_channels, "in_channels")
        (out_channels,) = _int_tuple(out_channels, "out_channels")
        channels = _int_tuple(channels, "channels")
        if len(channels) < 2:
            raise InvalidInputError(f"channels={channels!r}: expected at least 2 levels (the last is the bottleneck)")
        strides = _int_tuple(strides, "strides")
        if len(strides) == 1:
            strides = strides * (len(channels) - 1)
        if len(strides) != len(channels) - 1:
            raise InvalidInputError(f"strides={strides!r}: expected {len(channels) - 1} values (one per down-sampling step)")
        (kernel_size,) = _int_tuple(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise InvalidInputError(f"kernel_size={kernel_size}: expected an odd size")
        (convs_per_level,) = _int_tuple(convs_per_level, "convs_per_level")
        (bottleneck_convs,) = _int_tuple(convs_per_level if bottleneck_convs is None else bottleneck_convs, "bottleneck_convs")
        (first_stride,) = _int_tuple(first_stride, "first_stride")
        norm_ = _NORM[look_up_option(norm, Norm, name="norm")]
        act_ = _ACT[look_up_option(act, Activation, name="act")]
        down = look_up_option(downsample, Downsample, name="downsample")
        rate = check_dropout_rate(dropout_rate)
        places = resolve_placement(dropout_placement)
        n_levels = len(channels) - 1
        if dropout_levels is None:
            dropout_levels = n_levels
        (dropout_levels,) = _int_tuple(dropout_levels, "dropout_levels", minimum=0)

        def block(cin: int, cout: int, n: int, stride: int) -> nn.Module:
            layers = []
            for k in range(n):
                layers.append(
                    Convolution(
                        spatial_dims, cin if k == 0 else cout, cout, strides=stride if k == 0 else 1,
                        kernel_size=kernel_size, act=act_, norm=norm_, adn_ordering="NA",
                    )
                )
            return nn.Sequential(*layers) if len(layers) > 1 else layers[0]

        def dropout() -> Stage:
            return Apply(nn.Dropout(p=rate))

        def deep(level: int) -> bool:  # level in 0..n_levels-1, deepest = n_levels-1
            return level >= n_levels - dropout_levels

        pool = nn.MaxPool3d if spatial_dims == 3 else nn.MaxPool2d
        stages: list[Stage] = []
        # encoder
        for level in range(n_levels + 1):
            cin = in_channels if level == 0 else channels[level - 1]
            n = bottleneck_convs if level == n_levels else convs_per_level
            stride = first_stride if level == 0 else strides[level - 1]
            if level > 0 and down == Downsample.MAXPOOL:
                stages.append(Apply(pool(kernel_size=stride, stride=stride)))
                stride = 1
            stages.append(Apply(block(cin, channels[level], n, stride)))
            if level < n_levels:
                stages.append(PushSkip())
                if DropoutPlacement.ENCODER in places and deep(level):
                    stages.append(dropout())
            elif DropoutPlacement.BOTTLENECK in places:
                stages.append(dropout())
        # decoder
        for level in reversed(range(n_levels)):
            up = Convolution(
                spatial_dims, channels[level + 1], channels[level], strides=strides[level],
                kernel_size=strides[level], is_transposed=True, conv_only=True, padding=0, output_padding=0,
            )
            stages.append(Apply(up))
            stages.append(PopConcat())
            stages.append(Apply(block(2 * channels[level], channels[level], convs_per_level, 1)))
            if DropoutPlacement.DECODER in places and deep(level):
                stages.append(dropout())
        # head
        if DropoutPlacement.HEAD in places:
            stages.append(dropout())
        if first_stride > 1:
            head = Convolution(
                spatial_dims, channels[0], out_channels, strides=first_stride, kernel_size=first_stride,
                is_transposed=True, conv_only=True, padding=0, output_padding=0,
            )
        else:
            head = Convolution(spatial_dims, channels[0], out_channels, kernel_size=1, conv_only=True)
        stages.append(Apply(head))
        super().__init__(stages, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels)
        self.size_divisor = first_stride * _prod(strides)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def isaksson_unet(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    base_channels: int = 16,
    channel_step: int = 14,
    levels: int = 5,
    norm: str = "batch",
    dropout_rate: float = 0.0,
    dropout_placement: Sequence[str] = (),
    **params,
) -> UNet:
    """The U-Net variant of Isaksson et al. (2022), Sect. 2.4.

    Filters grow by a constant ``channel_step`` (+14) per level instead of doubling, each level
    performs a single convolution, the first convolution is strided (stride 2, the head
    up-samples back with a transposed convolution) and the activation is PReLU. The paper uses
    dropout 0.5 in the encoder: put ``dropout_rate=0.5, dropout_placement=("encoder",)`` in the
    model card. The paper states neither the first level's filters nor the normalisation; we
    default to 16 filters and batch normalisation.

    Parameters
    ----------
    base_channels : int, default 16
        Filters of the first level.
    channel_step : int, default 14
        Filters added per level.
    levels : int, default 5
        Number of levels including the bottleneck.
    **params
        Any other :class:`UNet` parameter (e.g. ``norm``, ``kernel_size``).

    References
    ----------
    L. J. Isaksson et al., "Mixup (sample pairing) can improve the performance of deep
    segmentation networks", 2022, Sect. 2.4.
    """
    if int(levels) < 2:
        raise InvalidInputError(f"levels={levels!r}: expected at least 2")
    channels = tuple(int(base_channels) + int(channel_step) * i for i in range(int(levels)))
    defaults = {"convs_per_level": 1, "first_stride": 2, "act": "prelu", "downsample": "strided"}
    defaults.update(params)
    return UNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels, norm=norm,
        dropout_rate=dropout_rate, dropout_placement=dropout_placement, **defaults,
    )


def buchwald_unet2d(
    *,
    spatial_dims: int = 2,
    in_channels: int,
    out_channels: int,
    base_channels: int = 32,
    dropout_rate: float = 0.0,
    dropout_placement: Sequence[str] = (),
    **params,
) -> UNet:
    """The 2D slice U-Net of Buchwald et al., Sect. 2.2.2 (after Buda et al. 2019).

    Four levels of two 3x3 convolutions followed by 2x2 max pooling, channels 32, 64, 128, 256, a
    bottleneck of one 3x3 convolution (512 channels), transposed-convolution up-sampling with
    concatenated skips, batch normalisation and ReLU. It is applied slice by slice.

    Raises
    ------
    InvalidInputError
        If ``spatial_dims`` is not 2.

    References
    ----------
    Buchwald et al., "Brain tumour segmentation with small U-Nets (BraTS)", Sect. 2.2.2.
    """
    if spatial_dims != 2:
        raise InvalidInputError(f"spatial_dims={spatial_dims!r}: buchwald_unet2d is a 2D (slice-wise) network; use 2")
    channels = tuple(int(base_channels) * 2**i for i in range(5))
    defaults = {"convs_per_level": 2, "bottleneck_convs": 1, "downsample": "maxpool", "norm": "batch", "act": "relu"}
    defaults.update(params)
    return UNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=channels,
        dropout_rate=dropout_rate, dropout_placement=dropout_placement, **defaults,
    )
