"""``medseg predict`` end to end in a subprocess, on tiny random-weight registry models."""

from __future__ import annotations

import argparse
import json
import os
import threading

import numpy as np
import pytest
from conftest import oblique_geometry
from _models import make_model

from napari_medseg.cli import main
from napari_medseg.errors import CancelledError
from napari_medseg.volume import Geometry, Volume, read_volume, write_volume


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env(**extra):
    """The subprocess environment: one OpenMP thread (the CI machine is shared)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in extra.items()}}


def _main(capsys, *args):
    """Run ``medseg`` in this process (cheaper than a subprocess); returns (rc, stdout, stderr)."""
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path / "models", spacing=(1.0, 1.0, 2.0), placement=("decoder", "head"))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "ct.nrrd"
    rng = np.random.default_rng(0)
    write_volume(Volume((rng.normal(size=(6, 20, 24)) * 100).astype(np.int16), oblique_geometry()), path)
    return path


def test_predict_writes_labels_on_the_input_grid(run_cli, tmp_path, model, image):
    out = tmp_path / "seg.nrrd"
    proc = run_cli("predict", image, out, "--model", model.folder, env=_env())  # with the progress bar
    assert f"wrote {out}" in proc.stdout
    # the card's spacing differs from the input's: a warning on stderr
    assert "warning" in proc.stderr and "spacing" in proc.stderr
    source, labels = read_volume(image), read_volume(out)
    assert labels.shape == source.shape
    assert labels.geometry.isclose(source.geometry, atol=1e-6)
    assert labels.array.dtype == np.uint8 and set(np.unique(labels.array)) <= {0, 1}
    assert labels.metadata["medseg_model"] == "tiny"
    assert labels.metadata["medseg_model_sha256"] == model.sha256
    sidecar = json.loads((tmp_path / "seg.nrrd.json").read_text())
    assert sidecar["models"][0]["sha256"] == model.sha256
    assert sidecar["version"] and sidecar["shape"] == [6, 20, 24]
    assert sidecar["parameters"]["mc_samples"] == 0
    assert any("spacing" in w for w in sidecar["warnings"])


def test_predict_probabilities_and_uncertainty_files(run_cli, tmp_path, model, image):
    out, prob, unc = tmp_path / "seg.nii.gz", tmp_path / "prob.mha", tmp_path / "unc.nrrd"
    run_cli(
        "predict", image, out, "--model", model.folder, "--mc-samples", "3", "--dropout", "0.4", "--seed", "2",
        "--probabilities", prob, "--uncertainty", unc, "--no-progress", env=_env(),
    )
    p, u, labels = read_volume(prob), read_volume(unc), read_volume(out)
    assert p.array.shape == (6, 20, 24, 2) and u.array.shape == (6, 20, 24, 4)
    np.testing.assert_allclose(p.array.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels.array, np.argmax(p.array, -1))
    assert u.metadata["medseg_components"] == "entropy,mutual_information,variance_background,variance_label1"
    assert p.metadata["medseg_components"] == "background,label1"
    assert u.array[..., 1].max() > 0  # mutual information from 3 dropout samples
    sidecar = json.loads((tmp_path / "seg.nii.gz.json").read_text())
    assert sidecar["parameters"]["dropout_rate"] == 0.4 and sidecar["parameters"]["seed"] == 2
    assert sidecar["outputs"]["uncertainty"]["components"][0] == "entropy"


def test_predict_same_seed_same_maps(capsys, tmp_path, model, image):
    for name in ("a", "b"):
        rc, _, _ = _main(capsys, "predict", image, tmp_path / f"{name}.nrrd", "--model", model.folder, "--mc-samples", "2",
                         "--uncertainty", tmp_path / f"{name}_u.nrrd", "--no-progress")
        assert rc == 0
    assert np.array_equal(read_volume(tmp_path / "a_u.nrrd").array, read_volume(tmp_path / "b_u.nrrd").array)


def test_predict_ensemble_by_registry_name_with_postprocessing(run_cli, tmp_path, image):
    make_model(tmp_path / "reg", name="fold-a", seed=1)
    make_model(tmp_path / "reg", name="fold-b", seed=2)
    out = tmp_path / "seg.seg.nrrd"
    env = _env(MEDSEG_MODELS=tmp_path / "reg")
    run_cli("predict", image, out, "--model", "fold-a", "--model", "fold-b", "--tta", "--keep-largest", "--no-progress", env=env)
    labels = read_volume(out)
    assert labels.geometry.isclose(read_volume(image).geometry, atol=1e-6)
    sidecar = json.loads((tmp_path / "seg.seg.nrrd.json").read_text())
    assert [m["name"] for m in sidecar["models"]] == ["fold-a", "fold-b"]
    assert sidecar["postprocess"] is not None and sidecar["parameters"]["tta_flips"] is True


def test_device_choices_match_the_enum():
    from napari_medseg.cli import build_parser
    from napari_medseg.inference import Device

    parser = build_parser()
    for device in Device:  # predict's --device takes exactly the enum (tests/test_choices.py: the refusals)
        assert parser.parse_args(["predict", "in.nii.gz", "out.nii.gz", "--model", "m", "--device", device.value]).device == device


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--dropout", "1.5"], "--dropout=1.5"),
        (["--mc-samples", "-1"], "--mc-samples=-1"),
        (["--overlap", "1"], "overlap=1.0"),
        (["--batch-size", "0"], "--batch-size=0"),
        (["--labels", "1"], "--labels selects labels"),
    ],
)
def test_invalid_options(capsys, tmp_path, model, image, extra, match):
    out = tmp_path / "seg.nrrd"
    rc, _, err = _main(capsys, "predict", image, out, "--model", model.folder, *extra)
    assert rc == 2
    assert match in err
    assert not out.exists()


def test_invalid_model_name_lists_close_matches(capsys, monkeypatch, tmp_path, image):
    make_model(tmp_path / "reg", name="liver-ct")
    monkeypatch.setenv("MEDSEG_MODELS", str(tmp_path / "reg"))
    rc, _, err = _main(capsys, "predict", image, tmp_path / "seg.nrrd", "--model", "livr-ct")
    assert rc == 2
    assert "liver-ct" in err
    assert list(tmp_path.glob("seg*")) == []


def test_invalid_channel_count(capsys, tmp_path, image):
    model = make_model(tmp_path / "models", name="two", in_channels=2)
    rc, _, err = _main(capsys, "predict", image, tmp_path / "seg.nrrd", "--model", model.folder, "--no-progress")
    assert rc == 2
    assert "expects 2 input channel" in err


def test_multichannel_inputs(capsys, tmp_path, image):
    model = make_model(tmp_path / "models", name="two", in_channels=2)
    out = tmp_path / "seg.nrrd"
    assert _main(capsys, "predict", image, image, out, "--model", model.folder, "--no-progress")[0] == 0
    assert read_volume(out).shape == (6, 20, 24)


def test_invalid_nan_input(capsys, tmp_path, model):
    path = tmp_path / "nan.nrrd"
    array = np.zeros((6, 16, 16), np.float32)
    array[0, 0, 0] = np.nan
    write_volume(Volume(array, Geometry((1.0, 1.0, 2.0))), path)
    rc, _, err = _main(capsys, "predict", path, tmp_path / "seg.nrrd", "--model", model.folder, "--no-progress")
    assert rc == 2
    assert "NaN" in err


def test_cancel_leaves_no_partial_output(tmp_path, model, image):
    from napari_medseg.cli import build_parser
    from napari_medseg.cli._predict import run_predict

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = build_parser().parse_args(
        ["predict", str(image), str(out_dir / "seg.nrrd"), "--model", str(model.folder), "--uncertainty",
         str(out_dir / "u.nrrd"), "--no-progress"]
    )
    assert isinstance(args, argparse.Namespace)
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError):
        run_predict(args, cancel=event)
    assert list(out_dir.iterdir()) == []
