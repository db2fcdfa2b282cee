"""Post-processing morphology in millimetres, per label, and the JSON chain."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from conftest import oblique_geometry

from napari_medseg.errors import CancelledError, FileFormatError, InvalidInputError
from napari_medseg.postprocess import (
    PostprocessChain,
    PostprocessOp,
    apply_chain,
    chain_from_options,
    closing,
    dilation,
    ellipsoid_footprint,
    erosion,
    fill_holes,
    keep_largest_components,
    label_volumes_ml,
    label_voxel_counts,
    opening,
    postprocess,
    remove_small_components,
)
from napari_medseg.volume import Volume

SPACING = (2.5, 0.9, 0.7)  # z, y, x in mm: thick slices, anisotropic in-plane


# ---------------------------------------------------------------------------------- references
def _shift(mask: np.ndarray, offset, fill: bool) -> np.ndarray:
    """``out[p] = mask[p + offset]``, with ``fill`` outside the array."""
    out = np.full_like(mask, fill)
    dst, src = [], []
    for o, n in zip(offset, mask.shape):
        dst.append(slice(max(0, -o), n - max(0, o)))
        src.append(slice(max(0, o), n - max(0, -o)))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def _brute_dilation(mask, footprint):
    centre = np.array(footprint.shape) // 2
    out = np.zeros_like(mask)
    for offset in np.argwhere(footprint) - centre:
        out |= _shift(mask, -offset, False)
    return out


def _brute_erosion(mask, footprint):
    """Erosion with voxels outside the array counted as foreground."""
    centre = np.array(footprint.shape) // 2
    out = np.ones_like(mask)
    for offset in np.argwhere(footprint) - centre:
        out &= _shift(mask, offset, True)
    return out


def _brute_closing(mask, footprint):
    """Closing as if the array were surrounded by background (padded by the footprint's size)."""
    pad = [(h, h) for h in footprint.shape]
    padded = np.pad(mask, pad)
    closed = _brute_erosion(_brute_dilation(padded, footprint), footprint)
    return closed[tuple(slice(h, h + n) for h, n in zip(footprint.shape, mask.shape))]


# --------------------------------------------------------------------------------- footprint
@pytest.mark.parametrize(
    "radius_mm, spacing_mm, shape, count",
    [
        # in-plane ellipse with (0.9, 0.7) mm pixels: rows |dy| = 0, 1, 2 hold 7, 5, 3 voxels
        (2.2, (2.5, 0.9, 0.7), (1, 5, 7), 7 + 2 * 5 + 2 * 3),
        (1.0, (1.0, 1.0, 1.0), (3, 3, 3), 7),  # the 6-neighbourhood and the centre
        (1.5, (1.0, 1.0, 1.0), (3, 3, 3), 1 + 6 + 12),  # plus the edge neighbours (sqrt 2)
        # exact tie: z neighbours at exactly 2.5 mm belong to the ball; disc of radius 2.5 holds 21
        (2.5, (2.5, 1.0, 1.0), (3, 5, 5), 21 + 2),
        (0.3, (0.1, 0.1, 0.1), (7, 7, 7), 123),  # 3 * 0.1 > 0.3 in floats: ties still belong
        (0.0, (2.5, 0.9, 0.7), (1, 1, 1), 1),
        (0.5, (2.5, 0.9, 0.7), (1, 1, 1), 1),
    ],
)
def test_ellipsoid_footprint_hand_computed(radius_mm, spacing_mm, shape, count):
    footprint = ellipsoid_footprint(radius_mm, spacing_mm)
    assert footprint.dtype == bool
    assert footprint.shape == shape
    assert int(footprint.sum()) == count
    assert np.array_equal(footprint, footprint[::-1, ::-1, ::-1])  # symmetric


def test_ellipsoid_footprint_rows():
    expected = np.array(
        [
            [0, 0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 0, 1, 1, 1, 0, 0],
        ],
        dtype=bool,
    )
    assert np.array_equal(ellipsoid_footprint(2.2, SPACING)[0], expected)


# --------------------------------------------------------------------------- morphology in mm
@pytest.mark.parametrize(
    "radius_mm, shrink_zyx",
    [
        (2.2, (0, 2, 3)),  # 2.2 mm: 0 slices of 2.5 mm, 2 rows of 0.9 mm, 3 columns of 0.7 mm
        (3.0, (1, 3, 4)),
        (6.0, (2, 6, 8)),  # large element: the distance-transform path
    ],
)
def test_box_erodes_and_dilates_by_radius_in_voxels_per_axis(radius_mm, shrink_zyx):
    box = np.zeros((16, 50, 50), dtype=np.uint8)
    box[4:12, 10:40, 10:40] = 1
    dz, dy, dx = shrink_zyx
    expected = np.zeros_like(box)
    expected[4 + dz : 12 - dz, 10 + dy : 40 - dy, 10 + dx : 40 - dx] = 1
    assert np.array_equal(erosion(box, radius_mm=radius_mm, spacing_mm=SPACING), expected)
    # a box opened by a smaller ball keeps its faces; its dilation's bounding box grows per axis
    grown = dilation(box, radius_mm=radius_mm, spacing_mm=SPACING)
    zs, ys, xs = np.nonzero(grown)
    assert (zs.min(), zs.max() + 1) == (4 - dz, 12 + dz)
    assert (ys.min(), ys.max() + 1) == (10 - dy, 40 + dy)
    assert (xs.min(), xs.max() + 1) == (10 - dx, 40 + dx)
    assert grown.sum() > box.sum()


@pytest.mark.parametrize("radius_mm, count", [(0.3, 123), (0.6, 925)])  # scipy and distance-transform paths
def test_exact_ties_belong_to_the_ball_on_both_paths(radius_mm, count):
    mask = np.zeros((15, 15, 15), dtype=np.uint8)
    mask[7, 7, 7] = 1
    assert int(dilation(mask, radius_mm=radius_mm, spacing_mm=(0.1, 0.1, 0.1)).sum()) == count
    cube = np.ones((15, 15, 15), dtype=np.uint8)
    cube[7, 7, 7] = 0
    assert int((erosion(cube, radius_mm=radius_mm, spacing_mm=(0.1, 0.1, 0.1)) == 0).sum()) == count


def test_dilation_of_one_voxel_is_the_footprint():
    mask = np.zeros((5, 11, 13), dtype=bool)
    mask[2, 5, 6] = True
    grown = dilation(mask, radius_mm=2.2, spacing_mm=SPACING)
    assert grown.dtype == bool
    expected = np.zeros_like(mask)
    expected[2:3, 3:8, 3:10] = ellipsoid_footprint(2.2, SPACING)
    assert np.array_equal(grown, expected)


# footprints of 3, 15 and 105 voxels (scipy footprint path) and 167 voxels (distance transform path)
@pytest.mark.parametrize("radius_mm", [0.8, 1.9, 3.3, 4.0])
def test_morphology_equals_brute_force_footprint(radius_mm):
    rng = np.random.default_rng(7)
    spacing = (2.0, 1.0, 0.8)
    mask = rng.random((9, 13, 14)) < 0.55
    footprint = ellipsoid_footprint(radius_mm, spacing)
    kwargs = {"radius_mm": radius_mm, "spacing_mm": spacing}
    assert np.array_equal(dilation(mask, **kwargs), _brute_dilation(mask, footprint))
    assert np.array_equal(erosion(mask, **kwargs), _brute_erosion(mask, footprint))
    assert np.array_equal(opening(mask, **kwargs), _brute_dilation(_brute_erosion(mask, footprint), footprint))
    assert np.array_equal(closing(mask, **kwargs), _brute_closing(mask, footprint))


def test_edges_erosion_keeps_cut_structures_and_closing_does_not_reach_the_edge():
    slab = np.zeros((4, 6, 8), dtype=np.uint8)
    slab[:, :, :5] = 1  # cut by the array edge on five faces
    expected = np.zeros_like(slab)
    expected[:, :, :4] = 1  # only the inner face moves, by one 0.7 mm column
    assert np.array_equal(erosion(slab, radius_mm=1.0, spacing_mm=SPACING), expected)
    row = np.zeros((1, 1, 12), dtype=np.uint8)
    row[0, 0, [1, 2, 4, 5, 6, 10]] = 1
    closed = closing(row, radius_mm=1.0, spacing_mm=(1.0, 1.0, 1.0))
    # the one-voxel gap at 3 closes; the edge voxel 0 and the wide gap 7..9 stay background
    assert closed[0, 0].tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0]


