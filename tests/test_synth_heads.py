"""Synthetic heads (napari_medseg.training.synth.head_layers / synthesize_head_case) on tiny volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_medseg.errors import InvalidInputError
from napari_medseg.training.synth import (
    FIRST_SOFT_TISSUE_CLASS,
    SHELL_THICKNESS_MM,
    head_layers,
    synthesize_head_case,
)

SHAPE_RANGES = list(SHELL_THICKNESS_MM.values())
SHAPE = (64, 48, 44)  # z (inferior -> superior), y (posterior -> anterior), x
CENTRE = np.array([40.0, 24.0, 22.0])  # the brain sits high: room for the neck below


def _brain_maps():
    grids = np.indices(SHAPE).astype(np.float32)
    radius = np.sqrt((((grids - CENTRE[:, None, None, None]) / np.array([10.0, 12.0, 10.0])[:, None, None, None]) ** 2).sum(0))
    brain = radius <= 1.0
    wm = np.clip((0.6 - radius) / 0.2, 0.0, 1.0).astype(np.float32)
    gm = (np.clip((1.0 - radius) / 0.15, 0.0, 1.0) * (1.0 - wm)).astype(np.float32)
    return gm, wm, brain


def test_shells_lie_outside_the_brain_in_order_and_within_their_thickness():
    _, _, brain = _brain_maps()
    classes = head_layers(brain, np.random.default_rng(0))
    assert classes.dtype == np.uint8 and classes.shape == SHAPE
    np.testing.assert_array_equal(classes == 1, brain)
    distance = ndimage.distance_transform_edt(~brain)
    # a thickness varies by exp(0.25 * N(0, 1)) over space: allow exp(1) above the range's top
    reach = 0.0
    medians = []
    for value, (_, high) in SHELL_THICKNESS_MM.items():
        reach += high * np.e
        d = distance[classes == value]
        assert d.size > 0, f"shell {value} is missing"
        assert d.min() > 0 and d.max() <= reach + 1.0, value
        medians.append(np.median(d))
    assert medians == sorted(medians), "shells are not in order from the brain outwards"


def test_face_and_neck_below_the_brain_and_air_far_above():
    _, _, brain = _brain_maps()
    classes = head_layers(brain, np.random.default_rng(1))
    bottom = int(np.argwhere(brain)[:, 0].min())
    soft = classes >= FIRST_SOFT_TISSUE_CLASS
    assert soft[: bottom - 2].sum() > 500  # neck and face tissue under the brain
    assert not soft[int(CENTRE[0]) :].any()  # but none in the upper head: there only skull and scalp
    # the upper head is only the shells: nothing beyond their reach, and air in the corners
    distance = ndimage.distance_transform_edt(~brain)
    upper = np.indices(SHAPE)[0] > CENTRE[0]
    reach = sum(high for _, high in SHAPE_RANGES) * np.e
    assert np.all(distance[upper & (classes > 0)] <= reach)
    assert classes[-1, 0, 0] == classes[-1, -1, -1] == 0


def test_head_layers_are_reproducible_with_a_seed():
    _, _, brain = _brain_maps()
    a = head_layers(brain, np.random.default_rng(5))
    b = head_layers(brain, np.random.default_rng(5))
    c = head_layers(brain, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_head_case_labels_nothing_outside_the_brain_and_has_a_head():
    gm, wm, brain = _brain_maps()
    # no deformation: the brain stays where it is, so "outside" is known exactly
    fixed = dict(max_rotation_deg=0.0, scale_range=(1.0, 1.0), elastic_voxels=0.0)
    image, labels = synthesize_head_case(gm, wm, brain, np.random.default_rng(3), skull_stripped_probability=0.0, **fixed)
    assert image.dtype == np.float32 and labels.dtype == np.uint8 and image.shape == labels.shape == SHAPE
    assert np.all(labels[~brain] == 0)
    assert set(np.unique(labels)) == {0, 1, 2}
    # inside the brain the labels are the maps' rule: the likelier tissue if its probability >= 0.5
    expected = np.where(np.maximum(gm, wm) >= 0.5, np.argmax(np.stack([gm, wm]), axis=0) + 1, 0)
    np.testing.assert_array_equal(labels[brain], expected[brain])
    outside = ndimage.distance_transform_edt(~brain)
    shell = (outside > 4) & (outside < 10)
    assert image[shell].std() > 5.0 and image[shell].mean() > 10.0  # skull and scalp are there, not air
    stripped, stripped_labels = synthesize_head_case(gm, wm, brain, np.random.default_rng(3), skull_stripped_probability=1.0, **fixed)
    assert np.all(stripped[~brain] == 0)
    np.testing.assert_array_equal(stripped_labels, labels)


def test_head_case_is_reproducible_with_a_seed():
    gm, wm, brain = _brain_maps()
    a = synthesize_head_case(gm, wm, brain, np.random.default_rng([2027, 4]))
    b = synthesize_head_case(gm, wm, brain, np.random.default_rng([2027, 4]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_bad_inputs_name_the_argument():
    gm, wm, brain = _brain_maps()
    with pytest.raises(InvalidInputError, match="brain"):
        head_layers(np.zeros(SHAPE, bool), np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="brain"):
        head_layers(brain[0], np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="voxel_mm"):
        head_layers(brain, np.random.default_rng(0), voxel_mm=0.0)
    with pytest.raises(InvalidInputError, match="gm"):
        synthesize_head_case(gm[:-1], wm, brain, np.random.default_rng(0))
