"""Scanner DICOM read as dcm2niix does: classic, multi-volume, mosaic and enhanced series, series
choice and integrity checks. Each geometry is compared with dcm2niix run on the same files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from _dicom import (
    ORIENTATIONS,
    assert_matches_nifti,
    dcm2niix_path,
    oblique_orientation,
    run_dcm2niix,
    write_mosaic,
    write_series,
    write_slice,
)
from pydicom.uid import generate_uid

from napari_medseg.dicom import (
    AmbiguousSeriesError,
    SeriesIntegrityError,
    list_series,
    read_dicom,
    read_dicom_volume,
    series_datasets,
    series_files,
)
from napari_medseg.multivolume import MultiVolume
from napari_medseg.volume import Volume, read_volume

needs_dcm2niix = pytest.mark.skipif(dcm2niix_path() is None, reason="dcm2niix (the reference tool) is not installed")
PYDICOM_STUDY = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"


def _data(shape, seed=0, low=-100, high=1000, dtype=np.int16):
    return np.random.default_rng(seed).integers(low, high, shape).astype(dtype)


# ------------------------------------------------------------------------------ classic series
@needs_dcm2niix
@pytest.mark.parametrize(
    "setup, reverse",
    [("axial_hfs", False), ("axial_ffs", True), ("axial_hfp", False), ("sagittal", True), ("coronal", False), ("oblique", True)],
)
def test_classic_series_matches_dcm2niix(tmp_path, setup, reverse):
    orientation = oblique_orientation() if setup == "oblique" else ORIENTATIONS[setup]
    data = _data((5, 10, 8))
    write_series(tmp_path / "s", data, orientation=orientation, reverse=reverse)
    volume = read_dicom(tmp_path / "s")
    assert isinstance(volume, Volume) and volume.shape == (5, 10, 8)
    [nifti] = run_dcm2niix(tmp_path / "s", tmp_path / "out")
    assert_matches_nifti(volume.array, volume.geometry, nifti)
    # the slices are placed along the normal of ImageOrientationPatient, whatever the file order
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    assert np.allclose(volume.geometry.direction_matrix[:, 2], np.cross(row, col) / np.linalg.norm(np.cross(row, col)), atol=1e-5)
    assert volume.metadata["dicom_kind"] == "classic"
    assert not any("Patient" in k or "patient" in k for k in volume.metadata)


@needs_dcm2niix
@pytest.mark.parametrize(
    "slope, intercept, dtype", [(1, -1024, np.int16), (0.5, -10.25, np.float32), (2.00024, -4096, np.float64)]
)
def test_rescaled_ct_values_match_dcm2niix(tmp_path, slope, intercept, dtype):
    raw = _data((4, 10, 8), low=0, high=3000, dtype=np.uint16)
    write_series(tmp_path / "ct", raw, modality="CT", slope=slope, intercept=intercept)
    volume = read_dicom(tmp_path / "ct")
    assert volume.array.dtype == dtype
    assert np.allclose(volume.array, raw.astype(np.float64) * slope + intercept)
    [nifti] = run_dcm2niix(tmp_path / "ct", tmp_path / "out")
    assert_matches_nifti(volume.array, volume.geometry, nifti)


@needs_dcm2niix
def test_pydicom_real_study_series_match_dcm2niix_or_are_refused(tmp_path):
    found = {s.description.strip(): s for s in list_series(PYDICOM_STUDY)}
    smartscore = found["SmartScore - Gated 0.5 sec"]
    assert smartscore.shape == (5, 16, 16) and smartscore.n_volumes == 1 and smartscore.problem is None
    folder = tmp_path / "ct"
    folder.mkdir()
    for f in smartscore.files:
        shutil.copy(f, folder / f.name)
    volume = read_dicom(folder)
    [nifti] = run_dcm2niix(folder, tmp_path / "out")
    assert_matches_nifti(volume.array, volume.geometry, nifti)
    # a subset of a brain CT (4 of its files): refused as a gap, not re-spaced
    assert "missing slice" in found["Routine Brain"].problem
    assert "mixed orientations" in found["Scout"].problem  # a two-plane scout
    with pytest.raises(SeriesIntegrityError, match="mixed orientations"):
        read_dicom(PYDICOM_STUDY, series_uid=found["Scout"].uid)


# --------------------------------------------------------------------------- multi-volume (4D)
@needs_dcm2niix
def test_multi_volume_classic_series_is_4d_like_dcm2niix(tmp_path):
    data = _data((3, 4, 10, 8), seed=1)
    write_series(tmp_path / "dwi", data, orientation=oblique_orientation(23))
    series = read_dicom(tmp_path / "dwi")
    assert isinstance(series, MultiVolume) and series.array.shape == (3, 4, 10, 8)
    assert np.array_equal(series.array, data)
    assert series.geometry.spacing[2] == pytest.approx(2.0)  # not 2.0 / 3: volumes are not slices
    [nifti] = run_dcm2niix(tmp_path / "dwi", tmp_path / "out")
    assert nib.load(nifti).shape[3] == 3
    assert_matches_nifti(series.array, series.geometry, nifti)
    second = read_dicom_volume(tmp_path / "dwi", volume=1)
    assert np.array_equal(second.array, data[1]) and second.geometry.isclose(series.geometry)
    with pytest.raises(Exception, match=r"4D with 3 volumes; choose one with --volume K \(0-based, 0..2\)"):
        read_dicom_volume(tmp_path / "dwi")
    with pytest.raises(Exception, match="out of range"):
        read_dicom_volume(tmp_path / "dwi", volume=3)
    order = series_files(tmp_path / "dwi")
    assert len(order) == 3 and all(len(v) == 4 for v in order)
    assert [int(d.AcquisitionNumber) for d in series_datasets(tmp_path / "dwi", volume=2)] == [3] * 4


# --------------------------------------------------------------------------------- mosaic
@needs_dcm2niix
@pytest.mark.parametrize(
    "setup, flip", [("axial_hfs", False), ("sagittal", True), ("oblique", False), ("oblique", True)]
)
def test_siemens_mosaic_is_demosaiced_like_dcm2niix(tmp_path, setup, flip):
    orientation = oblique_orientation(11) if setup == "oblique" else ORIENTATIONS[setup]
    data = _data((3, 5, 10, 8), seed=2, low=0, dtype=np.uint16)  # 3 volumes of 5 slices on a 3x3 tile grid
    uid = generate_uid()
    folder = tmp_path / "fmri"
    folder.mkdir()
    for t in range(3):
        write_mosaic(folder / f"MR{t:04d}.dcm", data[t], orientation=orientation, first_slice_position=(-30, 20, 10),
                     series_uid=uid, instance=t + 1, flip_normal=flip)
    series = read_dicom(folder)
    assert isinstance(series, MultiVolume) and series.array.shape == (3, 5, 10, 8)
    assert np.array_equal(series.array, data)
    assert np.allclose(series.geometry.origin, (-30, 20, 10), atol=1e-4)  # the corrected first-slice position
    assert series.geometry.spacing == pytest.approx((3.0, 3.0, 3.5))
    [nifti] = run_dcm2niix(folder, tmp_path / "out")
    assert_matches_nifti(series.array, series.geometry, nifti)
    one = read_volume(folder / "MR0001.dcm")  # a single mosaic file is one volume
    assert np.array_equal(one.array, data[1]) and one.geometry.isclose(series.geometry)


def test_mosaic_count_from_0019_100a_without_csa(tmp_path):
    data = _data((4, 10, 8), seed=3, low=0, dtype=np.uint16)
    path = write_mosaic(tmp_path / "m.dcm", data, orientation=ORIENTATIONS["axial_hfs"], first_slice_position=(0, 0, 0),
                        series_uid=generate_uid(), instance=1)
    ds = pydicom.dcmread(path)
    del ds[0x00291010]
    del ds[0x00290010]
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0A, "US", 4)
    ds.save_as(path)
    volume = read_volume(path)
    assert volume.shape == (4, 10, 8) and np.array_equal(volume.array, data)
    del ds[0x0019100A]
    ds.save_as(path)
    with pytest.raises(Exception, match="NumberOfImagesInMosaic"):
        read_volume(path)


# ------------------------------------------------------------------------------- enhanced
def _enhanced(classic_paths, series_uid, number=7):
    datasets = [pydicom.dcmread(p) for p in classic_paths]
    return hd.legacy.LegacyConvertedEnhancedMRImage(
        datasets, series_instance_uid=series_uid, series_number=number, sop_instance_uid=generate_uid(), instance_number=1
    )


@needs_dcm2niix
def test_enhanced_files_one_per_volume(tmp_path):
    data = _data((2, 4, 10, 8), seed=4)
    paths = write_series(tmp_path / "classic", data, orientation=ORIENTATIONS["sagittal"])
    uid = generate_uid()
    for t in range(2):
        single = tmp_path / f"single{t}"
        single.mkdir()
        volume_paths = [p for p in paths if int(pydicom.dcmread(p, stop_before_pixels=True).AcquisitionNumber) == t + 1]
        _enhanced(volume_paths, uid).save_as(single / f"e{t}.dcm")
        one = read_dicom(single)
        assert isinstance(one, Volume) and np.array_equal(one.array, data[t])
        [nifti] = run_dcm2niix(single, tmp_path / f"out{t}")
        assert_matches_nifti(one.array, one.geometry, nifti)
        (tmp_path / "both").mkdir(exist_ok=True)
        shutil.copy(single / f"e{t}.dcm", tmp_path / "both" / f"e{t}.dcm")
    series = read_dicom(tmp_path / "both")
    assert isinstance(series, MultiVolume) and np.array_equal(series.array, data)
    assert series.geometry.isclose(read_dicom(tmp_path / "classic").geometry, atol=1e-6)
    assert series.metadata["dicom_kind"] == "enhanced"


def test_enhanced_single_file_4d_by_temporal_position(tmp_path):
    data = _data((3, 4, 10, 8), seed=5)
    paths = write_series(tmp_path / "classic", data, orientation=oblique_orientation(31))
    image = _enhanced(paths, generate_uid())
    for group in image.PerFrameFunctionalGroupsSequence:
        instance = int(group.UnassignedPerFrameConvertedAttributesSequence[0].InstanceNumber)
        content = group.FrameContentSequence[0]
        content.TemporalPositionIndex = (instance - 1) // 4 + 1
        content.FrameAcquisitionNumber = 1  # only the temporal index tells the volumes apart
    (tmp_path / "enh").mkdir()
    image.save_as(tmp_path / "enh" / "all.dcm")
    series = read_dicom(tmp_path / "enh")
    assert isinstance(series, MultiVolume) and np.array_equal(series.array, data)
    classic = read_dicom(tmp_path / "classic")  # itself checked against dcm2niix above
    assert series.geometry.isclose(classic.geometry, atol=1e-6)
    with pytest.raises(Exception, match="4D with 3 volumes"):
        read_volume(tmp_path / "enh" / "all.dcm")  # a 3D read of a 4D file needs a volume


# -------------------------------------------------------------------------------- integrity
@pytest.fixture
def axial(tmp_path):
    def make(name="s", **kwargs):
        return write_series(tmp_path / name, _data((6, 10, 8)), **kwargs), tmp_path / name

    return make


def test_missing_slice_is_refused_naming_the_gap(axial):
    _, folder = axial(skip=(3,))
    with pytest.raises(SeriesIntegrityError, match=r"missing slice: a gap of 4 mm between \S+ \(44.0000 mm\) and \S+ \(48.0000 mm\)"):
        read_dicom(folder)


def test_duplicate_position_is_refused_naming_the_files(axial):
    paths, folder = axial()
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(folder / "copy.dcm")
    with pytest.raises(SeriesIntegrityError, match=r"duplicate slice position: 2 images at 44.0000 mm .*copy.dcm"):
        read_dicom(folder)


def test_uneven_spacing_is_refused(axial):
    _, folder = axial(offsets={4: np.array([0, 0, 0.3])})
    with pytest.raises(SeriesIntegrityError, match="uneven slice spacing"):
        read_dicom(folder)


def test_mixed_orientation_and_sizes_are_refused(tmp_path, axial):
    paths, folder = axial()
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    write_slice(folder / "loc.dcm", _data((10, 8)), position=(0, 0, 0), orientation=ORIENTATIONS["sagittal"],
                series_uid=uid, instance=50)
    with pytest.raises(SeriesIntegrityError, match=r"mixed orientations .*loc.dcm"):
        read_dicom(folder)
    (folder / "loc.dcm").unlink()
    write_slice(folder / "big.dcm", _data((12, 8)), position=(-20, -30, 52), orientation=ORIENTATIONS["axial_hfs"],
                series_uid=uid, instance=50)
    with pytest.raises(SeriesIntegrityError, match=r"mixed image sizes .*12x8: big.dcm"):
        read_dicom(folder)


def test_gantry_tilt_is_refused(axial):
    # CT with a tilted gantry: each slice shifted along y as it moves along z
    tilt = {z: np.array([0.0, z * 2.0 * np.tan(np.radians(15)), 0.0]) for z in range(6)}
    _, folder = axial(modality="CT", offsets=tilt)
    with pytest.raises(SeriesIntegrityError, match=r"gantry tilt of about 15.00 degrees"):
        read_dicom(folder)


# -------------------------------------------------------------------------- finding series
def _study(tmp_path) -> tuple[Path, dict]:
    study = tmp_path / "study"
    t1 = _data((4, 10, 8), seed=6)
    dwi = _data((2, 3, 10, 8), seed=7)
    write_series(study / "patient" / "t1", t1, number=3, description="T1 MPRAGE")
    write_series(study / "patient" / "dwi", dwi, number=5, description="DWI", orientation=ORIENTATIONS["coronal"])
    (study / "notes.txt").write_text("not DICOM")
    return study, {"t1": t1, "dwi": dwi}


def test_list_series_finds_series_in_subfolders(tmp_path):
    study, data = _study(tmp_path)
    found = list_series(study)
    assert [(s.number, s.description, s.modality, s.shape, s.n_volumes) for s in found] == [
        (3, "T1 MPRAGE", "MR", (4, 10, 8), 1),
        (5, "DWI", "MR", (3, 10, 8), 2),
    ]
    with pytest.raises(AmbiguousSeriesError, match="holds 2 series.*T1 MPRAGE.*DWI"):
        read_dicom(study)
    assert np.array_equal(read_dicom(study, series_number=3).array, data["t1"])
    assert np.array_equal(read_dicom(study, series_uid=found[1].uid).array, data["dwi"])
    with pytest.raises(Exception, match="no series with SeriesNumber 9"):
        read_dicom(study, series_number=9)


def _cli(capsys, *args, rc=0):
    """``medseg`` in this process (the same ``main`` the console script runs): (stdout, stderr)."""
    from napari_medseg.cli import main

    capsys.readouterr()
    assert main([str(a) for a in args]) == rc
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_cli_info_lists_series_and_commands_take_the_choice(tmp_path, capsys):
    study, data = _study(tmp_path)
    listing = json.loads(_cli(capsys, "info", study, "--json")[0])["series"]
    assert [(s["number"], s["description"], s["modality"], s["shape"], s["volumes"], s["n_files"]) for s in listing] == [
        (3, "T1 MPRAGE", "MR", [4, 10, 8], 1, 4),
        (5, "DWI", "MR", [3, 10, 8], 2, 6),
    ]
    table = _cli(capsys, "info", study)[0]
    assert "T1 MPRAGE" in table and "DWI" in table and listing[0]["uid"] in table
    # no silent choice: a command refuses, listing the series
    err = _cli(capsys, "convert", study, tmp_path / "x.nii.gz", rc=2)[1]
    assert "holds 2 series" in err and "T1 MPRAGE" in err and "--series-uid" in err
    assert not (tmp_path / "x.nii.gz").exists()
    _cli(capsys, "convert", study, tmp_path / "t1.nii.gz", "--series-number", "3")
    assert np.array_equal(read_volume(tmp_path / "t1.nii.gz").array, data["t1"])
    # 4D: info and convert take the series; a 3D operation needs --volume
    info = json.loads(_cli(capsys, "info", study, "--series-uid", listing[1]["uid"], "--json")[0])
    assert info["volumes"] == 2 and info["shape"] == [3, 10, 8]
    _cli(capsys, "convert", study, tmp_path / "dwi.nii.gz", "--series-number", "5")
    image = nib.load(str(tmp_path / "dwi.nii.gz"))
    assert image.header["dim"][0] == 4 and image.header["dim"][4] == 2
    assert np.array_equal(np.asanyarray(image.dataobj).transpose(3, 2, 1, 0), data["dwi"])
    geometry = read_dicom(study, series_number=5).geometry
    assert np.allclose(np.diag([-1, -1, 1, 1]) @ geometry.index_to_physical(), image.affine, atol=1e-4)
    _cli(capsys, "convert", study, tmp_path / "dwi1.nrrd", "--series-number", "5", "--volume", "1")
    assert np.array_equal(read_volume(tmp_path / "dwi1.nrrd").array, data["dwi"][1])
    err = _cli(capsys, "postprocess", study, tmp_path / "p.nii.gz", "--series-number", "5", "--fill-holes", rc=2)[1]
    assert "4D with 2 volumes; choose one with --volume K" in err
    err = _cli(capsys, "convert", study, tmp_path / "dwi_dicom", "--series-number", "5", rc=2)[1]
    assert "--volume" in err and not (tmp_path / "dwi_dicom").exists()
    err = _cli(capsys, "convert", tmp_path / "t1.nii.gz", tmp_path / "y.nrrd", "--volume", "1", rc=2)[1]
    assert "holds a single 3D volume" in err


def test_cli_refuses_a_broken_series_with_exit_2(tmp_path, run_cli):
    write_series(tmp_path / "gap", _data((5, 10, 8)), skip=(2,))
    proc = run_cli("info", tmp_path / "gap", check_rc=2)
    assert "missing slice" in proc.stderr and "IM" in proc.stderr and "Traceback" not in proc.stderr


def test_search_is_bounded_in_depth_and_file_count(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    write_series(deep, _data((3, 10, 8)), description="deep")
    assert [s.description for s in list_series(tmp_path, max_depth=3)] == ["deep"]
    assert list_series(tmp_path, max_depth=2) == []
    with pytest.raises(Exception, match="more than 2 files"):
        list_series(tmp_path, max_files=2)