def test_closing_bridges_gaps_narrower_than_the_ball_in_mm():
    # the 1 mm ball is an in-plane cross here: rows 0.9 mm and columns 0.7 mm away, not slices
    labels = np.zeros((7, 5, 16), dtype=np.uint8)
    labels[:, :, 2:6] = 1
    labels[:, :, 8:12] = 1  # a 2-column (1.4 mm) gap along x: bridged by the 1 mm ball...
    labels[3, :, :] = 0  # a 1-slice (2.5 mm) gap along z: not bridged
    out = closing(labels, radius_mm=1.0, spacing_mm=SPACING)
    expected = labels.copy()
    expected[:, 1:4, 6:8] = 1  # ...except on the first and last rows, where the cross sticks out
    expected[3, :, :] = 0
    assert np.array_equal(out, expected)
    assert np.array_equal(opening(out, radius_mm=0.0, spacing_mm=SPACING), out)


# ------------------------------------------------------------------------------ labels never leak
def test_touching_labels_dilated_never_overwrite_each_other():
    labels = np.zeros((1, 3, 12), dtype=np.uint8)
    labels[0, 1, 3:6] = 1
    labels[0, 1, 6:9] = 2  # touching label 1
    out = dilation(labels, radius_mm=1.0, spacing_mm=(1.0, 1.0, 1.0))
    expected = np.zeros_like(labels)
    expected[0, 0, 3:6] = expected[0, 2, 3:6] = 1
    expected[0, 0, 6:9] = expected[0, 2, 6:9] = 2
    expected[0, 1, 2:6] = 1
    expected[0, 1, 6:10] = 2
    assert np.array_equal(out, expected)
    # only label 1: it cannot take label 2's voxels, and label 2 does not move
    only_one = dilation(labels, radius_mm=3.0, spacing_mm=(1.0, 1.0, 1.0), labels=[1])
    assert np.array_equal(only_one == 2, labels == 2)
    assert only_one[0, 1].tolist() == [1, 1, 1, 1, 1, 1, 2, 2, 2, 0, 0, 0]


