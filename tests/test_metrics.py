"""Segmentation metrics: hand-computed cases, empty masks, MONAI agreement, Volume wrapper, errors."""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings

import numpy as np
import pytest
from conftest import ellipsoid_mask, oblique_geometry
from scipy import ndimage

from napari_medseg import metrics
from napari_medseg.errors import GeometryMismatchError, InvalidInputError
from napari_medseg.metrics import (
    METRIC_KEYS,
    arvd,
    dice,
    evaluate,
    hausdorff_distance,
    iou,
    label_metrics,
    mean_surface_distance,
    precision,
    recall,
    specificity,
    surface_distances,
    volume_ml,
)
from napari_medseg.volume import Geometry, Volume


def _readonly(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays


# ------------------------------------------------------------------------------ hand-computed cases
def _line_pair():
    """(1, 1, 8) grid, spacing (3, 2, 0.5) mm: pred covers x 0..5, ref x 0..3."""
    pred = np.zeros((1, 1, 8), bool)
    pred[..., :6] = True
    ref = np.zeros((1, 1, 8), bool)
    ref[..., :4] = True
    return _readonly(pred, ref)


def test_line_hand_computed():
    pred, ref = _line_pair()
    sp = (3.0, 2.0, 0.5)
    # every voxel of a one-voxel-thick line is on the surface (its z and y faces touch the outside)
    to_ref, to_pred = surface_distances(pred, ref, spacing_mm=sp)
    np.testing.assert_allclose(to_ref, [0, 0, 0, 0, 0.5, 1.0])
    np.testing.assert_allclose(to_pred, [0, 0, 0, 0])
    assert hausdorff_distance(pred, ref, spacing_mm=sp) == pytest.approx(1.0)
    # 95th percentile of [0, 0, 0, 0, 0.5, 1]: rank 0.95 * 5 = 4.75 -> 0.5 + 0.75 * 0.5
    assert hausdorff_distance(pred, ref, spacing_mm=sp, percentile=95) == pytest.approx(0.875)
    assert hausdorff_distance(pred, ref, spacing_mm=sp, percentile=50) == pytest.approx(0.0)
    # Eq. 2: (0.5 + 1.0) / (6 + 4)
    assert mean_surface_distance(pred, ref, spacing_mm=sp) == pytest.approx(0.15)
    # TP 4, FP 2, FN 0, TN 2
    assert dice(pred, ref) == pytest.approx(0.8)
    assert iou(pred, ref) == pytest.approx(4 / 6)
    assert precision(pred, ref) == pytest.approx(4 / 6)
    assert recall(pred, ref) == 1.0
    assert specificity(pred, ref) == pytest.approx(0.5)
    assert arvd(pred, ref) == pytest.approx(0.5)
    # voxel 3 * 2 * 0.5 = 3 mm^3
    assert volume_ml(pred, spacing_mm=sp) == pytest.approx(0.018)
    assert volume_ml(ref, spacing_mm=sp) == pytest.approx(0.012)


def test_shifted_square_2d_hand_computed():
    """Two 3x3 squares in a 5x5 image, one shifted by a row; rows 2 mm, columns 1 mm apart."""
    ref = np.zeros((5, 5), bool)
    ref[1:4, 1:4] = True
    pred = np.zeros((5, 5), bool)
    pred[2:5, 1:4] = True
    _readonly(pred, ref)
    sp = (2.0, 1.0)
    to_ref, to_pred = surface_distances(pred, ref, spacing_mm=sp)
    # pred's ring in C order: (2,1) (2,2) (2,3) (3,1) (3,3) (4,1) (4,2) (4,3); (2,2) is 1 mm from
    # ref's (2,1), the bottom row is 2 mm below ref's row 3
    np.testing.assert_allclose(to_ref, [0, 1, 0, 0, 0, 2, 2, 2])
    # ref's ring: the top row is 2 mm above pred's row 2, (3,2) is 1 mm from pred's (3,1)
    np.testing.assert_allclose(to_pred, [2, 2, 2, 0, 0, 0, 1, 0])
    assert hausdorff_distance(pred, ref, spacing_mm=sp) == 2.0
    assert hausdorff_distance(pred, ref, spacing_mm=sp, percentile=95) == pytest.approx(2.0)
    assert mean_surface_distance(pred, ref, spacing_mm=sp) == pytest.approx((1 + 2 + 2 + 2) * 2 / 16)
    # TP 6, FP 3, FN 3, TN 13
    assert dice(pred, ref) == pytest.approx(2 / 3)
    assert iou(pred, ref) == pytest.approx(0.5)
    assert precision(pred, ref) == pytest.approx(2 / 3)
    assert recall(pred, ref) == pytest.approx(2 / 3)
    assert specificity(pred, ref) == pytest.approx(13 / 16)
    assert arvd(pred, ref) == 0.0
    # 2D: 9 pixels of 2 mm^2, one slice 1 mm thick
    assert volume_ml(pred, spacing_mm=sp) == pytest.approx(0.018)


def test_single_voxels_anisotropic():
    pred = np.zeros((4, 5), bool)
    pred[0, 0] = True
    ref = np.zeros((4, 5), bool)
    ref[2, 3] = True
    _readonly(pred, ref)
    d = math.sqrt((2 * 2.0) ** 2 + (3 * 0.5) ** 2)
    for q in (0, 50, 95, 100):
        assert hausdorff_distance(pred, ref, spacing_mm=(2.0, 0.5), percentile=q) == pytest.approx(d)
    assert mean_surface_distance(pred, ref, spacing_mm=(2.0, 0.5)) == pytest.approx(d)
    assert dice(pred, ref) == 0.0
    assert specificity(pred, ref) == pytest.approx(18 / 19)


def test_surface_is_face_connected_erosion():
    """A plus sign's centre has all four face neighbours: interior, as in MONAI's get_mask_edges."""
    plus = np.zeros((5, 5), bool)
    plus[2, 1:4] = True
    plus[1:4, 2] = True
    to_ref, to_pred = surface_distances(plus, plus, spacing_mm=(1.0, 1.0))
    assert to_ref.shape == (4,) and to_pred.shape == (4,)
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    assert surface_distances(cube, cube, spacing_mm=(1, 1, 1))[0].shape == (26,)
    # a mask touching the array border has its border voxels on the surface
    full = np.ones((3, 3, 3), bool)
    assert surface_distances(full, full, spacing_mm=(1, 1, 1))[0].shape == (26,)


def test_identical_masks():
    mask = ellipsoid_mask((12, 20, 22), (6, 10, 11), (12.0, 7.0, 6.0), (2.5, 0.9, 0.7))
    sp = (2.5, 0.9, 0.7)
    assert dice(mask, mask) == 1.0 and iou(mask, mask) == 1.0 and arvd(mask, mask) == 0.0
    assert hausdorff_distance(mask, mask, spacing_mm=sp) == 0.0
    assert mean_surface_distance(mask, mask, spacing_mm=sp) == 0.0


def test_distances_scale_with_spacing_per_axis():
    """Shifting a box by 2 voxels along one axis gives HD = 2 * that axis's spacing."""
    ref = np.zeros((10, 12, 14), bool)
    ref[2:7, 3:8, 4:9] = True
    sp = (2.5, 0.9, 0.7)
    for axis in range(3):
        pred = np.roll(ref, 2, axis=axis)
        assert hausdorff_distance(pred, ref, spacing_mm=sp) == pytest.approx(2 * sp[axis])


def test_integer_masks_accepted():
    pred, ref = _line_pair()
    assert dice(pred.astype(np.uint8), ref.astype(np.float32)) == pytest.approx(0.8)


# --------------------------------------------------------------------------------------- empty masks
EMPTY_CASES = [
    # name, pred filled, ref filled, expected
    (
        "both empty",
        False,
        False,
        dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, specificity=1.0, arvd=0.0, hd=0.0, msd=0.0),
    ),
    (
        "pred empty",
        False,
        True,
        dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0, specificity=1.0, arvd=1.0, hd=math.inf, msd=math.inf),
    ),
    (
        "ref empty",
        True,
        False,
        dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0, specificity=0.75, arvd=math.inf, hd=math.inf, msd=math.inf),
    ),
]


