"""Monte-Carlo dropout before a 1x1 head: the pooled keep masks and the fused moments kernel.

The fused path (``dropout_head_moments``) must stay true element-wise Bernoulli dropout with
keep-scale 1/(1-p): these tests check the keep rate, the independence of the samples of each
voxel, the absence of correlation between neighbouring voxels, and that the Monte-Carlo moments
converge to their exact expectations (enumerated over the keep patterns of a small head).
"""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest
import torch
from torch import nn

from napari_medseg.errors import CancelledError
from napari_medseg.inference import sliding_window_moments
from napari_medseg.networks import build_network, optimize_for_inference
from napari_medseg.networks._fast import draw_keep_pool, dropout_head_moments
from napari_medseg.uncertainty import mc_dropout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _p_eff(p: float) -> float:
    return round(p * 65536) / 65536


# --------------------------------------------------------------------------------- the keep pool
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_pool_keep_rate_is_one_minus_p(p):
    torch.manual_seed(0)
    numel = 400_000
    pool, offsets = draw_keep_pool(numel, p=p, n_samples=16, span=16)
    assert pool.dtype == torch.uint8 and set(torch.unique(pool).tolist()) <= {0, 1}
    n = pool.numel()
    rate = pool.double().mean().item()
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - _p_eff(p))) < 5 * sd  # 5 sigma: 0.0017 for p = 0.1
    # each sample's mask is also at the right rate
    for o in offsets:
        assert abs(pool[o:o + numel].double().mean().item() - (1 - _p_eff(p))) < 5 * math.sqrt(p * (1 - p) / numel)


def test_pool_edge_rates():
    torch.manual_seed(0)
    pool, _ = draw_keep_pool(1000, p=0.0, n_samples=4, span=4)
    assert bool((pool == 1).all())
    pool, _ = draw_keep_pool(1000, p=1.0, n_samples=4, span=4)
    assert bool((pool == 0).all())


@pytest.mark.parametrize("numel, n_samples, span", [(16 * 96**3, 16, 16), (4096, 16, 16), (16, 16, 16), (7, 3, 7), (100, 1, 4)])
def test_pool_windows_of_a_voxel_are_disjoint(numel, n_samples, span):
    """Every sample reads each voxel's ``span`` elements from its own pool entries."""
    torch.manual_seed(1)
    pool, offsets = draw_keep_pool(numel, p=0.2, n_samples=n_samples, span=span)
    assert len(offsets) == n_samples and offsets[0] >= 0
    assert offsets[-1] + numel <= pool.numel()
    gaps = np.diff(offsets)
    assert np.all(gaps >= span)
    if n_samples > 1 and numel >= n_samples * span * 2:  # then the gap is at least half a slot: >= numel / (2 S)
        assert gaps.min() >= numel // (2 * n_samples)


def test_pool_same_seed_same_masks():
    torch.manual_seed(5)
    a = draw_keep_pool(5000, p=0.3, n_samples=8, span=4)
    torch.manual_seed(5)
    b = draw_keep_pool(5000, p=0.3, n_samples=8, span=4)
    c = draw_keep_pool(5000, p=0.3, n_samples=8, span=4)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], c[0])


def test_pool_masks_uncorrelated_across_samples_and_neighbours():
    torch.manual_seed(2)
    numel, n_samples = 64 * 64 * 8, 16
    pool, offsets = draw_keep_pool(numel, p=0.3, n_samples=n_samples, span=8)
    masks = torch.stack([pool[o:o + numel] for o in offsets]).double().numpy()  # (S, numel)
    corr = np.corrcoef(masks)
    off_diagonal = corr[~np.eye(n_samples, dtype=bool)]
    assert np.abs(off_diagonal).max() < 5 / math.sqrt(numel)  # 5 sigma of a zero correlation
    # neighbouring elements (same sample, next channel / next voxel) are uncorrelated too
    for shift in (1, 8):
        r = np.corrcoef(masks[:, :-shift].ravel(), masks[:, shift:].ravel())[0, 1]
        assert abs(r) < 5 / math.sqrt(masks[:, shift:].size)