def test_contested_background_goes_to_the_nearest_label_ties_to_the_smaller():
    labels = np.zeros((1, 1, 11), dtype=np.uint8)
    labels[0, 0, 1:3] = 1
    labels[0, 0, 5:7] = 2  # gap 3, 4: voxel 3 is 1 mm from label 1 and 2 mm from label 2
    out = dilation(labels, radius_mm=2.0, spacing_mm=(1.0, 1.0, 1.0))
    assert out[0, 0].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0]
    labels = np.zeros((1, 1, 9), dtype=np.uint8)
    labels[0, 0, 1:3] = 2
    labels[0, 0, 4:6] = 1  # voxel 3 is 1 mm from both: the smaller label value wins
    out = dilation(labels, radius_mm=1.0, spacing_mm=(1.0, 1.0, 1.0))
    assert out[0, 0].tolist() == [2, 2, 2, 1, 1, 1, 1, 0, 0]


def test_closing_cannot_create_a_label_inside_another_label():
    labels = np.zeros((1, 9, 9), dtype=np.uint8)
    labels[0, 1:8, 1:8] = 1
    labels[0, 3:6, 3:6] = 2  # label 2 fills a pocket of label 1, with a background moat
    labels[0, 2, 2:7] = 0
    out = closing(labels, radius_mm=1.5, spacing_mm=(1.0, 1.0, 1.0))
    assert np.array_equal(out == 2, labels == 2)
    assert not ((out == 1) & (labels == 2)).any()


def test_per_label_random_maps_follow_the_rule():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (8, 12, 12)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.5] = 0
    for function in (dilation, erosion, opening, closing):
        out = function(labels, radius_mm=1.5, spacing_mm=SPACING, labels=[1, 3])
        assert np.array_equal(out == 2, labels == 2)  # not selected: untouched
        assert np.all((out == labels) | (out == 0) | (labels == 0))  # nobody takes another's voxel
        for value in (1, 3):
            alone = function(labels == value, radius_mm=1.5, spacing_mm=SPACING)
            assert not ((out == value) & ~alone).any()
            assert np.array_equal((out == value) & (labels != 0), alone & (labels == value))


# --------------------------------------------------------------------------------- fill holes
def test_fill_holes_3d_versus_slice_wise():
    tube = np.zeros((6, 10, 10), dtype=np.uint8)
    tube[:, 2:8, 2:8] = 1
    tube[:, 4:6, 4:6] = 0  # lumen open at both ends along z
    assert np.array_equal(fill_holes(tube), tube)
    filled = fill_holes(tube, slice_wise=True)
    assert int(filled.sum()) == int(tube.sum()) + 6 * 4
    assert np.all(filled[:, 2:8, 2:8] == 1)
    assert np.array_equal(fill_holes(tube, slice_wise=True, axis=2), tube)  # x-slices see an open channel
    cavity = np.zeros((6, 10, 10), dtype=np.uint8)
    cavity[1:5, 2:8, 2:8] = 1
    cavity[2:4, 4:6, 4:6] = 0  # enclosed in 3D
    expected = cavity.copy()
    expected[2:4, 4:6, 4:6] = 1
    assert np.array_equal(fill_holes(cavity), expected)
    assert np.array_equal(fill_holes(cavity, slice_wise=True), expected)


