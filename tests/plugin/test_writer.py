"""The napari writers: read -> layer -> write keeps array, spacing, origin, direction and header keys."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_geometry

from napari_medseg.errors import InvalidInputError
from napari_medseg.plugin._layers import label_style, labels_layer_data, layer_kwargs
from napari_medseg.plugin._writer import write_image, write_labels
from napari_medseg.volume import (
    Geometry,
    Volume,
    read_volume,
    segments_from_metadata,
    write_volume,
)


def _state(layer):
    data, attributes, _ = layer.as_layer_data_tuple()
    return data, attributes


def _assert_same_header(path, volume, *, custom=True):
    image = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(image), volume.array)
    assert np.allclose(image.GetSpacing(), volume.geometry.spacing, rtol=0, atol=1e-6)
    assert np.allclose(image.GetOrigin(), volume.geometry.origin, rtol=0, atol=1e-6)
    assert np.allclose(image.GetDirection(), volume.geometry.direction, rtol=0, atol=1e-6)
    if custom:
        assert image.GetMetaData("scanner_note") == "site 7; protocol B"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_image_round_trip_keeps_header(tmp_path, make_napari_viewer, suffix):
    rng = np.random.default_rng(3)
    volume = Volume(rng.normal(0, 50, (5, 7, 9)).astype(np.float32), oblique_geometry(),
                    {"scanner_note": "site 7; protocol B"})
    source = write_volume(volume, tmp_path / f"in{suffix}")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(source), plugin="napari-medseg")
    original = sitk.ReadImage(str(source))  # NIfTI stores float32 geometry: compare with what the file says
    expected = Volume(volume.array, Geometry(original.GetSpacing(), original.GetOrigin(), original.GetDirection()))
    [written] = write_image(str(tmp_path / f"out{suffix}"), *_state(layer))
    _assert_same_header(written, expected, custom=suffix != ".nii.gz")


def test_labels_round_trip_through_napari_save(tmp_path, make_napari_viewer):
    labels = Volume(np.array([[[0, 1, 2], [2, 1, 0]]] * 3, np.uint8), oblique_geometry(spacing=(0.5, 0.7, 3.0)),
                    {"scanner_note": "site 7; protocol B"})
    source = write_volume(labels, tmp_path / "case_labels.nrrd")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(source), plugin="napari-medseg")
    assert type(layer).__name__ == "Labels"
    out = tmp_path / "saved.nrrd"
    viewer.layers.save(str(out), selected=False, plugin="napari-medseg")
    _assert_same_header(out, labels)


def test_seg_nrrd_keeps_names_and_colours(tmp_path, make_napari_viewer):
    labels = Volume(np.array([[[0, 1, 2], [2, 1, 0]]], np.uint8), Geometry((1.0, 1.0, 3.0), (5.0, 6.0, 7.0)))
    source = write_volume(labels, tmp_path / "tissue.seg.nrrd", label_names={1: "grey", 2: "white"},
                          label_colors={1: (1.0, 0.0, 0.0), 2: (0.0, 0.5, 1.0)})
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(source), plugin="napari-medseg")
    [written] = write_labels(str(tmp_path / "again.seg.nrrd"), *_state(layer))
    back = read_volume(written)
    assert np.array_equal(back.array, labels.array) and back.geometry.isclose(labels.geometry)
    segments = segments_from_metadata(back.metadata)
    assert {v: n for v, (n, _) in segments.items()} == {1: "grey", 2: "white"}
    assert np.allclose(segments[1][1], (1, 0, 0)) and np.allclose(segments[2][1], (0, 0.5, 1))


def test_derived_labels_carry_geometry_and_provenance(tmp_path, make_napari_viewer):
    geometry = Geometry((1.0, 1.0, 2.0), (12.5, -30.0, 7.25), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    provenance = {"models": [{"name": "tiny-seg", "sha256": "ab" * 32}], "version": "0.1.0"}
    viewer = make_napari_viewer()
    array = np.zeros((3, 4, 5), np.uint8)
    array[1, 2, 3] = 2
    layer = viewer.add_labels(array, **layer_kwargs(geometry, name="pred", provenance=provenance,
                                                     **label_style({0: "bg", 2: "tissue2"})))
    [written] = write_labels(str(tmp_path / "pred.nrrd"), *_state(layer))
    image = sitk.ReadImage(written)
    assert np.array_equal(sitk.GetArrayFromImage(image), array)
    assert np.allclose(image.GetDirection(), geometry.direction) and np.allclose(image.GetOrigin(), geometry.origin)
    assert image.GetMetaData("medseg_model") == "tiny-seg"
    assert image.GetMetaData("medseg_model_sha256") == "ab" * 32


def test_moved_layer_saves_what_the_user_sees(tmp_path, make_napari_viewer):
    volume = Volume(np.ones((3, 4, 5), np.uint8), Geometry((1.0, 1.0, 2.0), (1.0, 2.0, 3.0)))
    viewer = make_napari_viewer()
    data, kwargs, _ = labels_layer_data(volume, name="moved")
    layer = viewer.add_labels(data, **kwargs)
    layer.translate = (10.0, 20.0, 30.0)
    [written] = write_labels(str(tmp_path / "moved.mha"), *_state(layer))
    assert np.allclose(sitk.ReadImage(written).GetOrigin(), (30.0, 20.0, 10.0))


def test_invalid_extension(tmp_path):
    with pytest.raises(InvalidInputError, match="out.png.*expected one of"):
        write_image(str(tmp_path / "out.png"), np.zeros((2, 3, 4), np.float32), {})
    with pytest.raises(InvalidInputError, match="out.tif.*expected one of"):
        write_labels(str(tmp_path / "out.tif"), np.zeros((2, 3, 4), np.uint8), {})


def test_invalid_not_3d(tmp_path):
    with pytest.raises(InvalidInputError, match="'flat'.*3D"):
        write_image(str(tmp_path / "flat.nrrd"), np.zeros((3, 4), np.float32), {"name": "flat"})


def test_invalid_float_labels(tmp_path):
    with pytest.raises(InvalidInputError, match="'lab'.*integers"):
        write_labels(str(tmp_path / "lab.nrrd"), np.zeros((2, 3, 4), np.float32), {"name": "lab"})
