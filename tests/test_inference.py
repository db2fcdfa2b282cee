"""Inference: sliding window (vs MONAI and exact pointwise cases), MC dropout, TTA, ensembles,
and predict() end to end on registry models with random weights."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from _models import make_model
from conftest import oblique_geometry
from torch import nn

from napari_medseg.errors import CancelledError, InvalidInputError
from napari_medseg.inference import (
    CardMismatchWarning,
    flip_axes_sets,
    gaussian_importance_map,
    normalize_intensities,
    patch_grid,
    predict,
    provenance_metadata,
    resolve_device,
    sliding_window_moments,
)
from napari_medseg.networks import build_network
from napari_medseg.volume import Geometry, Volume, reorient


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Pointwise(nn.Module):
    """Logits (a*x, -a*x): every patch agrees, so blending must give softmax exactly."""

    def __init__(self, dims: int, a: float = 1.0) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.conv = conv(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([a, -a]).view(2, 1, *([1] * dims)))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x)


def _two_class(x, a=1.0):
    p1 = 1.0 / (1.0 + np.exp(-2 * a * x))
    return np.stack([p1, 1 - p1], axis=-1)


# ------------------------------------------------------------------------------------- patch grid
@pytest.mark.parametrize(
    "shape, patch, overlap",
    [((160, 192, 160), (96, 96, 96), 0.25), ((20, 28, 24), (8, 16, 16), 0.5), ((8, 16, 16), (8, 16, 16), 0.25),
     ((9, 33, 17), (8, 16, 16), 0.0)],
)
def test_patch_grid_matches_monai(shape, patch, overlap):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval(shape, patch, len(shape), (overlap,) * len(shape))
    expected = [tuple(s.start for s in sl) for sl in dense_patch_slices(shape, patch, interval)]
    assert patch_grid(shape, patch, overlap) == expected


def test_patch_grid_exact_benchmark_layout():
    starts = patch_grid((160, 192, 160), (96, 96, 96), 0.25)
    assert len(starts) == 12
    assert sorted({s[1] for s in starts}) == [0, 72, 96]
    assert sorted({s[0] for s in starts}) == [0, 64]


def test_gaussian_importance_map_values():
    imp = gaussian_importance_map((8,)).numpy()
    sigma = 8 * 0.125
    x = np.arange(8) - 3.5
    expected = np.maximum(np.exp(-(x**2) / (2 * sigma**2)), 1e-3)
    np.testing.assert_allclose(imp, expected, rtol=1e-6)


def test_flip_axes_sets():
    assert flip_axes_sets(3, False) == [()]
    assert len(flip_axes_sets(3, True)) == 8
    assert flip_axes_sets(2, True) == [(), (2,), (3,), (2, 3)]


# ------------------------------------------------------------------------------ sliding window
@pytest.mark.parametrize("dims, shape, patch", [(3, (1, 11, 37, 29), (8, 16, 16)), (2, (1, 3, 37, 29), (16, 16)),
                                                (3, (1, 5, 9, 7), (8, 16, 16))])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_pointwise_network_gives_exact_softmax(dims, shape, patch, overlap):
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    out = sliding_window_moments(image, Pointwise(dims), patch_size=patch, spatial_dims=dims, overlap=overlap, batch_size=3)
    assert out.mean_p.shape == (*shape[1:], 2) and out.mean_p.dtype == np.float32
    np.testing.assert_allclose(out.mean_p, _two_class(image[0]), atol=1e-6)
    assert out.mean_p2 is None and out.mean_entropy is None and out.n_samples == 1


@pytest.mark.parametrize("shape", [(1, 20, 28, 24), (1, 6, 10, 12)])  # the second is smaller than a patch
def test_matches_monai_sliding_window(shape):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8)).eval()
    image = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    ours = sliding_window_moments(image, net, patch_size=(8, 16, 16), overlap=0.25, batch_size=2)
    with torch.no_grad():
        ref = sliding_window_inference(
            torch.from_numpy(image)[None], (8, 16, 16), 1, lambda x: torch.softmax(net(x), 1), overlap=0.25, mode="gaussian"
        )[0]
    np.testing.assert_allclose(ours.mean_p, ref.permute(1, 2, 3, 0).numpy(), atol=2e-5)


def test_input_and_network_are_not_modified():
    net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), dropout_placement=["head"]).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    image = np.random.default_rng(3).normal(size=(1, 8, 16, 16)).astype(np.float32)
    copy = image.copy()
    sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=2, dropout_rate=0.5)
    assert np.array_equal(image, copy)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _mc_net(placement=("decoder", "head")):
    torch.manual_seed(4)
    return build_network(
        "unet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), dropout_placement=placement, dropout_rate=0.3
    ).eval()


def test_mc_prefix_reuse_equals_naive_loop():
    net = _mc_net(("decoder",))
    image = np.random.default_rng(5).normal(size=(1, 12, 20, 18)).astype(np.float32)
    kwargs = dict(patch_size=(8, 16, 16), mc_samples=3, seed=11, batch_size=2)
    fast = sliding_window_moments(image, net, reuse_prefix=True, **kwargs)
    naive = sliding_window_moments(image, net, reuse_prefix=False, **kwargs)
    for a, b in ((fast.mean_p, naive.mean_p), (fast.mean_p2, naive.mean_p2), (fast.mean_entropy, naive.mean_entropy)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_mc_same_seed_same_maps_other_seed_differs():
    net = _mc_net()
    image = np.random.default_rng(6).normal(size=(1, 8, 16, 16)).astype(np.float32)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    a = sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=4, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
    b = sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=4, seed=1)
    c = sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=4, seed=2)
    assert np.array_equal(a.mean_p, b.mean_p) and np.array_equal(a.mean_entropy, b.mean_entropy)
    assert not np.array_equal(a.mean_p, c.mean_p)
    assert a.n_samples == 4
    # moments are consistent: E[p^2] >= E[p]^2 and E[H(p_s)] <= H(E[p])
    assert np.all(a.mean_p2 - a.mean_p**2 >= -1e-6)
    h = -(a.mean_p * np.log(a.mean_p)).sum(-1)
    assert np.all(a.mean_entropy <= h + 1e-5)


def test_mc_dropout_rate_zero_is_deterministic():
    net = _mc_net()
    image = np.random.default_rng(6).normal(size=(1, 8, 16, 16)).astype(np.float32)
    mc = sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=3, dropout_rate=0.0)
    det = sliding_window_moments(image, net, patch_size=(8, 16, 16))
    np.testing.assert_allclose(mc.mean_p, det.mean_p, atol=1e-6)
    np.testing.assert_allclose(mc.mean_p2, det.mean_p**2, atol=1e-6)


def test_tta_with_flip_invariant_network_has_no_disagreement():
    image = np.random.default_rng(7).normal(size=(1, 9, 17, 20)).astype(np.float32)
    out = sliding_window_moments(image, Pointwise(3), patch_size=(8, 16, 16), tta_flips=True)
    assert out.n_samples == 8
    np.testing.assert_allclose(out.mean_p, _two_class(image[0]), atol=1e-6)
    np.testing.assert_allclose(out.mean_p2, out.mean_p**2, atol=1e-6)


def test_tta_undoes_flips():
    """A network that looks at the voxel to its left: TTA averages it with the mirrored view."""

    class Shift(nn.Module):
        def forward(self, x):
            left = torch.roll(x, 1, dims=-1)
            return torch.cat([left, -left], dim=1)

    image = np.random.default_rng(8).normal(size=(1, 8, 16, 16)).astype(np.float32)
    out = sliding_window_moments(image, Shift(), patch_size=(8, 16, 16), tta_flips=True)
    x = image[0]
    left, right = np.roll(x, 1, axis=-1), np.roll(x, -1, axis=-1)
    # half of the 8 flips mirror x: those see the right neighbour once flipped back
    expected = (_two_class(left) + _two_class(right)) / 2
    np.testing.assert_allclose(out.mean_p, expected, atol=1e-6)


def test_ensemble_of_opposite_models_exact():
    image = np.random.default_rng(9).normal(size=(1, 8, 16, 16)).astype(np.float32)
    out = sliding_window_moments(image, [Pointwise(3, 1.0), Pointwise(3, -1.0)], patch_size=(8, 16, 16))
    pa = _two_class(image[0])
    np.testing.assert_allclose(out.mean_p, 0.5, atol=1e-6)
    assert out.n_samples == 2
    np.testing.assert_allclose(out.mean_p2 - out.mean_p**2, (pa - 0.5) ** 2, atol=1e-6)
    h_a = -(pa * np.log(pa)).sum(-1)
    np.testing.assert_allclose(out.mean_entropy, h_a, atol=1e-5)


def test_progress_and_cancel():
    image = np.zeros((1, 16, 16, 32), np.float32)
    calls = []
    sliding_window_moments(image, Pointwise(3), patch_size=(8, 16, 16), overlap=0.0, batch_size=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]  # 4 patches in batches of 3
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError):
        sliding_window_moments(image, Pointwise(3), patch_size=(8, 16, 16), cancel=event)

    class CancelAfter:
        def __init__(self, n):
            self.n = n

        def is_set(self):
            self.n -= 1
            return self.n < 0

    with pytest.raises(CancelledError):  # cancelled between Monte-Carlo samples
        sliding_window_moments(image, _mc_net(), patch_size=(8, 16, 16), mc_samples=5, cancel=CancelAfter(3))


def test_invalid_sliding_window_arguments():
    image = np.zeros((1, 8, 16, 16), np.float32)
    net = Pointwise(3)
    with pytest.raises(InvalidInputError, match="mc_samples"):
        sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=-1)
    with pytest.raises(InvalidInputError, match="no dropout layer"):
        sliding_window_moments(image, net, patch_size=(8, 16, 16), mc_samples=2)
    with pytest.raises(InvalidInputError, match="overlap"):
        sliding_window_moments(image, net, patch_size=(8, 16, 16), overlap=1.0)
    with pytest.raises(InvalidInputError, match="batch_size"):
        sliding_window_moments(image, net, patch_size=(8, 16, 16), batch_size=0)
    with pytest.raises(InvalidInputError, match="patch_size"):
        sliding_window_moments(image, net, patch_size=(16, 16))
    with pytest.raises(InvalidInputError, match="expected \\(C, z, y, x\\)"):
        sliding_window_moments(image[0], net, patch_size=(8, 16, 16))
    with pytest.raises(InvalidInputError, match=r"dropout_rate=1.0"):
        sliding_window_moments(image, _mc_net(), patch_size=(8, 16, 16), mc_samples=2, dropout_rate=1.0)


# ----------------------------------------------------------------------------------- normalisation
class _Spec:
    def __init__(self, kind, **kw):
        self.kind = kind
        self.lower_percentile, self.upper_percentile = kw.get("lo", 0.5), kw.get("hi", 99.5)
        self.window_center, self.window_width = kw.get("center"), kw.get("width")
        self.nonzero_only, self.clip = kw.get("nonzero_only", False), kw.get("clip", True)


NORM_CASES = [
    (_Spec("zscore"), [0, 2, 4, 6], [-1.341641, -0.447214, 0.447214, 1.341641]),
    (_Spec("zscore", nonzero_only=True), [0, 2, 4, 6], [0, -1.224745, 0, 1.224745]),
    (_Spec("minmax"), [10, 20, 30, 50], [0, 0.25, 0.5, 1]),
    (_Spec("ct_window", center=40, width=400), [-1000, -160, 40, 1000], [0, 0, 0.5, 1]),
    (_Spec("ct_window", center=40, width=400, clip=False), [-360, 640], [-0.5, 2.0]),
    (_Spec("percentile", lo=0, hi=100), [1, 2, 3, 5], [0, 0.25, 0.5, 1]),
    (_Spec("none"), [1, -2], [1, -2]),
    (None, [3.5], [3.5]),
    (_Spec("minmax"), [7, 7, 7], [0, 0, 0]),  # constant channel: no division by zero
]


@pytest.mark.parametrize("spec, values, expected", NORM_CASES)
def test_normalize_intensities(spec, values, expected):
    array = np.array([values], dtype=np.int16 if spec is not None and spec.kind == "ct_window" else np.float64)
    out = normalize_intensities(array, spec)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    assert array.tolist() == [values]  # not modified


def test_normalize_per_channel():
    out = normalize_intensities(np.array([[0.0, 10.0], [5.0, 7.0]]), _Spec("minmax"))
    np.testing.assert_allclose(out, [[0, 1], [0, 1]])


# ----------------------------------------------------------------------------------------- predict
def test_predict_keeps_the_input_grid(tmp_path, oblique_volume):
    model = make_model(tmp_path, spacing=(1.0, 1.0, 2.0), orientation="RAS")
    with pytest.warns(CardMismatchWarning) as caught:
        pred = predict(oblique_volume, model, device="cpu")
    messages = " ".join(str(w.message) for w in caught)
    assert "spacing" in messages and "orientation" in messages
    for vol in (pred.labels, pred.probabilities, *pred.uncertainty.values()):
        assert vol.shape == oblique_volume.shape
        assert vol.geometry == oblique_volume.geometry
    assert pred.labels.array.dtype == np.uint8
    assert pred.probabilities.array.shape == (*oblique_volume.shape, 2)
    np.testing.assert_allclose(pred.probabilities.array.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.labels.array, np.argmax(pred.probabilities.array, -1))
    assert set(pred.uncertainty) == {"entropy"}
    assert pred.provenance["models"][0]["sha256"] == model.sha256
    assert pred.labels.metadata["medseg_model"] == "tiny"
    assert pred.labels.metadata["medseg_model_sha256"] == model.sha256


def test_predict_orientation_is_exact(tmp_path):
    """The same data stored LPS or RAS gives the same segmentation (reorientation is exact)."""
    model = make_model(tmp_path, orientation="RAS")
    rng = np.random.default_rng(10)
    vol = Volume(rng.normal(size=(9, 20, 18)).astype(np.float32), Geometry((0.8, 0.9, 2.0), (5.0, -3.0, 7.0)))
    flipped = reorient(vol, "RAS")
    with pytest.warns(CardMismatchWarning, match="orientation"):
        a = predict(vol, model)
    b = predict(flipped, model)
    back = reorient(b.probabilities, vol.geometry.orientation)
    np.testing.assert_allclose(back.array, a.probabilities.array, atol=1e-6)
    assert a.probabilities.geometry == vol.geometry


def test_predict_label_values_and_dtype(tmp_path):
    model = make_model(tmp_path, labels=(0, 3, 300))
    vol = Volume(np.random.default_rng(11).normal(size=(8, 16, 16)).astype(np.float32))
    pred = predict(vol, model)
    assert pred.labels.array.dtype == np.uint16
    assert set(np.unique(pred.labels.array)) <= {0, 3, 300}
    np.testing.assert_array_equal(pred.labels.array, np.array([0, 3, 300])[np.argmax(pred.probabilities.array, -1)])


def test_predict_mc_uncertainty_and_seed(tmp_path):
    model = make_model(tmp_path, placement=("decoder", "head"))
    vol = Volume(np.random.default_rng(12).normal(size=(8, 20, 16)).astype(np.float32))
    a = predict(vol, model, mc_samples=3, dropout_rate=0.5, seed=5)
    b = predict(vol, model, mc_samples=3, dropout_rate=0.5, seed=5)
    assert set(a.uncertainty) == {"entropy", "mutual_information", "variance"}
    assert a.uncertainty["variance"].array.shape == (8, 20, 16, 2)
    assert a.uncertainty["mutual_information"].array.max() > 0
    for key in a.uncertainty:
        assert np.array_equal(a.uncertainty[key].array, b.uncertainty[key].array)
    assert a.provenance["parameters"]["n_samples"] == 3


def test_predict_multichannel_list_equals_4d(tmp_path):
    model = make_model(tmp_path, in_channels=2)
    rng = np.random.default_rng(13)
    arrays = [rng.normal(size=(8, 16, 16)).astype(np.float32) for _ in range(2)]
    g = oblique_geometry()
    a = predict([Volume(arrays[0], g), Volume(arrays[1], g)], model)
    b = predict(Volume(np.stack(arrays, -1), g), model)
    np.testing.assert_array_equal(a.probabilities.array, b.probabilities.array)


def test_predict_2d_model_is_slice_by_slice(tmp_path):
    model = make_model(tmp_path, spatial_dims=2, channels=(4, 8), patch_size=(16, 16))
    rng = np.random.default_rng(14)
    vol = Volume(rng.normal(size=(3, 20, 17)).astype(np.float32))
    pred = predict(vol, model)
    # the normalisation is over the whole volume, so feed the middle slice with the same statistics
    middle = Volume(((vol.array - vol.array.mean()) / vol.array.std())[1:2].astype(np.float32))
    model_none = make_model(tmp_path, name="tiny-none", spatial_dims=2, channels=(4, 8), patch_size=(16, 16),
                            normalization={"kind": "none"})
    single = predict(middle, model_none)
    np.testing.assert_allclose(single.probabilities.array[0], pred.probabilities.array[1], atol=1e-5)


def test_predict_volume_smaller_than_patch(tmp_path):
    model = make_model(tmp_path, patch_size=(8, 32, 32))
    vol = Volume(np.random.default_rng(15).normal(size=(3, 5, 7)).astype(np.float32))
    pred = predict(vol, model)
    assert pred.labels.shape == (3, 5, 7)


def test_predict_ensemble(tmp_path):
    m1 = make_model(tmp_path, name="fold1", seed=1)
    m2 = make_model(tmp_path, name="fold2", seed=2)
    vol = Volume(np.random.default_rng(16).normal(size=(8, 16, 16)).astype(np.float32))
    p1, p2 = predict(vol, m1), predict(vol, m2)
    both = predict(vol, [m1, m2])
    np.testing.assert_allclose(both.probabilities.array, (p1.probabilities.array + p2.probabilities.array) / 2, atol=1e-6)
    expected_var = ((p1.probabilities.array - p2.probabilities.array) / 2) ** 2
    np.testing.assert_allclose(both.uncertainty["variance"].array, expected_var, atol=1e-6)
    assert [m["name"] for m in both.provenance["models"]] == ["fold1", "fold2"]
    assert both.labels.metadata["medseg_model"] == "fold1,fold2"


def test_predict_ensemble_with_different_grids(tmp_path):
    """Members with different spacings run on their own grids and meet on the input's."""
    m1 = make_model(tmp_path, name="fine", seed=1)
    m2 = make_model(tmp_path, name="coarse", seed=1, spacing=(2.0, 2.0, 2.0))
    vol = Volume(np.random.default_rng(17).normal(size=(8, 16, 16)).astype(np.float32))
    with pytest.warns(CardMismatchWarning):
        p2 = predict(vol, m2)
        both = predict(vol, [m1, m2])
    p1 = predict(vol, m1)
    np.testing.assert_allclose(both.probabilities.array, (p1.probabilities.array + p2.probabilities.array) / 2, atol=1e-5)
    assert both.probabilities.geometry == vol.geometry