# ------------------------------------------------------------------------ the fused moments kernel
def _exact_moments(x: np.ndarray, w: np.ndarray, b: np.ndarray, p: float):
    """E[p], E[p^2], E[H], Var[H] over the keep patterns of the non-zero channels of ``x``."""
    p = _p_eff(p)
    active = np.flatnonzero(x)
    ep = ep2 = 0.0
    eh = eh2 = 0.0
    for keep in itertools.product((0, 1), repeat=len(active)):
        prob = math.prod((1 - p) if k else p for k in keep)
        xm = np.zeros_like(x)
        xm[active] = x[active] * np.array(keep) / (1 - p)
        z = w @ xm + b
        s = np.exp(z - z.max())
        s /= s.sum()
        h = -(s * np.log(s)).sum()
        ep = ep + prob * s
        ep2 = ep2 + prob * s * s
        eh += prob * h
        eh2 += prob * h * h
    return ep, ep2, eh, eh2 - eh * eh


def _head_case(p: float, shape=(16, 16, 16)):
    x_voxel = np.array([1.5, -2.0, 0.0, 0.7], np.float64)
    w = np.array([[1.0, 0.5, 2.0, -1.0], [-0.5, 1.0, 0.0, 0.5], [0.2, -0.3, 1.0, 1.5]])
    b = np.array([0.1, -0.2, 0.3])
    x = torch.from_numpy(np.broadcast_to(x_voxel[:, None, None, None], (4, *shape)).astype(np.float32).copy())[None]
    x = x.contiguous(memory_format=torch.channels_last_3d)
    return x, x_voxel, w, b


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_fused_head_converges_to_the_exact_expectation(p):
    """16 samples x 4096 identical voxels: mean, per-voxel variance and entropy match the exact
    values of element-wise Bernoulli dropout with keep-scale 1/(1-p)."""
    torch.manual_seed(3)
    x, x_voxel, w, b = _head_case(p)
    n_samples = 16
    sp, sp2, sh = dropout_head_moments(
        x, torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), p=p, n_samples=n_samples
    )
    assert sp.shape == (1, 3, 16, 16, 16) and sp2.shape == sp.shape and sh.shape == (1, 16, 16, 16)
    ep, ep2, eh, var_h = _exact_moments(x_voxel, w, b, p)
    mean_p = sp[0].numpy().reshape(3, -1) / n_samples
    mean_p2 = sp2[0].numpy().reshape(3, -1) / n_samples
    mean_h = sh[0].numpy().ravel() / n_samples
    n_vox = mean_h.size
    var_p = ep2 - ep * ep
    # the mean over all samples: within 6 standard errors (about 0.005 here)
    np.testing.assert_array_less(np.abs(mean_p.mean(1) - ep), 6 * np.sqrt(var_p / (n_vox * n_samples)) + 1e-6)
    assert abs(mean_h.mean() - eh) < 6 * math.sqrt(var_h / (n_vox * n_samples)) + 1e-6
    # per-voxel unbiased sample variance: its expectation is Var[p] only when the 16 samples of a
    # voxel are independent (identical masks would give 0, shared halves about Var/2)
    s2 = (mean_p2 - mean_p**2) * n_samples / (n_samples - 1)
    se = s2.std(1) / math.sqrt(n_vox)
    np.testing.assert_array_less(np.abs(s2.mean(1) - var_p), 6 * se + 1e-7)
    assert var_p.max() > 1e-2  # the check above has teeth
    # Monte-Carlo errors of neighbouring voxels are uncorrelated along every axis
    err = (mean_p[0] - ep[0]).reshape(16, 16, 16)
    for axis in range(3):
        a = np.moveaxis(err, axis, 0)
        r = np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1]
        assert abs(r) < 5 / math.sqrt(a[1:].size)


def test_fused_head_at_rate_zero_is_the_deterministic_head():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7, 9)  # channels-first input and a batch of two
    w, b = torch.randn(3, 5), torch.randn(3)
    sp, sp2, sh = dropout_head_moments(x, w, b, p=0.0, n_samples=4)
    logits = torch.einsum("lc,bc...->bl...", w, x) + b.view(1, 3, 1, 1, 1)
    prob = torch.softmax(logits, 1)
    torch.testing.assert_close(sp / 4, prob, atol=1e-6, rtol=0)
    torch.testing.assert_close(sp2 / 4, prob * prob, atol=1e-6, rtol=0)
    torch.testing.assert_close(sh / 4, -(prob * torch.log(prob)).sum(1), atol=1e-5, rtol=0)
    # without moments only the sum of p comes back
    only_p, none2, none3 = dropout_head_moments(x, w, b, p=0.0, n_samples=1, with_moments=False)
    assert none2 is None and none3 is None
    torch.testing.assert_close(only_p, prob, atol=1e-6, rtol=0)
    # a 2D input, no bias, and blocks that do not divide the voxel count
    x2 = torch.randn(1, 5, 37, 41)
    sp, _, _ = dropout_head_moments(x2, w, None, p=0.0, n_samples=40)
    torch.testing.assert_close(sp / 40, torch.softmax(torch.einsum("lc,bc...->bl...", w, x2), 1), atol=1e-6, rtol=0)


