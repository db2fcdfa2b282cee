"""Training data: discovery in Decathlon/nnU-Net/CSV layouts, patient-level splits, checks, patches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import oblique_geometry

from napari_medseg.errors import FileFormatError, GeometryMismatchError, InvalidInputError
from napari_medseg.training.data import discover_cases, load_case, sample_patch, split_cases
from napari_medseg.volume import Geometry, Volume, write_volume


def _write_case(root, name, *, channels=1, geometry=None, label_geometry=None, label_values=(0, 1, 2), nnunet=False, shape=(4, 10, 12)):
    geometry = geometry or oblique_geometry()
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    for c in range(channels):
        suffix = f"_{c:04d}" if nnunet else ""
        write_volume(Volume(rng.random(shape).astype(np.float32), geometry), root / "imagesTr" / f"{name}{suffix}.nii.gz")
    labels = rng.choice(label_values, size=shape).astype(np.uint8)
    write_volume(Volume(labels, label_geometry or geometry), root / "labelsTr" / f"{name}.nii.gz")


def test_decathlon_layout_with_dataset_json(tmp_path):
    for name in ("case_a", "case_b"):
        _write_case(tmp_path, name)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver"}}))
    cases = discover_cases(tmp_path)
    assert [c.id for c in cases] == ["case_a", "case_b"]
    assert all(len(c.images) == 1 and c.label.name == f"{c.id}.nii.gz" for c in cases)


def test_nnunet_layout_groups_channels(tmp_path):
    _write_case(tmp_path, "p01_scan", channels=2, nnunet=True)
    (case,) = discover_cases(tmp_path)
    assert case.id == "p01_scan" and [p.name for p in case.images] == ["p01_scan_0000.nii.gz", "p01_scan_0001.nii.gz"]
    channels, label = load_case(case)
    assert len(channels) == 2 and label.shape == channels[0].shape


def test_csv_layout_with_patient_column(tmp_path):
    _write_case(tmp_path, "x1")
    _write_case(tmp_path, "x2")
    (tmp_path / "cases.csv").write_text(
        "image,label,patient\nimagesTr/x1.nii.gz,labelsTr/x1.nii.gz,P1\nimagesTr/x2.nii.gz,labelsTr/x2.nii.gz,P1\n"
    )
    cases = discover_cases(tmp_path / "cases.csv")
    assert [c.patient for c in cases] == ["P1", "P1"]
    assert cases[0].images[0] == (tmp_path / "imagesTr" / "x1.nii.gz").resolve()


def test_patient_level_split_keeps_patients_together_and_is_seeded(tmp_path):
    from napari_medseg.training.data import Case

    cases = [Case(f"pat{p}_visit{v}", (tmp_path / "i",), tmp_path / "l", f"pat{p}") for p in range(10) for v in range(3)]
    train, val = split_cases(cases, validation_fraction=0.2, seed=3)
    assert {c.patient for c in train}.isdisjoint({c.patient for c in val})
    assert len({c.patient for c in val}) == 2 and len(train) + len(val) == 30
    assert split_cases(cases, validation_fraction=0.2, seed=3) == (train, val)
    assert split_cases(cases, validation_fraction=0.2, seed=4) != (train, val)
    folds = [split_cases(cases, folds=5, fold=k, seed=1)[1] for k in range(5)]
    patients = [frozenset(c.patient for c in f) for f in folds]
    assert all(len(p) == 2 for p in patients) and len(frozenset().union(*patients)) == 10


def test_patient_pattern_derives_patient_ids(tmp_path):
    _write_case(tmp_path, "sub01_t1")
    _write_case(tmp_path, "sub01_t2")
    _write_case(tmp_path, "sub02_t1")
    cases = discover_cases(tmp_path, patient_pattern=r"^(sub\d+)")
    assert [c.patient for c in cases] == ["sub01", "sub01", "sub02"]


def test_invalid_missing_label_names_the_case(tmp_path):
    _write_case(tmp_path, "good")
    write_volume(Volume(np.zeros((2, 3, 4), np.float32)), tmp_path / "imagesTr" / "lonely.nii.gz")
    with pytest.raises(InvalidInputError, match="case 'lonely' has no label file"):
        discover_cases(tmp_path)


def test_invalid_geometry_mismatch_names_the_case(tmp_path):
    _write_case(tmp_path, "shifted", label_geometry=Geometry((1.0, 1.0, 1.0)))
    (case,) = discover_cases(tmp_path)
    with pytest.raises(GeometryMismatchError, match="case 'shifted' image and its label are not on the same grid"):
        load_case(case)


def test_invalid_label_values_outside_the_model_name_the_case(tmp_path):
    _write_case(tmp_path, "extra", label_values=(0, 1, 5))
    (case,) = discover_cases(tmp_path)
    with pytest.raises(InvalidInputError, match=r"case 'extra': label values \[5\] are not among the model's labels"):
        load_case(case, allowed_labels=[0, 1, 2])


def test_invalid_dataset_paths(tmp_path):
    with pytest.raises(FileFormatError, match="dataset not found"):
        discover_cases(tmp_path / "nope")
    with pytest.raises(FileFormatError, match="imagesTr"):
        discover_cases(tmp_path)
    (tmp_path / "bad.csv").write_text("img,lab\na,b\n")
    with pytest.raises(InvalidInputError, match="expected columns 'image'"):
        discover_cases(tmp_path / "bad.csv")


def test_sample_patch_foreground_ratio_and_padding():
    rng = np.random.default_rng(0)
    label = np.zeros((20, 20, 20), np.uint8)
    label[15:18, 2:5, 10:13] = 1
    image = rng.random((1, 20, 20, 20)).astype(np.float32)
    hits = [sample_patch(image, label, (6, 6, 6), foreground_ratio=1.0, rng=rng)[1].any() for _ in range(50)]
    assert all(hits)
    misses = [sample_patch(image, label, (6, 6, 6), foreground_ratio=0.0, rng=rng)[1].any() for _ in range(200)]
    assert 0 < sum(misses) < 60  # uniform patches rarely contain the small object
    small_image, small_label = sample_patch(image[:, :4], label[:4], (8, 6, 6), foreground_ratio=0.5, rng=rng)
    assert small_image.shape == (1, 8, 6, 6) and small_label.shape == (8, 6, 6)
    patch_image, patch_label = sample_patch(image, label, (6, 6, 6), foreground_ratio=1.0, rng=np.random.default_rng(5))
    # the image patch and the label patch come from the same window
    (offset,) = [
        (a, b, c)
        for a, b, c in np.ndindex(15, 15, 15)
        if np.array_equal(image[0, a : a + 6, b : b + 6, c : c + 6], patch_image[0])
    ]
    a, b, c = offset
    assert np.array_equal(label[a : a + 6, b : b + 6, c : c + 6], patch_label) and patch_label.any()
