"""``medseg jobs`` end to end: every command is a separate process, so each one re-attaches to the
job through its folder (the process that started the job has exited before the next command runs)."""

from __future__ import annotations

import json
import os
import time

import pytest

from napari_medseg.jobs import get_job, run_selftest


@pytest.fixture
def jobs(tmp_path, run_cli):
    """``medseg jobs ...`` with MEDSEG_JOBS_DIR pointing into tmp_path."""
    env = {**os.environ, "MEDSEG_JOBS_DIR": str(tmp_path / "jobs")}

    def _jobs(*args, check_rc=0):
        return run_cli("jobs", *args, check_rc=check_rc, env=env, cwd=tmp_path)

    _jobs.root = tmp_path / "jobs"
    return _jobs


def show(jobs, job_id) -> dict:
    return json.loads(jobs("show", job_id, "--json", "--events", 50).stdout)


def wait_until(jobs, job_id, predicate, *, timeout_s=30.0) -> dict:
    """Poll the job from this test process (not the one that started it) until ``predicate(summary)``."""
    job = get_job(job_id, jobs_root=jobs.root)
    deadline = time.monotonic() + timeout_s
    while True:
        info = job.summary()
        if predicate(info) or time.monotonic() > deadline:
            assert predicate(info), info
            return info
        time.sleep(0.05)


def test_start_show_cancel_resume_list_log(jobs, tmp_path):
    # long enough (20000 steps of 0.02 s) that every command below lands while the job runs, however
    # slowly 'medseg' starts on a loaded machine; both runs end by cancel. That a resumed run ends
    # exactly like an uninterrupted one is tested in test_jobs.py.
    argv = ["--output", "out", "--steps", "20000", "--step-seconds", "0.02"]
    started = json.loads(jobs("start", "--json", "selftest", *argv).stdout)
    job_id = started["id"]
    assert started["status"] in ("pending", "running")
    info = wait_until(jobs, job_id, lambda i: i["epoch"] is not None and i["epoch"]["epoch"] >= 3)
    assert info["status"] == "running" and info["argv"] == ["jobs", "selftest", *argv]

    assert jobs("cancel", job_id, "--timeout-s", 30).stdout.strip() == f"job {job_id}: cancelled"
    info = show(jobs, job_id)
    step = info["checkpoint"]["epoch"]
    assert info["status"] == "cancelled" and info["final"]["event"] == "cancelled" and 3 <= step < 20000
    checkpoint = tmp_path / "out" / "selftest-checkpoint.json"  # the relative --output resolved in cwd
    assert json.loads(checkpoint.read_text())["step"] == step
    assert "nothing to cancel" in jobs("cancel", job_id).stdout

    new_id = json.loads(jobs("resume", job_id[:-1], "--json").stdout)["id"]
    info = wait_until(jobs, new_id, lambda i: i["epoch"] is not None)
    assert info["resumed_from"] == job_id and info["argv"] == ["jobs", "selftest", *argv, "--resume"]
    resumed = get_job(new_id, jobs_root=jobs.root)
    assert next(e["epoch"] for e in resumed.read_events()[0] if e["event"] == "epoch") == step + 1
    assert get_job(job_id, jobs_root=jobs.root).record["resumed_by"] == new_id

    listing = json.loads(jobs("list", "--json").stdout)
    assert [(j["id"], j["status"]) for j in listing] == [(job_id, "cancelled"), (new_id, "running")]
    table = jobs("list").stdout.splitlines()
    assert table[0].split() == ["ID", "KIND", "STATUS", "CREATED", "PROGRESS", "METRICS"]
    assert table[1].split()[:3] == [job_id, "selftest", "cancelled"] and f"epoch {step}/20000" in table[1]
    assert table[2].split()[:3] == [new_id, "selftest", "running"] and "loss=" in table[2]
    text = jobs("show", new_id).stdout
    assert "status    running" in text and f"resumed from  {job_id}" in text and "last events:" in text
    assert resumed.cancel(timeout_s=30) == "cancelled"

    tail = jobs("log", job_id, "--lines", 1, "--stream", "stderr").stdout
    message = f"selftest cancelled after step {step} of 20000; the checkpoint is {checkpoint}"
    assert tail == f"medseg jobs: cancelled: {message}\n"


def test_selftest_runs_in_the_foreground_without_a_job(jobs, tmp_path):
    result = json.loads(jobs("selftest", "--output", "fg", "--steps", 12).stdout)
    expected = run_selftest(tmp_path / "ref", steps=12)
    assert result == {**expected, "checkpoint": str(tmp_path / "fg" / "selftest-checkpoint.json")}


def test_failed_job_shows_its_error_and_stderr(jobs):
    job_id = jobs("start", "selftest", "--output", "o", "--steps", 5, "--fail-at-step", 2).stdout.strip()
    info = wait_until(jobs, job_id, lambda i: i["status"] not in ("pending", "running"))
    assert info["status"] == "failed" and info["final"]["type"] == "RuntimeError"
    text = jobs("show", job_id).stdout
    assert "message   selftest: failure injected at step 2" in text and "stderr (last lines):" in text
    assert "internal error: RuntimeError" in jobs("log", job_id, "--stream", "stderr").stdout


def test_list_with_no_jobs(jobs, tmp_path):
    assert jobs("list").stdout.strip() == f"no jobs in {tmp_path / 'jobs'}"
    assert json.loads(jobs("list", "--json").stdout) == []


def test_invalid_job_id_and_arguments(jobs, tmp_path):
    proc = jobs("show", "nope", check_rc=2)
    assert "no job 'nope'" in proc.stderr and "medseg jobs list" in proc.stderr
    assert "invalid choice: 'trian'" in jobs("start", "trian", check_rc=2).stderr
    assert "--events=-1" in jobs("show", "x", "--events", -1, check_rc=2).stderr
    assert "steps=0" in jobs("selftest", "--output", "o", "--steps", 0, check_rc=2).stderr
    job_id = jobs("start", "selftest", "--output", "o", "--steps", 2).stdout.strip()
    wait_until(jobs, job_id, lambda i: i["status"] == "done")
    assert "is done; there is nothing to resume" in jobs("resume", job_id, check_rc=2).stderr
    assert "n=-3" in jobs("log", job_id, "--lines", -3, check_rc=2).stderr
