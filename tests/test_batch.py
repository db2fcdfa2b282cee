"""Cohorts (napari_medseg.batch and ``medseg predict FOLDER OUT``) on tiny random-weight models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import oblique_geometry
from _models import make_model

from napari_medseg.batch import Case, discover_cases, partition, run_cohort
from napari_medseg.cli import main
from napari_medseg.errors import InvalidInputError
from napari_medseg.jobs import JobStatus, read_events, start_job
from napari_medseg.registry import load_model
from napari_medseg.volume import read_volume, write_volume, Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in extra.items()}}


def _write_case(path: Path, seed: int, shape=(6, 20, 24)) -> Path:
    rng = np.random.default_rng(seed)
    write_volume(Volume((rng.normal(size=shape) * 100).astype(np.int16), oblique_geometry()), path)
    return path


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path / "models", spacing=(0.7, 0.9, 2.5))


@pytest.fixture
def cohort(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(("a", "b", "c")):
        _write_case(folder / f"{name}.nrrd", i)
    return folder


def _main(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_folder_writes_one_output_per_case_under_its_name(capsys, tmp_path, model, cohort):
    out = tmp_path / "out"
    rc, stdout, _ = _main(capsys, "predict", cohort, out, "--model", model.folder, "--no-progress", "--uncertainty", tmp_path / "unc")
    assert rc == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.nrrd", "a.nrrd.json", "b.nrrd", "b.nrrd.json", "c.nrrd", "c.nrrd.json"]
    assert "[3/3] c: done" in stdout and "3 done, 0 skipped (outputs exist), 0 failed" in stdout
    for name in "abc":
        labels, source = read_volume(out / f"{name}.nrrd"), read_volume(cohort / f"{name}.nrrd")
        assert labels.shape == source.shape and labels.geometry.isclose(source.geometry, atol=1e-6)
        sidecar = json.loads((out / f"{name}.nrrd.json").read_text())
        assert sidecar["inputs"] == [str(cohort / f"{name}.nrrd")] and sidecar["models"][0]["sha256"] == model.sha256
        assert (tmp_path / "unc" / f"{name}.nrrd").is_file()
    # the same as a single-case run
    _main(capsys, "predict", cohort / "b.nrrd", tmp_path / "single.nrrd", "--model", model.folder, "--no-progress")
    assert np.array_equal(read_volume(tmp_path / "single.nrrd").array, read_volume(out / "b.nrrd").array)


def test_output_format_and_inputs_never_replaced(capsys, tmp_path, model, cohort):
    cases = discover_cases(cohort, tmp_path / "o", output_format="nii.gz")
    assert [c.output.name for c in cases] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    with pytest.raises(InvalidInputError, match="would replace an input"):
        discover_cases(cohort, cohort)
    rc, _, err = _main(capsys, "predict", cohort, cohort, "--model", model.folder, "--no-progress")
    assert rc == 2 and "would replace an input" in err


def test_nnunet_suffix_grouping(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for case in ("p1", "p2"):
        for ch in (1, 0):
            (folder / f"{case}_{ch:04d}.nii.gz").write_bytes(b"")
    cases = discover_cases(folder, tmp_path / "out", channel_names=("T1", "FLAIR"))
    assert [c.name for c in cases] == ["p1", "p2"]
    assert [p.name for p in cases[0].inputs] == ["p1_0000.nii.gz", "p1_0001.nii.gz"]
    assert cases[0].output == tmp_path / "out" / "p1.nii.gz"
    # a single-channel model strips the suffix too (nnU-Net's imagesTs layout)
    (folder / "p3_0000.nii.gz").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="case 'p3' has channel files 0000"):
        discover_cases(folder, tmp_path / "out", channel_names=("T1", "FLAIR"))
    (folder / "plain.nii.gz").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="plain.nii.gz has no channel suffix"):
        discover_cases(folder, tmp_path / "out", channel_names=("T1", "FLAIR"))


def test_csv_and_txt_lists_and_glob(tmp_path, cohort):
    (tmp_path / "list.csv").write_text("case,T1,FLAIR,output\nx,in/a.nrrd,in/b.nrrd,x_seg.nii.gz\ny,in/c.nrrd,in/a.nrrd,\n")
    cases = discover_cases(tmp_path / "list.csv", tmp_path / "out", channel_names=("FLAIR", "T1"))
    assert [(c.name, [p.name for p in c.inputs], c.output.name) for c in cases] == [
        ("x", ["b.nrrd", "a.nrrd"], "x_seg.nii.gz"), ("y", ["a.nrrd", "c.nrrd"], "y.nrrd"),
    ]
    (tmp_path / "bad.csv").write_text("case,T1\nx,in/a.nrrd\n")
    with pytest.raises(InvalidInputError, match=r"lacks column\(s\) \['FLAIR'\]"):
        discover_cases(tmp_path / "bad.csv", tmp_path / "out", channel_names=("T1", "FLAIR"))
    (tmp_path / "list.txt").write_text("# two cases\nin/c.nrrd\n\n" + str(cohort / "a.nrrd") + "\n")
    assert [c.name for c in discover_cases(tmp_path / "list.txt", tmp_path / "out")] == ["a", "c"]
    (tmp_path / "missing.txt").write_text("in/nope.nrrd\n")
    with pytest.raises(InvalidInputError, match="nope.nrrd does not exist"):
        discover_cases(tmp_path / "missing.txt", tmp_path / "out")
    assert [c.name for c in discover_cases(str(cohort / "[ab].nrrd"), tmp_path / "out")] == ["a", "b"]
    with pytest.raises(InvalidInputError, match="no cases found"):
        discover_cases(str(cohort / "*.mha"), tmp_path / "out")


def test_glob_on_the_command_line(capsys, tmp_path, model, cohort):
    rc, stdout, _ = _main(capsys, "predict", str(cohort / "[bc].nrrd"), tmp_path / "out", "--model", model.folder,
                          "--no-progress", "--output-format", "nii.gz")
    assert rc == 0 and sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["b.nii.gz", "c.nii.gz"]


def test_skip_complete_cases_and_overwrite(capsys, tmp_path, model, cohort):
    out = tmp_path / "out"
    assert _main(capsys, "predict", cohort, out, "--model", model.folder, "--no-progress")[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "b.nrrd.json").unlink()  # an incomplete case (killed before its sidecar): redone
    rc, stdout, _ = _main(capsys, "predict", cohort, out, "--model", model.folder, "--no-progress")
    assert rc == 0 and "a: skipped" in stdout and "c: skipped" in stdout and "b: done" in stdout
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after["a.nrrd"] == before["a.nrrd"] and after["b.nrrd"] != before["b.nrrd"]
    rc, stdout, _ = _main(capsys, "predict", cohort, out, "--model", model.folder, "--no-progress", "--overwrite")
    assert rc == 0 and "3 done" in stdout
    assert all(p.stat().st_mtime_ns != after[p.name] for p in out.iterdir())


def test_a_failing_case_is_reported_and_the_others_go_on(capsys, tmp_path, model, cohort):
    (cohort / "b.nrrd").write_bytes(b"NRRD0004\ntype: what\n\n")  # corrupt
    out = tmp_path / "out"
    rc, stdout, err = _main(capsys, "predict", cohort, out, "--model", model.folder, "--no-progress")
    assert rc == 2
    assert (out / "a.nrrd.json").is_file() and (out / "c.nrrd.json").is_file() and not (out / "b.nrrd").exists()
    assert "b: FAILED" in stdout and "b.nrrd" in stdout
    assert "2 done, 0 skipped (outputs exist), 1 failed" in err and "1 of 3 case(s) failed" in err


def test_parts_cover_every_case_exactly_once(capsys, tmp_path, model, cohort):
    cases = [Case(f"c{i:02d}", (Path(f"c{i}.nii"),), Path(f"o{i}.nii")) for i in (3, 1, 4, 0, 2, 6, 5)]
    parts = [partition(cases, 3, k) for k in range(3)]
    names = [c.name for part in parts for c in part]
    assert sorted(names) == sorted(c.name for c in cases) and len(set(names)) == len(names)
    assert [c.name for c in parts[1]] == ["c01", "c04"]  # nnU-Net: sorted, i % N
    with pytest.raises(InvalidInputError, match="part_id=3"):
        partition(cases, 3, 3)
    out = tmp_path / "out"
    for k in (0, 1):
        assert _main(capsys, "predict", cohort, out, "--model", model.folder, "--no-progress", "--num-parts", 2, "--part-id", k)[0] == 0
        sidecars = sorted(p.name for p in out.glob("*.json"))
        assert sidecars == (["a.nrrd.json", "c.nrrd.json"] if k == 0 else ["a.nrrd.json", "b.nrrd.json", "c.nrrd.json"])
    rc, _, err = _main(capsys, "predict", cohort, out, "--model", model.folder, "--num-parts", 2, "--part-id", 2)
    assert rc == 2 and "--part-id=2" in err


def test_two_workers_give_identical_outputs(tmp_path, model, cohort):
    tiny = load_model(model.folder)
    cases1 = discover_cases(cohort, tmp_path / "w1")
    cases2 = discover_cases(cohort, tmp_path / "w2")
    s1 = run_cohort(cases1, [tiny], workers=1, uncertainty_dir=tmp_path / "u1")
    s2 = run_cohort(cases2, [tiny], workers=2, uncertainty_dir=tmp_path / "u2")
    assert len(s1.done) == len(s2.done) == 3 and [r.case.name for r in s2.results] == ["a", "b", "c"]
    for name in "abc":
        assert np.array_equal(read_volume(tmp_path / "w1" / f"{name}.nrrd").array, read_volume(tmp_path / "w2" / f"{name}.nrrd").array)
        assert np.array_equal(read_volume(tmp_path / "u1" / f"{name}.nrrd").array, read_volume(tmp_path / "u2" / f"{name}.nrrd").array)


def test_sigkill_mid_cohort_then_rerun_does_not_redo_finished_cases(tmp_path, run_cli):
    model = make_model(tmp_path / "models", patch_size=(8, 8, 8))
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(8):
        _write_case(folder / f"case{i}.nii.gz", i, shape=(16, 48, 48))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "napari_medseg.cli", "predict", str(folder), str(out), "--model", str(model.folder), "--no-progress"]
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("*.json")):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = {p.name[: -len(".json")] for p in out.glob("case*.json")}
    assert 1 <= len(finished) < 8, "the kill came too late to be mid-cohort"
    images = {n: (out / n).stat().st_mtime_ns for n in finished}
    for labels in out.glob("case*.nii.gz"):  # whatever has a final name is whole (atomic writes)
        assert read_volume(labels).shape == (16, 48, 48)
    proc2 = run_cli("predict", folder, out, "--model", model.folder, "--no-progress", env=_env())
    assert f"{len(finished)} skipped" in proc2.stdout
    assert sorted(p.name for p in out.glob("case*.json")) == sorted(f"case{i}.nii.gz.json" for i in range(8))
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == images  # not redone


def test_cohort_as_a_background_job(tmp_path, model, cohort):
    job = start_job("predict", ["predict", str(cohort), str(tmp_path / "out"), "--model", str(model.folder), "--device", "cpu"],
                    jobs_root=tmp_path / "jobs", env={"OMP_NUM_THREADS": "1"})
    assert job.wait(timeout_s=120) == JobStatus.DONE, job.log_tail(20)
    events, _ = read_events(job.folder)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 3 and progress[-1]["what"] == "cases"
    assert sum("done in" in e.get("message", "") for e in events if e["event"] == "log") == 3
    assert events[-1]["outputs"]["cases"]["done"] == ["a", "b", "c"]


def test_invalid_cohort_options(capsys, tmp_path, model, cohort):
    (tmp_path / "file.nrrd").write_bytes(b"")
    rc, _, err = _main(capsys, "predict", cohort, tmp_path / "file.nrrd", "--model", model.folder)
    assert rc == 2 and "OUT must be a folder" in err
    rc, _, err = _main(capsys, "predict", cohort, tmp_path / "o", "--model", model.folder, "--workers", 0)
    assert rc == 2 and "--workers=0" in err
    rc, _, err = _main(capsys, "predict", cohort, tmp_path / "o", "--model", model.folder, "--uncertainty", tmp_path / "o")
    assert rc == 2 and "--uncertainty" in err