def test_predict_progress_total_and_cancel(tmp_path):
    model = make_model(tmp_path)
    vol = Volume(np.zeros((8, 16, 48), np.float32))
    calls = []
    predict(vol, model, overlap=0.0, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError):
        predict(vol, model, cancel=event)


def test_predict_progress_total_with_resampling(tmp_path, oblique_volume):
    model = make_model(tmp_path, spacing=(1.5, 1.0, 2.0), orientation="RAS", patch_size=(4, 8, 8))
    calls = []
    with pytest.warns(CardMismatchWarning):
        predict(oblique_volume, model, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert [d for d, _ in calls] == list(range(1, len(calls) + 1))
    assert len({t for _, t in calls}) == 1


def test_predict_by_registry_name(tmp_path, monkeypatch):
    make_model(tmp_path, name="liver-ct")
    monkeypatch.setenv("MEDSEG_MODELS", str(tmp_path))
    vol = Volume(np.zeros((8, 16, 16), np.float32))
    assert predict(vol, "liver-ct").provenance["models"][0]["name"] == "liver-ct"
    with pytest.raises(InvalidInputError, match="liver-ct"):
        predict(vol, "liver-cta")


def test_provenance_metadata_keys():
    meta = provenance_metadata({"models": [{"name": "a", "sha256": "00"}], "version": "9"})
    assert meta["medseg_model"] == "a" and meta["medseg_model_sha256"] == "00" and meta["medseg_version"] == "9"


# --------------------------------------------------------------------------------- invalid input
def test_invalid_channel_count(tmp_path):
    model = make_model(tmp_path, in_channels=2)
    with pytest.raises(InvalidInputError, match="expects 2 input channel.*has 1"):
        predict(Volume(np.zeros((8, 16, 16), np.float32)), model)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_invalid_non_finite_voxels(tmp_path, bad):
    model = make_model(tmp_path)
    array = np.zeros((8, 16, 16), np.float32)
    array[2, 3, 4] = bad
    with pytest.raises(InvalidInputError, match="1 NaN or infinite voxel"):
        predict(Volume(array), model)


def test_invalid_single_slice_to_3d_model(tmp_path):
    model = make_model(tmp_path)
    with pytest.raises(InvalidInputError, match="3D model but the input is a single slice"):
        predict(Volume(np.zeros((1, 16, 16), np.float32)), model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mc_samples": -1}, "mc_samples=-1"),
        ({"dropout_rate": 1.0}, r"dropout_rate=1.0.*\[0, 1\)"),
        ({"dropout_rate": -0.2}, "dropout_rate=-0.2"),
        ({"overlap": 1.0}, "overlap=1.0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"device": "gpu"}, "device='gpu'"),
        ({"mc_samples": 2}, "no dropout layer"),
    ],
)
def test_invalid_predict_arguments(tmp_path, kwargs, match):
    model = make_model(tmp_path, placement=(), rate=0.0)
    with pytest.raises(InvalidInputError, match=match):
        predict(Volume(np.zeros((8, 16, 16), np.float32)), model, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_invalid_unavailable_device():
    with pytest.raises(InvalidInputError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_invalid_ensemble_with_different_labels(tmp_path):
    m1 = make_model(tmp_path, name="a")
    m2 = make_model(tmp_path, name="b", labels=(0, 1, 2))
    with pytest.raises(InvalidInputError, match="same labels"):
        predict(Volume(np.zeros((8, 16, 16), np.float32)), [m1, m2])


def test_invalid_model_argument():
    with pytest.raises(InvalidInputError, match="expected a RegistryModel"):
        predict(Volume(np.zeros((8, 16, 16), np.float32)), 3.5)
    with pytest.raises(InvalidInputError, match="at least one model"):
        predict(Volume(np.zeros((8, 16, 16), np.float32)), [])


def test_invalid_channel_volumes_on_different_grids(tmp_path):
    model = make_model(tmp_path, in_channels=2)
    a = Volume(np.zeros((8, 16, 16), np.float32))
    b = Volume(np.zeros((8, 16, 16), np.float32), Geometry((1.0, 1.0, 3.0)))
    with pytest.raises(InvalidInputError, match="not on the same grid"):
        predict([a, b], model)


def test_entropy_is_bounded_by_log_of_labels(tmp_path):
    model = make_model(tmp_path, labels=(0, 1, 2))
    pred = predict(Volume(np.random.default_rng(18).normal(size=(8, 16, 16)).astype(np.float32)), model, tta_flips=True)
    ent = pred.uncertainty["entropy"].array
    assert ent.min() >= 0 and ent.max() <= math.log(3) + 1e-6


def test_predict_returns_its_warnings_as_data(tmp_path, oblique_volume):
    """warn=False (faces predicting in a worker thread): nothing is warned, the messages are returned."""
    import warnings

    model = make_model(tmp_path, spacing=(1.0, 1.0, 2.0), orientation="RAS")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail here
        quiet = predict(oblique_volume, model, device="cpu", warn=False)
    with pytest.warns(CardMismatchWarning) as caught:
        loud = predict(oblique_volume, model, device="cpu")
    assert quiet.warnings == loud.warnings == [str(w.message) for w in caught] == quiet.provenance["warnings"]
    assert any("spacing" in m for m in quiet.warnings) and any("orientation" in m for m in quiet.warnings)
    np.testing.assert_array_equal(quiet.labels.array, loud.labels.array)
