"""Background jobs (napari_medseg.jobs): the event file, the reporter, and real child processes.

The child processes run ``medseg jobs selftest`` (gradient descent with checkpoints); every test
that spawns one waits on events, not on fixed sleeps, and finishes in a second or two.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_medseg.errors import CancelledError, FileFormatError, InvalidInputError
from napari_medseg.jobs import (
    CANCEL_FILE,
    EVENTS_FILE,
    JOB_FILE,
    Job,
    JobReporter,
    JobStatus,
    get_job,
    list_jobs,
    read_events,
    run_reported,
    run_selftest,
    start_job,
)


def selftest_argv(output: Path, *args) -> list[str]:
    return ["jobs", "selftest", "--output", str(output), *map(str, args)]


def wait_for_event(job: Job, predicate, *, timeout_s: float = 20.0) -> dict:
    """Poll the job's events until one satisfies ``predicate``; fail the test on timeout."""
    offset, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events, offset = job.read_events(offset)
        for event in events:
            if predicate(event):
                return event
        time.sleep(0.02)
    raise AssertionError(f"no matching event within {timeout_s} s; events: {job.read_events()[0]}\n{job.log_tail()}")


def all_events(job: Job) -> list[dict]:
    return job.read_events()[0]


def is_metric_at_least(epoch: int):
    return lambda e: e["event"] == "metric" and e["epoch"] >= epoch


class CancelAfter:
    """A cancel event that becomes set after ``n`` checks (an in-process stand-in for the flag file)."""

    def __init__(self, n: int) -> None:
        self.checks, self.n = 0, n

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.n


def make_job_folder(root: Path, name: str = "job1", **record) -> Path:
    """A job folder as start_job leaves it, without a process (created an hour ago)."""
    folder = root / name
    folder.mkdir(parents=True)
    base = {"id": name, "kind": "train", "argv": ["train"], "created": time.time() - 3600, "host": socket.gethostname()}
    (folder / JOB_FILE).write_text(json.dumps({**base, **record}))
    return folder


# ---------------------------------------------------------------------------------------------------
# the event file and the reporter, in process
# ---------------------------------------------------------------------------------------------------


def test_emit_writes_one_json_line_per_event_and_read_resumes_at_offset(tmp_path):
    with JobReporter(tmp_path, install_signal_handlers=False) as reporter:
        reporter.emit("metric", name="dice", value=np.float32(0.5), epoch=np.int64(3))
        reporter.emit("checkpoint", path=tmp_path / "ck.pt", epoch=3, shape=np.array([2, 3]))
        events, offset = read_events(tmp_path)
        summary = [(e["event"], e.get("value"), e["epoch"]) for e in events]
        assert summary == [("metric", 0.5, 3), ("checkpoint", None, 3)]
        assert events[1]["path"] == str(tmp_path / "ck.pt") and events[1]["shape"] == [2, 3]
        assert offset == (tmp_path / EVENTS_FILE).stat().st_size
        reporter.log("hello", level="WARNING")
        more, offset2 = read_events(tmp_path, offset)
    assert [(e["event"], e["message"], e["level"]) for e in more] == [("log", "hello", "warning")]
    assert offset2 == (tmp_path / EVENTS_FILE).stat().st_size
    assert read_events(tmp_path, offset2) == ([], offset2)
    assert all(isinstance(e["time"], float) and abs(e["time"] - time.time()) < 60 for e in events + more)


def test_read_events_never_returns_a_half_written_line(tmp_path):
    path = tmp_path / EVENTS_FILE
    first = json.dumps({"time": 1.0, "event": "epoch", "epoch": 1, "epochs": 2}) + "\n"
    second = json.dumps({"time": 2.0, "event": "epoch", "epoch": 2, "epochs": 2}) + "\n"
    path.write_text(first + second[:17])  # the child is in the middle of the second line
    events, offset = read_events(tmp_path)
    assert [e["epoch"] for e in events] == [1] and offset == len(first)
    assert read_events(tmp_path, offset) == ([], offset)  # still incomplete: nothing, same offset
    with open(path, "a") as fh:
        fh.write(second[17:])
    events, offset = read_events(tmp_path, offset)
    assert [e["epoch"] for e in events] == [2] and offset == len(first) + len(second)


def test_read_events_of_a_job_that_has_not_started_is_empty(tmp_path):
    assert read_events(tmp_path) == ([], 0)