def test_fused_head_at_rate_one_keeps_only_the_bias():
    x = torch.randn(1, 4, 3, 4, 5)
    w, b = torch.randn(2, 4), torch.tensor([0.5, -0.5])
    sp, _, _ = dropout_head_moments(x, w, b, p=1.0, n_samples=3)
    expected = torch.softmax(b, 0).view(1, 2, 1, 1, 1).expand_as(sp)
    torch.testing.assert_close(sp / 3, expected, atol=1e-6, rtol=0)


def test_fused_head_does_not_modify_its_input():
    x = torch.randn(1, 4, 5, 6, 7).contiguous(memory_format=torch.channels_last_3d)
    before = x.clone()
    dropout_head_moments(x, torch.randn(2, 4), torch.randn(2), p=0.5, n_samples=5)
    assert torch.equal(x, before)


def test_invalid_cancelled_fused_head():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        dropout_head_moments(torch.randn(1, 4, 4, 4, 4), torch.randn(2, 4), None, p=0.1, n_samples=2, cancel=cancel)


# ------------------------------------------------------------------------------ through the engine
def _head_net(dims=3, rate=0.3):
    torch.manual_seed(4)
    return build_network(
        "unet", spatial_dims=dims, in_channels=1, out_channels=3, channels=(4, 8), dropout_placement=["head"], dropout_rate=rate
    ).eval()


def test_engine_takes_the_fused_path_for_head_dropout():
    net = _head_net()
    fast = optimize_for_inference(net)
    with mc_dropout(fast, rate=0.2):
        head = fast.dropout_head()
    assert head is not None and head.p == pytest.approx(0.2)
    assert head.weight.shape == (3, 4)


@pytest.mark.parametrize("dims, patch, shape", [(3, (8, 16, 16), (1, 10, 20, 18)), (2, (16, 16), (1, 3, 20, 18))])
def test_engine_fused_path_rate_zero_equals_deterministic_with_flips(dims, patch, shape):
    net = _head_net(dims)
    image = np.random.default_rng(8).normal(size=shape).astype(np.float32)
    kwargs = {"patch_size": patch, "spatial_dims": dims, "tta_flips": True, "batch_size": 2}
    mc = sliding_window_moments(image, net, mc_samples=3, dropout_rate=0.0, **kwargs)
    det = sliding_window_moments(image, net, **kwargs)
    assert mc.n_samples == 3 * det.n_samples
    np.testing.assert_allclose(mc.mean_p, det.mean_p, atol=1e-6)
    np.testing.assert_allclose(mc.mean_p2, det.mean_p2, atol=1e-6)
    np.testing.assert_allclose(mc.mean_entropy, det.mean_entropy, atol=1e-5)


def test_engine_fused_path_same_seed_same_maps():
    net = _head_net()
    image = np.random.default_rng(9).normal(size=(1, 8, 16, 16)).astype(np.float32)
    a = sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=4, seed=1)
    b = sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=4, seed=1)
    c = sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=4, seed=2)
    assert np.array_equal(a.mean_p, b.mean_p) and np.array_equal(a.mean_p2, b.mean_p2)
    assert np.array_equal(a.mean_entropy, b.mean_entropy)
    assert not np.array_equal(a.mean_p, c.mean_p)