def test_fill_holes_keeps_other_labels_and_handles_single_slices():
    labels = np.zeros((1, 7, 7), dtype=np.uint16)
    labels[0, 1:6, 1:6] = 3
    labels[0, 2:5, 2:5] = 0
    labels[0, 3, 3] = 5  # label 5 inside label 3's hole
    out = fill_holes(labels)  # a single slice is filled as a 2D image
    expected = labels.copy()
    expected[0, 2:5, 2:5] = 3
    expected[0, 3, 3] = 5
    assert out.dtype == np.uint16
    assert np.array_equal(out, expected)
    nested = np.zeros((1, 9, 9), dtype=np.uint8)
    nested[0, 0:9, 0:9] = 1
    nested[0, 1:8, 1:8] = 0
    nested[0, 2:7, 2:7] = 2
    nested[0, 3:6, 3:6] = 0  # enclosed by label 2 and, further out, by label 1: the nearest wins
    out = fill_holes(nested)
    assert np.all(out[0, 3:6, 3:6] == 2)
    moat = np.zeros((9, 9), dtype=bool)
    moat[1:8, 1:8] = True
    moat[2:7, 2:7] = False  # 24 background voxels only label 1 encloses
    assert np.array_equal(out[0] == 1, (nested[0] == 1) | moat)


# ----------------------------------------------------------------------------------- components
def test_remove_small_uses_physical_volume_on_two_grids():
    def scene(spacing_mm: float) -> np.ndarray:
        n = int(round(16 / spacing_mm))
        labels = np.zeros((n, n, n), dtype=np.uint8)
        big, small = int(round(4 / spacing_mm)), int(round(2 / spacing_mm))
        labels[:big, :big, :big] = 1  # 4 mm cube: 64 mm^3
        far = n - small
        labels[far:, far:, far:] = 1  # 2 mm cube: 8 mm^3 (8 voxels of 1 mm, 64 voxels of 0.5 mm)
        return labels

    for spacing_mm in (1.0, 0.5):
        labels = scene(spacing_mm)
        out = remove_small_components(labels, min_size_mm3=10.0, spacing_mm=(spacing_mm,) * 3)
        assert label_volumes_ml(out, spacing_mm=(spacing_mm,) * 3) == {1: pytest.approx(0.064, rel=1e-12)}
        kept = remove_small_components(labels, min_size_mm3=8.0, spacing_mm=(spacing_mm,) * 3)
        assert np.array_equal(kept, labels)  # exactly the threshold is kept


def test_remove_small_connectivity_and_labels():
    labels = np.zeros((3, 3, 3), dtype=np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 1  # corner neighbours: 2 components of 1 voxel (1 mm^3)
    labels[2, 2, 2] = 2
    spacing = (1.0, 1.0, 1.0)
    assert not remove_small_components(labels, min_size_mm3=1.5, spacing_mm=spacing).any()
    corner = remove_small_components(labels, min_size_mm3=1.5, spacing_mm=spacing, connectivity=3)
    assert np.array_equal(corner, np.where(labels == 1, 1, 0))  # label 1 is one 2 mm^3 component
    only_two = remove_small_components(labels, min_size_mm3=1.5, spacing_mm=spacing, labels=[2])
    assert np.array_equal(only_two, np.where(labels == 2, 0, labels))


def test_keep_largest_per_label_n_and_ties():
    labels = np.zeros((1, 4, 20), dtype=np.uint8)
    labels[0, 0, 0:5] = 1  # 5
    labels[0, 0, 7:10] = 1  # 3
    labels[0, 0, 12:16] = 1  # 4
    labels[0, 2, 0:2] = 2  # 2 (first in raster order)
    labels[0, 2, 5:7] = 2  # 2
    out = keep_largest_components(labels)
    assert out[0, 0].tolist() == [1] * 5 + [0] * 15
    assert out[0, 2].tolist() == [2, 2] + [0] * 18
    two = keep_largest_components(labels, n=2)
    assert two[0, 0].tolist() == [1] * 5 + [0] * 7 + [1] * 4 + [0] * 4
    assert np.array_equal(two[0, 2], labels[0, 2])
    # multi-instance lesions (label 2) are left alone when only label 1 is filtered
    assert np.array_equal(keep_largest_components(labels, labels=[1])[0, 2], labels[0, 2])
    assert np.array_equal(keep_largest_components(labels, n=10), labels)


# ------------------------------------------------------------------------------- dtypes, inputs
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.uint64, bool])
def test_dtype_kept_and_input_not_modified(dtype):
    labels = np.zeros((3, 6, 6), dtype=dtype)
    labels[1, 1:5, 1:5] = 1
    labels[1, 2, 2] = 0
    before = labels.copy()
    chain = [{"op": "fill_holes", "slice_wise": True}, {"op": "dilation", "radius_mm": 1.0}]
    out = apply_chain(labels, chain, spacing_mm=(1, 1, 1))
    assert out.dtype == np.dtype(dtype)
    assert np.array_equal(labels, before)
    assert out is not labels and int(out.astype(np.int64).sum()) == 16 + 16 + 16 + 4 * 4