def test_read_events_skips_a_line_that_is_not_an_event_with_a_warning(tmp_path):
    good = json.dumps({"time": 1.0, "event": "log", "message": "m", "level": "info"})
    (tmp_path / EVENTS_FILE).write_text(f"[1, 2]\n{{broken\n{good}\n")
    with pytest.warns(UserWarning, match="not an event") as record:
        events, offset = read_events(tmp_path)
    assert len(record) == 2 and [e["message"] for e in events] == ["m"]
    assert offset == (tmp_path / EVENTS_FILE).stat().st_size


def test_emit_from_many_threads_keeps_every_line_whole(tmp_path):
    with JobReporter(tmp_path, install_signal_handlers=False) as reporter:

        def work(k):
            for i in range(200):
                reporter.emit("metric", name=f"thread{k}", value=i, epoch=i, padding="x" * 500)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    events, _ = read_events(tmp_path)
    assert len(events) == 1200
    for k in range(6):
        assert [e["value"] for e in events if e["name"] == f"thread{k}"] == list(range(200))


def test_progress_events_are_thinned_but_keep_first_and_last(tmp_path):
    with JobReporter(tmp_path, install_signal_handlers=False, progress_interval_s=3600) as reporter:
        for done in range(1, 101):
            reporter.progress(done, 100)
        for done in range(0, 11):  # emit() directly: same rule
            reporter.emit("progress", done=done, total=10, what="epoch 2")
        reporter.emit("epoch", epoch=2, epochs=2)  # other events are never thinned
    events, _ = read_events(tmp_path)
    assert [(e["event"], e.get("done"), e.get("what")) for e in events] == [
        ("progress", 1, "work"),
        ("progress", 100, "work"),
        ("progress", 0, "epoch 2"),
        ("progress", 10, "epoch 2"),
        ("epoch", None, None),
    ]


def test_run_reported_success_reports_started_then_done_with_outputs(tmp_path):
    with run_reported(tmp_path, argv=["train", "--epochs", "2"], install_signal_handlers=False) as reporter:
        reporter.emit("epoch", epoch=1, epochs=2)
        reporter.outputs["model"] = "m.pt"
    events, _ = read_events(tmp_path)
    assert [e["event"] for e in events] == ["started", "epoch", "done"]
    assert events[0]["argv"] == ["train", "--epochs", "2"] and events[0]["pid"] == os.getpid()
    assert events[-1]["outputs"] == {"model": "m.pt"}


@pytest.mark.parametrize(
    "exc, event, has_traceback",
    [
        (CancelledError("training was cancelled"), "cancelled", False),
        (InvalidInputError("case 3: label 7 is not in the model"), "error", False),
        (ZeroDivisionError("division by zero"), "error", True),
    ],
)
def test_run_reported_turns_exceptions_into_final_events_and_reraises(tmp_path, exc, event, has_traceback):
    with pytest.raises(type(exc)):
        with run_reported(tmp_path, argv=[], install_signal_handlers=False):
            raise exc
    events, _ = read_events(tmp_path)
    assert [e["event"] for e in events] == ["started", event]
    assert events[-1]["message"] == str(exc)
    if event == "error":
        assert events[-1]["type"] == type(exc).__name__
    assert ("traceback" in events[-1]) == has_traceback


def test_run_reported_without_job_dir_runs_unreported():
    with run_reported(None) as reporter:
        assert reporter is None


def test_cancel_is_set_by_the_flag_file(tmp_path):
    with JobReporter(tmp_path, install_signal_handlers=False) as reporter:
        assert not reporter.cancel.is_set()
        (tmp_path / CANCEL_FILE).write_text("now")
        assert reporter.cancel.is_set() and reporter.cancel.reason == "cancel requested"
    with JobReporter(tmp_path, install_signal_handlers=False, watch_cancel_file=False) as reporter:
        assert not reporter.cancel.is_set()


def test_first_sigint_sets_cancel_second_interrupts_and_handlers_are_restored(tmp_path):
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with JobReporter(tmp_path) as reporter:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs at the next bytecode of the main thread
        assert reporter.cancel.is_set() and reporter.cancel.reason == "SIGINT received"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous


def test_selftest_cancelled_and_resumed_ends_exactly_like_an_uninterrupted_run(tmp_path):
    full = run_selftest(tmp_path / "full", steps=23)
    with pytest.raises(CancelledError, match="after step 9 of 23"):
        run_selftest(tmp_path / "split", steps=23, cancel=CancelAfter(9))
    assert json.loads((tmp_path / "split" / "selftest-checkpoint.json").read_text())["step"] == 9
    resumed = run_selftest(tmp_path / "split", steps=23, resume=True)
    assert resumed["x"] == full["x"] and resumed["loss"] == full["loss"]
    # gradient descent on a least-squares problem: the loss decreases at every step
    losses = []
    run_selftest(tmp_path / "l", steps=6, emit=lambda e, **f: losses.append(f["value"]) if e == "metric" else None)
    assert all(b < a for a, b in zip(losses, losses[1:]))


