"""No patient-identifying DICOM attribute reaches an output unless the user asks for it.

A real series carries patient name, ID, birth date, sex, institution, referring physician and
accession number; every byte of every output (image headers of every format, a DICOM image series
written back, the JSON sidecar, the job record and its logs, ``info --json``) is searched for them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _dicom import PATIENT_STRINGS, phantom, write_patient_series

from napari_medseg.cli import main
from napari_medseg.dicom_tags import ALLOWED_TAGS, filter_metadata, is_allowed_key
from napari_medseg.volume import Volume, read_volume, write_volume


def _main(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _leaks(*paths: Path) -> list[str]:
    """Patient strings found in the bytes of these files (folders searched recursively)."""
    found = []
    for root in paths:
        files = [root] if root.is_file() else [f for f in root.rglob("*") if f.is_file()]
        for f in files:
            data = f.read_bytes()
            found += [f"{f.name}: {s}" for s in PATIENT_STRINGS if s.encode() in data]
    return found


@pytest.fixture
def dicom_folder(tmp_path):
    image, _ = phantom()
    folder = write_patient_series(tmp_path / "dicom", image)
    # the test is only meaningful if the input really holds the patient data
    assert _leaks(folder)
    return folder


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz", ".seg.nrrd", ""])
def test_convert_writes_no_patient_data(capsys, tmp_path, dicom_folder, suffix):
    out = tmp_path / f"out{suffix}"
    args = ["convert", dicom_folder, out] + (["--labels"] if suffix == ".seg.nrrd" else [])
    if suffix == ".seg.nrrd":  # a label map from the same series: values >= 0
        args[1] = write_patient_series(tmp_path / "lab", phantom()[1].astype(np.int16))
    rc, stdout, err = _main(capsys, *args)
    assert rc == 0, err
    assert _leaks(out) == [] and not any(s in stdout + err for s in PATIENT_STRINGS)
    assert read_volume(out).array.shape == (6, 12, 16)


def test_single_dicom_file_to_nrrd_keeps_only_the_allow_list(capsys, tmp_path, dicom_folder):
    one = sorted(dicom_folder.iterdir())[0]
    out = tmp_path / "one.nrrd"
    rc, _, err = _main(capsys, "convert", one, out)
    assert rc == 0, err
    assert _leaks(out) == []
    header = read_volume(out).metadata
    dicom_keys = [k for k in header if "|" in k]
    assert dicom_keys and all(k in ALLOWED_TAGS for k in dicom_keys)
    assert header["0008|0060"] == "CT" and "0010|0010" not in header
    assert "0008|103e" not in header  # the series description names the patient here


def test_keep_dicom_tags_is_the_explicit_opt_in(capsys, tmp_path, dicom_folder):
    for source, out in ((sorted(dicom_folder.iterdir())[0], tmp_path / "one.nrrd"), (dicom_folder, tmp_path / "all.mha")):
        rc, _, err = _main(capsys, "convert", source, out, "--keep-dicom-tags")
        assert rc == 0, err
        leaks = " ".join(_leaks(out))
        assert "DOE^JANE" in leaks and "PID-90210-XYZ" in leaks and "19610704" in leaks


def test_info_json_shows_no_patient_data(capsys, dicom_folder):
    rc, stdout, _ = _main(capsys, "info", dicom_folder, "--json")
    assert rc == 0 and json.loads(stdout)["metadata"]["dicom_modality"] == "CT"
    assert not any(s in stdout for s in PATIENT_STRINGS)


def test_predict_outputs_sidecar_and_job_record_hold_no_patient_data(tmp_path, dicom_folder):
    pytest.importorskip("torch")
    from _models import make_model

    from napari_medseg.jobs import JobStatus, start_job

    model = make_model(tmp_path / "models", labels=(0, 1), spacing=(0.8, 0.9, 2.5), channels=(2, 4))
    out = tmp_path / "pred.nrrd"
    job = start_job("predict", ["predict", str(dicom_folder), str(out), "--model", str(model.folder), "--no-progress",
                                "--probabilities", str(tmp_path / "prob.mha")],
                    jobs_root=tmp_path / "jobs", env={"OMP_NUM_THREADS": "1"})
    assert job.wait(timeout_s=300) == JobStatus.DONE, (job.folder / "stderr.log").read_text() if (job.folder / "stderr.log").exists() else ""
    sidecar = Path(str(out) + ".json")
    assert out.exists() and sidecar.exists() and json.loads(sidecar.read_text())["models"][0]["name"] == "tiny"
    assert _leaks(out, sidecar, tmp_path / "prob.mha", job.folder) == []
    assert read_volume(out).metadata["medseg_model"] == "tiny"


def test_dicom_series_writer_copies_no_identifying_tag(tmp_path):
    header = {"0010|0010": "DOE^JANE^Q", "0010|0020": "PID-90210-XYZ", "dicom_series_description": "DOE^JANE",
              "0008|0080": "Saint Elsewhere Hospital", "dicom_modality": "MR"}
    image, _ = phantom()
    volume = Volume(image, read_volume(write_patient_series(tmp_path / "src", image, patient=None)).geometry, header)
    folder = write_volume(volume, tmp_path / "series")
    assert _leaks(folder) == []
    import pydicom

    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    assert ds.Modality == "MR" and "DOE" not in str(ds.get("PatientName", ""))


def test_headers_from_any_source_are_filtered_on_write(tmp_path):
    """A NRRD that already carries patient tags (written by another tool) does not pass them on."""
    leaky = {"0010|0010": "DOE^JANE^Q", "0010|0030": "19610704", "0008|0060": "MR", "custom_note": "kept"}
    volume = Volume(np.zeros((2, 3, 4), np.int16), metadata=leaky)
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.array)
    for k, v in leaky.items():
        image.SetMetaData(k, v)
    sitk.WriteImage(image, str(tmp_path / "other_tool.nrrd"))
    assert _leaks(tmp_path / "other_tool.nrrd")
    back = read_volume(tmp_path / "other_tool.nrrd")
    assert back.metadata.get("custom_note") == "kept" and "0010|0010" not in back.metadata
    write_volume(volume, tmp_path / "ours.nrrd")
    assert _leaks(tmp_path / "ours.nrrd") == []
    assert read_volume(tmp_path / "ours.nrrd").metadata["0008|0060"] == "MR"


@pytest.mark.parametrize(
    "key, allowed",
    [("0010|0010", False), ("0010|0020", False), ("0010|0030", False), ("0010|0040", False), ("0008|0080", False),
     ("0008|103e", False), ("0018|1030", False), ("0020|000e", False), ("0008|0020", False), ("0029|1010", False),
     ("dicom_series_uid", False), ("dicom_series_description", False),
     ("0008|0060", True), ("0018|0087", True), ("dicom_modality", True), ("medseg_model", True)],
)
def test_allow_list_decisions(key, allowed):
    assert is_allowed_key(key) is allowed
    assert (key in filter_metadata({key: "x"})) is allowed
    assert key in filter_metadata({key: "x"}, keep_dicom_tags=True)


def test_seg_output_is_filed_with_the_patient(tmp_path, dicom_folder):
    """The one documented exception: a DICOM SEG carries the source's patient and study (PACS needs them)."""
    import pydicom

    from napari_medseg.dicom_seg import write_dicom_seg

    source = read_volume(dicom_folder)
    out = write_dicom_seg(Volume(phantom()[1], source.geometry), dicom_folder, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(out)
    assert ds.PatientID == "PID-90210-XYZ" and str(ds.PatientName) == "DOE^JANE^Q"
    assert os.path.getsize(out) > 0