def test_float_labels_with_integer_values_and_large_label_values():
    labels = np.zeros((2, 5, 5), dtype=np.float32)
    labels[0, 1:4, 1:4] = 2.0
    out = erosion(labels, radius_mm=1.0, spacing_mm=(5.0, 1.0, 1.0))
    assert out.dtype == np.uint8 and out[0, 2, 2] == 2 and int((out == 2).sum()) == 1
    big = np.zeros((1, 5, 9), dtype=np.uint32)
    big[0, 1:4, 1:4] = 70000
    big[0, 2, 7] = 3
    out = dilation(big, radius_mm=1.0, spacing_mm=(1.0, 1.0, 1.0))
    assert label_voxel_counts(out) == {3: 5, 70000: 9 + 4 * 3}
    assert label_voxel_counts(big) == {3: 1, 70000: 9}


def test_label_volumes_ml_exact():
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[0, 0, :4] = 1
    labels[1:3, :, :] = 7
    spacing = (2.0, 1.0, 0.5)  # 1 mm^3 voxels
    assert label_voxel_counts(labels) == {1: 4, 7: 60}
    assert label_volumes_ml(labels, spacing_mm=spacing) == {1: 0.004, 7: 0.06}
    assert label_volumes_ml(np.zeros((2, 2, 2), np.uint8), spacing_mm=spacing) == {}


# ------------------------------------------------------------------------------------- chain
def test_chain_json_round_trip_and_defaults(tmp_path):
    data = [
        {"op": "opening", "radius_mm": 1.0, "labels": [1]},
        {"op": "Fill_Holes"},
        {"op": "remove_small", "min_size_mm3": 50},
        {"op": "keep_largest", "n": 1},
    ]
    chain = PostprocessChain.from_json(json.dumps(data))
    assert [step.op for step in chain] == ["opening", "fill_holes", "remove_small", "keep_largest"]
    assert chain.to_list() == [
        {"op": "opening", "radius_mm": 1.0, "labels": [1]},
        {"op": "fill_holes", "slice_wise": False, "axis": 0},
        {"op": "remove_small", "min_size_mm3": 50.0, "connectivity": 1},
        {"op": "keep_largest", "n": 1, "connectivity": 1},
    ]
    assert PostprocessChain.from_json(chain.to_json()) == chain
    assert PostprocessChain.from_json({"steps": data}) == chain
    assert PostprocessChain.from_json(chain) is chain
    path = chain.save(tmp_path / "chain.json")
    assert PostprocessChain.from_file(path) == chain
    assert json.loads(path.read_text()) == chain.to_list()
    assert len(PostprocessChain.from_json("[]")) == 0
    assert {op.value for op in PostprocessOp} == {"opening", "closing", "erosion", "dilation", "fill_holes", "remove_small", "keep_largest"}


def test_chain_from_options_fixed_order():
    chain = chain_from_options(
        keep_largest=2, min_size_mm3=5, fill_holes_2d=True, closing_mm=2, opening_mm=1, labels=[2, 1]
    )
    assert chain.to_list() == [
        {"op": "opening", "radius_mm": 1.0, "labels": [1, 2]},
        {"op": "closing", "radius_mm": 2.0, "labels": [1, 2]},
        {"op": "fill_holes", "slice_wise": True, "axis": 0, "labels": [1, 2]},
        {"op": "remove_small", "min_size_mm3": 5.0, "connectivity": 1, "labels": [1, 2]},
        {"op": "keep_largest", "n": 2, "connectivity": 1, "labels": [1, 2]},
    ]
    assert chain_from_options().to_list() == []
    assert chain_from_options(fill_holes=True, keep_largest=True).to_list() == [
        {"op": "fill_holes", "slice_wise": False, "axis": 0},
        {"op": "keep_largest", "n": 1, "connectivity": 1},
    ]
    assert chain_from_options(closing_mm=2, keep_largest=True).describe() == (
        "closing radius_mm=2 -> keep largest n=1, connectivity=1"
    )


