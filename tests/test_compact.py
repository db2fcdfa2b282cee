"""Compact maps: 8-bit with the scale in the header, read back as real values within the stated precision."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import oblique_geometry

from napari_medseg.compact import compact_map
from napari_medseg.errors import InvalidInputError
from napari_medseg.volume import Volume, read_volume, write_volume


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_uncertainty_round_trip_within_the_stated_precision(tmp_path, suffix):
    rng = np.random.default_rng(0)
    values = (rng.random((6, 20, 24, 3)) * np.array([1.0986, 0.3, 0.25])).astype(np.float32)
    source = Volume(values, oblique_geometry(), {"medseg_components": "entropy,mutual_information,variance_a"})
    compact = compact_map(source)
    assert compact.array.dtype == np.uint8
    scale = float(compact.metadata["medseg_scale"])
    assert scale == pytest.approx(values.max() / 255, rel=1e-6)
    assert "max rounding error" in compact.metadata["medseg_precision"]
    path = write_volume(compact, tmp_path / f"u{suffix}")
    back = read_volume(path)
    assert back.array.dtype == np.float32 and back.geometry.isclose(source.geometry, atol=1e-5)
    np.testing.assert_allclose(back.array, values, atol=scale / 2 * 1.001 + 1e-7)
    if suffix.startswith(".nii"):  # ITK reads it without crashing; nibabel sees the scale note
        img = nib.load(str(path))
        assert img.get_data_dtype() == np.uint8
        assert img.header["descrip"].tobytes().decode().startswith("medseg_scale=")


def test_single_component_nifti_uses_the_standard_slope(tmp_path):
    values = np.random.default_rng(1).random((6, 20, 24)).astype(np.float32) * 1.0986
    compact = compact_map(Volume(values, oblique_geometry()))
    scale = float(compact.metadata["medseg_scale"])
    img = nib.load(str(write_volume(compact, tmp_path / "entropy.nii.gz")))
    assert img.get_data_dtype() == np.uint8 and float(img.dataobj.slope) == pytest.approx(scale)
    np.testing.assert_allclose(img.get_fdata().transpose(2, 1, 0), values, atol=scale / 2 * 1.001 + 1e-7)
    np.testing.assert_allclose(read_volume(tmp_path / "entropy.nii.gz").array, values, atol=scale / 2 * 1.001 + 1e-7)


def test_probabilities_use_a_fixed_scale_with_exact_ends():
    p = np.array([[[0.0, 1.0, 0.5, 0.3]]], np.float32)
    c = compact_map(Volume(p, oblique_geometry()), kind="probability")
    assert c.array.tolist() == [[[0, 255, 127, 76]]]
    assert float(c.metadata["medseg_scale"]) * 255 == pytest.approx(1.0, abs=1e-6)


def test_negative_maps_stay_float_and_input_is_not_modified():
    a = np.array([[[-1.0, 2.0]]], np.float32)
    v = Volume(a, oblique_geometry())
    c = compact_map(v)
    assert c.array.dtype == np.float32 and c.metadata["medseg_precision"] == "float32"
    assert v.array.tolist() == [[[-1.0, 2.0]]]


@pytest.mark.parametrize("kwargs, match", [({"kind": "labels"}, "kind='labels'"), ({"bits": 12}, "bits=12")])
def test_invalid_options(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        compact_map(Volume(np.zeros((1, 2, 2), np.float32), oblique_geometry()), **kwargs)