# ---------------------------------------------------------------------------------------------------
# real child processes
# ---------------------------------------------------------------------------------------------------


def test_job_runs_to_done_and_is_found_again(tmp_path):
    root = tmp_path / "jobs"
    job = start_job("selftest", selftest_argv(tmp_path / "out", "--steps", 7), jobs_root=root)
    assert job.status() in (JobStatus.PENDING, JobStatus.RUNNING)
    assert job.wait(timeout_s=30) == JobStatus.DONE
    events = all_events(job)
    assert events[0]["event"] == "started" and events[0]["argv"][-2:] == ["--job-dir", str(job.folder.resolve())]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == list(range(1, 8))
    expected = run_selftest(tmp_path / "here", steps=7)
    assert events[-1]["event"] == "done" and events[-1]["outputs"]["loss"] == expected["loss"]
    # re-attach: a new Job object, by prefix, and in the listing
    again = get_job(job.id[:-2], jobs_root=root)
    assert again == job and again.status() == JobStatus.DONE and not again.is_alive()
    assert [j.id for j in list_jobs(root)] == [job.id]
    assert job.record["status"] == "done" and job.record["returncode"] == 0
    assert json.loads(job.log_tail(1, stream="stdout")) == events[-1]["outputs"]
    summary = job.summary()
    assert summary["metrics"]["loss"]["value"] == expected["loss"] and summary["epoch"]["epoch"] == 7


def test_cancel_by_flag_checkpoints_and_resume_continues_to_the_same_result(tmp_path):
    root, out = tmp_path / "jobs", tmp_path / "out"
    job = start_job("selftest", selftest_argv(out, "--steps", 60, "--step-seconds", 0.03), jobs_root=root)
    wait_for_event(job, is_metric_at_least(4))
    assert job.status() == JobStatus.RUNNING and job.is_alive()
    pid = job.record["pid"]
    assert os.getsid(pid) == pid != os.getsid(0)  # its own session: closing the GUI/terminal does not stop it
    with pytest.raises(InvalidInputError, match="cancel it before resuming"):
        job.resume()
    assert job.cancel(timeout_s=20) == JobStatus.CANCELLED
    assert job.record.get("signals", []) == []  # the flag was enough
    events = all_events(job)
    assert [e["event"] for e in events[-2:]] == ["checkpoint", "cancelled"]
    step = events[-2]["epoch"]
    assert 4 <= step < 60 and f"after step {step} of 60" in events[-1]["message"]
    assert json.loads((out / "selftest-checkpoint.json").read_text())["step"] == step
    assert job.record["returncode"] == 130

    resumed = job.resume()
    assert resumed.argv == [*job.argv, "--resume"]
    assert resumed.record["resumed_from"] == job.id and job.record["resumed_by"] == resumed.id
    assert resumed.wait(timeout_s=30) == JobStatus.DONE
    first_epoch = next(e["epoch"] for e in all_events(resumed) if e["event"] == "epoch")
    assert first_epoch == step + 1
    expected = run_selftest(tmp_path / "uninterrupted", steps=60)
    assert all_events(resumed)[-1]["outputs"]["x"] == expected["x"]
    with pytest.raises(InvalidInputError, match="is done"):
        resumed.resume()


def test_cancel_falls_back_to_sigterm_when_the_child_ignores_the_flag(tmp_path):
    argv = selftest_argv(tmp_path / "out", "--steps", 500, "--step-seconds", 0.02, "--ignore-cancel-file")
    job = start_job("selftest", argv, jobs_root=tmp_path / "jobs")
    wait_for_event(job, is_metric_at_least(2))
    t0 = time.monotonic()
    assert job.cancel(timeout_s=0.5, kill_after_s=30) == JobStatus.CANCELLED
    assert 0.5 <= time.monotonic() - t0 < 30
    assert [s["signal"] for s in job.record["signals"]] == ["SIGTERM"]
    final = all_events(job)[-1]
    assert final["event"] == "cancelled" and final["reason"] == "SIGTERM received"