def test_apply_chain_equals_the_functions_in_order_and_reports_progress():
    rng = np.random.default_rng(11)
    labels = (rng.random((6, 14, 14)) < 0.4).astype(np.uint8)
    labels[3:, 7:, :] *= 2
    chain = [
        {"op": "closing", "radius_mm": 1.0},
        {"op": "fill_holes", "slice_wise": True},
        {"op": "remove_small", "min_size_mm3": 3.0, "connectivity": 2},
        {"op": "keep_largest", "n": 1, "labels": [2]},
    ]
    calls = []
    out = apply_chain(labels, chain, spacing_mm=SPACING, progress=lambda d, t: calls.append((d, t)))
    step = closing(labels, radius_mm=1.0, spacing_mm=SPACING)
    step = fill_holes(step, slice_wise=True, spacing_mm=SPACING)
    step = remove_small_components(step, min_size_mm3=3.0, spacing_mm=SPACING, connectivity=2)
    step = keep_largest_components(step, labels=[2])
    assert np.array_equal(out, step)
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]


def test_paper_lung_chain_on_a_2d_image():
    # Gil et al. (MIUA 2023): remove < 5000 px, close with a 20 px disc, fill holes, keep largest;
    # with 0.1 mm pixels on a single 1 mm slice that is 50 mm^3 and 2 mm
    spacing = (1.0, 0.1, 0.1)
    yy, xx = np.mgrid[:300, :300]
    d = np.hypot(yy - 100, xx - 100)
    image = np.zeros((1, 300, 300), dtype=np.uint8)
    image[0][(d <= 60) & (d > 20)] = 1  # a tumour with a necrotic core...
    image[0, 95:105, 40:80] = 0  # ...opening to the outside through a 1 mm crack
    image[0, 250:260, 20:30] = 1  # 100 px = 1 mm^3: a false positive speck
    image[0, 200:280, 200:280] = 1  # 6400 px = 64 mm^3: a second, smaller object
    chain = [
        {"op": "remove_small", "min_size_mm3": 50},
        {"op": "closing", "radius_mm": 2.0},
        {"op": "fill_holes"},
        {"op": "keep_largest"},
    ]
    out = apply_chain(image, chain, spacing_mm=spacing)[0]
    assert set(np.unique(out)) == {0, 1}
    assert np.all(out[d <= 57] == 1)  # core filled, crack bridged (up to a dent at its mouth)
    assert not out[d > 62].any()  # speck and second object gone, nothing grew
    without_closing = apply_chain(image, [chain[0], chain[2], chain[3]], spacing_mm=spacing)[0]
    assert not without_closing[d <= 20].any()  # the crack keeps the core open


def test_cancel_between_steps():
    labels = np.zeros((2, 4, 4), dtype=np.uint8)
    labels[0, 1, 1] = 1
    chain = [{"op": "dilation", "radius_mm": 1.0}] * 3
    event = threading.Event()
    done = []

    def progress(d, t):
        done.append(d)
        if d == 1:
            event.set()

    with pytest.raises(CancelledError, match="step 1"):
        apply_chain(labels, chain, spacing_mm=(1, 1, 1), progress=progress, cancel=event)
    assert done == [0, 1]
    with pytest.raises(CancelledError):
        postprocess(Volume(labels), chain, cancel=event)


def test_postprocess_volume_keeps_geometry_and_records_the_chain():
    geometry = oblique_geometry()
    array = np.zeros((6, 20, 24), dtype=np.uint8)
    array[1:5, 4:14, 5:15] = 1
    array[2:4, 7:10, 8:11] = 0
    volume = Volume(array, geometry, {"source": "test"})
    out = postprocess(volume, [{"op": "fill_holes"}])
    assert out.geometry == geometry
    assert out.metadata["source"] == "test"
    assert json.loads(out.metadata["medseg_postprocess"]) == [{"op": "fill_holes", "slice_wise": False, "axis": 0}]
    assert int(out.array.sum()) == 4 * 10 * 10
    assert int(volume.array.sum()) == 4 * 10 * 10 - 2 * 3 * 3  # input untouched


