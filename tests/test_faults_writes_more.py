"""Fault injection on the writers outside write_volume (issue 11): 4D series, DICOM SEG, model
folders, training checkpoints; and the cheap checks of predict's numbers before torch loads.

Real full file systems (a 2 MiB tmpfs), real SIGKILLs, real DICOM series written with pydicom;
each test checks the exit code, the message, that the user's files are byte-identical and that no
temporary entry is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from _dicom import phantom, write_patient_series, write_series
from _faults import _KILLER, _cli, _digest, _env, _fill, _main, _temporaries, tmpfs  # noqa: F401 - tmpfs is a fixture

from napari_medseg.errors import FileAccessError
from napari_medseg.multivolume import MultiVolume, write_multivolume
from napari_medseg.volume import Geometry, Volume, read_labels, read_volume, write_volume


# ------------------------------------------------------------------------------------ 4D series
@pytest.fixture(scope="module")
def dwi(tmp_path_factory):
    """A 3-volume classic DICOM series (3 x 8 x 48 x 48 int16, ~110 kB of noise)."""
    data = np.random.default_rng(5).integers(0, 3000, (3, 8, 48, 48)).astype(np.int16)
    folder = tmp_path_factory.mktemp("dwi") / "series"
    write_series(folder, data)
    return folder, data


@pytest.mark.parametrize("name", ["dwi.nii.gz", "dwi.nii", "dwi.nrrd", "dwi.mha"])
def test_full_disk_4d_convert_keeps_the_old_file(tmpfs, dwi, name):
    folder, _ = dwi
    old = write_multivolume(MultiVolume(np.ones((2, 2, 3, 4), np.int16)), tmpfs / name)
    _fill(tmpfs, 40_000)
    before = _digest(tmpfs)
    proc = _cli("convert", folder, old)
    assert proc.returncode == 2, proc.stderr
    assert "no space left on the device" in proc.stderr and str(old) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _digest(tmpfs) == before and _temporaries(tmpfs) == []


def test_4d_is_written_exactly_as_named_with_its_volume_count(capsys, tmp_path, dwi):
    folder, data = dwi
    bystander = write_volume(Volume(np.zeros((2, 3, 4), np.int16)), tmp_path / "x.nii.gz")
    before = bystander.read_bytes()
    proc = _main(capsys, "convert", folder, tmp_path / "x.nii.gz.nii.gz")
    assert proc.returncode == 0, proc.stderr
    image = nib.load(tmp_path / "x.nii.gz.nii.gz")
    assert image.header["dim"][0] == 4 and image.header["dim"][4] == 3  # dim[4] = number of volumes
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(3, 2, 1, 0), data)
    assert bystander.read_bytes() == before  # SimpleITK alone would have written x.nii.gz
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz", "x.nii.gz.nii.gz"]
    proc = _main(capsys, "convert", folder, tmp_path / "y.NII.GZ")
    assert proc.returncode == 2 and "lower case" in proc.stderr and not (tmp_path / "y.NII.GZ").exists()


def test_write_multivolume_refuses_an_existing_folder(tmp_path):
    (tmp_path / "out.nii.gz").mkdir()
    (tmp_path / "out.nii.gz" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="existing folder"):
        write_multivolume(MultiVolume(np.ones((2, 2, 3, 4), np.int16)), tmp_path / "out.nii.gz")
    assert (tmp_path / "out.nii.gz" / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------ DICOM SEG
@pytest.fixture
def ct(tmp_path):
    image, labels = phantom((12, 40, 48))
    folder = write_patient_series(tmp_path / "ct", image)
    return folder, labels, read_volume(folder).geometry


def test_full_disk_dicom_seg_keeps_the_old_seg(capsys, tmpfs, tmp_path, ct):
    folder, labels, geometry = ct
    first = write_volume(Volume(labels, geometry), tmp_path / "a.nii.gz")
    second = write_volume(Volume((labels > 0).astype(np.uint8) * 3, geometry), tmp_path / "b.nii.gz")
    out = tmpfs / "out.dcm"
    assert _main(capsys, "convert", first, out, "--reference", folder).returncode == 0
    _fill(tmpfs, 0)
    before = _digest(tmpfs)
    proc = _cli("convert", second, out, "--reference", folder)
    assert proc.returncode == 2, proc.stderr
    assert "no space left" in proc.stderr and str(out) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _digest(tmpfs) == before and _temporaries(tmpfs) == []
    np.testing.assert_array_equal(read_labels(out).array, labels)  # still the first SEG, whole


def test_dicom_seg_output_checks_come_before_reading(capsys, tmp_path, ct):
    folder, labels, geometry = ct
    lab = write_volume(Volume(labels, geometry), tmp_path / "labels.nii.gz")
    source = next(folder.iterdir())
    before = _digest(tmp_path)
    # a source file of the reference as OUT (through a hard link): refused, nothing read or changed
    os.link(source, tmp_path / "alias.dcm")
    proc = _main(capsys, "convert", lab, tmp_path / "alias.dcm", "--reference", folder)
    assert proc.returncode == 2 and "would overwrite" in proc.stderr, proc.stderr
    proc = _main(capsys, "convert", lab, tmp_path / "OUT.DCM", "--reference", folder)
    assert proc.returncode == 2 and "lower case" in proc.stderr
    assert {k: v for k, v in _digest(tmp_path).items() if k != "alias.dcm"} == before


@pytest.fixture
def tiny_model(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from _models import make_model

    return make_model(tmp_path / "models", labels=(0, 1, 2), spacing=(0.8, 0.9, 2.5), channels=(2, 4))


def _predict_seg_killed(where: str, folder: Path, out: Path, model, seed: int) -> subprocess.CompletedProcess:
    args = ["predict", str(folder), str(out), "--model", str(model.folder), "--no-progress", "--seed", str(seed)]
    return subprocess.run([sys.executable, "-c", _KILLER, where, out.name, *args], capture_output=True, text=True, env=_env())


def test_killed_predict_to_seg_never_leaves_a_stale_sidecar(capsys, tmp_path, tiny_model):
    folder = write_patient_series(tmp_path / "ct", phantom((6, 12, 16))[0])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pred.dcm"
    assert _main(capsys, "predict", folder, out, "--model", tiny_model.folder, "--no-progress", "--seed", "1").returncode == 0
    old_uid = pydicom.dcmread(out, stop_before_pixels=True).SOPInstanceUID
    before = _digest(out_dir)
    # killed before the commit: the old SEG and its sidecar are byte-identical
    assert _predict_seg_killed("before-commit", folder, out, tiny_model, 2).returncode == -signal.SIGKILL
    assert _digest(out_dir) == before
    # killed between the renames (right after the new SEG went in): the old sidecar is gone
    assert _predict_seg_killed("between-renames", folder, out, tiny_model, 2).returncode == -signal.SIGKILL
    assert pydicom.dcmread(out, stop_before_pixels=True).SOPInstanceUID != old_uid
    assert not (out_dir / "pred.dcm.json").exists()
    # the next write into the folder completes the run: the sidecar of seed 2, no temporaries
    assert _main(capsys, "convert", folder, out_dir / "other.nrrd").returncode == 0
    assert json.loads((out_dir / "pred.dcm.json").read_text())["parameters"]["seed"] == 2
    assert _temporaries(out_dir) == []


def _study_with_two_series_on_one_grid(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """One folder holding two series (T1-like and T2-like) on the same grid, files side by side."""
    study = tmp_path / "study"
    study.mkdir()
    arrays = {}
    for i, seed in enumerate((1, 2)):
        image, _ = phantom((6, 12, 16), seed=seed)
        part = write_patient_series(tmp_path / f"part{i}", image)
        uid = pydicom.dcmread(next(part.iterdir()), stop_before_pixels=True).SeriesInstanceUID
        for file in part.iterdir():
            file.rename(study / f"s{i}_{file.name}")
        arrays[str(uid)] = image
    return study, arrays


def test_predict_to_seg_with_series_uid_in_a_study_folder(capsys, tmp_path, tiny_model):
    study, arrays = _study_with_two_series_on_one_grid(tmp_path)
    uid = sorted(arrays)[1]
    out = tmp_path / "pred.dcm"
    proc = _main(capsys, "predict", study, out, "--model", tiny_model.folder, "--no-progress", "--series-uid", uid)
    assert proc.returncode == 0, proc.stderr
    ds = pydicom.dcmread(out)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    chosen = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in study.iterdir()
              if pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID == uid}
    assert referenced == chosen and len(chosen) == 6
    # the same prediction as NIfTI: identical labels
    nii = tmp_path / "pred.nii.gz"
    assert _main(capsys, "predict", study, nii, "--model", tiny_model.folder, "--no-progress", "--series-uid", uid).returncode == 0
    np.testing.assert_array_equal(read_labels(out).array, read_labels(nii).array)
    # without a choice the study is ambiguous: exit 2 naming the option
    proc = _main(capsys, "predict", study, tmp_path / "x.dcm", "--model", tiny_model.folder, "--no-progress")
    assert proc.returncode == 2 and "--series-uid" in proc.stderr and not (tmp_path / "x.dcm").exists()


# ---------------------------------------------------------------------------------- model folders
def _models_env(user: Path) -> dict:
    return _env(MEDSEG_USER_MODELS=user, MEDSEG_MODELS="")


def test_models_add_force_on_a_full_disk_keeps_the_old_model(tmpfs, tmp_path):
    pytest.importorskip("torch")
    from _models import make_model

    old = make_model(tmp_path / "old", channels=(2, 4))
    new = make_model(tmp_path / "new", channels=(16, 32), seed=1)  # ~0.2 MB of weights
    user = tmpfs / "models"
    env = _models_env(user)
    run = [sys.executable, "-m", "napari_medseg.cli", "models", "add"]
    assert subprocess.run([*run, str(old.folder)], capture_output=True, text=True, env=env).returncode == 0
    _fill(tmpfs, 60_000)
    before = _digest(tmpfs)
    proc = subprocess.run([*run, str(new.folder), "--force"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "no space left" in proc.stderr and "Traceback" not in proc.stderr
    assert _digest(tmpfs) == before and _temporaries(tmpfs) == []


def test_models_add_force_never_replaces_a_folder_that_is_not_a_model(tmp_path):
    pytest.importorskip("torch")
    from _models import make_model

    model = make_model(tmp_path / "src")
    user = tmp_path / "user"
    (user / "tiny").mkdir(parents=True)
    (user / "tiny" / "notes.txt").write_text("my notes")
    proc = subprocess.run([sys.executable, "-m", "napari_medseg.cli", "models", "add", str(model.folder), "--force"],
                          capture_output=True, text=True, env=_models_env(user))
    assert proc.returncode == 2 and "no model card" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (user / "tiny").iterdir()) == ["notes.txt"]


_KILL_BETWEEN_FOLDER_RENAMES = """
import os, signal, sys
real = os.replace
def replace(src, dst, **kwargs):
    real(src, dst, **kwargs)
    if str(dst).endswith(".old"):  # the old folder is set aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from napari_medseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_model_replace_puts_the_old_folder_back(tmp_path):
    pytest.importorskip("torch")
    from _models import make_model

    old = make_model(tmp_path / "old", channels=(2, 4))
    new = make_model(tmp_path / "new", channels=(2, 4), seed=1)
    user = tmp_path / "user"
    env = _models_env(user)
    assert subprocess.run([sys.executable, "-m", "napari_medseg.cli", "models", "add", str(old.folder)],
                          capture_output=True, text=True, env=env).returncode == 0
    before = _digest(user)
    proc = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_FOLDER_RENAMES, "models", "add", str(new.folder), "--force"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == -signal.SIGKILL
    assert not (user / "tiny").exists()  # the moment of the kill: the old folder is set aside
    from napari_medseg._atomic import recover

    recover(user)  # what the next write into the folder does first
    assert _digest(user) == before and _temporaries(user) == []