def test_cancel_kills_a_child_stuck_in_a_long_step_and_reports_cancelled(tmp_path):
    argv = selftest_argv(tmp_path / "out", "--steps", 3, "--step-seconds", 60, "--ignore-cancel-file")
    job = start_job("selftest", argv, jobs_root=tmp_path / "jobs")
    wait_for_event(job, lambda e: e["event"] == "started")
    t0 = time.monotonic()
    assert job.cancel(timeout_s=0.3, kill_after_s=0.3) == JobStatus.CANCELLED
    assert time.monotonic() - t0 < 10
    assert [s["signal"] for s in job.record["signals"]] == ["SIGTERM", "SIGKILL"]
    assert [e["event"] for e in all_events(job)] == ["started"]  # killed: no final event, yet cancelled
    assert job.record["returncode"] == -signal.SIGKILL
    assert not (tmp_path / "out" / "selftest-checkpoint.json").exists()


def test_child_killed_without_cancel_is_lost(tmp_path):
    argv = selftest_argv(tmp_path / "o", "--steps", 500, "--step-seconds", 0.02)
    job = start_job("selftest", argv, jobs_root=tmp_path)
    started = wait_for_event(job, lambda e: e["event"] == "started")
    os.kill(started["pid"], signal.SIGKILL)
    assert job.wait(timeout_s=10) == JobStatus.LOST
    assert Job(job.folder).status() == JobStatus.LOST


@pytest.mark.parametrize(
    "extra, error_type, message, returncode, has_traceback",
    [
        (["--steps", 9, "--fail-at-step", 3], "RuntimeError", "failure injected at step 3", 1, True),
        (["--steps", 0], "InvalidInputError", "steps=0 must be an integer >= 1", 2, False),
    ],
)
def test_child_that_raises_is_failed_with_its_message(tmp_path, extra, error_type, message, returncode, has_traceback):
    job = start_job("selftest", selftest_argv(tmp_path / "o", *extra), jobs_root=tmp_path)
    assert job.wait(timeout_s=30) == JobStatus.FAILED
    final = all_events(job)[-1]
    assert final["event"] == "error" and final["type"] == error_type and message in final["message"]
    assert ("traceback" in final) == has_traceback
    assert job.record["returncode"] == returncode
    assert message in job.log_tail(5, stream="stderr")


def test_child_that_exits_before_starting_is_lost_with_its_stderr(tmp_path):
    job = start_job("selftest", ["jobs", "selftest", "--steps", "3"], jobs_root=tmp_path)  # no --output
    assert job.wait(timeout_s=30) == JobStatus.LOST
    assert all_events(job) == [] and job.record["returncode"] == 2
    assert "--output" in job.log_tail(stream="stderr")


def test_status_checks_the_process_start_time_so_a_reused_pid_is_not_the_job(tmp_path):
    import subprocess
    import sys

    import psutil

    folder = tmp_path / "job1"
    # a process whose command line names the job folder, as a job's child does
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--job-dir", str(folder)])
    try:
        process = psutil.Process(child.pid)
        deadline = time.time() + 10
        while "--job-dir" not in process.cmdline() and time.time() < deadline:
            time.sleep(0.01)  # until exec: a just-forked child still shows the parent's command line
        created = process.create_time()
        make_job_folder(tmp_path, pid=child.pid, pid_create_time=created)
        assert Job(folder).is_alive() and Job(folder).status() == JobStatus.PENDING
        record = json.loads((folder / JOB_FILE).read_text())
        (folder / JOB_FILE).write_text(json.dumps({**record, "pid_create_time": created - 100}))
        job = Job(folder)
        assert not job.is_alive() and job.status() == JobStatus.LOST
        with pytest.raises(InvalidInputError, match="another process, and it is not signalled"):
            job.cancel(timeout_s=0)  # the pid runs but is not the job's: refused, nothing signalled
        assert "signals" not in job.record and child.poll() is None
    finally:
        child.kill()
        child.wait()


# ---------------------------------------------------------------------------------------------------
# invalid input
# ---------------------------------------------------------------------------------------------------


def test_invalid_start_job_arguments(tmp_path):
    with pytest.raises(InvalidInputError, match="did you mean 'train'"):
        start_job("trian", ["train"], jobs_root=tmp_path)
    with pytest.raises(InvalidInputError, match="non-empty list"):
        start_job("train", [], jobs_root=tmp_path)
    with pytest.raises(InvalidInputError, match="list of strings"):
        start_job("train", "train --config c.yaml", jobs_root=tmp_path)
    with pytest.raises(InvalidInputError, match="--job-dir"):
        start_job("train", ["train", "--job-dir", "x"], jobs_root=tmp_path)
    with pytest.raises(InvalidInputError, match="cwd="):
        start_job("train", ["train"], jobs_root=tmp_path, cwd=tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="python="):
        start_job("train", ["train"], jobs_root=tmp_path, python=tmp_path / "PythonSlicer")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InvalidInputError, match="jobs_root="):
        start_job("train", ["train"], jobs_root=tmp_path / "file")
    assert list_jobs(tmp_path) == []


