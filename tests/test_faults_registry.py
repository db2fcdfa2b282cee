"""Fault injection on the model registry (issue 11, classes 8 cards, 9 and 11).

Crafted model folders beside a good one: broken YAML, an unreadable card (capabilities dropped
with setpriv), NaN/inf card values, claims of huge patches, channels or label counts, NaN weights,
weights that overflow to inf, and missing, empty or folder weights. One broken entry is reported
and skipped and never breaks the others; a non-finite model is refused with exit 2 naming the
model (or the card file and field), never reported as an empty segmentation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import oblique_geometry
from _models import registry_model, tiny_card, tiny_network

from napari_medseg.cli import main
from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.registry import Registry, load_model_folder, read_card, save_model_folder
from napari_medseg.volume import Volume, read_volume, write_volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A MEDSEG_MODELS folder with one good model ("good"); the user folder is empty."""
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv("MEDSEG_MODELS", str(env))
    monkeypatch.setenv("MEDSEG_USER_MODELS", str(tmp_path / "user"))
    registry_model(env / "good", name="good", spacing=(1.0, 1.0, 2.0))
    return env


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "ct.nrrd"
    rng = np.random.default_rng(0)
    write_volume(Volume((rng.normal(size=(6, 20, 24)) * 100).astype(np.int16), oblique_geometry()), path)
    return path


