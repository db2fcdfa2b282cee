"""Volume-level registration: 2D slices, geometry out, field storage in LPS mm and applying it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ellipsoid_mask, oblique_geometry

from napari_medseg.errors import GeometryMismatchError, InvalidInputError
from napari_medseg.registration import (
    apply_field,
    displacement_to_volume,
    register_volumes,
    volume_to_displacement,
    warp,
)
from napari_medseg.registration.evaluate import overlap_scores
from napari_medseg.volume import Geometry, Volume, read_volume, write_volume


def _slice_pair(spacing=(0.5, 0.5, 1.0)):
    g = Geometry(spacing, (3.0, -2.0, 7.0))
    shape = (1, 48, 48)
    sp = g.spacing_zyx
    fixed = ellipsoid_mask(shape, (0, 24, 24), (1.0, 8.0, 6.0), sp)
    moving = ellipsoid_mask(shape, (0, 23, 25), (1.0, 7.0, 7.0), sp)
    return Volume(fixed.astype(np.float32) * 4, g), Volume(moving.astype(np.float32) * 9, g)


def test_field_round_trip_through_lps_with_oblique_geometry(tmp_path):
    g = oblique_geometry()
    rng = np.random.default_rng(1)
    u = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    vol = displacement_to_volume(u, g)
    assert vol.array.shape == (4, 5, 6, 3)
    # the LPS vector has the same length as the index-axis vector (rotation only)
    np.testing.assert_allclose(np.linalg.norm(vol.array, axis=-1), np.linalg.norm(u, axis=0), rtol=1e-5)
    np.testing.assert_allclose(volume_to_displacement(vol), u, atol=1e-5)
    write_volume(vol, tmp_path / "f.nii.gz")
    np.testing.assert_allclose(volume_to_displacement(read_volume(tmp_path / "f.nii.gz")), u, atol=1e-4)
    u2 = rng.normal(size=(2, 5, 6)).astype(np.float32)
    vol2 = displacement_to_volume(u2, Geometry())
    assert vol2.array.shape == (1, 5, 6, 3)
    np.testing.assert_array_equal(vol2.array[0, ..., 0], u2[1])  # x component is the last array axis
    np.testing.assert_array_equal(vol2.array[0, ..., 2], 0)
    np.testing.assert_allclose(volume_to_displacement(vol2), u2)


def test_register_volumes_2d_slice_keeps_fixed_geometry():
    fixed, moving = _slice_pair()
    out = register_volumes(fixed, moving, levels=2, max_iterations=40)
    assert out.warped.shape == (1, 48, 48) and out.warped.geometry == fixed.geometry
    assert out.field.array.shape == (1, 48, 48, 3)
    assert out.result.displacement.shape == (2, 48, 48)
    assert out.result.parameters["spacing_mm"] == [0.5, 0.5]
    before = overlap_scores(fixed.array[0] > 0, moving.array[0] > 0).f_measure
    after = overlap_scores(fixed.array[0] > 0, out.warped_mask.array[0] > 0).f_measure
    assert after > before + 0.05 and after > 0.97
    # applying the saved field to the moving image reproduces the warped image exactly
    np.testing.assert_allclose(apply_field(moving, out.field).array, out.warped.array, atol=1e-5)


def test_apply_field_labels_nearest_and_physical_resampling():
    g = Geometry((2.0, 1.0, 1.0))
    labels = np.zeros((1, 6, 8), np.uint8)
    labels[0, 2:4, 2:5] = 7
    u = np.zeros((2, 6, 8), np.float32)
    u[1] = 2.0  # 2 mm along x = one voxel
    field = displacement_to_volume(u, g)
    out = apply_field(Volume(labels, g), field, nearest=True)
    assert out.array.dtype == np.uint8
    np.testing.assert_array_equal(out.array[0, :, :-1], labels[0, :, 1:])
    # the same image on another grid (origin shifted by one voxel along x) goes through SimpleITK
    shifted = Volume(labels[:, :, 1:].copy(), Geometry((2.0, 1.0, 1.0), (2.0, 0.0, 0.0)))
    out2 = apply_field(shifted, field, nearest=True)
    np.testing.assert_array_equal(out2.array[0, :, :-2], labels[0, :, 1:-1])
    # several components: each warped
    stack = Volume(np.stack([labels, labels * 2], axis=-1).astype(np.float32), g)
    out3 = apply_field(stack, field)
    assert out3.array.shape == (1, 6, 8, 2)
    np.testing.assert_allclose(out3.array[0, :, :-1, 1], 2 * labels[0, :, 1:])
    assert np.array_equal(warp(labels[0].astype(np.float32), u, spacing_mm=(1.0, 2.0))[:, :-1], labels[0, :, 1:])


def test_register_volumes_resamples_on_request():
    fixed, moving = _slice_pair()
    coarse = Volume(moving.array[:, ::2, ::2].copy(), Geometry((1.0, 1.0, 1.0), moving.geometry.origin))
    with pytest.raises(GeometryMismatchError, match="resample_moving=True"):
        register_volumes(fixed, coarse)
    out = register_volumes(fixed, coarse, resample_moving=True, levels=2, max_iterations=30)
    assert out.warped.shape == fixed.shape


def test_invalid_volume_inputs():
    fixed, moving = _slice_pair()
    with pytest.raises(InvalidInputError, match="spacing_mm comes from"):
        register_volumes(fixed, moving, spacing_mm=1.0)
    with pytest.raises(InvalidInputError, match="scalar image"):
        register_volumes(Volume(np.zeros((1, 48, 48, 3)), fixed.geometry), moving)
    with pytest.raises(GeometryMismatchError):
        register_volumes(fixed, moving, fixed_mask=Volume(np.ones((1, 8, 8), np.uint8)))
    with pytest.raises(InvalidInputError, match="3 components"):
        volume_to_displacement(fixed)
    with pytest.raises(InvalidInputError, match="expected .2, y, x. or .3, z, y, x."):
        displacement_to_volume(np.zeros((3, 4, 4)), Geometry())