# ----------------------------------------------------------------------------------- checkpoints
def test_checkpoint_on_a_full_disk_keeps_the_earlier_one(tmpfs):
    torch = pytest.importorskip("torch")
    from napari_medseg.training.trainer import _load_checkpoint, _save_checkpoint

    path = tmpfs / "checkpoints" / "last.pt"
    _save_checkpoint(path, {"model": {"w": torch.zeros(10)}, "epoch": 1})
    _fill(tmpfs, 100_000)
    before = _digest(tmpfs)
    with pytest.raises(FileAccessError, match="no space left") as info:
        _save_checkpoint(path, {"model": {"w": torch.randn(200_000)}, "epoch": 2})  # 800 kB
    assert str(path) in str(info.value)
    assert _digest(tmpfs) == before and _temporaries(tmpfs) == []
    assert _load_checkpoint(path)["epoch"] == 1


# ----------------------------------------------------------------- class 4: numbers before torch
@pytest.mark.parametrize("option, value, message", [
    ("--overlap", "1.5", "--overlap=1.5"),
    ("--dropout", "1", "--dropout=1.0"),
    ("--batch-size", "0", "--batch-size=0"),
    ("--mc-samples", "100000000", "--mc-samples=100000000"),
])
def test_predict_refuses_bad_numbers_before_torch_is_imported(tmp_path, option, value, message):
    scan = write_volume(Volume(np.zeros((4, 8, 8), np.int16), Geometry()), tmp_path / "ct.nii.gz")
    code = (
        "import sys\nfrom napari_medseg.cli import main\n"
        f"rc = main(['predict', {str(scan)!r}, {str(tmp_path / 'seg.nii.gz')!r}, '--model', 'no-such-model', {option!r}, {value!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
