"""UDT-SSD metric, forces, distance transforms and regularisers: exact, hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.errors import InvalidInputError
from napari_medseg.registration.metric import (
    check_mask,
    distance_transform,
    local_scale,
    scale_invariant_distance_transform,
    ssd_force,
    udt_force,
    udt_ssd,
)
from napari_medseg.registration.regularizers import (
    Diffusive,
    DiffusiveRegularizer,
    Elastic,
    ElasticRegularizer,
    Gaussian,
    GaussianRegularizer,
    regularizer_from_options,
)


def _row(start, stop, n=9):
    m = np.zeros((3, n), bool)
    m[1, start:stop] = True
    return m


def test_distance_transform_is_in_mm_and_zero_outside():
    m = _row(1, 6)
    # row 1 of a 3-row mask: nearest background is above/below at 1 voxel along axis 0
    d = distance_transform(m, (2.0, 0.5))
    assert d.dtype == np.float32
    assert d[1].tolist() == [0.0, 0.5, 1.0, 1.5, 1.0, 0.5, 0.0, 0.0, 0.0]
    assert d[0].tolist() == [0.0] * 9
    d = distance_transform(m, (0.25, 3.0))
    assert d[1, 1:6].tolist() == [0.25] * 5


@pytest.mark.parametrize(
    "spacing, expected",
    [(1.0, 4.5), (2.0, 18.0), ((1.0, 1.0), 4.5)],
)
def test_udt_ssd_hand_computed(spacing, expected):
    a = np.zeros((1, 7), bool)
    a[0, 1:6] = True  # DT along x only (axis 0 has one row) -> 1 2 3 2 1
    b = np.zeros((1, 7), bool)
    b[0, 1:4] = True  # 1 2 1
    a2 = np.pad(a, ((5, 5), (0, 0)))  # far from the other axis' background: DT is along x
    b2 = np.pad(b, ((5, 5), (0, 0)))
    # the array border is not background for the EDT, so a single row has DT along x only;
    # differences 0 0 2 2 1 -> (4 + 4 + 1) / 2 = 4.5 (times spacing^2)
    assert udt_ssd(a, b, spacing) == pytest.approx(expected)
    assert udt_ssd(a2, a2, spacing) == 0.0
    assert udt_ssd(a2, b2, spacing) > 0


def test_udt_ssd_is_symmetric_and_zero_for_equal_masks():
    rng = np.random.default_rng(0)
    a = rng.random((20, 20)) > 0.5
    b = rng.random((20, 20)) > 0.5
    assert udt_ssd(a, b) == pytest.approx(udt_ssd(b, a))
    assert udt_ssd(a, a.copy()) == 0.0


def test_udt_force_hand_computed():
    ref = np.zeros((1, 9), bool)
    ref[0, 2:7] = True  # DT 1 2 3 2 1 at x = 2..6
    tgt = np.zeros((1, 9), bool)
    tgt[0, 3:6] = True  # DT 1 2 1 at x = 3..5
    d_ref = distance_transform(ref)
    f = udt_force(d_ref, tgt)
    assert f.shape == (2, 1, 9)
    # diff = D_I - D_u = [0 0 1 1 1 1 1 0 0]; central-difference gradient of D_u along x
    assert f[1, 0].tolist() == [0.0, 0.0, 0.5, 1.0, 0.0, -1.0, -0.5, 0.0, 0.0]
    assert np.all(f[0] == 0)


def test_ssd_force_gradient_choices():
    fixed = np.array([[0.0, 2.0, 4.0, 6.0]], np.float32)
    warped = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
    # diff = 0 1 2 3; grad(warped) = 1 everywhere along x; grad(fixed) = 2
    w = ssd_force(fixed, warped, gradient="warped")
    f = ssd_force(fixed, warped, gradient="fixed")
    s = ssd_force(fixed, warped, gradient="symmetric", spacing_mm=(1.0, 2.0))
    assert w[1, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert f[1, 0].tolist() == [0.0, 2.0, 4.0, 6.0]
    assert s[1, 0].tolist() == [0.0, 0.75, 1.5, 2.25]  # mean of 0.5 and 1 per mm


def test_scale_invariant_distance_transform_equalises_thin_and_thick():
    yy, xx = np.mgrid[:60, :60]
    small = (yy - 15) ** 2 + (xx - 15) ** 2 <= 4**2
    big = (yy - 35) ** 2 + (xx - 35) ** 2 <= 14**2
    mask = small | big
    plain = distance_transform(mask)
    # nearest background pixel of the centre: (4, 1) away for radius 4, (14, 1) for radius 14
    assert plain[15, 15] == pytest.approx(np.sqrt(17))
    assert plain[35, 35] == pytest.approx(np.sqrt(197))
    scale = local_scale(mask)
    assert scale[15, 15] == pytest.approx(np.sqrt(17)) and scale[35, 35] == pytest.approx(np.sqrt(197))
    assert scale[0, 0] == pytest.approx(np.sqrt(17))  # outside: from the nearest skeleton voxel
    norm = scale_invariant_distance_transform(mask, (1.0, 1.0))
    assert norm[15, 15] == pytest.approx(1.0) and norm[35, 35] == pytest.approx(1.0)
    assert norm.max() == pytest.approx(1.0) and norm[~mask].max() == 0.0
    # a given scale map (the reference's) is used as is
    other = scale_invariant_distance_transform(small, 1.0, scale=scale)
    np.testing.assert_allclose(other, plain * small / scale, rtol=1e-6)
    with pytest.raises(InvalidInputError, match="scale"):
        scale_invariant_distance_transform(small, 1.0, scale=np.zeros((60, 60)))
    with pytest.raises(InvalidInputError, match="empty"):
        local_scale(np.zeros((5, 5)))


def test_invalid_udt_ssd_inputs():
    a = np.zeros((5, 5), bool)
    with pytest.raises(InvalidInputError, match="shape"):
        udt_ssd(a, np.zeros((5, 6), bool))
    with pytest.raises(InvalidInputError, match="NaN"):
        udt_ssd(a.astype(float), np.full((5, 5), np.nan))
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        udt_ssd(a, a, (1.0, 0.0))
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        udt_ssd(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(InvalidInputError, match="2D or 3D"):
        udt_ssd(np.zeros(5), np.zeros(5))


def test_invalid_force_inputs():
    with pytest.raises(InvalidInputError, match="did you mean 'warped'"):
        ssd_force(np.zeros((4, 4)), np.zeros((4, 4)), gradient="warpd")
    with pytest.raises(InvalidInputError, match="shape"):
        ssd_force(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InvalidInputError, match="shape"):
        udt_force(np.zeros((4, 4)), np.zeros((5, 4), bool))


def test_invalid_masks():
    with pytest.raises(InvalidInputError, match="fixed_mask: the mask is empty"):
        check_mask(np.zeros((8, 8)), name="fixed_mask")
    m = np.zeros((8, 8), bool)
    m[0, 3] = True
    with pytest.raises(InvalidInputError, match="touches the image border .first index of array axis 0"):
        check_mask(m, name="moving_mask")
    m = np.zeros((8, 8), bool)
    m[3, 7] = True
    with pytest.raises(InvalidInputError, match="last index of array axis 1"):
        check_mask(m, name="moving_mask")
    m = np.zeros((8, 8))
    m[3, 3] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        check_mask(m, name="fixed_mask")
    ok = np.zeros((8, 8))
    ok[3:5, 3:5] = 2
    assert check_mask(ok, name="m").sum() == 4


# ------------------------------------------------------------------------------------ regularisers
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 2.0)])
@pytest.mark.parametrize("mu, lam, tau", [(0.5, 0.5, 1.0), (1.0, 0.0, 0.5), (0.2, 2.0, 2.0)])
def test_elastic_damps_plane_waves_by_the_navier_lame_symbol(spacing, mu, lam, tau):
    n, k = 32, 3
    w = 2 * np.pi * k / n
    wave = np.cos(w * np.arange(n))[None, :].repeat(n, 0).astype(np.float32)  # varies along x (axis 1)
    solver = ElasticRegularizer((n, n), spacing, mu=mu, lambda_=lam, tau=tau)
    lap = 2 - 2 * np.cos(w)  # times h^2 / h^2: the mean-squared-spacing scaling cancels the spacing
    longitudinal = solver(np.stack([np.zeros_like(wave), wave]))  # x-component varying along x
    transverse = solver(np.stack([wave, np.zeros_like(wave)]))  # y-component varying along x
    np.testing.assert_allclose(longitudinal[1], wave / (1 + tau * (2 * mu + lam) * lap), atol=1e-5)
    np.testing.assert_allclose(longitudinal[0], 0, atol=1e-5)
    np.testing.assert_allclose(transverse[0], wave / (1 + tau * mu * lap), atol=1e-5)
    np.testing.assert_allclose(transverse[1], 0, atol=1e-5)


def test_elastic_3d_and_constant_fields():
    n = 16
    w = 2 * np.pi * 2 / n
    wave = np.cos(w * np.arange(n))[:, None, None] * np.ones((n, n, n), np.float32)  # along z (axis 0)
    solver = ElasticRegularizer((n, n, n), (1.0, 1.0, 1.0), mu=0.5, lambda_=0.5, tau=1.0)
    out = solver(np.stack([wave, 0 * wave, 0 * wave]).astype(np.float32))
    np.testing.assert_allclose(out[0], wave / (1 + 1.5 * (2 - 2 * np.cos(w))), atol=1e-5)
    const = np.stack([np.full((n, n, n), 1.5), np.full((n, n, n), -2.0), np.zeros((n, n, n))]).astype(np.float32)
    np.testing.assert_allclose(solver(const), const, atol=1e-5)


def test_diffusive_and_gaussian():
    n, k = 32, 4
    w = 2 * np.pi * k / n
    wave = np.cos(w * np.arange(n))[None, :].repeat(n, 0).astype(np.float32)
    out = DiffusiveRegularizer((n, n), (1.0, 1.0), alpha=0.5, tau=2.0)(np.stack([wave, wave]))
    np.testing.assert_allclose(out[0], wave / (1 + 2.0 * 0.5 * (2 - 2 * np.cos(w))), atol=1e-5)
    const = np.full((2, 10, 10), 3.0, np.float32)
    np.testing.assert_allclose(GaussianRegularizer((10, 10), (1, 1), sigma_vox=2.0)(const), const, atol=1e-6)
    impulse = np.zeros((2, 21, 21), np.float32)
    impulse[:, 10, 10] = 1.0
    smooth = Gaussian(sigma_vox=1.0).operator((21, 21), (1, 1), tau=1.0)(impulse)
    assert smooth[0].sum() == pytest.approx(1.0, abs=1e-5)
    assert smooth[0, 10, 10] == pytest.approx(1 / (2 * np.pi), rel=0.05)


def test_invalid_regularizer_parameters():
    with pytest.raises(InvalidInputError, match="did you mean 'elastic'"):
        regularizer_from_options("elastik")
    with pytest.raises(InvalidInputError, match="mu=0.0"):
        Elastic(mu=0.0)
    with pytest.raises(InvalidInputError, match="lambda_=-1.0"):
        Elastic(lambda_=-1.0)
    with pytest.raises(InvalidInputError, match="alpha='x': expected a number"):
        Diffusive(alpha="x")
    with pytest.raises(InvalidInputError, match="tau"):
        Diffusive().operator((8, 8), (1, 1), tau=float("nan"))
    with pytest.raises(InvalidInputError, match="sigma_vox"):
        Gaussian(sigma_vox=-1)
    with pytest.raises(InvalidInputError, match="sigma_vox"):  # a face's options: only the chosen one's are used
        regularizer_from_options("gaussian", mu=-1.0, sigma_vox=float("inf"))


def test_regularizer_objects_are_frozen_values_with_the_papers_defaults():
    assert regularizer_from_options("elastic", mu=2.0, alpha=-5.0) == Elastic(mu=2.0, lambda_=0.5)
    assert regularizer_from_options("diffusive") == Diffusive(alpha=0.5)
    assert regularizer_from_options("gaussian") == Gaussian(sigma_vox=float(np.sqrt(0.5)))
    assert Elastic(1, 0).to_dict() == {"regularizer": "elastic", "mu": 1.0, "lambda": 0.0}
    with pytest.raises(AttributeError):
        Elastic().mu = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("shape, spacing", [((230, 210), (0.7, 1.3)), ((30, 40, 45), (2.0, 0.5, 0.9))])
def test_distance_transform_large_masks_match_scipy_exactly(shape, spacing):
    """Above 40,000 voxels the EDT comes from SimpleITK's Maurer filter: same values as scipy."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random(shape) > 0.3)
    assert mask.size > 40_000
    expected = ndimage.distance_transform_edt(mask, sampling=spacing)
    np.testing.assert_allclose(distance_transform(mask, spacing), expected, atol=1e-4)