@pytest.mark.parametrize("name, pred_on, ref_on, expected", EMPTY_CASES, ids=[c[0] for c in EMPTY_CASES])
def test_empty_masks(name, pred_on, ref_on, expected):
    shape = (2, 4, 4)  # 32 voxels; a filled mask is 8 voxels
    pred = np.zeros(shape, bool)
    ref = np.zeros(shape, bool)
    pred[0, :2, :] = pred_on
    ref[1, 2:, :] = ref_on
    sp = (2.0, 1.0, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no 0/0 or inf arithmetic
        got = dict(
            dice=dice(pred, ref),
            iou=iou(pred, ref),
            precision=precision(pred, ref),
            recall=recall(pred, ref),
            specificity=specificity(pred, ref),
            arvd=arvd(pred, ref),
            hd=hausdorff_distance(pred, ref, spacing_mm=sp),
            msd=mean_surface_distance(pred, ref, spacing_mm=sp),
        )
    absent = contextlib.nullcontext() if (pred_on or ref_on) else pytest.warns(UserWarning, match="appear in neither")
    with absent:
        table = label_metrics(pred.astype(np.uint8), ref.astype(np.uint8), spacing_mm=sp, labels=[1])[1]
    assert got == expected
    # label_metrics: the same numbers, with infinity reported as None
    for key, value in [("hd95_mm", expected["hd"]), ("hausdorff_mm", expected["hd"]), ("msd_mm", expected["msd"])]:
        assert table[key] == (None if math.isinf(value) else value)
    assert table["arvd"] == (None if math.isinf(expected["arvd"]) else expected["arvd"])
    assert table["dice"] == expected["dice"] and table["specificity"] == expected["specificity"]
    assert table["volume_pred_ml"] == pytest.approx(0.008 if pred_on else 0.0)
    assert table["volume_ref_ml"] == pytest.approx(0.008 if ref_on else 0.0)
    to_ref, to_pred = surface_distances(pred, ref, spacing_mm=sp)
    assert to_ref.shape == ((8,) if pred_on else (0,)) and to_pred.shape == ((8,) if ref_on else (0,))
    assert np.all(np.isinf(to_ref)) if (pred_on and not ref_on) else np.all(np.isfinite(to_ref))


def test_specificity_reference_fills_image():
    full = np.ones((2, 3), bool)
    partial = full.copy()
    partial[0, 0] = False
    assert specificity(full, full) == 1.0
    assert specificity(partial, full) == 0.0  # no negatives in ref, and pred is not identical


# -------------------------------------------------------------------------------------- against MONAI
def _random_blobs(rng, shape, sigma):
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma) > 0.05


