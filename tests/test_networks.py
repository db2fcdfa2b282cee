"""Networks: shapes, dropout placement, splitting at the first dropout, inference rewrites."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_medseg.errors import InvalidInputError
from napari_medseg.networks import (
    StagedNetwork,
    build_network,
    dropout_layers,
    network_names,
    optimize_for_inference,
    repeat_state,
    split_network,
)
from napari_medseg.networks._staged import PopConcat, PushSkip
from napari_medseg.uncertainty import mc_dropout


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SHAPE_CASES = [
    # name, spatial_dims, params, input shape, output channels
    ("unet", 3, {"channels": (4, 8, 16)}, (2, 1, 8, 12, 16), 3),
    ("unet", 2, {"channels": (4, 8), "strides": 2}, (3, 2, 10, 6), 2),
    ("unet", 3, {"channels": (4, 8), "strides": (2,), "downsample": "maxpool", "norm": "batch"}, (1, 1, 4, 4, 4), 2),
    ("unet", 3, {"channels": (4, 8, 8), "strides": (1, 2), "convs_per_level": 1, "act": "prelu"}, (1, 1, 4, 6, 8), 2),
    ("isaksson_unet", 2, {"levels": 3}, (2, 1, 16, 24), 2),
    ("isaksson_unet", 3, {"levels": 2, "base_channels": 4}, (1, 1, 8, 8, 8), 3),
    ("buchwald_unet2d", 2, {"base_channels": 4}, (2, 4, 32, 16), 4),
    ("monai.UNet", 3, {"channels": (4, 8), "strides": (2,)}, (1, 1, 8, 8, 8), 2),
    ("monai.BasicUNet", 2, {"features": (4, 4, 8, 8, 16, 4)}, (1, 1, 32, 32), 2),
]


@pytest.mark.parametrize("name, dims, params, shape, out_channels", SHAPE_CASES)
def test_output_shape(name, dims, params, shape, out_channels):
    net = build_network(name, spatial_dims=dims, in_channels=shape[1], out_channels=out_channels, **params).eval()
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert out.shape == (shape[0], out_channels, *shape[2:])


def test_network_names():
    assert network_names() == ["buchwald_unet2d", "isaksson_unet", "unet"]


@pytest.mark.parametrize(
    "placement, levels, expected",
    [
        ((), None, 0),
        (("encoder",), None, 2),  # channels (4, 8, 16): 2 encoder levels above the bottleneck
        (("bottleneck",), None, 1),
        (("decoder",), None, 2),
        (("head",), None, 1),
        (("encoder", "bottleneck", "decoder", "head"), None, 6),
        (("decoder",), 1, 1),  # only the deepest decoder level
        (("encoder", "decoder"), 0, 0),
    ],
)
def test_dropout_placement_counts(placement, levels, expected):
    extra = {} if levels is None else {"dropout_levels": levels}
    net = build_network(
        "unet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16),
        dropout_rate=0.3, dropout_placement=placement, **extra,
    )
    layers = dropout_layers(net)
    assert len(layers) == expected
    assert all(layer.p == 0.3 for layer in layers)


def test_dropout_layers_exist_at_rate_zero():
    net = build_network("unet", spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), dropout_placement=["head"])
    (layer,) = dropout_layers(net)
    assert layer.p == 0.0


def test_head_dropout_sits_right_before_the_final_convolution():
    net = build_network("unet", spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), dropout_placement=["head"], dropout_rate=0.5)
    assert isinstance(net.stages[-2].module, nn.Dropout)
    # in eval mode nothing is stochastic: the split is after the last stage
    assert net.eval().split_index() == len(net.stages)
    with mc_dropout(net):
        assert net.split_index() == len(net.stages) - 2


def test_encoder_dropout_leaves_skips_deterministic():
    net = build_network("unet", spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), dropout_placement=["encoder"])
    kinds = [type(s).__name__ if not hasattr(s, "module") else type(s.module).__name__ for s in net.stages]
    # level 0: conv block, push skip, dropout; bottleneck; up, concat, block; head
    assert kinds[:3] == ["Sequential", "PushSkip", "Dropout"]  # two convolutions per level
    assert isinstance(net.stages[1], PushSkip) and isinstance(net.stages[5], PopConcat)


def test_isaksson_architecture():
    net = build_network("isaksson_unet", spatial_dims=2, in_channels=1, out_channels=2, dropout_rate=0.5, dropout_placement=["encoder"])
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # filters +14 per level, one convolution per level (5 encoder levels + 4 decoder levels + head)
    assert [c.out_channels for c in convs[:5]] == [16, 30, 44, 58, 72]
    assert len(convs) == 5 + 4 + 0  # the head is a transposed convolution (first conv is strided)
    assert convs[0].stride == (2, 2)
    assert isinstance(net.stages[-1].module.conv, nn.ConvTranspose2d)
    acts = {type(m) for m in net.modules() if isinstance(m, (nn.ReLU, nn.PReLU, nn.LeakyReLU))}
    assert acts == {nn.PReLU}
    assert [layer.p for layer in dropout_layers(net)] == [0.5] * 4


def test_buchwald_architecture():
    net = build_network("buchwald_unet2d", spatial_dims=2, in_channels=4, out_channels=4)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    encoder = [c.out_channels for c in convs[:9]]
    # four levels of two 3x3 convs (32 -> 256), a bottleneck of one conv (512)
    assert encoder == [32, 32, 64, 64, 128, 128, 256, 256, 512]
    assert all(c.kernel_size == (3, 3) for c in convs[:9])
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 4
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 9 + 8
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 4


@pytest.mark.parametrize("placement", [("encoder",), ("bottleneck",), ("decoder",), ("head",), ("decoder", "head")])
def test_split_equals_full_forward(placement):
    torch.manual_seed(0)
    net = build_network(
        "unet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16),
        dropout_rate=0.4, dropout_placement=placement,
    ).eval()
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad(), mc_dropout(net):
        torch.manual_seed(7)
        full = net(x)
        torch.manual_seed(7)
        prefix, suffix = split_network(net)
        state = prefix(x)
        split = suffix(state)
        # the prefix is deterministic: computing it again changes nothing
        again = prefix(x)
    assert torch.equal(full, split)
    assert torch.equal(state[0], again[0])
    assert isinstance(net, StagedNetwork)


def test_split_of_foreign_module_is_trivial():
    net = nn.Sequential(nn.Conv3d(1, 2, 1), nn.Dropout(0.5)).eval()
    prefix, suffix = split_network(net)
    x = torch.randn(1, 1, 2, 2, 2)
    assert prefix(x)[0] is x
    assert torch.equal(suffix(prefix(x)), net(x))


def test_repeat_state_is_sample_major():
    x = torch.arange(2.0).view(2, 1, 1, 1, 1).repeat(1, 2, 1, 1, 1)
    rep, skips = repeat_state((x, (x,)), 3)
    assert rep[:, 0, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    assert len(skips) == 1 and skips[0].shape[0] == 6


OPT_CASES = [
    {"norm": "instance", "act": "relu"},
    {"norm": "instance", "act": "prelu"},
    {"norm": "instance", "act": "leakyrelu"},
    {"norm": "batch", "act": "relu"},
    {"norm": "none", "act": "relu"},
]


@pytest.mark.parametrize("params", OPT_CASES)
@pytest.mark.parametrize("dims", [2, 3])
def test_optimize_for_inference_keeps_outputs(params, dims):
    torch.manual_seed(1)
    net = build_network("unet", spatial_dims=dims, in_channels=2, out_channels=3, channels=(4, 8, 16), **params)
    for m in net.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = optimize_for_inference(net)
    x = torch.randn(2, 2, *([8] * dims)) + 0.5
    with torch.no_grad():
        expected = net(x)
        got = fast(x.contiguous(memory_format=torch.channels_last_3d if dims == 3 else torch.channels_last))
        got_plain = fast(x)
    assert (expected - got).abs().max() < 1e-4
    assert (expected - got_plain).abs().max() < 1e-4
    # the original network is untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(type(m).__name__ == "FusedInstanceNormAct" for m in net.modules())


def test_optimize_for_inference_with_large_mean_falls_back_to_two_pass():
    from napari_medseg.networks._fast import FusedInstanceNormAct

    norm = nn.InstanceNorm3d(3, affine=True)
    fused = FusedInstanceNormAct(norm, nn.ReLU())
    x = (torch.randn(1, 3, 6, 6, 6) * 0.01 + 100.0).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        assert (fused(x) - torch.relu(norm(x))).abs().max() < 1e-3


def test_monai_dropout_rate_is_passed_to_the_class():
    net = build_network("monai.UNet", spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), dropout_rate=0.25)
    assert [m.p for m in dropout_layers(net)] and all(m.p == 0.25 for m in dropout_layers(net))


# --------------------------------------------------------------------------------- invalid input
def test_invalid_name_suggests_close_match():
    with pytest.raises(InvalidInputError, match="did you mean 'unet'"):
        build_network("unte", spatial_dims=3, in_channels=1, out_channels=2)


def test_invalid_param_suggests_close_match():
    with pytest.raises(InvalidInputError, match="no parameter 'chanels'.*did you mean 'channels'"):
        build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, chanels=(4, 8))


def test_invalid_placement():
    with pytest.raises(InvalidInputError, match="dropout_placement='decodr'.*did you mean 'decoder'"):
        build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, dropout_placement=["decodr"])


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, "x"])
def test_invalid_dropout_rate(rate):
    with pytest.raises(InvalidInputError, match=r"dropout_rate=.*\[0, 1\)"):
        build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, dropout_rate=rate)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"channels": (4,)}, "at least 2 levels"),
        ({"channels": (4, 8, 16), "strides": (2, 2, 2)}, "expected 2 values"),
        ({"kernel_size": 2}, "odd"),
        ({"norm": "batchnorm"}, "did you mean 'batch'"),
        ({"act": "relux"}, "did you mean 'relu'"),
        ({"convs_per_level": 0}, "convs_per_level"),
    ],
)
def test_invalid_unet_params(params, match):
    with pytest.raises(InvalidInputError, match=match):
        build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, **params)


def test_invalid_spatial_dims():
    with pytest.raises(InvalidInputError, match="spatial_dims=4"):
        build_network("unet", spatial_dims=4, in_channels=1, out_channels=2)
    with pytest.raises(InvalidInputError, match="2D"):
        build_network("buchwald_unet2d", spatial_dims=3, in_channels=1, out_channels=2)


def test_invalid_monai_class_and_params():
    with pytest.raises(InvalidInputError, match="did you mean 'UNet'"):
        build_network("monai.UNett", spatial_dims=3, in_channels=1, out_channels=2)
    with pytest.raises(InvalidInputError, match="no parameter 'chanels'"):
        build_network("monai.UNet", spatial_dims=3, in_channels=1, out_channels=2, chanels=(4, 8))
    with pytest.raises(InvalidInputError, match="dropout_placement"):
        build_network("monai.UNet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), dropout_placement=["head"])
