"""``medseg predict`` as a background job: progress events, cancel flag, done with the output paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _models import make_model

from napari_medseg.jobs import JobStatus, read_events, start_job
from napari_medseg.volume import (
    Geometry,
    Volume,
    read_labels,
    read_volume,
    write_volume,
)


@pytest.fixture
def case(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    make_model(models, name="tiny", labels=(0, 1, 2), placement=("decoder", "head"))
    monkeypatch.setenv("MEDSEG_MODELS", str(models))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rng = np.random.default_rng(5)
    geometry = Geometry((0.8, 0.9, 2.0), (4.0, -3.0, 12.5), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    write_volume(Volume(rng.normal(size=(9, 20, 22)).astype(np.float32), geometry), tmp_path / "in.nrrd")
    return tmp_path


def predict_argv(folder: Path, name: str, *extra) -> list[str]:
    return ["predict", str(folder / "in.nrrd"), str(folder / f"{name}.nrrd"), "--model", "tiny", "--device", "cpu",
            "--mc-samples", "3", "--seed", "1", *extra]


def test_predict_job_reports_progress_and_output_paths_and_matches_a_foreground_run(case, run_cli):
    job = start_job("predict", [*predict_argv(case, "job"), "--uncertainty", str(case / "u.nrrd"),
                                "--probabilities", str(case / "p.nrrd")], jobs_root=case / "jobs")
    assert job.wait(timeout_s=120) == JobStatus.DONE, job.log_tail(20)
    events, _ = read_events(job.folder)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] > 0 and progress[-1]["what"] == "patches"
    outputs = events[-1]["outputs"]
    assert outputs == {
        "labels": str((case / "job.nrrd").resolve()), "sidecar": str((case / "job.nrrd.json").resolve()),
        "probabilities": str((case / "p.nrrd").resolve()), "uncertainty": str((case / "u.nrrd").resolve()),
    }
    run_cli(*predict_argv(case, "foreground"), "--no-progress")
    job_labels, fg_labels = read_labels(outputs["labels"]), read_labels(case / "foreground.nrrd")
    assert np.array_equal(job_labels.array, fg_labels.array) and job_labels.geometry == fg_labels.geometry
    assert read_volume(outputs["uncertainty"]).n_components == 2 + 3  # entropy, MI, one variance per label
    assert json.loads(Path(outputs["sidecar"]).read_text())["outputs"]["labels"].endswith("job.nrrd")


def test_predict_job_cancelled_writes_nothing(case):
    job = start_job("predict", predict_argv(case, "cancelled"), jobs_root=case / "jobs")
    job.request_cancel()  # the flag is there before the first patch
    assert job.wait(timeout_s=120) == JobStatus.CANCELLED
    final = job.summary()["final"]
    assert final["event"] == "cancelled" and final["reason"] == "cancel requested"
    assert not (case / "cancelled.nrrd").exists() and not (case / "cancelled.nrrd.json").exists()


def test_invalid_predict_job_model_fails_with_the_message(case):
    argv = predict_argv(case, "bad")
    argv[argv.index("tiny")] = "tiny-typo"
    job = start_job("predict", argv, jobs_root=case / "jobs")
    assert job.wait(timeout_s=120) == JobStatus.FAILED
    final = job.summary()["final"]
    assert final["event"] == "error" and "tiny-typo" in final["message"] and "traceback" not in final


def test_invalid_predict_job_dir(case, run_cli):
    proc = run_cli(*predict_argv(case, "x"), "--job-dir", case / "missing", check_rc=2)
    assert "--job-dir" in proc.stderr and "missing" in proc.stderr