MONAI_CASES = [
    ((18, 36, 32), (2.5, 0.9, 0.7), 2.0),
    ((20, 24, 22), (1.0, 3.0, 0.6), 1.0),
    ((64, 72), (0.8, 1.3), 3.0),
    ((40, 44), (2.0, 0.5), 1.5),
]


@pytest.mark.parametrize("shape, spacing, sigma", MONAI_CASES)
def test_distances_match_monai(shape, spacing, sigma):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(sum(shape))
    for _ in range(2):
        pred, ref = _random_blobs(rng, shape, sigma), _random_blobs(rng, shape, sigma)
        tp = torch.as_tensor(pred[None, None].astype(np.float32))
        tr = torch.as_tensor(ref[None, None].astype(np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want_hd95 = monai_metrics.compute_hausdorff_distance(
                tp, tr, include_background=True, percentile=95, spacing=list(spacing)
            ).item()
            want_hd = monai_metrics.compute_hausdorff_distance(
                tp, tr, include_background=True, spacing=list(spacing)
            ).item()
            want_msd = monai_metrics.compute_average_surface_distance(
                tp, tr, include_background=True, symmetric=True, spacing=list(spacing)
            ).item()
        assert want_msd > 0.3  # a real comparison, not two near-identical shapes
        assert hausdorff_distance(pred, ref, spacing_mm=spacing, percentile=95) == pytest.approx(want_hd95, rel=0.02)
        assert hausdorff_distance(pred, ref, spacing_mm=spacing) == pytest.approx(want_hd, rel=0.02)
        assert mean_surface_distance(pred, ref, spacing_mm=spacing) == pytest.approx(want_msd, rel=0.02)
        # in fact they agree to float32 precision
        assert mean_surface_distance(pred, ref, spacing_mm=spacing) == pytest.approx(want_msd, rel=1e-5)


def test_overlap_matches_monai():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_confusion_matrix_metric, compute_dice, compute_iou, get_confusion_matrix

    rng = np.random.default_rng(3)
    pred, ref = _random_blobs(rng, (16, 20, 24), 1.5), _random_blobs(rng, (16, 20, 24), 1.5)
    tp = torch.as_tensor(pred[None, None].astype(np.float32))
    tr = torch.as_tensor(ref[None, None].astype(np.float32))
    assert dice(pred, ref) == pytest.approx(compute_dice(tp, tr, include_background=True).item(), rel=1e-6)
    assert iou(pred, ref) == pytest.approx(compute_iou(tp, tr, include_background=True).item(), rel=1e-6)
    confusion = get_confusion_matrix(tp, tr, include_background=True)
    for ours, name in [(precision, "precision"), (recall, "sensitivity"), (specificity, "specificity")]:
        assert ours(pred, ref) == pytest.approx(compute_confusion_matrix_metric(name, confusion).item(), rel=1e-6)


def test_kdtree_and_distance_transform_agree(monkeypatch):
    """Both nearest-surface searches are exact; force each one and compare."""
    rng = np.random.default_rng(5)
    pred, ref = _random_blobs(rng, (14, 30, 26), 1.5), _random_blobs(rng, (14, 30, 26), 1.5)
    sp = (2.5, 0.9, 0.7)
    monkeypatch.setattr(metrics, "_KDTREE_MAX_SURFACE_FRACTION", 2.0)
    kd = surface_distances(pred, ref, spacing_mm=sp)
    monkeypatch.setattr(metrics, "_KDTREE_MAX_SURFACE_FRACTION", 0.0)
    edt = surface_distances(pred, ref, spacing_mm=sp)
    np.testing.assert_allclose(kd[0], edt[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(kd[1], edt[1], rtol=0, atol=1e-9)


# -------------------------------------------------------------------------------------- label_metrics
def test_label_metrics_two_labels():
    pred = np.zeros((3, 6, 8), np.uint8)
    ref = np.zeros((3, 6, 8), np.uint8)
    ref[1, 1:4, 1:4] = 1
    pred[1, 1:4, 1:5] = 1  # one extra column of 3 voxels
    ref[:, 4:6, 6:8] = 2  # label 2: a 3x2x2 block, missed entirely
    _readonly(pred, ref)
    sp = (2.0, 1.0, 0.5)
    result = label_metrics(pred, ref, spacing_mm=sp)
    assert list(result) == [1, 2]
    for values in result.values():
        assert tuple(values) == METRIC_KEYS
    one = result[1]
    assert one["dice"] == pytest.approx(18 / 21)
    assert one["iou"] == pytest.approx(9 / 12)
    assert one["precision"] == pytest.approx(9 / 12)
    assert one["recall"] == 1.0
    assert one["specificity"] == pytest.approx(132 / 135)  # 135 voxels are not ref label 1
    assert one["arvd"] == pytest.approx(3 / 9)
    # single-slice shapes in 3D: every voxel is surface; the extra column is 0.5 mm from ref
    assert one["hausdorff_mm"] == pytest.approx(0.5)
    assert one["msd_mm"] == pytest.approx(3 * 0.5 / 21)
    assert one["volume_pred_ml"] == pytest.approx(12 * 1.0e-3)
    assert one["volume_ref_ml"] == pytest.approx(9 * 1.0e-3)
    two = result[2]
    assert two["dice"] == 0.0 and two["hd95_mm"] is None and two["msd_mm"] is None and two["arvd"] == 1.0
    assert two["volume_pred_ml"] == 0.0 and two["volume_ref_ml"] == pytest.approx(12e-3)
    # explicit order, background allowed, duplicates dropped
    assert list(label_metrics(pred, ref, spacing_mm=sp, labels=[2, 1, 2])) == [2, 1]
    assert label_metrics(pred, ref, spacing_mm=sp, labels=[0])[0]["dice"] == pytest.approx(
        2 * (144 - 24) / ((144 - 12) + (144 - 21))
    )


def test_label_metrics_matches_mask_functions():
    rng = np.random.default_rng(11)
    shape, sp = (12, 26, 30), (2.5, 0.9, 0.7)
    pred = (_random_blobs(rng, shape, 1.5) * 1 + _random_blobs(rng, shape, 2.0) * 2).astype(np.uint16)
    ref = (_random_blobs(rng, shape, 1.5) * 1 + _random_blobs(rng, shape, 2.0) * 2).astype(np.int32)
    result = label_metrics(pred, ref, spacing_mm=sp)
    assert list(result) == [1, 2, 3]
    for label, values in result.items():
        p, r = pred == label, ref == label
        assert values["dice"] == pytest.approx(dice(p, r))
        assert values["hd95_mm"] == pytest.approx(hausdorff_distance(p, r, spacing_mm=sp, percentile=95))
        assert values["hausdorff_mm"] == pytest.approx(hausdorff_distance(p, r, spacing_mm=sp))
        assert values["msd_mm"] == pytest.approx(mean_surface_distance(p, r, spacing_mm=sp))
        assert values["specificity"] == pytest.approx(specificity(p, r))
        assert values["volume_pred_ml"] == pytest.approx(volume_ml(p, spacing_mm=sp))


def test_label_metrics_warns_for_absent_label():
    labels = np.zeros((4, 4), np.uint8)
    labels[1:3, 1:3] = 1
    with pytest.warns(UserWarning, match=r"labels \[7\] appear in neither"):
        result = label_metrics(labels, labels, spacing_mm=(1, 1), labels=[1, 7])
    assert result[7]["dice"] == 1.0 and result[7]["hausdorff_mm"] == 0.0


def test_absent_label_warning_as_data_for_worker_threads():
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[:, 1:3, 1:3] = 1
    volume = Volume(labels, Geometry((1.0, 1.0, 2.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # evaluate(warn=False) must not warn at all
        quiet = metrics.evaluate(volume, volume, labels=[1, 7], warn=False)
    with pytest.warns(UserWarning, match=r"labels \[7\] appear in neither"):
        loud = metrics.evaluate(volume, volume, labels=[1, 7])
    assert quiet == loud and quiet["labels"]["7"]["dice"] == 1.0
    assert metrics.evaluation_warnings(volume, volume, labels=[1, 7]) == [
        "labels [7] appear in neither the prediction nor the reference; they score as two empty masks (dice 1, distances 0)"
    ]
    assert metrics.evaluation_warnings(volume, volume, labels=[1]) == metrics.evaluation_warnings(volume, volume) == []


def test_label_metrics_no_labels_present():
    empty = np.zeros((3, 3), np.uint8)
    assert label_metrics(empty, empty, spacing_mm=(1, 1)) == {}


# ---------------------------------------------------------------------------------------- evaluate
def test_evaluate_volume_json_ready():
    geometry = oblique_geometry()  # spacing (x, y, z) = (0.7, 0.9, 2.5)
    sp = geometry.spacing_zyx
    shape = (8, 24, 26)
    ref = ellipsoid_mask(shape, (4, 12, 13), (7.5, 7.0, 6.0), sp).astype(np.uint8)
    pred = ellipsoid_mask(shape, (4, 12, 14), (7.5, 7.0, 6.0), sp).astype(np.uint8) * 3
    result = evaluate(Volume(pred, geometry), Volume(ref, geometry), labels=[1, 3])
    assert list(result) == ["labels"] and list(result["labels"]) == ["1", "3"]
    text = json.dumps(result, allow_nan=False)  # strict JSON: no NaN, no Infinity
    assert json.loads(text) == result
    # label 1 only in ref, label 3 only in pred
    assert result["labels"]["1"]["hd95_mm"] is None and result["labels"]["1"]["volume_pred_ml"] == 0.0
    assert result["labels"]["3"]["arvd"] is None and result["labels"]["3"]["volume_ref_ml"] == 0.0
    # the same numbers as label_metrics on the arrays with spacing_zyx
    both = evaluate(Volume(pred // 3, geometry), Volume(ref, geometry))
    assert both["labels"]["1"] == label_metrics(pred // 3, ref, spacing_mm=sp)[1]
    assert both["labels"]["1"]["hausdorff_mm"] == pytest.approx(0.7)  # shifted one voxel along x


def test_evaluate_single_slice_is_2d():
    geometry = Geometry((0.5, 2.0, 3.0))  # x 0.5 mm, y 2 mm, slice 3 mm thick
    ref = np.zeros((1, 5, 5), np.uint8)
    ref[0, 1:4, 1:4] = 1
    pred = np.zeros((1, 5, 5), np.uint8)
    pred[0, 2:5, 1:4] = 1
    values = evaluate(Volume(pred, geometry), Volume(ref, geometry))["labels"]["1"]
    # the shifted-square case above, in-plane contours with rows 2 mm apart
    assert values["hausdorff_mm"] == pytest.approx(2.0)
    assert values["msd_mm"] == pytest.approx((0.5 * 2 + 2 * 3 * 2) / 16)
    assert values["volume_pred_ml"] == pytest.approx(9 * 0.5 * 2.0 * 3.0 / 1000)


@pytest.mark.slow
def test_large_pair_takes_seconds():
    sp = (2.5, 0.9, 0.7)
    shape = (96, 256, 256)
    ref = ellipsoid_mask(shape, (48, 128, 128), (100.0, 90.0, 80.0), sp).astype(np.uint8)
    pred = ellipsoid_mask(shape, (50, 126, 128), (95.0, 92.0, 80.0), sp).astype(np.uint8)
    start = time.perf_counter()
    result = label_metrics(pred, ref, spacing_mm=sp)
    assert time.perf_counter() - start < 30.0
    assert 0.9 < result[1]["dice"] < 1.0 and 0.0 < result[1]["msd_mm"] < 5.0


# ------------------------------------------------------------------------------------------- errors
def test_invalid_shape_mismatch():
    with pytest.raises(InvalidInputError, match=r"pred_mask and ref_mask must have the same shape"):
        dice(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(InvalidInputError, match=r"pred_labels and ref_labels must have the same shape"):
        label_metrics(np.zeros((3, 3), np.uint8), np.zeros((4, 3), np.uint8), spacing_mm=(1, 1))


def test_invalid_non_binary_mask():
    with pytest.raises(InvalidInputError, match=r"pred_mask: expected a boolean mask .*found values 2"):
        dice(np.array([[0, 2]]), np.array([[0, 1]]))
    with pytest.raises(InvalidInputError, match=r"ref_mask: .*found values nan"):
        hausdorff_distance(np.array([[0, 1.0]]), np.array([[np.nan, 1.0]]), spacing_mm=(1, 1))
    with pytest.raises(InvalidInputError, match=r"mask: expected a boolean mask; got dtype <U1"):
        volume_ml(np.array(["a"]), spacing_mm=(1,))


def test_invalid_scalar_mask():
    with pytest.raises(InvalidInputError, match="at least one axis"):
        dice(np.bool_(True), np.bool_(True))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (1.0, np.nan, 1.0), "abc", None])
def test_invalid_spacing(spacing):
    mask = np.ones((2, 2, 2), bool)
    with pytest.raises(InvalidInputError, match=r"spacing_mm=.*expected 3"):
        hausdorff_distance(mask, mask, spacing_mm=spacing)


@pytest.mark.parametrize("percentile", [-1, 100.5, "high"])
def test_invalid_percentile(percentile):
    mask = np.ones((2, 2), bool)
    with pytest.raises(InvalidInputError, match=r"percentile=.*\[0, 100\]"):
        hausdorff_distance(mask, mask, spacing_mm=(1, 1), percentile=percentile)


def test_invalid_label_maps():
    good = np.zeros((3, 3), np.uint8)
    with pytest.raises(InvalidInputError, match=r"pred_labels: label image has non-integer values"):
        label_metrics(np.full((3, 3), 0.5), good, spacing_mm=(1, 1))
    with pytest.raises(InvalidInputError, match=r"ref_labels: label image has negative values"):
        label_metrics(good, np.full((3, 3), -1), spacing_mm=(1, 1))


@pytest.mark.parametrize("labels", [[-1], [1.5], ["1"], [], "1,2", 3, [True]])
def test_invalid_labels(labels):
    good = np.ones((3, 3), np.uint8)
    with pytest.raises(InvalidInputError, match=r"labels="):
        label_metrics(good, good, spacing_mm=(1, 1), labels=labels)


def test_invalid_evaluate_geometry_mismatch():
    array = np.ones((2, 3, 4), np.uint8)
    a = Volume(array, oblique_geometry())
    b = Volume(array, oblique_geometry(origin=(10.5, -20.25, 34.0)))
    with pytest.raises(GeometryMismatchError, match=r"pred and ref are not on the same grid: origin"):
        evaluate(a, b)
    with pytest.raises(GeometryMismatchError, match=r"p.nii and r.nii .*shape"):
        evaluate(a, Volume(np.ones((2, 3, 5), np.uint8), oblique_geometry()), names=("p.nii", "r.nii"))


def test_invalid_evaluate_non_label_volume():
    geometry = oblique_geometry()
    good = Volume(np.ones((2, 3, 4), np.uint8), geometry)
    with pytest.raises(InvalidInputError, match=r"pred: label image has non-integer values"):
        evaluate(Volume(np.full((2, 3, 4), 0.25, np.float32), geometry), good)
    with pytest.raises(InvalidInputError, match=r"ref: a label image must have one component"):
        evaluate(good, Volume(np.ones((2, 3, 4, 3), np.uint8), geometry))
    with pytest.raises(InvalidInputError, match=r"must be Volume objects"):
        evaluate(np.ones((2, 3, 4)), good)