# ------------------------------------------------------------------------------------- errors
def test_invalid_non_integer_labels():
    with pytest.raises(InvalidInputError, match="non-integer"):
        dilation(np.full((2, 2, 2), 0.5), radius_mm=1, spacing_mm=(1, 1, 1))
    with pytest.raises(InvalidInputError, match="NaN"):
        apply_chain(np.full((2, 2, 2), np.nan), [], spacing_mm=(1, 1, 1))
    with pytest.raises(InvalidInputError, match="negative"):
        fill_holes(np.full((2, 2, 2), -1))
    with pytest.raises(InvalidInputError, match="dtype"):
        label_voxel_counts(np.full((2, 2, 2), "a"))


def test_invalid_dimensions():
    with pytest.raises(InvalidInputError, match=r"shape \(2, 2, 2, 2\)"):
        erosion(np.zeros((2, 2, 2, 2), np.uint8), radius_mm=1, spacing_mm=(1, 1, 1))
    with pytest.raises(InvalidInputError, match="expected a"):
        keep_largest_components(np.zeros(4, np.uint8))
    with pytest.raises(InvalidInputError, match="components"):
        postprocess(Volume(np.zeros((2, 2, 2, 3), np.uint8)), [])
    with pytest.raises(InvalidInputError, match="slice_wise=True needs a 3D"):
        fill_holes(np.zeros((4, 4), np.uint8), slice_wise=True)
    with pytest.raises(InvalidInputError, match="slice_wise=true needs a 3D"):
        apply_chain(np.zeros((4, 4), np.uint8), [{"op": "fill_holes", "slice_wise": True}], spacing_mm=(1, 1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"radius_mm": -1.0, "spacing_mm": (1, 1, 1)}, "radius_mm=-1.0"),
        ({"radius_mm": float("inf"), "spacing_mm": (1, 1, 1)}, "radius_mm=inf"),
        ({"radius_mm": "big", "spacing_mm": (1, 1, 1)}, "radius_mm='big'"),
        ({"radius_mm": 1.0, "spacing_mm": (1, 1)}, r"spacing_mm=\(1, 1\)"),
        ({"radius_mm": 1.0, "spacing_mm": (1, 0, 1)}, "spacing_mm"),
        ({"radius_mm": 1.0, "spacing_mm": None}, "spacing_mm=None"),
        ({"radius_mm": 1.0, "spacing_mm": (1, 1, 1), "labels": [0]}, r"labels=\[0\]"),
        ({"radius_mm": 1.0, "spacing_mm": (1, 1, 1), "labels": []}, r"labels=\[\]"),
        ({"radius_mm": 1.0, "spacing_mm": (1, 1, 1), "labels": "1"}, "labels='1'"),
    ],
)
def test_invalid_morphology_parameters(kwargs, match):
    for function in (erosion, dilation, opening, closing):
        with pytest.raises(InvalidInputError, match=match):
            function(np.zeros((2, 3, 3), np.uint8), **kwargs)


def test_invalid_footprint_parameters():
    with pytest.raises(InvalidInputError, match="radius_mm=-0.5"):
        ellipsoid_footprint(-0.5, (1, 1, 1))
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        ellipsoid_footprint(1.0, (1, -1, 1))
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        ellipsoid_footprint(1.0, ())


