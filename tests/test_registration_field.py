"""Displacement magnitude and the before/after registration report (same numbers as the CLI)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import oblique_geometry

from napari_medseg.errors import InvalidInputError
from napari_medseg.registration.evaluate import (
    displacement_magnitude,
    evaluate_registration,
    overlap_scores,
    registration_report,
)
from napari_medseg.registration.metric import udt_ssd
from napari_medseg.registration.synthetic import synthetic_pair
from napari_medseg.registration.volumes import displacement_to_volume, register_volumes
from napari_medseg.volume import Geometry, Volume


def test_displacement_magnitude_hand_computed():
    u = np.zeros((1, 2, 3, 3), np.float32)
    u[0, 0, 0] = (3.0, 4.0, 0.0)
    u[0, 1, 2] = (1.0, 2.0, 2.0)
    u[0, 0, 1] = (0.0, 0.0, -0.5)
    geometry = Geometry((0.5, 0.5, 1.0), (1.0, 2.0, 3.0))
    field = Volume(u, geometry)
    out = displacement_magnitude(field)
    assert out.array.dtype == np.float32 and out.geometry == geometry
    assert np.array_equal(out.array, np.array([[[5.0, 0.5, 0.0], [0.0, 0.0, 3.0]]], np.float32))
    assert np.array_equal(field.array, u)  # not modified


def test_displacement_magnitude_independent_of_direction():
    rng = np.random.default_rng(0)
    index_field = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)  # mm along array axes (z, y, x)
    oblique = displacement_to_volume(index_field, oblique_geometry())
    expected = np.sqrt((index_field.astype(np.float64) ** 2).sum(axis=0))
    assert np.allclose(displacement_magnitude(oblique).array, expected, atol=1e-5)


def test_invalid_displacement_magnitude():
    with pytest.raises(InvalidInputError, match="3 components.*got 1 components"):
        displacement_magnitude(Volume(np.zeros((1, 2, 2), np.float32)))
    with pytest.raises(InvalidInputError, match="got ndarray"):
        displacement_magnitude(np.zeros((1, 2, 2, 3)))
    bad = np.zeros((1, 2, 2, 3), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        displacement_magnitude(Volume(bad))


def _pair_volumes():
    pair = synthetic_pair((48, 48))
    geometry = Geometry((0.5, 0.5, 1.0), (10.0, -5.0, 2.0))
    fixed = Volume(pair.fixed[None], geometry)
    moving = Volume(pair.moving[None], geometry)
    fixed_mask = Volume(pair.fixed_mask[None].astype(np.uint8), geometry)
    moving_mask = Volume(pair.moving_mask[None].astype(np.uint8), geometry)
    return pair, fixed, moving, fixed_mask, moving_mask


def test_registration_report_matches_cli_evaluation_and_before_values():
    pair, fixed, moving, fixed_mask, moving_mask = _pair_volumes()
    out = register_volumes(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask, levels=2, max_iterations=60)
    report = registration_report(out, moving_mask=moving_mask)
    spacing_mm = (0.5, 0.5)
    expected = evaluate_registration(
        out.fixed_mask, out.result.warped_mask, original=out.moving_on_fixed, registered=out.result.warped,
        displacement=out.result.displacement, spacing_mm=spacing_mm,
    )
    for key in ("precision", "recall", "f_measure", "udt_ssd", "mutual_information_nats", "jacobian_min", "folding_percent"):
        assert report[key] == expected[key]
    assert report["mutual_information_bits"] == expected["mutual_information_nats"] / math.log(2)
    assert report["iterations"] == out.result.iterations and report["metric"] == "udt"
    before = overlap_scores(pair.fixed_mask, pair.moving_mask)
    assert report["f_measure_before"] == before.f_measure and report["precision_before"] == before.precision
    assert report["udt_ssd_before"] == udt_ssd(pair.fixed_mask, pair.moving_mask, spacing_mm)
    assert report["f_measure"] > report["f_measure_before"]
    assert report["udt_ssd"] < report["udt_ssd_before"]


def test_registration_report_auto_mask_and_resampled_mask():
    pair, fixed, moving, _, moving_mask = _pair_volumes()
    out = register_volumes(fixed, moving, levels=1, max_iterations=3)
    from napari_medseg.registration.register import auto_mask

    auto = registration_report(out)
    assert auto["f_measure_before"] == overlap_scores(auto_mask(pair.fixed), auto_mask(pair.moving)).f_measure
    # a mask on a finer moving grid is resampled (nearest) onto the fixed grid first
    finer = Volume(np.repeat(np.repeat(moving_mask.array, 2, axis=1), 2, axis=2),
                   Geometry((0.25, 0.25, 1.0), (10.0 - 0.125, -5.0 - 0.125, 2.0)))
    resampled = registration_report(out, moving_mask=finer)
    assert resampled["f_measure_before"] > 0.9 * overlap_scores(pair.fixed_mask, pair.moving_mask).f_measure


def test_invalid_registration_report_mask():
    _, fixed, moving, fixed_mask, moving_mask = _pair_volumes()
    out = register_volumes(fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask, levels=1, max_iterations=2)
    with pytest.raises(InvalidInputError, match="moving_mask: expected a single-component"):
        registration_report(out, moving_mask=np.zeros((1, 48, 48)))
