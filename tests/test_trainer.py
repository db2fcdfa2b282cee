"""The trainer on tiny real data: learning, exact resume, cancel, NaN, fine-tuning, export, torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from _training import make_dataset

from napari_medseg.errors import CancelledError, InvalidInputError
from napari_medseg.registry import load_model_folder
from napari_medseg.training.config import TrainConfig
from napari_medseg.training.trainer import TrainingDivergedError, freeze_parameters, train
from napari_medseg.volume import Geometry, Volume, write_volume


def tiny_config(data, output, **overrides) -> TrainConfig:
    values = dict(
        data=str(data),
        output=str(output),
        epochs=2,
        iterations_per_epoch=3,
        batch_size=2,
        patch_size=[8, 16, 16],
        architecture_params={"channels": [4, 8], "strides": [2]},
        validation_fraction=0.25,
        learning_rate=5e-3,
        augment=False,
        threads=1,
        labels={0: "background", 1: "sphere", 2: "box"},
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_training_learns_logs_and_exports_a_registry_model(dataset, tmp_path):
    config = tiny_config(dataset, tmp_path / "run", epochs=6, iterations_per_epoch=6, validation_fraction=0.25)
    events = []
    result = train(config, events=lambda event, **fields: events.append((event, fields)))
    history = result.history
    assert len(history) == 6 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(r["dice_1"] for r in history) > 0.7  # the sphere, on the held-out case
    for name in ("metrics.csv", "metrics.jsonl", "config.yaml", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / "run" / name).exists(), name
    model = load_model_folder(result.model_folder)
    model.verify()
    assert model.card.labels[1].name == "sphere" and model.card.metrics["validation_dice_mean"] == pytest.approx(result.best_metric)
    kinds = {name for name, _ in events}
    assert {"epoch", "metric", "checkpoint", "log", "progress"} <= kinds


def test_resume_continues_exactly(dataset, tmp_path):
    straight = train(tiny_config(dataset, tmp_path / "a", mixup_alpha=0.5, augment=True, augmentation_params={"elastic_probability": 0.0}))
    cancel = threading.Event()

    def stop_after_first_epoch(event, **fields):
        if event == "checkpoint" and fields["epoch"] == 1:
            cancel.set()

    config_b = tiny_config(dataset, tmp_path / "b", mixup_alpha=0.5, augment=True, augmentation_params={"elastic_probability": 0.0})
    with pytest.raises(CancelledError):
        train(config_b, events=stop_after_first_epoch, cancel=cancel)
    first_epoch = _weights(tmp_path / "b" / "checkpoints" / "last.pt")
    with pytest.raises(InvalidInputError, match="pass --resume"):
        train(config_b)
    resumed = train(config_b, resume=True)
    a, b = _weights(tmp_path / "a" / "checkpoints" / "last.pt"), _weights(tmp_path / "b" / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], first_epoch[k]) for k in a)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path):
    data = make_dataset(tmp_path / "data", n_cases=3)
    config = tiny_config(data, tmp_path / "run", epochs=1, validation_fraction=0.0)
    train(config)
    good = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    for path in (data / "imagesTr").iterdir():
        volume = Volume(np.full((12, 24, 24), np.nan, np.float32), Geometry((1.0, 1.0, 2.0), (3.0, -4.0, 5.0)))
        write_volume(volume, path)
    with pytest.raises(TrainingDivergedError, match="the loss became nan at epoch 1"):
        train(tiny_config(data, tmp_path / "run", epochs=2, validation_fraction=0.0), resume=True)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == good


def test_finetune_freezes_the_encoder_and_maps_labels(dataset, tmp_path):
    base = train(tiny_config(dataset, tmp_path / "base", epochs=1))
    from napari_medseg.training.config import FinetuneSpec

    config = tiny_config(
        dataset, tmp_path / "ft", epochs=1, finetune=FinetuneSpec(base_model=str(base.model_folder), freeze="encoder")
    )
    result = train(config)
    before = load_model_folder(base.model_folder).load_state_dict()
    after = load_model_folder(result.model_folder).load_state_dict()
    network = load_model_folder(base.model_folder).load_network()
    _, frozen = freeze_parameters(network, "encoder")
    frozen_names = {n for n, p in network.named_parameters() if any(p is f for f in frozen)}
    assert frozen_names and all(torch.equal(before[n], after[n]) for n in frozen_names)
    assert any(not torch.equal(before[n], after[n]) for n in before if n not in frozen_names)


def test_invalid_training_inputs(dataset, tmp_path):
    with pytest.raises(InvalidInputError, match="'data' and 'output' must be set"):
        train(TrainConfig())
    with pytest.raises(InvalidInputError, match="no checkpoint to resume from"):
        train(tiny_config(dataset, tmp_path / "new"), resume=True)
    with pytest.raises(InvalidInputError, match=r"case 'case0': label values \[2\] are not among the model's labels"):
        train(tiny_config(dataset, tmp_path / "x", labels={0: "background", 1: "sphere"}))


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_with_double_batch(dataset, tmp_path):
    common = ["--data", str(dataset), "--epochs", "1", "--iterations-per-epoch", "1", "--loss", "ce", "--seed", "3"]
    config = tmp_path / "c.yaml"
    config.write_text(
        "patch_size: [8, 16, 16]\narchitecture_params: {channels: [4, 8], strides: [2]}\naugment: false\n"
        "validation_fraction: 0.0\nthreads: 1\nlearning_rate: 0.01\nlabels: {0: bg, 1: sphere, 2: box}\n"
        # SGD: Adam's first step is lr * sign(g), which turns the rounding noise of the (zero)
        # gradient of a bias before InstanceNorm into a full step of either sign
        "optimizer: sgd\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "napari_medseg.cli",
         "train", "--config", str(config), "--output", str(tmp_path / "ddp"), "--batch-size", "1", *common],
        check=True, capture_output=True, env=env, timeout=300,
    )
    for name, batch in (("single", "2"), ("half", "1")):
        subprocess.run(
            [sys.executable, "-m", "napari_medseg.cli", "train", "--config", str(config), "--output", str(tmp_path / name),
             "--batch-size", batch, *common],
            check=True, capture_output=True, env=env, timeout=300,
        )
    ddp, single, half = (_weights(tmp_path / n / "checkpoints" / "last.pt") for n in ("ddp", "single", "half"))
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-6), key
    # one process with batch b sees only rank 0's samples: the second rank's gradient mattered
    assert any(not torch.allclose(ddp[k], half[k], atol=1e-6) for k in single)
