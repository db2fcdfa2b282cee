"""Fault injection on writes, through the real CLI on real files (issue 11, classes 1-5 and 10).

A real full file system (a small tmpfs), a real file size limit (RLIMIT_FSIZE), real permission
denial (root without its capabilities, through ``setpriv``), a real read-only mount, real symlinks
and hard links, real SIGKILLs of a real ``medseg predict``. Each test checks the exit code, the
message, that the user's files are byte-identical afterwards and that no temporary entry is left.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _faults import _KILLER, _cli, _digest, _env, _fill, _main, _temporaries, tmpfs  # noqa: F401 - tmpfs is a fixture
from _models import make_model

from napari_medseg.volume import Geometry, Volume, read_volume, write_volume

SETPRIV = shutil.which("setpriv")
#: how to run the CLI so that file modes apply: as root, without CAP_DAC_OVERRIDE and
#: CAP_DAC_READ_SEARCH (dropped by setpriv); as any other user, as it is
if os.geteuid() != 0:
    NO_CAPS = []
else:
    NO_CAPS = [SETPRIV, "--inh-caps=-all", "--bounding-set=-all", "--"] if SETPRIV else None


def _volume(shape=(4, 6, 5), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.integers(0, 3000, shape).astype(np.int16), Geometry((0.8, 0.9, 2.0), (1.0, -2.0, 3.0)))


# ------------------------------------------------------------------- 1: a failed write never replaces
@pytest.mark.parametrize("name", ["out.nii", "out.nii.gz", "out.nrrd", "out.mha", "out.mhd", "out.seg.nrrd", "dicom_out"])
def test_full_disk_keeps_the_old_file(tmpfs, tmp_path, name):
    source = tmp_path / "big.nrrd"
    write_volume(_volume((24, 48, 48)), source)  # ~110 KB of incompressible voxels
    old = tmpfs / name
    write_volume(_volume((2, 3, 4), seed=1), old)
    _fill(tmpfs, 40_000)
    before = _digest(tmpfs)
    proc = _cli("convert", source, old)
    assert proc.returncode == 2, proc.stderr
    assert "no space left on the device" in proc.stderr and str(old) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _digest(tmpfs) == before
    assert _temporaries(tmpfs) == []


def test_file_size_limit_keeps_the_old_file(tmp_path):
    source, old = tmp_path / "big.nrrd", tmp_path / "out.nii"
    write_volume(_volume((24, 48, 48)), source)
    write_volume(_volume((2, 3, 4), seed=1), old)
    before = _digest(tmp_path)

    def limit():  # EFBIG for any write past 20 kB (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [sys.executable, "-m", "napari_medseg.cli", "convert", str(source), str(old)],
        capture_output=True, text=True, env=_env(), preexec_fn=limit,
    )
    assert proc.returncode == 2, proc.stderr
    assert "file size limit" in proc.stderr and str(old) in proc.stderr
    assert _digest(tmp_path) == before and _temporaries(tmp_path) == []


def test_full_disk_csv_keeps_the_old_table(tmpfs, tmp_path):
    labels = Volume((_volume().array > 1500).astype(np.uint8), _volume().geometry)
    pred, ref = tmp_path / "pred.nrrd", tmp_path / "ref.nrrd"
    write_volume(labels, pred)
    write_volume(labels, ref)
    table = tmpfs / "metrics.csv"
    table.write_text("label,dice\n1,0.5\n")
    _fill(tmpfs, 0)
    before = _digest(tmpfs)
    proc = _cli("evaluate", "--pred", pred, "--ref", ref, "--csv", table)
    assert proc.returncode == 2, proc.stderr
    assert str(table) in proc.stderr and "no space left" in proc.stderr
    assert _digest(tmpfs) == before and _temporaries(tmpfs) == []


def test_read_only_file_system(tmpfs, tmp_path):
    source = tmp_path / "in.nrrd"
    write_volume(_volume(), source)
    old = tmpfs / "out.nii.gz"
    write_volume(_volume(seed=1), old)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    before = _digest(tmpfs)
    proc = _cli("convert", source, old)
    assert proc.returncode == 2, proc.stderr
    assert "read-only file system" in proc.stderr and str(old) in proc.stderr
    assert _digest(tmpfs) == before


# --------------------------------------------------------------- 2: exactly the path named, or refused
@pytest.mark.parametrize("name, bystander", [
    ("x.nii.gz.nii.gz", "x.nii.gz"),
    ("x.nii.nii", "x.nii"),
    ("z.img.nii.gz", "z.hdr"),
    ("z.hdr.nii", "z.hdr"),
    ("a.nii.gz.nrrd", "a.nii.gz"),
])
def test_writes_exactly_the_name_given(capsys, tmp_path, name, bystander):
    source = tmp_path / "in.nrrd"
    volume = _volume()
    write_volume(volume, source)
    (tmp_path / bystander).write_bytes(b"the user's unrelated file")
    proc = _main(capsys, "convert", source, tmp_path / name)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / bystander).read_bytes() == b"the user's unrelated file"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"in.nrrd", bystander, name})
    back = read_volume(tmp_path / name)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.geometry.isclose(volume.geometry, atol=1e-5)
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib  # the reference reader agrees on what was written

        assert nib.load(str(tmp_path / name)).shape == volume.shape[::-1]


@pytest.mark.parametrize("name", ["x.MHA", "x.NII.GZ", "x.Nii", "x.MHD"])
def test_upper_case_extension_is_refused_before_work(capsys, tmp_path, name):
    source = tmp_path / "in.nrrd"
    write_volume(_volume(), source)
    proc = _main(capsys, "convert", source, tmp_path / name)
    assert proc.returncode == 2
    assert "lower case" in proc.stderr and name in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd"]


def test_mhd_writes_its_data_file_beside_it(capsys, tmp_path):
    source = tmp_path / "in.nrrd"
    write_volume(_volume(), source)
    assert _main(capsys, "convert", source, tmp_path / "x.raw.mhd").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd", "x.raw.mhd", "x.raw.zraw"]
    np.testing.assert_array_equal(read_volume(tmp_path / "x.raw.mhd").array, _volume().array)


# ---------------------------------------------------------- 3: outputs never overwrite inputs or others
@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path / "models", spacing=(1.0, 1.0, 2.0), placement=("decoder", "head"))


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "ct.nii.gz"
    write_volume(Volume((np.random.default_rng(0).normal(size=(6, 20, 24)) * 100).astype(np.int16)), path)
    return path


def _links(tmp_path: Path, scan: Path) -> dict[str, Path]:
    (tmp_path / "link.nii.gz").symlink_to(scan)
    os.link(scan, tmp_path / "hard.nii.gz")
    return {"same": scan, "symlink": tmp_path / "link.nii.gz", "hardlink": tmp_path / "hard.nii.gz"}


@pytest.mark.parametrize("kind", ["same", "symlink", "hardlink"])
def test_predict_refuses_to_overwrite_its_input(capsys, tmp_path, model, scan, kind):
    out = _links(tmp_path, scan)[kind]
    before = _digest(tmp_path)
    proc = _main(capsys, "predict", scan, out, "--model", model.folder, "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert "would overwrite the input IN" in proc.stderr
    assert _digest(tmp_path) == before and (tmp_path / "link.nii.gz").is_symlink()


@pytest.mark.parametrize("extra", [
    ["--probabilities", "{out}"],
    ["--uncertainty", "{dir}/link_to_out.nii.gz"],
    ["--uncertainty", "{dir}/hard_link_to_out.nii.gz"],
])
def test_predict_outputs_never_overwrite_each_other(capsys, tmp_path, model, scan, extra):
    out = tmp_path / "seg.nii.gz"
    write_volume(_volume(), out)
    (tmp_path / "link_to_out.nii.gz").symlink_to(out)
    os.link(out, tmp_path / "hard_link_to_out.nii.gz")
    before = _digest(tmp_path)
    args = [a.format(out=out, dir=tmp_path) for a in extra]
    proc = _main(capsys, "predict", scan, out, "--model", model.folder, "--no-progress", *args)
    assert proc.returncode == 2, proc.stderr
    assert f"would overwrite OUT ({out})" in proc.stderr
    assert _digest(tmp_path) == before


def test_evaluate_csv_cannot_overwrite_pred(capsys, tmp_path):
    labels = tmp_path / "pred.nrrd"
    write_volume(Volume((_volume().array > 1500).astype(np.uint8)), labels)
    before = _digest(tmp_path)
    proc = _main(capsys, "evaluate", "--pred", labels, "--ref", labels, "--csv", labels)
    assert proc.returncode == 2 and "would overwrite the input --pred" in proc.stderr
    assert _digest(tmp_path) == before


def test_existing_folder_is_never_replaced_by_a_dicom_series(capsys, tmp_path):
    source = tmp_path / "in.nrrd"
    write_volume(_volume(), source)
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "labels.nii.gz").write_bytes(b"my labels")
    before = _digest(tmp_path)
    proc = _main(capsys, "convert", source, folder)
    assert proc.returncode == 2 and "other files in it" in proc.stderr and str(folder) in proc.stderr
    assert _digest(tmp_path) == before
    # a folder this program wrote is replaced, atomically
    series = tmp_path / "series"
    assert _main(capsys, "convert", source, series).returncode == 0
    assert _main(capsys, "convert", source, series).returncode == 0
    assert read_volume(series).shape == _volume().shape and _temporaries(tmp_path) == []


def test_dicom_output_folder_holding_an_input_is_refused(capsys, tmp_path):
    folder = tmp_path / "series"
    write_volume(_volume(), folder)
    before = _digest(tmp_path)
    proc = _main(capsys, "convert", folder / "slice_00000.dcm", folder)
    assert proc.returncode == 2 and "would overwrite the input" in proc.stderr
    assert _digest(tmp_path) == before


# --------------------------------------------------------------------------- 4: cheap checks first
def test_predict_checks_outputs_before_loading_torch_or_the_model(tmp_path, scan):
    code = (
        "import sys\nfrom napari_medseg.cli import main\n"
        f"rc = main(['predict', {str(scan)!r}, {str(tmp_path / 'seg.xyz')!r}, '--model', 'no-such-model'])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert "seg.xyz" in proc.stderr and "unsupported file type" in proc.stderr


def test_predict_refuses_a_probability_format_before_work(tmp_path, scan, model):
    code = (
        "import sys\nfrom napari_medseg.cli import main\n"
        f"rc = main(['predict', {str(scan)!r}, {str(tmp_path / 'seg.nii.gz')!r}, '--model', {str(model.folder)!r},"
        f" '--probabilities', {str(tmp_path / 'p.png')!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert "--probabilities" in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "models"]


# ------------------------------------------------------------------ 5: a run's outputs change together
def _predict_killed(where: str, out_dir: Path, scan: Path, model, seed: int) -> subprocess.CompletedProcess:
    names = ["seg.nii.gz", "prob.nrrd", "unc.mha", "seg.nii.gz.json"]
    args = ["predict", str(scan), str(out_dir / "seg.nii.gz"), "--model", str(model.folder), "--no-progress",
            "--mc-samples", "2", "--seed", str(seed),
            "--probabilities", str(out_dir / "prob.nrrd"), "--uncertainty", str(out_dir / "unc.mha")]
    return subprocess.run([sys.executable, "-c", _KILLER, where, ",".join(names), *args],
                          capture_output=True, text=True, env=_env())


def _old_outputs(out_dir: Path) -> None:
    """The outputs of an earlier run (their content does not matter, their bytes must survive)."""
    out_dir.mkdir()
    write_volume(_volume((6, 20, 24)), out_dir / "seg.nii.gz")
    write_volume(Volume(np.zeros((6, 20, 24, 2), np.float32)), out_dir / "prob.nrrd")
    write_volume(Volume(np.zeros((6, 20, 24, 4), np.float32)), out_dir / "unc.mha")
    (out_dir / "seg.nii.gz.json").write_text('{"parameters": {"seed": 1}}')


def test_sigkill_before_commit_leaves_old_outputs_and_the_next_write_cleans_up(tmp_path, scan, model):
    out_dir = tmp_path / "out"
    _old_outputs(out_dir)
    before = _digest(out_dir)
    proc = _predict_killed("before-commit", out_dir, scan, model, seed=2)
    assert proc.returncode == -signal.SIGKILL
    assert _digest(out_dir) == before  # every old output byte-identical
    assert len(_temporaries(out_dir)) == 4  # the staged files of the killed run...
    assert _cli("convert", scan, out_dir / "other.nrrd").returncode == 0
    assert _temporaries(out_dir) == []  # ...are removed by the next write into the folder
    assert {k: v for k, v in _digest(out_dir).items() if k != "other.nrrd"} == before


def test_sigkill_between_renames_never_leaves_an_old_sidecar_and_rolls_forward(tmp_path, scan, model):
    out_dir = tmp_path / "out"
    _old_outputs(out_dir)
    proc = _predict_killed("between-renames", out_dir, scan, model, seed=2)
    assert proc.returncode == -signal.SIGKILL
    # new labels are in place, the old sidecar (describing seed 1) is gone, a journal is left
    assert not (out_dir / "seg.nii.gz.json").exists()
    assert any(name.endswith(".journal") for name in _temporaries(out_dir))
    # the next write into the folder rolls the killed commit forward: the seed-2 run, complete
    assert _cli("convert", scan, out_dir / "other.nrrd").returncode == 0
    assert _temporaries(out_dir) == []
    assert json.loads((out_dir / "seg.nii.gz.json").read_text())["parameters"]["seed"] == 2
    prob, unc = read_volume(out_dir / "prob.nrrd"), read_volume(out_dir / "unc.mha")
    for volume in (prob, unc):
        assert json.loads(volume.metadata["medseg_provenance"])["parameters"]["seed"] == 2
    np.testing.assert_array_equal(read_volume(out_dir / "seg.nii.gz").array, np.argmax(prob.array, -1))


# ------------------------------------------------------------------- 10: the system's errors, exit 2
needs_setpriv = pytest.mark.skipif(NO_CAPS is None, reason="running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")


@needs_setpriv
def test_permission_denied_folder(tmp_path):
    source = tmp_path / "in.nrrd"
    write_volume(_volume(), source)
    locked = tmp_path / "locked"
    locked.mkdir()
    old = locked / "out.nii.gz"
    write_volume(_volume(seed=1), old)
    locked.chmod(0o555)
    before = _digest(tmp_path)
    try:
        proc = _cli("convert", source, old, prefix=NO_CAPS)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert "permission denied" in proc.stderr and str(old) in proc.stderr
    assert _digest(tmp_path) == before


@needs_setpriv
def test_unreadable_file_is_not_reported_missing(tmp_path):
    path = tmp_path / "scan.nii.gz"
    write_volume(_volume(), path)
    path.chmod(0)
    proc = _cli("info", path, prefix=NO_CAPS)
    assert proc.returncode == 2
    assert "permission denied" in proc.stderr and str(path) in proc.stderr and "not found" not in proc.stderr


@needs_setpriv
def test_unreadable_dicom_folder_is_not_reported_empty(tmp_path):
    folder = tmp_path / "series"
    write_volume(_volume(), folder)
    folder.chmod(0)
    try:
        proc = _cli("info", folder, prefix=NO_CAPS)
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 2
    assert "permission denied" in proc.stderr and "no DICOM series" not in proc.stderr


def test_broken_pipe_is_one_line_not_a_traceback(tmp_path):
    path = tmp_path / "scan.nrrd"
    write_volume(_volume(), path)
    proc = subprocess.Popen([sys.executable, "-m", "napari_medseg.cli", "info", "--json", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    proc.stdout.close()  # the reader is gone before anything is printed
    err = proc.stderr.read().decode()
    assert proc.wait() == 2
    assert "pipe was closed" in err and "Traceback" not in err and "internal error" not in err


def test_csv_naming_a_folder(capsys, tmp_path):
    labels = tmp_path / "pred.nrrd"
    write_volume(Volume((_volume().array > 1500).astype(np.uint8)), labels)
    proc = _main(capsys, "evaluate", "--pred", labels, "--ref", labels, "--csv", tmp_path)
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "internal error" not in proc.stderr


def test_predict_checks_the_channel_count_before_loading_torch(tmp_path, scan, model):
    code = (
        "import sys\nfrom napari_medseg.cli import main\n"
        f"rc = main(['predict', {str(scan)!r}, {str(scan)!r}, {str(tmp_path / 'seg.nii.gz')!r}, '--model', {str(model.folder)!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert "expects 1 input channel" in proc.stderr


def test_existing_folder_named_like_a_file_is_refused(capsys, tmp_path):
    source = tmp_path / "in.nrrd"
    write_volume(_volume(), source)
    (tmp_path / "out.nii.gz").mkdir()
    proc = _main(capsys, "convert", source, tmp_path / "out.nii.gz")
    assert proc.returncode == 2 and "is an existing folder" in proc.stderr
    assert list((tmp_path / "out.nii.gz").iterdir()) == []


def test_recovery_leaves_a_target_the_user_changed_since_the_kill(tmp_path):
    """A journal of a killed commit is rolled forward only onto targets older than the journal."""
    import time

    from napari_medseg._atomic import recover

    staged = tmp_path / ".a.txt.medseg-999999999-x.tmp"
    staged.mkdir()
    (staged / "a.txt").write_text("staged by the killed run")
    journal = tmp_path / ".a.txt.medseg-999999999-x.journal"
    journal.write_text(json.dumps({"moves": [[str(staged / "a.txt"), str(tmp_path / "a.txt")]], "describing": [],
                                   "cleanup": [str(staged)]}))
    old = time.time() - 10
    os.utime(journal, (old, old))
    (tmp_path / "a.txt").write_text("written by the user after the kill")
    recover(tmp_path)
    assert (tmp_path / "a.txt").read_text() == "written by the user after the kill"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@needs_setpriv
def test_unreadable_dicom_files_are_not_reported_as_no_series(tmp_path):
    folder = tmp_path / "series"
    write_volume(_volume(), folder)
    for path in folder.iterdir():
        path.chmod(0)
    proc = _cli("info", folder, prefix=NO_CAPS)
    assert proc.returncode == 2
    assert "permission denied" in proc.stderr and "slice_0000" in proc.stderr and "no DICOM series" not in proc.stderr


def test_target_that_is_a_mount_point(tmp_path):
    """A bind-mounted file cannot be renamed over (EBUSY; EXDEV on some systems): exit 2, unchanged."""
    source, shown, target = tmp_path / "in.nrrd", tmp_path / "shown.nii", tmp_path / "out.nii"
    write_volume(_volume(), source)
    write_volume(_volume(seed=1), shown)
    target.write_bytes(b"")
    if subprocess.run(["mount", "--bind", str(shown), str(target)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount a file here (needs root in a mount namespace)")
    try:
        before = _digest(tmp_path)
        proc = _cli("convert", source, target)
        after = _digest(tmp_path)
    finally:
        subprocess.run(["umount", str(target)], check=False)
    assert proc.returncode == 2, proc.stderr
    assert str(target) in proc.stderr and ("busy" in proc.stderr or "another file system" in proc.stderr)
    assert after == before and _temporaries(tmp_path) == []


@pytest.mark.usefixtures("one_torch_thread")
def test_full_disk_during_predict_keeps_every_old_output(capsys, tmpfs, tmp_path, scan, model):
    """The disk fills during predict's group write: no output changes, the old sidecar stays.

    (Which file hits the full disk first depends on the map sizes; uncertainty maps are stored
    8-bit since napari_medseg.compact, so the message names whichever output it was.)"""
    out_dir = tmpfs / "out"
    out_dir.mkdir()
    (out_dir / "seg.nii.gz.json").write_text('{"parameters": {"seed": 1}}')
    write_volume(_volume((6, 20, 24)), out_dir / "seg.nii.gz")
    write_volume(Volume(np.zeros((6, 20, 24, 4), np.float32)), out_dir / "unc.nii")
    _fill(tmpfs, 24_000)  # room for the labels (~1 kB), not for 4 float maps (46 kB, uncompressed)
    before = _digest(tmpfs)
    proc = _main(capsys, "predict", scan, out_dir / "seg.nii.gz", "--model", model.folder, "--no-progress",
                 "--mc-samples", "2", "--uncertainty", out_dir / "unc.nii")
    assert proc.returncode == 2, proc.stderr
    assert "no space left on the device" in proc.stderr
    assert any(f"{out_dir / name}: cannot" in proc.stderr for name in ("seg.nii.gz", "unc.nii", "seg.nii.gz.json"))
    assert _digest(tmpfs) == before and _temporaries(tmpfs) == []
