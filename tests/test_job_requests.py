"""Typed job requests (napari_medseg.jobs.requests): record <-> request <-> argv, strict records, resume."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from napari_medseg.cli import build_parser
from napari_medseg.errors import InvalidInputError
from napari_medseg.jobs import (
    JOB_FILE,
    REQUEST_TYPES,
    FinetuneRequest,
    JobStatus,
    PredictRequest,
    RefineRequest,
    RegisterRequest,
    SelftestRequest,
    TrainRequest,
    get_job,
    new_run_name,
    request_from_argv,
    request_from_record,
    start_job,
)

EXAMPLES = [
    PredictRequest(input=("/d/t1.nii.gz", "/d/t2.nii.gz"), output="/o/labels.nrrd", model=("brain", "/m/other"),
                   device="cpu", mc_samples=4, dropout=0.25, tta=True, seed=3, probabilities="/o/p.nrrd",
                   uncertainty="/o/u.nrrd", no_progress=True, labels="1,2", opening_mm=1.5, fill_holes=True,
                   min_size_mm3=20.0, keep_largest=2, series_number=4, volume=0, overlap=0.5, batch_size=2),
    RegisterRequest(fixed="/d/f.nrrd", moving="/d/m.imzML", mz=885.55, tolerance_ppm=50.0, tic=True,
                    out="/o/w.nrrd", field="/o/f.nrrd", levels=2, iterations=50, lambda_=0.25, resample=True),
    TrainRequest(data="data", output="run", epochs=3, learning_rate=5e-4, loss="dice", mixup_alpha=0.5,
                 device="cpu", name="mine", add_to_registry=True, resume=True),
    FinetuneRequest(model="tiny-seg", freeze="none", label_map="1:2,2:1", data="/d", output="/r", epochs=2),
    RefineRequest(model="tiny-seg", rounds=2, reference="/ref", data="/d", output="/r", iterations_per_epoch=4),
    SelftestRequest(output="st", steps=7, step_seconds=0.01, fail_at_step=3),
]


@pytest.mark.parametrize("request_", EXAMPLES, ids=lambda r: str(r.kind))
def test_record_request_argv_round_trip(request_):
    record = json.loads(json.dumps(request_.to_record()))  # what job.json holds
    assert record["kind"] == request_.kind and record["schema"] == 1
    assert request_from_record(record) == request_
    argv = request_.to_argv()
    assert request_from_argv(request_.kind, argv) == request_  # the CLI's parser gives the same request
    namespace = build_parser().parse_args(argv)
    assert type(request_).from_namespace(namespace) == request_


@pytest.mark.parametrize("kind", sorted(REQUEST_TYPES))
def test_request_defaults_are_the_parser_defaults(kind):
    minimal = {
        "predict": ["predict", "in.nrrd", "out.nrrd", "--model", "m"],
        "register": ["register"],
        "train": ["train"],
        "finetune": ["finetune", "--model", "m"],
        "refine": ["refine", "--model", "m"],
        "selftest": ["jobs", "selftest", "--output", "o"],
    }[kind]
    request = request_from_argv(kind, minimal)
    assert request.to_argv() == minimal  # every parser default equals the request's: nothing is written


@pytest.mark.parametrize(
    "change, message",
    [
        ({"exec": "touch marker"}, "unknown field(s) 'exec'"),
        ({"mc_samples": "3"}, "field 'mc_samples'='3': expected an integer"),
        ({"tta": 1}, "field 'tta'=1: expected true or false"),
        ({"input": "/d/t1.nii.gz"}, "field 'input'='/d/t1.nii.gz': expected a list of paths"),
        ({"model": [["nested"]]}, "field 'model[0]'"),
        ({"output": "../../etc/labels.nrrd"}, "inside the job's working folder"),
        ({"probabilities": "a/../../b.nrrd"}, "field 'probabilities'"),
        ({"dropout": float("nan")}, "field 'dropout'"),
        ({"mc_samples": -1}, "mc_samples"),
        ({"schema": 2}, "field 'schema'=2"),
        ({"kind": "train"}, "field 'kind'='train'"),
    ],
)
def test_a_tampered_record_is_refused_naming_the_field(change, message):
    record = {**EXAMPLES[0].to_record(), **change}
    with pytest.raises(InvalidInputError, match="field|mc_samples") as info:
        PredictRequest.from_record(record)
    assert message in str(info.value)


def test_request_checks_and_path_anchoring(tmp_path):
    with pytest.raises(InvalidInputError, match="'model' is required"):
        FinetuneRequest(data="d")
    with pytest.raises(InvalidInputError, match="freeze"):
        FinetuneRequest(model="m", freeze="decoder")
    with pytest.raises(InvalidInputError, match="dropout"):
        PredictRequest(input=("a",), output="b", model=("m",), dropout=1.5)
    request = TrainRequest(data=Path("../data"), output="run").anchored(tmp_path / "cwd")
    assert request.data == str(tmp_path / "data") and request.output == "run"  # only escaping paths change
    name = new_run_name("my model/../x")
    assert "/" not in name and name.count("-") >= 3 and "my_model_.._x" in name


def write_job(root: Path, name: str, request: dict, argv: list[str], **fields) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    record = {"id": name, "kind": "selftest", "argv": argv, "request": request, "cwd": str(root.parent),
              "created": time.time() - 3600, "host": socket.gethostname(), "pid": None, "status": "lost", **fields}
    (folder / JOB_FILE).write_text(json.dumps(record))
    return folder


def medseg(*args, cwd, jobs_root):
    env = {**os.environ, "MEDSEG_JOBS_DIR": str(jobs_root)}
    return subprocess.run([sys.executable, "-m", "napari_medseg.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "request_change, argv, message",
    [
        ({"exec": "touch marker"}, None, "unknown field(s) 'exec'"),
        ({"steps": "3"}, None, "field 'steps'='3': expected an integer"),
        ({"output": ["st"]}, None, "field 'output'=['st']"),
        ({"output": "../../outside"}, None, "inside the job's working folder"),
        ({}, ["jobs", "selftest", "--output", "elsewhere", "--steps", "3"], "is not the request's command line"),
    ],
)
def test_resume_refuses_a_tampered_request_with_exit_2(tmp_path, request_change, argv, message):
    good = SelftestRequest(output="st", steps=3)
    name = "20260101-000000-selftest-dddddd"
    folder = write_job(tmp_path / "jobs", name, {**good.to_record(), **request_change}, argv or good.to_argv())
    before = (folder / JOB_FILE).read_bytes()
    result = medseg("jobs", "resume", name, cwd=tmp_path, jobs_root=tmp_path / "jobs")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (folder / JOB_FILE).read_bytes() == before and sorted(p.name for p in (tmp_path / "jobs").iterdir()) == [name]


def test_start_job_records_the_request_and_resume_runs_it(tmp_path):
    (tmp_path / "work").mkdir()
    job = start_job(SelftestRequest(output="../st", steps=3, fail_at_step=2), jobs_root=tmp_path / "jobs",
                    cwd=tmp_path / "work")
    assert job.wait(timeout_s=60) == JobStatus.FAILED
    record = json.loads((job.folder / JOB_FILE).read_text())
    assert record["request"] == {"kind": "selftest", "schema": 1, "output": str(tmp_path / "st"), "steps": 3,
                                 "step_seconds": 0.0, "checkpoint_every": 5, "fail_at_step": 2,
                                 "ignore_cancel_file": False, "resume": False}
    assert record["argv"] == job.request.to_argv() == ["jobs", "selftest", "--output", str(tmp_path / "st"),
                                                       "--steps", "3", "--fail-at-step", "2"]
    resumed = get_job(job.resume().id, jobs_root=tmp_path / "jobs")
    assert resumed.request == job.request.replace(resume=True) and resumed.argv[-1] == "--resume"
    assert resumed.wait(timeout_s=60) == JobStatus.FAILED  # it fails at step 2 again: the same request
