"""``medseg register`` as a background job (kind ``register``): progress, cancel, done with outputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.jobs import JobKind, JobStatus, read_events, start_job
from napari_medseg.registration.synthetic import synthetic_pair
from napari_medseg.volume import Geometry, Volume, read_volume, write_volume


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regjob")
    pair = synthetic_pair((40, 40))
    geometry = Geometry((0.5, 0.5, 1.0), (1.0, 2.0, 0.0))
    write_volume(Volume(pair.fixed[None], geometry), folder / "fixed.nrrd")
    write_volume(Volume(pair.moving_prealigned[None], geometry), folder / "moving.nrrd")
    return folder


def register_argv(folder, name: str) -> list[str]:
    return ["register", "--fixed", str(folder / "fixed.nrrd"), "--moving", str(folder / "moving.nrrd"),
            "--out", str(folder / f"{name}.nrrd"), "--field", str(folder / f"{name}_field.nrrd"),
            "--levels", "2", "--iterations", "30"]


def test_register_kind_exists():
    assert JobKind("register") is JobKind.REGISTER


def test_register_job_reports_progress_outputs_and_matches_a_foreground_run(pair_files, tmp_path, run_cli):
    job = start_job("register", register_argv(pair_files, "job"), jobs_root=tmp_path / "jobs")
    assert job.kind == "register"
    assert job.wait(timeout_s=120) == JobStatus.DONE, job.log_tail(20)
    events, _ = read_events(job.folder)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["what"] == "iterations" for e in progress)
    assert progress[-1]["done"] > 0 and progress[-1]["total"] >= progress[-1]["done"]
    outputs = events[-1]["outputs"]
    assert events[-1]["event"] == "done"
    assert outputs["warped"] == str((pair_files / "job.nrrd").resolve())
    assert outputs["field"] == str((pair_files / "job_field.nrrd").resolve())
    assert "warped_mask" not in outputs and outputs["report"]["f_measure"] > 0.9
    run_cli(*register_argv(pair_files, "foreground"))
    assert np.array_equal(read_volume(outputs["warped"]).array, read_volume(pair_files / "foreground.nrrd").array)
    assert np.array_equal(read_volume(outputs["field"]).array, read_volume(pair_files / "foreground_field.nrrd").array)


def test_register_job_cancelled_writes_nothing(pair_files, tmp_path):
    job = start_job("register", register_argv(pair_files, "cancelled"), jobs_root=tmp_path / "jobs")
    job.request_cancel()
    assert job.wait(timeout_s=120) == JobStatus.CANCELLED
    assert job.summary()["final"]["event"] == "cancelled"
    assert not (pair_files / "cancelled.nrrd").exists() and not (pair_files / "cancelled_field.nrrd").exists()


def test_invalid_register_job_dir(pair_files, run_cli):
    proc = run_cli(*register_argv(pair_files, "x"), "--job-dir", pair_files / "nope", check_rc=2)
    assert "--job-dir" in proc.stderr
