"""Fault injection on background jobs (issue 11, class 6): a job record is data, never code.

Real processes throughout: an unrelated ``sleep`` a crafted record names, a crafted record naming
another executable or environment, FIFOs and links where job files should be, two jobs writing one
output, and a job killed with SIGKILL then resumed. Each test checks the exit code, the message, and
that nothing it must not touch was run, signalled or changed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from napari_medseg.errors import FileFormatError
from napari_medseg.jobs import JOB_FILE, JobStatus, get_job, run_selftest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes, signals and FIFOs")


@pytest.fixture
def jobs(tmp_path, run_cli):
    """``medseg jobs ...`` in a fresh process, with MEDSEG_JOBS_DIR in tmp_path."""
    env = {**os.environ, "MEDSEG_JOBS_DIR": str(tmp_path / "jobs")}

    def _jobs(*args, check_rc=0, timeout=60):
        return run_cli("jobs", *args, check_rc=check_rc, env=env, cwd=tmp_path, timeout=timeout)

    _jobs.root = tmp_path / "jobs"
    _jobs.root.mkdir()
    return _jobs


@pytest.fixture
def sleeper():
    """An unrelated real process (``sleep 60``), killed at the end."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def write_record(root: Path, name: str, **fields) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    record = {
        "id": name,
        "kind": "selftest",
        "argv": ["jobs", "selftest", "--output", "st", "--steps", "3"],
        "cwd": str(root.parent),
        "created": time.time() - 3600,
        "host": socket.gethostname(),
        "pid": None,
        **fields,
    }
    (folder / JOB_FILE).write_text(json.dumps(record))
    return folder


def wait_for(predicate, *, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --------------------------------------------------------------------------------------- cancel
@pytest.mark.parametrize("start_time", ["missing", "wrong", "right"])
def test_cancel_refuses_a_record_naming_an_unrelated_process_and_does_not_signal_it(jobs, sleeper, start_time):
    fields = {"pid": sleeper.pid}
    if start_time != "missing":  # "right": even the true start time does not make 'sleep' the job's child
        fields["pid_create_time"] = psutil.Process(sleeper.pid).create_time() - (3600 if start_time == "wrong" else 0)
    folder = write_record(jobs.root, "20260101-000000-selftest-aaaaaa", **fields)
    before = (folder / JOB_FILE).read_bytes()
    result = jobs("cancel", "20260101-000000-selftest-aaaaaa", "--timeout-s", "0", check_rc=2)
    expected = {"missing": "without its start time", "wrong": "it is another process",
                "right": "command line is not this job's"}[start_time]
    assert expected in result.stderr and f"pid {sleeper.pid}" in result.stderr and "not signalled" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    time.sleep(0.2)
    assert sleeper.poll() is None and psutil.Process(sleeper.pid).status() != psutil.STATUS_ZOMBIE
    assert (folder / JOB_FILE).read_bytes() == before  # nothing recorded: no signal was sent


# --------------------------------------------------------------------------------------- resume
def test_resume_never_runs_the_executable_a_record_names(jobs, tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    folder = write_record(jobs.root, "20260101-000000-selftest-bbbbbb", python=str(evil), status="lost")
    new_id = jobs("resume", "20260101-000000-selftest-bbbbbb").stdout.strip()
    new = get_job(new_id, jobs_root=jobs.root)
    assert new.wait(timeout_s=60) == JobStatus.DONE
    assert not marker.exists()
    started = next(e for e in new.read_events()[0] if e["event"] == "started")
    assert started["argv"][:2] == ["jobs", "selftest"]
    assert new.record["python"] == sys.executable  # this interpreter, not the record's
    assert json.loads((folder / JOB_FILE).read_text())["resumed_by"] == new_id


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"argv": ["models", "remove", "demo-brain"]}, "argv must start with 'jobs selftest'"),
        ({"kind": "train", "argv": ["jobs", "selftest", "--output", "st"]}, "argv must start with 'train'"),
        ({"argv": ["jobs", "selftest", "--output", "st", "--exec", "touch marker"]}, "unrecognized arguments"),
        ({"env": {"PYTHONPATH": "EVIL"}}, "env variable 'PYTHONPATH' is not one a job may set"),
        ({"env": {"LD_PRELOAD": "EVIL/x.so"}}, "env variable 'LD_PRELOAD'"),
        ({"cwd": "relative/folder"}, "is not an existing absolute folder"),
    ],
)
def test_resume_refuses_a_record_that_is_not_a_valid_request(jobs, tmp_path, fields, message):
    evil = tmp_path / "EVIL"
    evil.mkdir()
    marker = tmp_path / "marker"
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    fields = {k: (json.loads(json.dumps(v).replace("EVIL", str(evil)))) for k, v in fields.items()}
    folder = write_record(jobs.root, "20260101-000000-selftest-cccccc", status="lost", **fields)
    before = (folder / JOB_FILE).read_bytes()
    result = jobs("resume", "20260101-000000-selftest-cccccc", check_rc=2)
    assert message in result.stderr and str(folder / JOB_FILE) in result.stderr
    assert not marker.exists()
    assert sorted(p.name for p in jobs.root.iterdir()) == [folder.name]  # no new job
    assert (folder / JOB_FILE).read_bytes() == before