def test_invalid_component_and_fill_parameters():
    labels = np.zeros((2, 3, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="min_size_mm3=-1"):
        remove_small_components(labels, min_size_mm3=-1, spacing_mm=(1, 1, 1))
    with pytest.raises(InvalidInputError, match="min_size_mm3=nan"):
        remove_small_components(labels, min_size_mm3=float("nan"), spacing_mm=(1, 1, 1))
    with pytest.raises(InvalidInputError, match="connectivity=4"):
        remove_small_components(labels, min_size_mm3=1, spacing_mm=(1, 1, 1), connectivity=4)
    with pytest.raises(InvalidInputError, match="connectivity=0"):
        keep_largest_components(labels, connectivity=0)
    with pytest.raises(InvalidInputError, match="n=0"):
        keep_largest_components(labels, n=0)
    with pytest.raises(InvalidInputError, match="n=1.5"):
        keep_largest_components(labels, n=1.5)
    with pytest.raises(InvalidInputError, match="axis=3"):
        fill_holes(labels, slice_wise=True, axis=3)
    with pytest.raises(InvalidInputError, match="slice_wise='yes'"):
        fill_holes(labels, slice_wise="yes")
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        fill_holes(labels, spacing_mm=(1, 1))
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        label_volumes_ml(labels, spacing_mm=(1, 1, -1))


@pytest.mark.parametrize(
    "chain, match",
    [
        ([{"op": "openning", "radius_mm": 1}], r"chain step 0: op='openning'.*did you mean 'opening'"),
        ([{"op": "fill_holes"}, {"op": "opening", "radius_mm": -1}], r"chain step 1 \(opening\): radius_mm=-1"),
        ([{"op": "closing"}], r"chain step 0 \(closing\): radius_mm is required"),
        ([{"op": "closing", "radius_mm": 1, "radius": 2}], r"chain step 0 \(closing\): unknown field 'radius'"),
        ([{"op": "keep_largest", "n": 0}], r"chain step 0 \(keep_largest\): n=0"),
        ([{"op": "keep_largest", "n": True}], r"chain step 0 \(keep_largest\): n=True"),
        ([{"op": "remove_small", "min_size_mm3": "50"}], r"chain step 0 \(remove_small\): min_size_mm3='50'"),
        ([{"op": "remove_small", "min_size_mm3": 5, "connectivity": 4}], r"step 0 \(remove_small\): connectivity=4"),
        ([{"op": "fill_holes", "axis": 3}], r"chain step 0 \(fill_holes\): axis=3"),
        ([{"op": "dilation", "radius_mm": 1, "labels": [0]}], r"chain step 0 \(dilation\): labels.0=0"),
        ([{"op": "dilation", "radius_mm": 1, "labels": []}], r"chain step 0 \(dilation\): labels=\[\]"),
        ([{"radius_mm": 1}], r"chain step 0: missing \"op\""),
        (["closing"], r"chain step 0: expected an object"),
        ({"step": []}, r"expected a list of steps or \{\"steps\""),
        (42, "expected a list of steps; got int"),
        ("[{]", "not valid JSON"),
    ],
)
def test_invalid_chain(chain, match):
    with pytest.raises(InvalidInputError, match=match):
        PostprocessChain.from_json(chain)
    with pytest.raises(InvalidInputError, match=match):
        apply_chain(np.zeros((2, 2, 2), np.uint8), chain, spacing_mm=(1, 1, 1))


def test_invalid_chain_file(tmp_path):
    with pytest.raises(FileFormatError, match="chain file not found"):
        PostprocessChain.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{'op': 'closing'}]")
    with pytest.raises(FileFormatError, match="bad.json: not valid JSON"):
        PostprocessChain.from_file(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('[{"op": "closing", "radius_mm": -2}]')
    with pytest.raises(InvalidInputError, match=r"wrong.json: chain step 0 \(closing\): radius_mm=-2"):
        PostprocessChain.from_file(wrong)


def test_invalid_chain_options():
    with pytest.raises(InvalidInputError, match="choose one"):
        chain_from_options(fill_holes=True, fill_holes_2d=True)
    with pytest.raises(InvalidInputError, match="keep_largest=-1"):
        chain_from_options(keep_largest=-1)
    with pytest.raises(InvalidInputError, match=r"step 0 \(opening\): radius_mm=-1"):
        chain_from_options(opening_mm=-1)
    with pytest.raises(InvalidInputError, match=r"labels=\[0\]"):
        chain_from_options(closing_mm=1, labels=[0])


@pytest.mark.parametrize("function", [dilation, closing])
def test_contested_voxels_on_random_maps_follow_the_nearest_label_rule(function):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(5)
    spacing = (2.0, 1.0, 0.8)
    labels = rng.integers(1, 5, (8, 16, 16)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.7] = 0
    radius = 2.5
    out = function(labels, radius_mm=radius, spacing_mm=spacing)
    distance = {v: ndi.distance_transform_edt(labels != v, sampling=spacing) for v in (1, 2, 3, 4)}
    alone = {v: function(labels == v, radius_mm=radius, spacing_mm=spacing) for v in (1, 2, 3, 4)}
    contested = 0
    for index in zip(*np.nonzero(labels == 0)):
        claimers = [v for v in (1, 2, 3, 4) if alone[v][index]]
        if not claimers:
            assert out[index] == 0
            continue
        contested += len(claimers) > 1
        nearest = min(claimers, key=lambda v: (distance[v][index], v))
        assert out[index] == nearest, (index, claimers)
    assert contested > 10  # the scene does exercise the rule