def run_main(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def card_dict(name: str, **overrides) -> dict:
    card = tiny_card(name, **overrides)
    card["weights"] = {"file": "model.safetensors", "sha256": "0" * 64}
    return card


def write_card_file(folder: Path, text: str, name: str = "model.yaml") -> Path:
    folder.mkdir(parents=True)
    (folder / name).write_text(text)
    return folder / name


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ class 11: one broken entry
def _labels(n: int) -> dict:
    return {i: {"name": f"l{i}", "color": [0, 0, 0]} for i in range(n)}


# name -> (card file name, text, what the message must name); YAML where the YAML path matters, JSON
# (fast to write and read) for the big ones
BROKEN_CARDS = {
    "broken-yaml": ("model.yaml", "name: [unclosed\n", "not valid YAML"),
    "nan-window": ("model.yaml", yaml.safe_dump(card_dict("nan-window", normalization={
        "kind": "ct_window", "window_center": float("nan"), "window_width": 400})), "normalization.window_center"),
    "inf-spacing": ("model.yaml", yaml.safe_dump(card_dict("inf-spacing", spacing=[1.0, float("inf"), 2.0])), "spacing"),
    "nan-metric": ("model.json", json.dumps(card_dict("nan-metric", metrics={"dice": float("nan")})), "metrics.dice"),
    "nan-param": ("model.json", json.dumps(card_dict("nan-param", architecture={"name": "monai.UNet", "params": {
        "channels": [4, 8], "strides": [2], "num_res_units": 0, "dropout": float("nan")}})), "architecture.params"),
    "huge-patch": ("model.json", json.dumps(card_dict("huge-patch", patch_size=[100000, 16, 16])), "patch_size"),
    "huge-patch-volume": ("model.json", json.dumps(card_dict("huge-patch-volume", patch_size=[2048, 2048, 2048])),
                          "patch_size"),
    "many-channels": ("model.json", json.dumps(card_dict("many-channels", channels=[
        {"name": f"c{i}", "modality": "MR"} for i in range(1000)])), "channels"),
    "many-labels": ("model.json", json.dumps(card_dict("many-labels", labels=_labels(5000))), "labels"),
    "huge-label-value": ("model.json", json.dumps(card_dict("huge-label-value", labels={
        0: {"name": "bg", "color": [0, 0, 0]}, 10**12: {"name": "x", "color": [1, 0, 0]}})), "labels"),
    "labels-times-patch": ("model.json", json.dumps(card_dict("labels-times-patch", patch_size=[512, 512, 512],
                                                              labels=_labels(16))), "GiB per patch"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_CARDS))
def test_a_broken_card_is_refused_naming_the_file_and_field(tmp_path, name):
    filename, text, field = BROKEN_CARDS[name]
    path = write_card_file(tmp_path / name, text, filename)
    with pytest.raises(InvalidInputError) as caught:
        read_card(path)
    message = str(caught.value)
    assert str(path) in message and field in message and len(message.splitlines()) == 1


def test_a_million_labels_card_is_refused_by_size_before_parsing(tmp_path):
    card = json.dumps(card_dict("million", labels={0: {"name": "l0", "color": [0, 0, 0]}}))
    labels = ",".join(f'"{i}":{{"name":"l{i}","color":[0,0,0]}}' for i in range(10**6))  # 33 MB
    path = write_card_file(tmp_path / "million", card.replace('"labels": {', '"labels": {' + labels + ",", 1), "model.json")
    with pytest.raises(FileFormatError, match=r"million/model.json is larger than 1048576 bytes"):
        read_card(path)


def test_broken_entries_are_reported_and_skipped_and_other_models_still_predict(registry, tmp_path, image, capsys):
    for name, (filename, text, _) in BROKEN_CARDS.items():
        write_card_file(registry / name, text, filename)
    before = snapshot(registry)
    scan = Registry().scan()
    assert [m.name for m in scan.models if m.source.value == "env"] == ["good"]
    problems = {path.name: why for path, why in scan.problems}
    for name, (_, _, field) in BROKEN_CARDS.items():
        assert field in problems[name], problems[name]

    rc, out, err = run_main(capsys, "models", "list", "--json")
    listing = json.loads(out)
    assert rc == 0 and [m["name"] for m in listing["models"] if m["source"] == "env"] == ["good"]
    assert {Path(p["folder"]).name for p in listing["problems"]} >= set(BROKEN_CARDS)

    out_path = tmp_path / "seg.nrrd"
    rc, out, err = run_main(capsys, "predict", image, out_path, "--model", "good", "--no-progress")
    assert rc == 0, err
    assert read_volume(out_path).shape == read_volume(image).shape
    assert snapshot(registry) == before  # nothing in the registry was changed


def test_an_unreadable_card_is_reported_not_an_internal_error(registry, tmp_path, image):
    card = write_card_file(registry / "unreadable", yaml.safe_dump(card_dict("unreadable")))
    card.chmod(0)
    # root reads any file; drop every capability so the permission bits apply, as for a user
    command = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "napari_medseg.cli"]
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        command = [sys.executable, "-m", "napari_medseg.cli"]
    listed = subprocess.run([*command, "models", "list", "--json"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    problems = {Path(p["folder"]).name: p["error"] for p in json.loads(listed.stdout)["problems"]}
    if os.geteuid() == 0 and shutil.which("setpriv"):
        assert "cannot be read: Permission denied" in problems["unreadable"] and str(card) in problems["unreadable"]
    assert "good" in [m["name"] for m in json.loads(listed.stdout)["models"]]


# --------------------------------------------------------------------- class 11: cheap file checks
@pytest.mark.parametrize(
    "damage, problem",
    [("missing", "model.safetensors: missing"), ("folder", "model.safetensors: not a file (a folder)"),
     ("empty", "model.safetensors: empty (0 bytes)")],
)
def test_models_list_flags_file_problems_without_hashing_and_verify_still_fails(registry, capsys, damage, problem):
    weights = registry / "good" / "model.safetensors"
    weights.unlink()
    if damage == "folder":
        weights.mkdir()
    elif damage == "empty":
        weights.write_bytes(b"")
    rc, out, _ = run_main(capsys, "models", "list", "--json")
    good = next(m for m in json.loads(out)["models"] if m["name"] == "good")
    assert rc == 0 and good["file_problems"] == [problem]
    rc, out, _ = run_main(capsys, "models", "list")
    assert rc == 0 and "warning: model 'good'" in out and problem in out
    rc, _, err = run_main(capsys, "models", "verify", "good")
    assert rc == 2 and "model.safetensors" in err


def test_a_healthy_model_has_no_file_problems(registry):
    assert Registry().get("good").file_problems() == []


# --------------------------------------------------------------- class 9: non-finite models
def _model_with_weights(folder: Path, state: dict) -> Path:
    save_model_folder(folder, card=tiny_card("odd", spacing=(1.0, 1.0, 2.0)), state_dict=state)
    return folder


def test_nan_weights_are_refused_at_predict_naming_the_model(tmp_path, image, capsys):
    state = tiny_network(0).state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    folder = _model_with_weights(tmp_path / "nan-weights", state)
    out_path = tmp_path / "seg.nrrd"
    image_bytes = image.read_bytes()
    rc, out, err = run_main(capsys, "predict", image, out_path, "--model", folder, "--no-progress")
    assert rc == 2 and "hold NaN or inf values" in err and "'odd'" in err and first in err
    assert len(err.strip().splitlines()) == 1 and "0 voxels" not in out
    assert not out_path.exists() and image.read_bytes() == image_bytes


def test_outputs_that_overflow_to_inf_are_refused_at_predict_naming_the_model(tmp_path, image, capsys):
    state = {k: (torch.full_like(v, 3e38) if v.is_floating_point() else v) for k, v in tiny_network(0).state_dict().items()}
    folder = _model_with_weights(tmp_path / "overflow", state)
    out_path = tmp_path / "seg.nrrd"
    rc, out, err = run_main(capsys, "predict", image, out_path, "--model", folder, "--no-progress")
    assert rc == 2 and "model 'odd' gave NaN or inf outputs" in err, err
    assert len(err.strip().splitlines()) == 1 and not out_path.exists()


def test_a_nan_card_value_fails_predict_with_the_card_file_and_field(tmp_path, image, capsys):
    model = registry_model(tmp_path / "m", name="m", spacing=(1.0, 1.0, 2.0))
    card = yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())
    card["normalization"]["window_width"] = float("inf")
    (tmp_path / "m" / "model.yaml").write_text(yaml.safe_dump(card))
    rc, _, err = run_main(capsys, "predict", image, tmp_path / "seg.nrrd", "--model", model.folder, "--no-progress")
    assert rc == 2 and str(tmp_path / "m" / "model.yaml") in err and "normalization.window_width" in err
    with pytest.raises(InvalidInputError, match="finite"):
        load_model_folder(tmp_path / "m")
    assert hashlib.sha256((tmp_path / "m" / "model.safetensors").read_bytes()).hexdigest() == model.sha256
