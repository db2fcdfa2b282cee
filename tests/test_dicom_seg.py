"""DICOM SEG out and in: real series written with pydicom, SEGs checked with highdicom and pydicom."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from _dicom import oblique_direction, phantom, write_patient_series

from napari_medseg import dicom_seg
from napari_medseg.cli import main
from napari_medseg.errors import GeometryMismatchError
from napari_medseg.volume import Volume, read_labels, read_volume, write_volume

hd = pytest.importorskip("highdicom")

GRIDS = {"axial": None, "oblique": oblique_direction()}
NAMES = {1: "outer shell", 2: "inner core"}
COLORS = {1: (1.0, 0.0, 0.0), 2: (0.0, 0.5, 1.0)}


def _main(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(params=sorted(GRIDS))
def series(request, tmp_path):
    image, labels = phantom()
    folder = write_patient_series(tmp_path / f"dicom_{request.param}", image, direction=GRIDS[request.param])
    return folder, labels


def _source_files(folder):
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in folder.iterdir()}


def _check_seg_file(path, folder, labels, names):
    """What a PACS and highdicom need: references, frames per source instance, segments; strict reading."""
    with pydicom.config.strict_reading():
        ds = pydicom.dcmread(path)
        for element in ds.iterall():  # every value decodes under strict VR validation
            _ = element.value
    first = pydicom.dcmread(next(iter(folder.iterdir())), stop_before_pixels=True)
    assert ds.SOPClassUID == dicom_seg.SEGMENTATION_STORAGE and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    sources = _source_files(folder)
    assert {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(sources)
    seg = hd.seg.Segmentation.from_dataset(ds)  # highdicom's own parsing and checks
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == [names[v] for v in sorted(names)]
    assert int(ds.NumberOfFrames) == labels.shape[0] * len(names)  # every slice of every segment
    # each label slice sits on the source instance at its position
    volume = read_volume(folder)
    uids = sorted(sources, key=lambda u: np.dot(
        np.cross(*np.reshape([float(v) for v in pydicom.dcmread(sources[u]).ImageOrientationPatient], (2, 3))),
        [float(v) for v in pydicom.dcmread(sources[u]).ImagePositionPatient]))
    per_instance = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(per_instance, labels)
    np.testing.assert_array_equal(volume.array.shape, labels.shape)
    return ds, seg


def test_convert_labels_to_seg_and_back(capsys, tmp_path, series):
    folder, labels = series
    source = read_volume(folder)
    labels_file = write_volume(Volume(labels, source.geometry), tmp_path / "labels.seg.nrrd", label_names=NAMES, label_colors=COLORS)
    out = tmp_path / "out.dcm"
    rc, stdout, err = _main(capsys, "convert", labels_file, out, "--reference", folder)
    assert rc == 0, err
    ds, seg = _check_seg_file(out, folder, labels, NAMES)
    description = seg.get_segment_description(2)
    assert description.segmented_property_type.meaning == "Tissue"  # no card code: the generic one
    assert str(description.algorithm_type) in ("MANUAL", "SegmentAlgorithmTypeValues.MANUAL")
    rgb = hd.color.CIELabColor.from_dicom_value(ds.SegmentSequence[1].RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(rgb, (0, 128, 255), atol=1)
    # the project's reader: same voxels, same grid, names and colours kept
    back = read_labels(out)
    np.testing.assert_array_equal(back.array, labels)
    assert back.geometry.isclose(source.geometry, atol=1e-4)
    from napari_medseg.volume import segments_from_metadata

    segments = segments_from_metadata(back.metadata)
    assert {v: n for v, (n, _) in segments.items()} == NAMES
    assert np.allclose(segments[1][1], COLORS[1], atol=0.01)
    # SEG -> NIfTI equals the labels -> NIfTI on the same grid
    rc, _, err = _main(capsys, "convert", out, tmp_path / "from_seg.nii.gz", "--labels")
    assert rc == 0, err
    write_volume(Volume(labels, source.geometry), tmp_path / "direct.nii.gz")
    a, b = read_volume(tmp_path / "from_seg.nii.gz"), read_volume(tmp_path / "direct.nii.gz")
    np.testing.assert_array_equal(a.array, b.array)
    assert a.geometry.isclose(b.geometry, atol=1e-4)


def test_seg_is_read_by_info_evaluate_and_postprocess(capsys, tmp_path, series):
    folder, labels = series
    source = read_volume(folder)
    out = dicom_seg.write_dicom_seg(Volume(labels, source.geometry), folder, tmp_path / "seg.dcm")
    rc, stdout, _ = _main(capsys, "info", out, "--json")
    info = json.loads(stdout)
    assert rc == 0 and info["shape"] == list(labels.shape) and info["metadata"]["Segment1_Name"] == "label 2"
    ref = write_volume(Volume(labels, source.geometry), tmp_path / "ref.nii.gz")
    rc, stdout, err = _main(capsys, "evaluate", "--pred", out, "--ref", ref, "--json")
    assert rc == 0, err
    assert json.loads(stdout)["labels"]["2"]["dice"] == pytest.approx(1.0)
    rc, _, err = _main(capsys, "postprocess", out, tmp_path / "pp.nii.gz", "--keep-largest")
    assert rc == 0, err
    np.testing.assert_array_equal(read_volume(tmp_path / "pp.nii.gz").array, labels)  # one component each


def test_label_map_on_a_flipped_grid_is_put_back_on_the_source_grid(tmp_path, series):
    folder, labels = series
    source = read_volume(folder)
    from napari_medseg.volume import reorient

    flipped = reorient(Volume(labels, source.geometry), "RAS")
    assert not np.array_equal(flipped.array, labels)
    out = dicom_seg.write_dicom_seg(flipped, folder, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_labels(out).array, labels)


def test_gaps_in_label_values_are_kept(tmp_path, series):
    folder, labels = series
    source = read_volume(folder)
    gappy = np.where(labels == 2, 5, labels).astype(np.uint8)
    out = dicom_seg.write_dicom_seg(Volume(gappy, source.geometry), folder, tmp_path / "seg.dcm")
    back = read_labels(out)
    np.testing.assert_array_equal(back.array, gappy)
    assert back.metadata["Segment2_Name"] == "label 3"


def test_refusals_exit_2(capsys, tmp_path, series):
    folder, labels = series
    source = read_volume(folder)
    lab = write_volume(Volume(labels, source.geometry), tmp_path / "labels.nii.gz")
    rc, _, err = _main(capsys, "convert", lab, tmp_path / "x.dcm", "--labels")
    assert rc == 2 and "--reference" in err and not (tmp_path / "x.dcm").exists()
    rc, _, err = _main(capsys, "convert", lab, tmp_path / "x.nii.gz", "--reference", folder)
    assert rc == 2 and "must end in .dcm" in err
    # labels on another grid: named mismatch, nothing written
    other = write_volume(Volume(labels[:, :, :-1].copy(), source.geometry), tmp_path / "other.nii.gz")
    rc, _, err = _main(capsys, "convert", other, tmp_path / "x.dcm", "--reference", folder)
    assert rc == 2 and "grid" in err and "shape" in err and not (tmp_path / "x.dcm").exists()
    # an image (not labels) to .dcm without a reference stays a DICOM image series folder
    rc, _, err = _main(capsys, "convert", folder, tmp_path / "copy.dcm")
    assert rc == 0 and (tmp_path / "copy.dcm").is_dir()
    with pytest.raises(GeometryMismatchError):
        dicom_seg.find_source_series(folder, geometry=source.geometry, shape=(7, 12, 16))


def test_napari_reader_opens_seg_as_named_labels(tmp_path):
    pytest.importorskip("napari")
    from napari_medseg.plugin._reader import napari_get_reader

    image, labels = phantom()
    folder = write_patient_series(tmp_path / "dicom", image)
    source = read_volume(folder)
    out = dicom_seg.write_dicom_seg(Volume(labels, source.geometry), folder, tmp_path / "seg.dcm",
                                    segments=[dicom_seg.Segment(v, n, COLORS[v]) for v, n in NAMES.items()])
    reader = napari_get_reader(str(out))
    assert reader is not None
    [(data, attributes, kind)] = reader(str(out))
    assert kind == "labels"
    np.testing.assert_array_equal(np.asarray(data), labels)
    features = attributes["features"]
    assert dict(zip(features["index"], features["name"]))[2] == "inner core"


# ------------------------------------------------------------------------------------------ predict
@pytest.fixture
def tiny_model(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from _models import make_model

    return make_model(tmp_path / "models", labels=(0, 1, 2), spacing=(0.8, 0.9, 2.5), channels=(2, 4))


def test_predict_dicom_folder_to_seg_matches_nifti(capsys, tmp_path, series, tiny_model):
    folder, _ = series
    seg_out, nii_out = tmp_path / "pred.dcm", tmp_path / "pred.nii.gz"
    for out in (seg_out, nii_out):
        rc, _, err = _main(capsys, "predict", folder, out, "--model", tiny_model.folder, "--no-progress")
        assert rc == 0, err
    a, b = read_labels(seg_out), read_labels(nii_out)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.geometry.isclose(b.geometry, atol=1e-4)
    names = {1: "label1", 2: "label2"}
    ds, seg = _check_seg_file(seg_out, folder, b.array, names)
    item = ds.SegmentSequence[0]
    algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
    assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert algorithm.AlgorithmName == "tiny" and algorithm.AlgorithmVersion == "1.0"
    assert tiny_model.sha256 in algorithm.AlgorithmParameters
    assert json.loads((tmp_path / "pred.dcm.json").read_text())["models"][0]["sha256"] == tiny_model.sha256
    # predicted NIfTI + its sidecar -> SEG: the algorithm comes from the sidecar
    rc, _, err = _main(capsys, "convert", nii_out, tmp_path / "conv.dcm", "--reference", folder)
    assert rc == 0, err
    conv = pydicom.dcmread(tmp_path / "conv.dcm")
    assert conv.SegmentSequence[1].SegmentLabel == "label2"
    assert conv.SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "tiny"
    np.testing.assert_array_equal(read_labels(tmp_path / "conv.dcm").array, b.array)


def test_predict_to_dcm_from_a_non_dicom_input_is_refused(capsys, tmp_path, tiny_model):
    image, _ = phantom()
    nii = write_volume(Volume(image, read_volume(write_patient_series(tmp_path / "d", image)).geometry), tmp_path / "in.nii.gz")
    rc, _, err = _main(capsys, "predict", nii, tmp_path / "out.dcm", "--model", tiny_model.folder)
    assert rc == 2 and "DICOM SEG" in err and not (tmp_path / "out.dcm").exists()


@pytest.mark.slow
def test_demo_model_seg_opens_in_highdicom_and_our_reader_with_identical_labels(capsys, tmp_path):
    """A DICOM SEG written from the shipped demo model, on a 40-slice DICOM series of the demo volume."""
    pytest.importorskip("torch").set_num_threads(2)
    pytest.importorskip("nilearn")
    from napari_medseg.sample_data import mni152_t1

    t1 = mni152_t1()
    # LPS-oriented axial slices through the brain's middle, cropped in-plane to the head
    from napari_medseg.volume import reorient

    lps = reorient(t1, "LPS")
    z0, y0, x0 = lps.shape[0] // 2 - 20, lps.shape[1] // 2 - 75, lps.shape[2] // 2 - 75  # one 2D patch per slice
    sub = np.ascontiguousarray(lps.array[z0:z0 + 40, y0:y0 + 150, x0:x0 + 150])
    sub = np.clip(np.round(sub), -32768, 32767).astype(np.int16) if np.issubdtype(sub.dtype, np.floating) else sub.astype(np.int16)
    g = lps.geometry
    origin = np.asarray(g.origin) + g.direction_matrix @ (np.array([x0, y0, z0]) * np.asarray(g.spacing))
    folder = write_patient_series(tmp_path / "t1", sub, spacing_xyz=g.spacing, origin=tuple(origin),
                          direction=g.direction_matrix, modality="MR")
    seg_out = tmp_path / "brain.dcm"
    rc, _, err = _main(capsys, "predict", folder, seg_out, "--model", "brain-tissue-t1-demo", "--no-progress")
    assert rc == 0, err
    ours, source = read_labels(seg_out), read_volume(folder)
    assert ours.geometry.isclose(source.geometry, atol=1e-4) and ours.shape == source.shape == (40, 150, 150)
    assert (ours.array == 1).sum() > 1000 and (ours.array == 2).sum() > 1000
    # highdicom, frame by frame against the source instances in slice order: the same labels
    ds, seg = _check_seg_file(seg_out, folder, ours.array, {1: "grey matter", 2: "white matter"})
    grey = seg.get_segment_description(1)
    assert grey.segmented_property_type.value == "389081007"  # the card's SNOMED CT code
    assert grey.segmented_property_category.meaning == "Anatomical Structure"
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "brain-tissue-t1-demo"
    from napari_medseg.registry import load_model

    assert load_model("brain-tissue-t1-demo").sha256 in algorithm.AlgorithmParameters


def test_multi_volume_series_is_refused_for_seg(capsys, tmp_path):
    """Two volumes sharing one SeriesInstanceUID at the same positions (DWI, fMRI): no SEG, exit 2."""
    import shutil

    image, labels = phantom()
    a = write_patient_series(tmp_path / "a", image, series_uid="1.2.826.0.1.3680043.8.498.1")
    b = write_patient_series(tmp_path / "b", image + 1, series_uid="1.2.826.0.1.3680043.8.498.1")
    both = tmp_path / "both"
    both.mkdir()
    for src in (a, b):
        for f in src.iterdir():
            shutil.copy(f, both / f"{src.name}_{f.name}")
    lab = write_volume(Volume(labels, read_volume(a).geometry), tmp_path / "labels.nii.gz")
    rc, _, err = _main(capsys, "convert", lab, tmp_path / "x.dcm", "--reference", both)
    assert rc == 2 and "12 instances at 6 positions" in err and not (tmp_path / "x.dcm").exists()
