"""The paper's measures (p, r, F, MI in nats and bits), Jacobian, folding and label scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_medseg.errors import InvalidInputError
from napari_medseg.registration.evaluate import (
    evaluate_registration,
    folding,
    jacobian_determinant,
    label_scores,
    mutual_information,
    overlap_scores,
)


def test_overlap_scores_hand_computed():
    ref = np.zeros((4, 5), bool)
    ref[1:3, 1:4] = True  # 6 pixels
    reg = np.zeros((4, 5), bool)
    reg[1:3, 2:5] = True  # 6 pixels, 4 in common
    s = overlap_scores(ref, reg)
    assert (s.precision, s.recall) == (4 / 6, 4 / 6)
    assert s.f_measure == pytest.approx(4 / 6)
    reg2 = np.zeros((4, 5), bool)
    reg2[1, 1:3] = True  # 2 pixels, both common: p = 1, r = 1/3, F = 0.5
    s = overlap_scores(ref, reg2)
    assert (s.precision, s.recall, s.f_measure) == (1.0, 1 / 3, 0.5)
    assert overlap_scores(ref, np.zeros_like(ref)).to_dict() == {"precision": 0.0, "recall": 0.0, "f_measure": 0.0}


def test_mutual_information_nats_and_bits():
    a = np.array([0.0, 0.0, 1.0, 1.0])
    assert mutual_information(a, a, bins=2) == pytest.approx(math.log(2))
    assert mutual_information(a, a, bins=2, base=2) == pytest.approx(1.0)
    assert mutual_information(a, np.array([0.0, 1.0, 0.0, 1.0]), bins=2) == pytest.approx(0.0)
    # 4 equiprobable values, 20 bins: MI(a, a) = H(a) = ln 4
    b = np.repeat([0.0, 1.0, 2.0, 3.0], 5)
    assert mutual_information(b, b) == pytest.approx(math.log(4))
    assert mutual_information(b, 10 - 3 * b) == pytest.approx(math.log(4))  # invariant to monotone maps


def test_jacobian_determinant_of_known_fields():
    u = np.zeros((2, 6, 7))
    u[1] = 0.5 * np.arange(7)[None, :] * 2.0  # x grows 1 mm per 2 mm voxel: stretch 1.5
    np.testing.assert_allclose(jacobian_determinant(u, spacing_mm=(1.0, 2.0)), 1.5)
    u3 = np.zeros((3, 4, 5, 6))
    u3[0] = -0.5 * np.arange(4)[:, None, None]  # z compressed to 0.5
    u3[2] = 1.0 * np.arange(6)[None, None, :]  # x stretched to 2
    np.testing.assert_allclose(jacobian_determinant(u3), 1.0)
    fold = np.zeros((2, 5, 5))
    fold[1] = -2.0 * np.arange(5)[None, :]  # d(x + u)/dx = -1: folded everywhere
    f = folding(fold)
    assert f == {"jacobian_min": -1.0, "folding_percent": 100.0}
    assert folding(np.zeros((2, 5, 5))) == {"jacobian_min": 1.0, "folding_percent": 0.0}


def test_evaluate_registration_keys_and_values():
    ref = np.zeros((10, 10), bool)
    ref[2:8, 2:8] = True
    image = ref.astype(float) * 3.0
    out = evaluate_registration(
        ref, ref, original=image, registered=image, reference_image=image, displacement=np.zeros((2, 10, 10))
    )
    assert out["precision"] == out["recall"] == out["f_measure"] == 1.0
    assert out["udt_ssd"] == 0.0
    p = 0.36
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert out["mutual_information_nats"] == pytest.approx(h)
    assert out["mutual_information_bits"] == pytest.approx(h / math.log(2))
    assert out["f_measure_intensity"] == 1.0
    assert out["jacobian_min"] == 1.0 and out["folding_percent"] == 0.0


def test_label_scores_uses_the_metrics_module():
    ref = np.zeros((12, 12), np.uint8)
    ref[2:6, 2:6] = 1
    ref[7:10, 7:11] = 2
    reg = ref.copy()
    reg[2, 2:6] = 0  # label 1 loses a row: Dice 2*12/(16+12)
    scores = label_scores(reg, ref, spacing_mm=(1.0, 0.5))
    assert scores[1]["dice"] == pytest.approx(24 / 28)
    assert scores[2]["dice"] == 1.0 and scores[2]["hd95_mm"] == 0.0
    assert scores[1]["hausdorff_mm"] == pytest.approx(1.0)  # one row of 1 mm


def test_invalid_evaluation_inputs():
    with pytest.raises(InvalidInputError, match="shape"):
        overlap_scores(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(InvalidInputError, match="bins"):
        mutual_information(np.zeros(4), np.zeros(4), bins=1)
    with pytest.raises(InvalidInputError, match="NaN"):
        mutual_information(np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(InvalidInputError, match="shape"):
        mutual_information(np.zeros(4), np.zeros(5))
    with pytest.raises(InvalidInputError, match="ndim"):
        jacobian_determinant(np.zeros((3, 5, 5)))
    with pytest.raises(InvalidInputError, match="shape"):
        label_scores(np.zeros((3, 3), np.uint8), np.zeros((4, 3), np.uint8), spacing_mm=1.0)
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        label_scores(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8), spacing_mm=(1.0, -1.0))
