"""The registration loop: 2D and 3D, every metric and regulariser, progress, cancel, divergence."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from napari_medseg.errors import CancelledError, GeometryMismatchError, InvalidInputError
from napari_medseg.registration import RegistrationWarning, register, udt_ssd, warp
from napari_medseg.registration.evaluate import overlap_scores
from napari_medseg.registration.synthetic import synthetic_pair


def _ellipse(shape, centre, radii):
    grids = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


@pytest.fixture(scope="module")
def pair2d():
    return synthetic_pair((64, 64))


def test_warp_translates_by_displacement_in_mm():
    image = np.arange(40, dtype=np.float32).reshape(5, 8)
    u = np.zeros((2, 5, 8), np.float32)
    u[1] = 2.0  # 2 mm along x with 2 mm voxels: one voxel
    out = warp(image, u, spacing_mm=(1.0, 2.0))
    np.testing.assert_array_equal(out[:, :-1], image[:, 1:])
    np.testing.assert_array_equal(out[:, -1], image[:, -1])  # outside: nearest border value
    u[1] = 1.0  # half a voxel: linear interpolation
    np.testing.assert_allclose(warp(image, u, spacing_mm=(1.0, 2.0))[:, :-1], image[:, :-1] + 0.5)
    labels = np.array([[0, 3, 3, 7]], np.uint8)
    v = np.zeros((2, 1, 4), np.float32)
    v[1] = 0.6
    assert warp(labels, v, order=0).tolist() == [[3, 3, 7, 7]]
    assert warp(labels, v, order=0).dtype == np.uint8


def test_register_2d_udt_recovers_the_shape(pair2d):
    p = pair2d
    fixed0, moving0 = p.fixed.copy(), p.moving_prealigned.copy()
    before = overlap_scores(p.fixed_mask, p.moving_prealigned_mask).f_measure
    result = register(
        p.fixed, p.moving_prealigned, fixed_mask=p.fixed_mask, moving_mask=p.moving_prealigned_mask, max_iterations=60
    )
    after = overlap_scores(p.fixed_mask, result.warped_mask).f_measure
    assert before < 0.985 and after > 0.99
    assert result.displacement.shape == (2, 64, 64) and result.displacement.dtype == np.float32
    assert result.warped.shape == (64, 64) and result.warped_mask.dtype == bool
    assert result.iterations == sum(result.iterations_per_level) == len(result.metric_history)
    assert len(result.iterations_per_level) == 3 and result.level_history[0] == 2 and result.level_history[-1] == 0
    assert not result.diverged and result.seconds > 0
    # the metric history of the finest level is the UDT-SSD of the warped mask at that iteration
    fine = [v for v, lv in zip(result.metric_history, result.level_history) if lv == 0]
    assert fine[-1] < fine[0]
    assert udt_ssd(p.fixed_mask, result.warped_mask) < udt_ssd(p.fixed_mask, p.moving_prealigned_mask)
    np.testing.assert_array_equal(p.fixed, fixed0)  # inputs untouched
    np.testing.assert_array_equal(p.moving_prealigned, moving0)


@pytest.mark.parametrize("metric", ["udt", "dt", "intensity", "reference"])
@pytest.mark.parametrize("regularizer", ["elastic", "gaussian", "diffusive"])
def test_every_metric_and_regularizer_runs_and_does_not_degrade(pair2d, metric, regularizer):
    p = pair2d
    before = overlap_scores(p.fixed_mask, p.moving_prealigned_mask).f_measure
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegistrationWarning)
        result = register(
            p.fixed, p.moving_prealigned, fixed_mask=p.fixed_mask, moving_mask=p.moving_prealigned_mask,
            metric=metric, regularizer=regularizer, levels=2, max_iterations=30,
        )
    assert np.all(np.isfinite(result.displacement))
    after = overlap_scores(p.fixed_mask, result.warped_mask).f_measure
    if metric == "intensity":
        assert after > before - 0.01  # intensities differ on purpose: it barely helps
    else:
        assert after > before + 0.01
    assert result.parameters["metric"] == metric and result.parameters["regularizer"] == regularizer


def test_register_3d_ellipsoids():
    shape = (28, 32, 32)
    fixed = _ellipse(shape, (14, 16, 16), (8, 10, 9))
    moving = _ellipse(shape, (13, 17, 15), (7, 9, 11))
    before = overlap_scores(fixed, moving).f_measure
    result = register(fixed.astype(np.float32), moving.astype(np.float32), spacing_mm=(2.0, 1.0, 1.0), levels=2, max_iterations=40)
    after = overlap_scores(fixed, result.warped_mask).f_measure
    assert before < 0.85 and after > 0.95
    assert result.displacement.shape == (3, *shape)


def test_scale_invariant_and_force_gradient_options(pair2d):
    p = pair2d
    for kwargs in ({"scale_invariant": True}, {"force_gradient": "symmetric"}, {"force_gradient": "fixed"}):
        result = register(
            p.fixed, p.moving_prealigned, fixed_mask=p.fixed_mask, moving_mask=p.moving_prealigned_mask,
            levels=2, max_iterations=25, **kwargs,
        )
        assert overlap_scores(p.fixed_mask, result.warped_mask).f_measure > 0.98, kwargs


def test_default_masks_are_otsu_with_filled_holes():
    shape = (40, 40)
    ring = _ellipse(shape, (20, 20), (12, 12)) & ~_ellipse(shape, (20, 20), (4, 4))
    image = ring.astype(np.float32) * 5.0
    result = register(image, image, levels=1, max_iterations=3)
    assert result.warped_mask.sum() == _ellipse(shape, (20, 20), (12, 12)).sum()  # the hole is filled
    assert result.metric_history[0] == 0.0 and result.iterations == 1  # identical: stops at once


def test_progress_and_cancel(pair2d):
    p = pair2d
    calls = []
    register(p.fixed, p.moving_prealigned, levels=2, max_iterations=5, plateau_window=0, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (10, 10)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError, match="registration was cancelled"):
        register(p.fixed, p.moving_prealigned, cancel=event)


def test_divergence_stops_keeps_best_field_and_warns(pair2d):
    p = pair2d
    with pytest.warns(RegistrationWarning, match="diverged at pyramid level 0.*kept the best field"):
        result = register(p.fixed, p.moving, regularizer="gaussian", tau=20.0, levels=1, max_iterations=50)
    assert result.diverged
    assert result.iterations < 50
    # the kept field is the one of the best metric: the identity (first iteration) here
    assert result.metric_history[0] == min(result.metric_history)
    np.testing.assert_array_equal(result.displacement, 0.0)


def test_plateau_stops_before_max_iterations(pair2d):
    p = pair2d
    result = register(p.fixed, p.moving_prealigned, levels=1, max_iterations=400, plateau_window=10, plateau_tol=1e-2)
    assert result.iterations < 400
    result = register(p.fixed, p.moving_prealigned, levels=1, max_iterations=[7], plateau_window=0)
    assert result.iterations == 7


def test_synthetic_pair_matches_fig4_description():
    p = synthetic_pair((64, 80), rotation_deg=5.0, translation_vox=(2.0, -1.0))
    assert p.fixed.shape == p.moving.shape == (64, 80)
    # target differs from the reference by dents and a bulge: neither contains the other
    assert np.any(p.fixed_mask & ~p.moving_prealigned_mask) and np.any(p.moving_prealigned_mask & ~p.fixed_mask)
    # four intensity levels in the reference (ellipse, two disks, line), a darkened disk in the target
    assert sorted(np.unique(p.fixed).tolist()) == pytest.approx([0.0, 0.2, 0.5, 0.8, 1.0])
    assert p.moving_prealigned.max() > 0.9 and not np.isin(0.8, p.moving_prealigned)
    # the rigid transform moved the target's centre of mass by the translation (within a voxel)
    com = lambda m: np.array(np.nonzero(m)).mean(axis=1)
    np.testing.assert_allclose(com(p.moving_mask) - com(p.moving_prealigned_mask), (2.0, -1.0), atol=1.0)
    p3 = synthetic_pair((32, 40, 40))
    assert p3.fixed.shape == (32, 40, 40) and p3.moving_mask.any()


def test_invalid_register_inputs(pair2d):
    p = pair2d
    f, m = p.fixed, p.moving_prealigned
    with pytest.raises(InvalidInputError, match="moving: contains 1 NaN"):
        bad = m.copy()
        bad[3, 3] = np.nan
        register(f, bad)
    with pytest.raises(GeometryMismatchError, match="resample moving"):
        register(f, m[:-1])
    with pytest.raises(GeometryMismatchError, match="moving_mask has shape"):
        register(f, m, moving_mask=np.ones((3, 3)))
    with pytest.raises(InvalidInputError, match="fixed_mask: the mask is empty"):
        register(f, m, fixed_mask=np.zeros_like(f))
    touching = p.fixed_mask.copy()
    touching[:, 0] = True
    with pytest.raises(InvalidInputError, match="fixed_mask: the object touches the image border"):
        register(f, m, fixed_mask=touching)
    with pytest.raises(InvalidInputError, match="from thresholding moving.*constant"):
        register(f, np.ones_like(m))
    with pytest.raises(InvalidInputError, match="did you mean 'udt'"):
        register(f, m, metric="utd")
    with pytest.raises(InvalidInputError, match="regularizer"):
        register(f, m, regularizer="bspline")
    with pytest.raises(InvalidInputError, match="levels"):
        register(f, m, levels=0)
    with pytest.raises(InvalidInputError, match="one value per level"):
        register(f, m, levels=2, max_iterations=[5])
    with pytest.raises(InvalidInputError, match="tau"):
        register(f, m, tau=-1.0)
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        register(f, m, spacing_mm=(1.0, 1.0, 1.0))
    with pytest.raises(InvalidInputError, match="2D"):
        register(f[0], m[0])
    with pytest.raises(InvalidInputError, match="vanishes at pyramid level"):
        tiny = np.zeros((64, 64), np.float32)
        tiny[30:32, 30:32] = 1
        register(tiny, tiny, levels=4)
    with pytest.raises(InvalidInputError, match="shape"):
        warp(f, np.zeros((2, 3, 3), np.float32))