def test_invalid_get_job_names_close_matches_and_ambiguity(tmp_path):
    for name in ("20260101-000000-train-aaaaaa", "20260101-000001-train-aaaabb"):
        make_job_folder(tmp_path, name, status="lost")
    with pytest.raises(InvalidInputError, match="ambiguous.*aaaaaa.*aaaabb"):
        get_job("20260101-00000", jobs_root=tmp_path)
    with pytest.raises(InvalidInputError, match="no job .*did you mean '20260101-000000-train-aaaaaa'"):
        get_job("20260101-000000-train-aaaaab", jobs_root=tmp_path)
    with pytest.raises(InvalidInputError, match="empty"):
        get_job(" ", jobs_root=tmp_path)
    assert get_job("20260101-000001", jobs_root=tmp_path).id == "20260101-000001-train-aaaabb"


def test_list_jobs_skips_a_folder_with_a_broken_record(tmp_path):
    make_job_folder(tmp_path, "20260101-000000-train-aaaaaa", status="lost")
    (tmp_path / "20260101-000001-train-bbbbbb").mkdir()
    (tmp_path / "20260101-000001-train-bbbbbb" / JOB_FILE).write_text("{")
    (tmp_path / "not-a-job").mkdir()
    with pytest.warns(UserWarning, match="skipped .*bbbbbb"):
        assert [job.id for job in list_jobs(tmp_path)] == ["20260101-000000-train-aaaaaa"]
    assert list_jobs(tmp_path / "missing") == []


def test_invalid_job_folder(tmp_path):
    with pytest.raises(FileFormatError, match="no such job record"):
        Job(tmp_path)
    (tmp_path / JOB_FILE).write_text("{not json")
    with pytest.raises(FileFormatError, match="cannot read"):
        Job(tmp_path)
    (tmp_path / JOB_FILE).write_text(json.dumps({"id": "x"}))
    with pytest.raises(FileFormatError, match="not a job record"):
        Job(tmp_path)


def test_invalid_reporter_and_emit(tmp_path):
    with pytest.raises(InvalidInputError, match="--job-dir"):
        JobReporter(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="progress_interval_s"):
        JobReporter(tmp_path, progress_interval_s=-1)
    with JobReporter(tmp_path, install_signal_handlers=False) as reporter:
        with pytest.raises(InvalidInputError, match="lowercase identifier"):
            reporter.emit("Epoch Done", epoch=1)
        with pytest.raises(InvalidInputError, match="needs the field"):
            reporter.emit("metric", name="dice")
        with pytest.raises(InvalidInputError, match="'time' is set by emit"):
            reporter.emit("custom", time=3)
        with pytest.raises(InvalidInputError, match="cannot be written as JSON"):
            reporter.emit("custom", value=object())
        with pytest.raises(InvalidInputError, match="did you mean 'warning'"):
            reporter.log("x", level="warn")
    assert read_events(tmp_path) == ([], 0)
    with pytest.raises(InvalidInputError, match="offset"):
        read_events(tmp_path, -1)


def test_invalid_job_method_arguments(tmp_path):
    job = Job(make_job_folder(tmp_path, status="lost"))
    with pytest.raises(InvalidInputError, match="timeout_s"):
        job.cancel(timeout_s=-1)
    with pytest.raises(InvalidInputError, match="timeout_s"):
        job.wait(timeout_s=-1)
    with pytest.raises(InvalidInputError, match="n="):
        job.log_tail(-1)
    with pytest.raises(InvalidInputError, match="stream"):
        job.log_tail(3, stream="stdin")
    with pytest.raises(InvalidInputError, match="n="):
        job.last_events(-2)


def test_invalid_selftest_arguments(tmp_path):
    with pytest.raises(InvalidInputError, match="steps"):
        run_selftest(tmp_path, steps=0)
    with pytest.raises(InvalidInputError, match="step_seconds"):
        run_selftest(tmp_path, steps=2, step_seconds=-1)
    (tmp_path / "selftest-checkpoint.json").write_text(json.dumps({"step": 9, "x": [0.0] * 8}))
    with pytest.raises(InvalidInputError, match="does not fit --steps 5"):
        run_selftest(tmp_path, steps=5, resume=True)
    with pytest.raises(RuntimeError, match="step 2"):
        run_selftest(tmp_path / "f", steps=5, fail_at_step=2)
