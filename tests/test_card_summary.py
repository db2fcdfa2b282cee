"""One card summary for every face: ``medseg models show/list``, the napari widgets, the Slicer module."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from napari_medseg.card_summary import card_facts, card_summary_text, card_text, card_yaml, model_summary

CARD = {
    "name": "tiny", "version": "1.0.0", "description": "tiny test model", "task": "segmentation",
    "license": "Apache-2.0", "authors": "Test Author",
    "architecture": {"name": "monai.UNet", "params": {"channels": [4, 8], "strides": [2], "num_res_units": 0}},
    "spatial_dims": 3, "channels": [{"name": "image", "modality": "CT"}],
    "labels": {0: {"name": "background", "color": [0, 0, 0]}, 1: {"name": "liver", "color": [1, 0, 0]},
               2: {"name": "tumour", "color": [0, 1, 0]}},
    "spacing": [0.8, 0.8, 2.5], "orientation": "ras",
    "normalization": {"kind": "ct_window", "window_center": 40, "window_width": 400},
    "patch_size": [8, 16, 16], "overlap": 0.5, "dropout": {"placement": ["head"], "rate": 0.2},
    "metrics": {"dice": 0.51234},
}


def _model(tmp_path):
    import torch

    from napari_medseg.networks import build_network
    from napari_medseg.registry import save_model_folder

    torch.manual_seed(0)
    net = build_network("monai.UNet", spatial_dims=3, in_channels=1, out_channels=3,
                        channels=[4, 8], strides=[2], num_res_units=0, dropout_rate=0.2)
    return save_model_folder(tmp_path / "env" / "tiny", card=CARD, state_dict=net.state_dict())


def test_facts_text_and_yaml(tmp_path):
    model = _model(tmp_path)
    facts = dict(card_facts(model.card))
    assert facts == {
        "model": "tiny 1.0.0 (segmentation)", "description": "tiny test model", "channels": "image (CT)",
        "labels": "1 liver, 2 tumour", "spacing": "0.8 x 0.8 x 2.5 mm (x, y, z)", "orientation": "RAS",
        "grid": "3D, patch 8 x 16 x 16, overlap 0.5", "dropout": "head, rate 0.2", "metrics": "dice 0.512",
    }
    assert card_summary_text(model.card).splitlines()[3] == "labels: 1 liver, 2 tumour"
    # the YAML is the card itself: read back it validates to an equal card
    from napari_medseg.registry import ModelCard

    assert ModelCard.model_validate(yaml.safe_load(card_yaml(model.card))) == model.card
    text = card_text(model, shadows=["/elsewhere/tiny"])
    assert text.startswith(f"# tiny 1.0.0 ({model.source.value}: {model.folder})\n# shadows /elsewhere/tiny\n")
    assert yaml.safe_load(text) == yaml.safe_load(card_yaml(model.card))  # comments only above the card


def test_every_face_shows_the_same_summary(tmp_path, run_cli):
    model = _model(tmp_path)
    env = {**os.environ, "MEDSEG_MODELS": str(tmp_path / "env"), "MEDSEG_USER_MODELS": str(tmp_path / "user")}
    shown = run_cli("models", "show", "tiny", env=env).stdout
    listed = [m for m in json.loads(run_cli("models", "list", "--json", env=env).stdout)["models"] if m["name"] == "tiny"]
    # the same model as the registry of that environment sees it, through the core functions
    code = ("import json; from napari_medseg.registry import load_model; from napari_medseg.card_summary import *; "
            "m = load_model('tiny'); print(json.dumps([card_text(m), model_summary(m)]))")
    text, summary = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                              check=True).stdout)
    assert shown == text and listed[0] == {**summary, "file_problems": []}
    assert model_summary(model)["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
