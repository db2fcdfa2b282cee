"""``medseg train / finetune / refine`` end to end, in the foreground and as background jobs."""

from __future__ import annotations

import json
import time

import yaml
from _training import make_dataset

from napari_medseg.jobs import JobStatus, start_job
from napari_medseg.registry import load_model_folder
from napari_medseg.training.config import TrainConfig

TINY = (
    "patch_size: [8, 16, 16]\narchitecture_params: {channels: [4, 8], strides: [2]}\naugment: false\n"
    "threads: 1\nlearning_rate: 0.005\niterations_per_epoch: 3\nbatch_size: 2\nvalidation_fraction: 0.25\n"
    "labels: {0: background, 1: sphere, 2: box}\n"
)


def test_print_config_is_valid_yaml(run_cli):
    text = run_cli("train", "--print-config").stdout
    assert TrainConfig.model_validate(yaml.safe_load(text)) == TrainConfig()


def test_train_then_finetune_then_refine(tmp_path, run_cli):
    data = make_dataset(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    run_cli("train", "--config", config, "--data", data, "--output", tmp_path / "run", "--epochs", "2", "--name", "tiny")
    base = load_model_folder(tmp_path / "run" / "model")
    assert base.card.name == "tiny" and base.card.spatial_dims == 3
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]

    run_cli("finetune", "--model", tmp_path / "run" / "model", "--data", data, "--output", tmp_path / "ft",
            "--epochs", "1", "--freeze", "all-but-last", "--config", config)
    tuned = load_model_folder(tmp_path / "ft" / "model")
    assert tuned.card.labels == base.card.labels

    run_cli("refine", "--model", tmp_path / "run" / "model", "--data", data, "--output", tmp_path / "refine",
            "--rounds", "2", "--epochs", "1", "--config", config, "--reference", data / "labelsTr")
    rows = [json.loads(line) for line in (tmp_path / "refine" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(0.0 <= r["dice_vs_reference"] <= 1.0 for r in rows)
    assert len(list((tmp_path / "refine" / "round_2" / "labels").glob("*.nii.gz"))) == 4
    # a third round continues from the saved rounds instead of starting over
    run_cli("refine", "--model", tmp_path / "run" / "model", "--data", data, "--output", tmp_path / "refine",
            "--rounds", "3", "--epochs", "1", "--config", config, "--resume")
    again = [json.loads(line) for line in (tmp_path / "refine" / "rounds.jsonl").read_text().splitlines()]
    assert again[:2] == rows and again[2]["round"] == 3


def test_train_as_a_background_job_cancel_and_resume(tmp_path):
    data = make_dataset(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("iterations_per_epoch: 3", "iterations_per_epoch: 2"))
    argv = ["train", "--config", str(config), "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "40"]
    job = start_job("train", argv, jobs_root=tmp_path / "jobs")
    offset, events = 0, []
    deadline = time.time() + 240
    while not any(e["event"] == "checkpoint" for e in events):
        assert time.time() < deadline and job.status() in (JobStatus.PENDING, JobStatus.RUNNING), job.log_tail()
        new, offset = job.read_events(offset)
        events += new
        time.sleep(0.2)
    assert job.cancel(timeout_s=120) == JobStatus.CANCELLED
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    assert checkpoint.exists()
    done_epochs = len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done_epochs < 40
    resumed = job.resume()
    deadline = time.time() + 240
    while not any(e["event"] == "epoch" for e in resumed.read_events(0)[0]):
        assert time.time() < deadline and not resumed.status().is_final, resumed.log_tail()
        time.sleep(0.2)
    assert resumed.cancel(timeout_s=120) == JobStatus.CANCELLED  # stop it again: the point is that it resumed
    events = resumed.read_events(0)[0]
    resumed_at = [e for e in events if e["event"] == "log" and "resumed at epoch" in e.get("message", "")]
    assert resumed_at, resumed.log_tail()
    assert int(resumed_at[0]["message"].rsplit(" ", 1)[1]) >= done_epochs


def test_invalid_config_field_exits_2_naming_it(tmp_path, run_cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    proc = run_cli("train", "--config", bad, "--data", tmp_path, "--output", tmp_path / "o", check_rc=2)
    assert "epochz: Extra inputs are not permitted" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("finetune", "--model", "no-such-model", "--data", tmp_path, "--output", tmp_path / "o", check_rc=2)
    assert "no-such-model" in proc.stderr