def test_a_job_killed_with_sigkill_is_lost_and_resumes_to_the_uninterrupted_result(jobs, tmp_path):
    argv = ["--output", "st", "--steps", "40", "--step-seconds", "0.05", "--checkpoint-every", "5"]
    job_id = jobs("start", "selftest", *argv).stdout.strip()
    job = get_job(job_id, jobs_root=jobs.root)
    wait_for(lambda: any(e["event"] == "checkpoint" for e in job.read_events()[0]), what="a checkpoint")
    os.kill(job.record["pid"], signal.SIGKILL)
    wait_for(lambda: job.status() == JobStatus.LOST, what="lost")
    # the killed job could not release its output lock: the kernel did, and resume takes it again
    new_id = jobs("resume", job_id).stdout.strip()
    new = get_job(new_id, jobs_root=jobs.root)
    assert new.wait(timeout_s=90) == JobStatus.DONE, new.log_tail()
    events = new.read_events()[0]
    first_epoch = next(e["epoch"] for e in events if e["event"] == "epoch")
    assert first_epoch > 1 and first_epoch % 5 == 1  # continued after the last checkpoint
    expected = run_selftest(tmp_path / "reference", steps=40)
    assert events[-1]["outputs"]["x"] == expected["x"] and events[-1]["outputs"]["loss"] == expected["loss"]
    assert not list((tmp_path).glob(".st.medseg-job.*"))  # the lock is released with its files


# ------------------------------------------------------------------------------------ one output
def test_a_second_job_on_the_same_output_is_refused_naming_the_first(jobs, tmp_path):
    argv = ["--output", "st", "--steps", "600", "--step-seconds", "0.05"]
    first = jobs("start", "selftest", *argv).stdout.strip()
    job = get_job(first, jobs_root=jobs.root)
    wait_for(lambda: any(e["event"] == "epoch" for e in job.read_events()[0]), what="the first job running")
    result = jobs("start", "selftest", "--output", str(tmp_path / "sub" / ".." / "st"), "--steps", "2", check_rc=2)
    assert f"is in use by job {first}" in result.stderr and str(tmp_path / "st") in result.stderr
    assert len(list(jobs.root.iterdir())) == 1  # no second job folder
    # a job started on another output runs
    other = jobs("start", "selftest", "--output", "other", "--steps", "2").stdout.strip()
    assert get_job(other, jobs_root=jobs.root).wait(timeout_s=60) == JobStatus.DONE
    assert job.cancel(timeout_s=30) == JobStatus.CANCELLED
    checkpoint = (tmp_path / "st" / "selftest-checkpoint.json").read_bytes()
    # once the first job has ended, the output is free again (its resume takes it)
    resumed = get_job(jobs("resume", first).stdout.strip(), jobs_root=jobs.root)
    assert resumed.cancel(timeout_s=30) == JobStatus.CANCELLED
    assert json.loads((tmp_path / "st" / "selftest-checkpoint.json").read_bytes())["step"] >= json.loads(checkpoint)["step"]


def test_two_jobs_started_at_once_on_one_output_one_is_refused_in_the_child(tmp_path):
    from napari_medseg.jobs import start_job

    argv = ["jobs", "selftest", "--output", str(tmp_path / "st"), "--steps", "400", "--step-seconds", "0.05"]
    a = start_job("selftest", argv, jobs_root=tmp_path / "jobs")
    b = start_job("selftest", argv, jobs_root=tmp_path / "jobs")  # before the first child took the lock
    wait_for(lambda: a.status().is_final or b.status().is_final, timeout_s=60, what="one job refused")
    refused, running = (a, b) if a.status().is_final else (b, a)
    assert refused.status() == JobStatus.FAILED
    final = refused.read_events()[0][-1]
    assert final["type"] == "InvalidInputError" and f"in use by job {running.id}" in final["message"]
    assert running.cancel(timeout_s=30) == JobStatus.CANCELLED


