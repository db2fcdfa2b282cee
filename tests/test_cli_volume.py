"""``medseg info``, ``medseg convert`` and ``medseg sample-data`` end to end through the console entry point."""

from __future__ import annotations

import json
import shutil

import numpy as np
from conftest import oblique_geometry
from pydicom.data import get_testdata_file

from napari_medseg.volume import Volume, read_labels, read_volume, write_volume


def test_info_json_reports_geometry(tmp_path, run_cli, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "v.nrrd")
    info = json.loads(run_cli("info", path, "--json").stdout)
    assert info["shape"] == [6, 20, 24]
    assert info["dtype"] == "float32"
    assert np.allclose(info["spacing"], oblique_volume.geometry.spacing)
    assert np.allclose(info["origin"], oblique_volume.geometry.origin)
    assert np.allclose(info["direction"], oblique_volume.geometry.direction)
    assert info["orientation"] == oblique_volume.geometry.orientation
    assert info["oblique"] is True


def test_info_table_is_readable(tmp_path, run_cli, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "v.nii.gz")
    out = run_cli("info", path).stdout
    assert "spacing (x, y, z) mm" in out and "0.7, 0.9, 2.5" in out and "orientation" in out


def test_convert_dicom_folder_to_nifti_keeps_values_and_geometry(tmp_path, run_cli):
    folder = tmp_path / "dicom"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    out = tmp_path / "ct.nii.gz"
    run_cli("convert", folder, out)
    source, converted = read_volume(folder), read_volume(out)
    assert np.array_equal(source.array, converted.array)
    assert source.geometry.isclose(converted.geometry, atol=1e-5)


def test_convert_nifti_to_dicom_series_and_back(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    volume = Volume(rng.integers(-1000, 3000, size=(4, 8, 9)).astype(np.int16), oblique_geometry())
    src = write_volume(volume, tmp_path / "ct.nii.gz")
    run_cli("convert", src, tmp_path / "series")
    assert len(list((tmp_path / "series").glob("*.dcm"))) == 4
    back = read_volume(tmp_path / "series")
    assert np.array_equal(back.array, volume.array) and back.geometry.isclose(volume.geometry, atol=1e-5)


def test_convert_labels_to_seg_nrrd(tmp_path, run_cli):
    labels = Volume(np.array([[[0, 1], [2, 2]]], np.float32), oblique_geometry())
    src = write_volume(labels, tmp_path / "l.nii.gz")
    run_cli("convert", src, tmp_path / "l.seg.nrrd", "--labels")
    back = read_labels(tmp_path / "l.seg.nrrd")
    assert back.array.dtype == np.uint8 and back.array.tolist() == [[[0, 1], [2, 2]]]
    assert back.metadata["Segment0_LabelValue"] == "1"


def test_sample_data_writes_the_demo_volume(tmp_path, run_cli):
    run_cli("sample-data", tmp_path / "demo")
    t1 = read_volume(tmp_path / "demo" / "mni152_t1.nii.gz")
    labels = read_labels(tmp_path / "demo" / "mni152_tissue_labels.nii.gz")
    assert t1.shape == labels.shape == (189, 233, 197)
    assert t1.geometry.isclose(labels.geometry)
    assert set(np.unique(labels.array)) == {0, 1, 2}
    # white matter is brighter than grey matter on T1
    assert t1.array[labels.array == 2].mean() > t1.array[labels.array == 1].mean()


def test_invalid_inputs_exit_2_with_one_line(tmp_path, run_cli):
    (tmp_path / "bad.xyz").write_text("x")
    (tmp_path / "broken.nii").write_bytes(b"\x00" * 50)
    cases = [
        (("info", tmp_path / "missing.nii.gz"), "missing.nii.gz: file not found"),
        (("info", tmp_path / "bad.xyz"), "unsupported file type '.xyz'"),
        (("info", tmp_path / "broken.nii"), "broken.nii: cannot read the file"),
        (("convert", tmp_path / "missing.nrrd", tmp_path / "o.nii"), "file not found"),
        (("info",), "the following arguments are required"),
        (("nonsense",), "invalid choice"),
    ]
    for args, message in cases:
        proc = run_cli(*args, check_rc=2)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert message in lines[0], proc.stderr


def test_every_command_has_help(run_cli):
    from napari_medseg.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"info", "convert", "sample-data"} <= set(commands)
    for name in commands:
        out = run_cli(name, "--help").stdout
        assert "usage: medseg" in out and name in out