def _exact_engine_moments(net, image, rate):
    """Per-voxel E[p] and Var[p] of a head-dropout network on a one-patch image, enumerating
    the 2^C keep patterns of the C head channels."""
    with torch.inference_mode(), mc_dropout(net, rate=rate):
        head = net.dropout_head()
        feats, _ = net.run((torch.from_numpy(image)[None], ()), 0, head.index)
    f = feats[0].double().reshape(feats.shape[1], -1)
    w, b = head.weight.detach().double(), head.bias.detach().double().view(-1, 1)
    ep = torch.zeros(w.shape[0], f.shape[1], dtype=torch.float64)
    ep2 = torch.zeros_like(ep)
    for keep in itertools.product((0, 1), repeat=f.shape[0]):
        weight = math.prod((1 - rate) if k else rate for k in keep)
        m = torch.tensor(keep, dtype=torch.float64).view(-1, 1) / (1 - rate)
        prob = torch.softmax(w @ (f * m) + b, 0)
        ep += weight * prob
        ep2 += weight * prob * prob
    shape = (*image.shape[1:], w.shape[0])
    ep = ep.numpy().T.reshape(shape)
    return ep, ep2.numpy().T.reshape(shape) - ep**2


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_engine_mc_mean_is_unbiased_per_voxel(reuse_prefix):
    """Per voxel, the 64-sample MC mean sits around the exact dropout expectation with the
    spread of 64 independent samples (fused path; the per-sample loop as a control)."""
    rate, n_samples = 0.5, 64
    net = _head_net(rate=rate)
    image = np.random.default_rng(10).normal(size=(1, 8, 16, 16)).astype(np.float32)
    ep, var = _exact_engine_moments(net, image, rate)
    out = sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=n_samples, seed=3, reuse_prefix=reuse_prefix)
    ok = var > 1e-6
    z = ((out.mean_p - ep) / np.sqrt(np.where(ok, var, 1.0) / n_samples))[ok]
    assert ok.sum() > 5000
    assert abs(z.mean()) < 0.1  # unbiased (5 standard errors of the mean of ~6000 z)
    assert 0.85 < (z**2).mean() < 1.15  # the spread of independent samples: 1/N of Var[p]
    # the per-voxel sample variance estimates Var[p] (0.994 when measured)
    s2 = (out.mean_p2 - out.mean_p**2) * n_samples / (n_samples - 1)
    assert 0.95 < s2[ok].sum() / var[ok].sum() < 1.05
    assert np.abs(ep - sliding_window_moments(image, net, patch_size=(8, 16, 16)).mean_p).max() > 0.05  # dropout matters


def test_dropout_head_is_none_for_other_suffixes():
    for placement in (["decoder"], ["decoder", "head"], ["bottleneck"]):
        net = build_network("unet", spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), dropout_placement=placement)
        with mc_dropout(net, rate=0.2):
            assert net.dropout_head() is None
    # decoder dropout at the last level of a 2-level net also sits right before the head
    net = build_network("unet", spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), dropout_placement=["decoder"])
    with mc_dropout(net, rate=0.2):
        assert net.dropout_head() is not None
    net = _head_net()
    assert net.dropout_head() is None  # eval: no active dropout layer
    # channel-wise dropout is not element-wise: no fused path
    net.stages[-2].module = nn.Dropout3d(0.2)
    with mc_dropout(net, rate=0.2):
        assert net.dropout_head() is None


def test_fused_head_threaded_blocks_equal_single_worker():
    """Two torch threads: blocks run on two Python threads; the result is the same bits."""
    import napari_medseg.networks._fast as fast

    torch.set_num_threads(2)
    x = torch.randn(1, 8, 20, 24, 24).contiguous(memory_format=torch.channels_last_3d)
    w, b = torch.randn(3, 8), torch.randn(3)
    results = []
    block_elements = fast._HEAD_BLOCK_ELEMENTS
    fast._HEAD_BLOCK_ELEMENTS = 4096  # blocks of 64 voxels: 180 blocks
    try:
        assert fast._head_workers(x.device, 20 * 24 * 24, 64) == 2
        for threaded in (True, False):
            fast._HEAD_THREADED_BLOCKS = threaded
            torch.manual_seed(7)
            with torch.inference_mode():
                results.append(dropout_head_moments(x, w, b, p=0.3, n_samples=8))
    finally:
        fast._HEAD_THREADED_BLOCKS = True
        fast._HEAD_BLOCK_ELEMENTS = block_elements
    for a, c in zip(*results):
        assert torch.equal(a, c)
    assert torch.get_num_threads() == 2  # restored
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        dropout_head_moments(x, w, b, p=0.3, n_samples=8, cancel=cancel)
    assert torch.get_num_threads() == 2