# ---------------------------------------------------------------------------- hostile records
def _fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("fifo", "not a regular file"),
        ("not-json", "cannot read the job record"),
        ("huge-pid", "pid=1000000000000000000000000000000"),
        ("huge-created", "created=1e+308"),
        ("infinite-created", "created=inf"),
        ("symlink-out", "is a symbolic link"),
        ("huge-file", "larger than 1048576 bytes"),
        ("folder-symlink", "the job folder is a symbolic link"),
        ("wrong-id", "expected the folder's name"),
    ],
)
def test_list_reports_and_skips_a_hostile_record_and_never_hangs(jobs, tmp_path, kind, message):
    good = write_record(jobs.root, "20260101-000000-selftest-gggggg", status="lost")
    bad = jobs.root / "20260101-000001-selftest-hhhhhh"
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"id": bad.name, "kind": "selftest", "argv": ["jobs", "selftest"], "created": 1.0}))
    outside_bytes = outside.read_bytes()
    if kind == "folder-symlink":
        elsewhere = tmp_path / "elsewhere" / bad.name
        elsewhere.mkdir(parents=True)
        (elsewhere / JOB_FILE).write_bytes(outside_bytes)
        bad.symlink_to(elsewhere)
    else:
        bad.mkdir()
        path = bad / JOB_FILE
        base = json.loads(outside_bytes)
        if kind == "fifo":
            _fifo(path)
        elif kind == "not-json":
            path.write_text("{'id': not json")
        elif kind == "huge-pid":
            path.write_text(json.dumps({**base, "pid": 10**30}))
        elif kind == "huge-created":
            path.write_text(json.dumps({**base, "created": 1e308}))
        elif kind == "infinite-created":
            path.write_text(json.dumps({**base, "created": float("inf")}))
        elif kind == "symlink-out":
            path.symlink_to(outside)
        elif kind == "huge-file":
            path.write_text(json.dumps({**base, "pad": "x" * (2 << 20)}))
        elif kind == "wrong-id":
            path.write_text(json.dumps({**base, "id": good.name}))
    t0 = time.monotonic()
    result = jobs("list", "--json", timeout=60)
    assert time.monotonic() - t0 < 60
    assert [s["id"] for s in json.loads(result.stdout)] == [good.name]
    assert f"skipped {bad}" in result.stderr and message in result.stderr, result.stderr
    assert outside.read_bytes() == outside_bytes
    # looking the bad record up refuses it with exit 2 and the same reason (cancel and resume look up
    # the same way), and never hangs; the good job is still shown
    refused = jobs("show", bad.name, check_rc=2, timeout=60)
    assert message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    with pytest.raises(FileFormatError, match=re.escape(message)):
        get_job(bad.name, jobs_root=jobs.root)
    assert get_job(good.name, jobs_root=jobs.root).status() == JobStatus.LOST


@pytest.mark.parametrize("name", ["events.jsonl", "stderr.log", ".job.lock"])
def test_a_fifo_among_a_jobs_files_never_hangs_list_show_or_log(jobs, name):
    folder = write_record(jobs.root, "20260101-000000-selftest-iiiiii", status="lost")
    _fifo(folder / name)
    listed = jobs("list", timeout=60)
    shown = jobs("show", folder.name, timeout=60, check_rc=None)
    logged = jobs("log", folder.name, timeout=60, check_rc=None)
    if name == "events.jsonl":
        assert "not a regular file" in listed.stderr and shown.returncode == 2
    else:
        assert folder.name in listed.stdout and shown.returncode == 0
    assert logged.returncode in (0, 2) and "Traceback" not in logged.stderr + shown.stderr
    assert "internal error" not in logged.stderr + shown.stderr + listed.stderr


def test_get_job_never_leaves_the_jobs_folder(jobs, tmp_path):
    write_record(tmp_path, "victim")  # a job-like folder beside the jobs folder
    result = jobs("show", "../victim", check_rc=2)
    assert "no job '../victim'" in result.stderr


def test_a_huge_events_file_is_read_in_bounded_chunks_to_its_final_event(tmp_path):
    from napari_medseg.jobs import EVENTS_FILE, Job, read_events

    folder = write_record(tmp_path / "jobs", "20260101-000000-selftest-jjjjjj")
    line = json.dumps({"time": 1.0, "event": "progress", "done": 1, "total": 2, "what": "x" * 200}) + "\n"
    with open(folder / EVENTS_FILE, "w") as fh:
        fh.write(line * (17 * 2**20 // len(line)))  # more than one 16 MiB read
        fh.write(json.dumps({"time": 2.0, "event": "done", "outputs": {}}) + "\n")
    assert Job(folder).status() == JobStatus.DONE
    # a "line" longer than a read is stepped over with a warning, never held in memory whole
    (folder / EVENTS_FILE).write_bytes(b"x" * 3000 + b"\n" + line.encode())
    offset = 0
    for expected in (1000, 2000, 3000):
        with pytest.warns(UserWarning, match="without a line end"):
            events, offset = read_events(folder, offset, max_bytes=1000)
        assert events == [] and offset == expected
    events, _ = read_events(folder, offset, max_bytes=1000)
    assert [e["event"] for e in events] == ["progress"]
