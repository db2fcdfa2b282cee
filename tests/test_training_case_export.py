"""Writing viewer layers as a training case, and several sources as one dataset CSV."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ellipsoid_mask, oblique_geometry

from napari_medseg.errors import GeometryMismatchError, InvalidInputError
from napari_medseg.training.data import (
    discover_cases,
    load_case,
    write_dataset_csv,
    write_training_case,
)
from napari_medseg.volume import Geometry, Volume


def _case_volumes(geometry=None, shape=(4, 10, 12)):
    geometry = geometry or oblique_geometry()
    rng = np.random.default_rng(3)
    image = Volume(rng.normal(50, 10, size=shape).astype(np.float32), geometry, {"modality": "MR"})
    mask = ellipsoid_mask(shape, (1.5, 4.5, 5.5), (4.0, 3.0, 3.0), geometry.spacing_zyx)
    labels = mask.astype(np.int64) + (np.arange(shape[2]) > 8)[None, None, :] * mask  # values 0, 1, 2
    return image, Volume(labels, geometry)


def test_written_case_round_trips_with_exact_geometry(tmp_path):
    image, label = _case_volumes()
    before = (image.array.copy(), label.array.copy())
    case = write_training_case(image, label, tmp_path / "ds", case_id="layers-1")
    assert case.images == ((tmp_path / "ds" / "imagesTr" / "layers-1_0000.nrrd").resolve(),)
    assert case.label == (tmp_path / "ds" / "labelsTr" / "layers-1.nrrd").resolve()
    assert case.patient == "layers-1"
    (found,) = discover_cases(tmp_path / "ds")
    assert found.id == "layers-1" and found.images == case.images and found.label == case.label
    channels, read_label = load_case(found)
    assert np.array_equal(channels[0].array, image.array)
    assert channels[0].geometry.isclose(image.geometry, atol=1e-12)
    assert read_label.array.dtype == np.uint8  # smallest unsigned type for values 0..2
    assert np.array_equal(read_label.array, label.array)
    assert sorted(np.unique(read_label.array).tolist()) == [0, 1, 2]
    assert np.array_equal(image.array, before[0]) and np.array_equal(label.array, before[1])  # inputs untouched


def test_two_channels_and_nifti(tmp_path):
    image, label = _case_volumes(Geometry((1.0, 1.0, 2.0), (3.0, -4.0, 5.0)))
    second = image.derive(image.array * 2)
    case = write_training_case([image, second], label, tmp_path, case_id="c", suffix=".nii.gz")
    assert [p.name for p in case.images] == ["c_0000.nii.gz", "c_0001.nii.gz"]
    (found,) = discover_cases(tmp_path)
    channels, _ = load_case(found)
    assert np.allclose(channels[1].array, image.array * 2)


def test_dataset_csv_combines_folders(tmp_path):
    image, label = _case_volumes()
    a = write_training_case(image, label, tmp_path / "one", case_id="a", patient="p1")
    b = write_training_case(image, label, tmp_path / "two", case_id="b")
    csv_path = write_dataset_csv([a, b], tmp_path / "run" / "dataset.csv")
    text = csv_path.read_text().splitlines()
    assert text[0] == "image,label,patient"
    assert text[1] == f"{a.images[0]},{a.label},p1"
    cases = discover_cases(csv_path)
    # a CSV case is named after its first image file; the patient column keeps the split
    assert [(c.id, c.images, c.label, c.patient) for c in cases] == [
        ("a_0000", a.images, a.label, "p1"),
        ("b_0000", b.images, b.label, "b"),
    ]


def test_invalid_case_id(tmp_path):
    image, label = _case_volumes()
    with pytest.raises(InvalidInputError, match="case_id='../x'"):
        write_training_case(image, label, tmp_path, case_id="../x")


def test_invalid_suffix(tmp_path):
    image, label = _case_volumes()
    with pytest.raises(InvalidInputError, match="suffix='.png'"):
        write_training_case(image, label, tmp_path, suffix=".png")


def test_invalid_float_label(tmp_path):
    image, label = _case_volumes()
    with pytest.raises(InvalidInputError, match="label"):
        write_training_case(image, label.derive(label.array + 0.5), tmp_path)


def test_invalid_label_grid(tmp_path):
    image, label = _case_volumes()
    moved = Volume(label.array, Geometry((1.0, 1.0, 2.0)))
    with pytest.raises(GeometryMismatchError, match="image.*label|label"):
        write_training_case(image, moved, tmp_path)


def test_invalid_channels(tmp_path):
    image, label = _case_volumes()
    with pytest.raises(InvalidInputError, match="non-empty sequence"):
        write_training_case([], label, tmp_path)
    rgb = Volume(np.zeros((*image.shape, 3), np.float32), image.geometry)
    with pytest.raises(InvalidInputError, match="channel 0: expected a scalar"):
        write_training_case(rgb, label, tmp_path)


def test_invalid_existing_case(tmp_path):
    image, label = _case_volumes()
    write_training_case(image, label, tmp_path, case_id="c")
    with pytest.raises(InvalidInputError, match="already exists"):
        write_training_case(image, label, tmp_path, case_id="c")
    case = write_training_case(image, label.derive(label.array * 0), tmp_path, case_id="c", overwrite=True)
    assert load_case(case)[1].array.max() == 0


def test_invalid_dataset_csv(tmp_path):
    image, label = _case_volumes()
    a = write_training_case(image, label, tmp_path / "a", case_id="a")
    b = write_training_case([image, image], label, tmp_path / "b", case_id="b")
    with pytest.raises(InvalidInputError, match="at least one case"):
        write_dataset_csv([], tmp_path / "x.csv")
    with pytest.raises(InvalidInputError, match="different numbers of channels"):
        write_dataset_csv([a, b], tmp_path / "x.csv")
    with pytest.raises(InvalidInputError, match="'u' has no label"):
        write_dataset_csv([type(a)("u", a.images, None, "u")], tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
