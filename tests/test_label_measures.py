"""Per-label counts, volumes and bounding boxes: the one implementation, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.errors import InvalidInputError
from napari_medseg.label_measures import (
    DIRECT_MAX_LABEL,
    grow_box,
    label_bounding_boxes,
    label_volumes_ml,
    label_voxel_counts,
    voxel_volume_ml,
)


def _brute_boxes(labels):
    boxes = {}
    for value in np.unique(labels):
        if value:
            where = np.nonzero(labels == value)
            boxes[int(value)] = tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)
    return boxes


@pytest.mark.parametrize("big", [7, DIRECT_MAX_LABEL, DIRECT_MAX_LABEL + 1, 2**40, np.iinfo(np.uint64).max])
def test_boxes_and_counts_match_brute_force_on_both_sides_of_the_threshold(big):
    rng = np.random.default_rng(0)
    labels = np.zeros((6, 7, 8), np.uint64)
    labels[rng.random(labels.shape) < 0.1] = 3
    labels[1:3, 2:6, 4] = big
    assert label_bounding_boxes(labels) == _brute_boxes(labels)
    values, counts = np.unique(labels, return_counts=True)
    assert label_voxel_counts(labels) == {int(v): int(c) for v, c in zip(values, counts) if v}
    assert list(label_voxel_counts(labels)) == sorted(label_voxel_counts(labels))


def test_boxes_of_a_bool_mask_and_empty_maps():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2] = True
    assert label_bounding_boxes(mask) == {1: (slice(1, 3), slice(2, 3))}
    assert label_bounding_boxes(np.zeros((3, 3), np.uint8)) == {} == label_voxel_counts(np.zeros((0, 3), np.uint8))


def test_grow_box_clips_to_the_array():
    box = (slice(1, 3), slice(0, 2))
    assert grow_box(box, 1, (3, 10)) == (slice(0, 3), slice(0, 3))
    assert grow_box(box, (0, 4), (3, 10)) == (slice(1, 3), slice(0, 6))


def test_volumes_in_ml_and_the_metrics_and_cli_agree(tmp_path):
    labels = np.zeros((4, 5, 6), np.uint16)
    labels[0, :2, :2] = 1
    labels[1:4, :, :4] = 700
    spacing = (2.0, 0.5, 1.0)
    assert voxel_volume_ml(spacing) == 0.001
    assert label_volumes_ml(labels, spacing_mm=spacing) == {1: 0.004, 700: 0.06}
    from napari_medseg.metrics import volume_ml

    assert volume_ml(labels == 700, spacing_mm=spacing) == 0.06


def test_invalid_label_maps():
    with pytest.raises(InvalidInputError, match="negative"):
        label_voxel_counts(np.array([[0, -1]]))
    with pytest.raises(InvalidInputError, match="non-integer"):
        label_bounding_boxes(np.array([[0.5, 1.0]]))
    with pytest.raises(InvalidInputError, match="dtype"):
        label_voxel_counts(np.array(["a"]))
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        label_volumes_ml(np.ones((2, 2, 2), np.uint8), spacing_mm=(1.0, 1.0))
