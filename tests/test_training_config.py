"""Training config validation, defaults as valid YAML, Lookahead and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.training.config import TrainConfig, config_to_yaml, default_config_yaml, load_config
from napari_medseg.training.trainer import Lookahead, learning_rate_at


def test_default_config_yaml_is_a_valid_config(tmp_path):
    path = tmp_path / "defaults.yaml"
    path.write_text(default_config_yaml())
    assert load_config(path) == TrainConfig()
    assert "# optimiser steps per epoch" in default_config_yaml()


def test_config_round_trip_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlearning_rate: 0.001\npatch_size: [32, 32, 32]\nmixup_alpha: 0.5\n")
    config = load_config(path, overrides={"epochs": 3, "data": "d", "batch_size": None})
    assert config.epochs == 3 and config.learning_rate == 0.001 and config.batch_size == 2 and config.data == "d"
    path.write_text(config_to_yaml(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: 0\n", "epochs: Input should be greater than or equal to 1"),
        ("learning_rat: 0.1\n", "learning_rat: Extra inputs are not permitted"),
        ("spatial_dims: 2\n", "patch_size .* has 3 values; spatial_dims is 2"),
        ("optimizer: adamm\n", "optimizer: Input should be 'adam', 'adamw' or 'sgd'"),
        ("labels: {1: liver}\n", "labels must include the background value 0"),
        ("normalization: {kind: ct_window}\n", "normalization: Value error, kind 'ct_window' needs window_center"),
    ],
)
def test_invalid_config_fields_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_invalid_config_files(tmp_path):
    with pytest.raises(FileFormatError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("epochs: [1,\n")
    with pytest.raises(FileFormatError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_lookahead_matches_its_definition():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Lookahead(torch.optim.SGD([w], lr=0.1), sync_period=2, step_size=0.5)
    slow = w.detach().clone()
    fast = w.detach().clone()
    for step in range(1, 7):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
        fast = fast - 0.1 * 2 * fast  # plain SGD on w^2
        if step % 2 == 0:
            slow = slow + 0.5 * (fast - slow)
            fast = slow.clone()
        assert torch.allclose(w.detach(), fast, atol=1e-7)


def test_lookahead_state_dict_resumes_exactly():
    def run(steps, state=None):
        torch.manual_seed(1)
        w = torch.nn.Parameter(torch.tensor([0.5, 1.5, -1.0]))
        opt = Lookahead(torch.optim.Adam([w], lr=0.05), sync_period=3, step_size=0.5)
        if state is not None:
            w.data.copy_(state["w"])
            opt.load_state_dict(state["opt"])
        for _ in range(steps):
            opt.zero_grad()
            ((w - 3) ** 2).sum().backward()
            opt.step()
        return w, opt

    straight, _ = run(8)
    half, opt = run(4)
    resumed, _ = run(4, {"w": half.detach().clone(), "opt": opt.state_dict()})
    assert torch.equal(straight, resumed)


def test_learning_rate_schedules():
    config = TrainConfig(epochs=10, learning_rate=1.0, schedule="cosine", warmup_epochs=0)
    assert learning_rate_at(config, 0) == 1.0
    assert math.isclose(learning_rate_at(config, 5), 0.5)
    poly = TrainConfig(epochs=10, learning_rate=1.0, schedule="poly")
    assert math.isclose(learning_rate_at(poly, 5), 0.5**0.9)
    warm = TrainConfig(epochs=10, learning_rate=1.0, schedule="constant", warmup_epochs=3)
    assert [learning_rate_at(warm, e) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
