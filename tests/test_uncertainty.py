"""Uncertainty maps (exact values) and the Monte-Carlo dropout context manager."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from napari_medseg.errors import InvalidInputError
from napari_medseg.uncertainty import check_mc_samples, entropy, mc_dropout, summarize_moments, summarize_samples


def _h(*p):
    return -sum(x * math.log(x) for x in p if x > 0)


ENTROPY_CASES = [
    ([1.0, 0.0], 0.0),
    ([0.5, 0.5], math.log(2)),
    ([0.25] * 4, math.log(4)),
    ([0.7, 0.2, 0.1], _h(0.7, 0.2, 0.1)),
]


@pytest.mark.parametrize("p, expected", ENTROPY_CASES)
def test_entropy(p, expected):
    assert entropy(np.array(p)) == pytest.approx(expected, abs=1e-6)


def test_entropy_along_axis():
    p = np.array([[1.0, 0.5], [0.0, 0.5]])  # labels along axis 0
    np.testing.assert_allclose(entropy(p, axis=0), [0.0, math.log(2)], atol=1e-6)


def test_summarize_samples_hand_computed():
    # two samples of a 2-label voxel: (0.8, 0.2) and (0.4, 0.6)
    samples = np.array([[0.8, 0.2], [0.4, 0.6]])
    maps = summarize_samples(samples)
    np.testing.assert_allclose(maps["mean"], [0.6, 0.4], atol=1e-6)
    # E[p^2] - E[p]^2: (0.64 + 0.16) / 2 - 0.36 = 0.04 and (0.04 + 0.36) / 2 - 0.16 = 0.04
    np.testing.assert_allclose(maps["variance"], [0.04, 0.04], atol=1e-6)
    total = _h(0.6, 0.4)  # 0.673012
    aleatoric = (_h(0.8, 0.2) + _h(0.4, 0.6)) / 2  # 0.586707
    assert maps["entropy"] == pytest.approx(total, abs=1e-6)
    assert maps["mutual_information"] == pytest.approx(total - aleatoric, abs=1e-6)
    assert maps["mutual_information"] == pytest.approx(0.086305, abs=1e-6)


def test_identical_samples_have_no_epistemic_uncertainty():
    samples = np.tile(np.array([0.3, 0.7], np.float32), (5, 4, 1))  # (S=5, voxels=4, C=2)
    maps = summarize_samples(samples)
    np.testing.assert_allclose(maps["mutual_information"], 0.0, atol=1e-6)
    np.testing.assert_allclose(maps["variance"], 0.0, atol=1e-6)
    np.testing.assert_allclose(maps["entropy"], _h(0.3, 0.7), atol=1e-6)


def test_summarize_moments_equals_samples():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3, 4, 5, 3))
    samples = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    direct = summarize_samples(samples)
    moments = summarize_moments(samples.mean(0), (samples**2).mean(0), entropy(samples).mean(0))
    for key in ("entropy", "mutual_information", "variance"):
        np.testing.assert_allclose(moments[key], direct[key], atol=1e-6)
    assert moments["entropy"].shape == (3, 4, 5) and moments["variance"].shape == (3, 4, 5, 3)
    assert set(summarize_moments(samples.mean(0))) == {"entropy"}


def test_summarize_samples_label_axis_first():
    samples = np.array([[[0.8], [0.2]], [[0.4], [0.6]]])  # (S, C, voxels)
    maps = summarize_samples(samples, label_axis=1)
    assert maps["mutual_information"].tolist() == pytest.approx([0.086305], abs=1e-6)


def _net():
    return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.1), nn.Linear(3, 2), nn.Dropout(0.2)).eval()


def test_mc_dropout_enables_only_dropout_and_restores():
    net = _net()
    with mc_dropout(net) as same:
        assert same is net
        assert [m.training for m in net] == [False, False, True, False, True]
        assert (net[2].p, net[4].p) == (0.1, 0.2)
    assert not any(m.training for m in net.modules())


def test_mc_dropout_rate_override_and_restore_on_error():
    net = _net()
    net[0].train()  # a layer in train mode stays so
    with pytest.raises(RuntimeError, match="boom"):
        with mc_dropout(net, rate=0.5):
            assert (net[2].p, net[4].p) == (0.5, 0.5)
            raise RuntimeError("boom")
    assert (net[2].p, net[4].p) == (0.1, 0.2)
    assert [m.training for m in net] == [True, False, False, False, False]


def test_mc_dropout_samples_differ_and_repeat_with_seed():
    net = _net()
    x = torch.ones(4, 3)
    with torch.no_grad(), mc_dropout(net, rate=0.5):
        torch.manual_seed(3)
        a = net(x)
        b = net(x)
        torch.manual_seed(3)
        c = net(x)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))  # deterministic again


def test_invalid_mc_dropout_without_dropout_layers():
    with pytest.raises(InvalidInputError, match="no dropout layer"):
        with mc_dropout(nn.Sequential(nn.Linear(2, 2))):
            pass


@pytest.mark.parametrize("rate", [1.0, -0.01, 2])
def test_invalid_mc_dropout_rate(rate):
    net = _net()
    with pytest.raises(InvalidInputError, match=r"\[0, 1\)"):
        with mc_dropout(net, rate=rate):
            pass
    assert (net[2].p, net[4].p) == (0.1, 0.2)


@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_invalid_mc_samples(value):
    with pytest.raises(InvalidInputError, match="mc_samples"):
        check_mc_samples(value)


def test_check_mc_samples_accepts_zero_and_numpy_ints():
    assert check_mc_samples(0) == 0
    assert check_mc_samples(np.int64(16)) == 16


def test_invalid_summarize_samples_shape():
    with pytest.raises(InvalidInputError, match="at least"):
        summarize_samples(np.array([0.5, 0.5]))
