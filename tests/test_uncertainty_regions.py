"""Uncertain regions (connected components of a high-uncertainty map) and re-thresholding labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.errors import InvalidInputError
from napari_medseg.labelmaps import labels_from_probabilities as _labels_in_labelmaps
from napari_medseg.uncertainty import (
    UncertainRegion,
    labels_from_probabilities,
    uncertain_regions,
)


def _two_blobs() -> np.ndarray:
    u = np.zeros((4, 6, 8), np.float32)
    u[1:3, 1:3, 1:3] = 0.6  # 8 voxels, centroid (1.5, 1.5, 1.5)
    u[0, 4, 6] = 1.2  # 1 voxel, the map's maximum
    u[3, 5, 0] = 0.2  # below the default threshold (0.6 = half the maximum)
    return u


def test_regions_ranked_by_integrated_uncertainty():
    regions = uncertain_regions(_two_blobs(), spacing_mm=(2.0, 1.0, 0.5))
    assert regions == [
        UncertainRegion(1, (1.5, 1.5, 1.5), (3.0, 1.5, 0.75), 8, 8.0, pytest.approx(0.6), pytest.approx(0.6),
                        pytest.approx(4.8)),
        UncertainRegion(2, (0.0, 4.0, 6.0), (0.0, 4.0, 3.0), 1, 1.0, pytest.approx(1.2), pytest.approx(1.2),
                        pytest.approx(1.2)),
    ]


def test_regions_explicit_threshold_min_size_and_n():
    u = _two_blobs()
    everything = uncertain_regions(u, spacing_mm=(1, 1, 1), threshold=0.1)
    assert [r.n_voxels for r in everything] == [8, 1, 1]
    assert [r.max for r in everything] == pytest.approx([0.6, 1.2, 0.2])  # ties in size broken by total
    big = uncertain_regions(u, spacing_mm=(1, 1, 1), threshold=0.1, min_size_mm3=2.0)
    assert [r.n_voxels for r in big] == [8]
    assert len(uncertain_regions(u, spacing_mm=(1, 1, 1), threshold=0.1, n=2)) == 2
    assert uncertain_regions(u, spacing_mm=(1, 1, 1), threshold=2.0) == []


def test_regions_face_connectivity_and_zero_map():
    u = np.zeros((1, 3, 3), np.float32)
    u[0, 0, 0] = u[0, 1, 1] = 1.0  # diagonal neighbours: two regions
    assert [r.n_voxels for r in uncertain_regions(u, spacing_mm=(1, 1, 1))] == [1, 1]
    assert uncertain_regions(np.zeros((2, 2, 2)), spacing_mm=(1, 1, 1)) == []
    assert uncertain_regions(np.zeros((2, 2, 2)), spacing_mm=(1, 1, 1), threshold=0.0) == []


def test_regions_input_not_modified():
    u = _two_blobs()
    before = u.copy()
    uncertain_regions(u, spacing_mm=(1, 1, 1))
    assert np.array_equal(u, before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"uncertainty": np.zeros((3, 3))}, "expected a \\(z, y, x\\) map"),
        ({"uncertainty": np.full((2, 2, 2), np.nan)}, "NaN"),
        ({"spacing_mm": (1, 1)}, "spacing_mm"),
        ({"spacing_mm": (1, 0, 1)}, "spacing_mm"),
        ({"n": 0}, "n=0"),
        ({"threshold": -1.0}, "threshold"),
        ({"min_size_mm3": -1.0}, "min_size_mm3"),
    ],
)
def test_invalid_uncertain_regions(kwargs, match):
    args = {"uncertainty": np.ones((2, 2, 2)), "spacing_mm": (1, 1, 1), **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        uncertain_regions(args.pop("uncertainty"), **args)


# ---------------------------------------------------------------------------- re-thresholding
_P = np.array(
    [[0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25], [0.4, 0.4, 0.2]], np.float32
).reshape(1, 1, 5, 3)


def test_labels_argmax_matches_predict_convention():
    labels = labels_from_probabilities(_P, [0, 1, 2])
    assert labels.dtype == np.uint8 and labels.shape == (1, 1, 5)
    assert labels.ravel().tolist() == [1, 1, 2, 0, 0]  # a tie takes the first channel
    # one rule: predict, uncertainty and the bundle runner use this same function
    assert labels_from_probabilities is _labels_in_labelmaps
    assert np.array_equal(labels, np.array([0, 1, 2], np.uint8)[np.argmax(_P, axis=-1)])


def test_labels_single_and_per_label_thresholds():
    assert labels_from_probabilities(_P, [0, 1, 2], min_probability=0.45).ravel().tolist() == [1, 1, 0, 0, 0]
    assert labels_from_probabilities(_P, [0, 1, 2], min_probability={1: 0.6}).ravel().tolist() == [0, 1, 2, 0, 0]
    # the background threshold is ignored: background never turns into anything else
    assert labels_from_probabilities(_P, [0, 1, 2], min_probability={0: 1.0}).ravel().tolist() == [1, 1, 2, 0, 0]
    assert labels_from_probabilities(_P, [0, 1, 2], min_probability=0.0).ravel().tolist() == [1, 1, 2, 0, 0]


def test_labels_non_contiguous_values_and_dtype():
    labels = labels_from_probabilities(_P, [0, 7, 300])
    assert labels.dtype == np.uint16
    assert labels.ravel().tolist() == [7, 7, 300, 0, 0]


def test_labels_input_not_modified():
    p = _P.copy()
    labels_from_probabilities(p, [0, 1, 2], min_probability=0.9)
    assert np.array_equal(p, _P)


@pytest.mark.parametrize(
    "values, kwargs, match",
    [
        ([0, 1], {}, "last axis"),
        ([1, 2, 3], {}, "including 0"),
        ([0, 1, 1], {}, "unique"),
        ([0, 1, 2], {"min_probability": 1.5}, "\\[0, 1\\]"),
        ([0, 1, 2], {"min_probability": {5: 0.5}}, "not among label_values"),
    ],
)
def test_invalid_labels_from_probabilities(values, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        labels_from_probabilities(_P, values, **kwargs)
