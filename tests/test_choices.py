"""The one home of choices and validators: every face's device list is the enum, ``auto`` resolves
the same way for predict and training, and the shared validators (spacing, dropout rate, label
lists, "did you mean") behave the same from every caller."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_medseg._validate import check_dropout_rate, check_spacing_mm, parse_label_list
from napari_medseg.choices import DEVICE_NAMES, Device, close_matches_message, parse_device
from napari_medseg.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ devices
def test_every_face_lists_the_enum_devices():
    assert DEVICE_NAMES == tuple(d.value for d in Device) == ("auto", "cpu", "cuda", "mps")
    # the CLI: --device of predict and train accept exactly the enum's names
    from napari_medseg.cli import DEVICE_METAVAR, build_parser, device_argument

    assert DEVICE_METAVAR == "{auto,cpu,cuda,mps}"
    parser = build_parser()
    for name in DEVICE_NAMES:
        assert parser.parse_args(["train", "--device", name.upper()]).device == name
        assert device_argument(name) == name
    # the napari settings manifest (static YAML: it cannot import the enum)
    manifest = yaml.safe_load((ROOT / "src/napari_medseg/plugin/napari.yaml").read_text())
    assert tuple(manifest["contributions"]["configurations"]["medseg"]["properties"]["device"]["enum"]) == DEVICE_NAMES
    # the Slicer module (loads before napari-medseg is installed, so its list is written out)
    tree = ast.parse((ROOT / "slicer_extension/MedSeg/MedSeg.py").read_text())
    [devices] = [node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "DEVICES" for t in node.targets)]
    assert tuple(ast.literal_eval(devices)) == DEVICE_NAMES
    # the inference module's old name is the same enum
    from napari_medseg.inference import Device as OldDevice

    assert OldDevice is Device


@pytest.mark.parametrize(("text", "expected"), [
    ("auto", (Device.AUTO, None)), (" CUDA:1 ", (Device.CUDA, 1)), ("cpu", (Device.CPU, None)), ("mps:0", (Device.MPS, 0)),
])
def test_parse_device(text, expected):
    assert parse_device(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("cuad", "did you mean 'cuda'"), ("gpu", "expected one of auto, cpu, cuda, mps"),
    ("auto:0", "optionally with ':N'"), ("cuda:x", "optionally with ':N'"), ("cuda:-1", "optionally with ':N'"),
    ("cuda:²", "optionally with ':N'"),
])
def test_invalid_device_names(text, message):
    with pytest.raises(InvalidInputError, match="device=") as info:
        parse_device(text)
    assert message in str(info.value)


def test_cli_rejects_a_bad_device_with_exit_2_and_a_suggestion(run_cli, tmp_path):
    proc = run_cli("predict", tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", "--model", "x", "--device", "cuad", check_rc=2)
    assert "argument --device: 'cuad' is not a valid choice" in proc.stderr and "did you mean 'cuda'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.nii.gz").exists()
    proc = run_cli("train", "--device", "gpu", check_rc=2)
    assert "argument --device" in proc.stderr and "expected one of auto, cpu, cuda, mps" in proc.stderr


def test_training_resolves_devices_like_inference(tmp_path):
    torch = pytest.importorskip("torch")
    from napari_medseg.inference import resolve_device
    from napari_medseg.training.config import load_config
    from napari_medseg.training.trainer import train

    with pytest.raises(InvalidInputError, match="device='cuad'.*did you mean 'cuda'"):
        load_config(overrides={"device": "cuad"})
    assert load_config(overrides={"device": " CPU "}).device == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected  # CUDA, then MPS, then the CPU
    if torch.cuda.is_available():
        pytest.skip("the refusal below needs a machine without CUDA")
    # the trainer refuses an absent device with inference's own message, before reading any data
    config = load_config(overrides={"device": "cuda", "data": str(tmp_path / "data"), "output": str(tmp_path / "run")})
    with pytest.raises(InvalidInputError, match="device='cuda': CUDA is not available on this machine"):
        train(config)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ validators
def test_spacing_check_is_one_rule_for_every_caller():
    from napari_medseg.metrics import volume_ml
    from napari_medseg.postprocess import label_volumes_ml
    from napari_medseg.registration.metric import normalize_spacing
    from napari_medseg.uncertainty import uncertain_regions
    from napari_medseg.volume import Geometry

    assert check_spacing_mm([2, 1, 0.5], 3) == (2.0, 1.0, 0.5)
    assert check_spacing_mm(np.array([1.5, 1.5]), None) == (1.5, 1.5)
    assert normalize_spacing(2.0, 2) == (2.0, 2.0) and normalize_spacing(None, 3) == (1.0, 1.0, 1.0)
    mask = np.ones((2, 2, 2), bool)
    for bad in ([1, 1], [1, 0, 1], [1, math.nan, 1], [1, math.inf, 1], "111", [1, "x", 1], None):
        for call in (lambda s: volume_ml(mask, spacing_mm=s), lambda s: label_volumes_ml(mask, spacing_mm=s),
                     lambda s: uncertain_regions(np.zeros((2, 2, 2)), spacing_mm=s, threshold=0.5)):
            with pytest.raises(InvalidInputError, match=r"spacing_mm=.*expected 3 finite values > 0 in mm, in array axis order"):
                call(bad)
    with pytest.raises(InvalidInputError, match=r"spacing=\(1.0, -1.0, 1.0\): expected 3 finite values > 0 in mm, in x y z order"):
        Geometry(spacing=(1.0, -1.0, 1.0))
    with pytest.raises(InvalidInputError, match="or one number"):
        normalize_spacing([1, 2, 3], 2)


def test_dropout_rate_check_refuses_texts_and_bools():
    assert check_dropout_rate(0) == 0.0 and check_dropout_rate(np.float32(0.25)) == 0.25
    for bad in (1.0, -0.1, math.nan, "0.3", True, False, None):
        with pytest.raises(InvalidInputError, match="dropout_rate=.*expected a number in \\[0, 1\\)"):
            check_dropout_rate(bad)


@pytest.mark.parametrize(("text", "expected"), [
    (None, None), ("all", None), (" ALL ", None), ("2, 1", [2, 1]), ("1,2,", [1, 2]), ("70000", [70000]),
])
def test_parse_label_list(text, expected):
    assert parse_label_list(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "no label given"), (" , ", "no label given"), ("0", "got '0'"), ("1,-2", "got '-2'"), ("1.5", "got '1.5'"),
    ("²", "got '²'"), ("one", "got 'one'"), ("1,1", "label 1 is given twice"), ("9" * 30, "got '999"),
])
def test_invalid_label_lists(text, message):
    with pytest.raises(InvalidInputError, match="--labels=") as info:
        parse_label_list(text, name="--labels")
    assert message in str(info.value)


def test_cli_label_lists_follow_the_one_parser(run_cli, tmp_path):
    from napari_medseg.volume import Geometry, Volume, write_volume

    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 1:3, 1:4] = 2
    path = write_volume(Volume(labels, Geometry()), tmp_path / "l.nii.gz")
    for command in (("postprocess", path, tmp_path / "o.nii.gz", "--fill-holes"), ("evaluate", "--pred", path, "--ref", path)):
        proc = run_cli(*command, "--labels", "0", check_rc=2)  # the background is no label to select
        assert "--labels='0': expected 'all' or comma-separated label values >= 1" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.nii.gz").exists()
    run_cli("postprocess", path, tmp_path / "o.nii.gz", "--fill-holes", "--labels", "all")
    from napari_medseg.volume import read_volume

    assert np.array_equal(read_volume(tmp_path / "o.nii.gz").array, labels)  # 'all' is every label


def test_did_you_mean_is_shared_and_keeps_the_choices_case():
    assert close_matches_message("basicunet", ["BasicUNet", "SegResNet"]) == " (did you mean 'BasicUNet'?)"
    assert close_matches_message("zzz", ["cpu"]) == ""
    from napari_medseg.networks import build_network

    with pytest.raises(InvalidInputError, match="did you mean 'BasicUNet'"):
        build_network("monai.BasicUNt", spatial_dims=3, in_channels=1, out_channels=2)
