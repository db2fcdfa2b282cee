"""nnU-Net v2 models: a real result folder built with nnunetv2 itself, imported and compared with nnUNetv2_predict.

The session fixture ``nnunet_root`` (tests/conftest.py) plans, preprocesses and trains (two folds,
a few iterations, CPU) a tiny synthetic dataset with nnunetv2 in a subprocess
(:mod:`_nnunet_factory`), once per test session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")
sitk = pytest.importorskip("SimpleITK")

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _nnunet_factory import DATASET, blob_case, nnunet_env  # noqa: E402

RESULT = f"{DATASET}/nnUNetTrainer__nnUNetPlans__3d_fullres"


def _env(root: Path) -> dict[str, str]:
    return nnunet_env(root)


def _nnunet_cli(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="session")
def test_inputs(nnunet_root) -> Path:
    """Two channels of an unseen case: other spacing (resampled, anisotropic), rotated direction,
    an origin, and a zero border (cropped to non-zero)."""
    folder = nnunet_root / "test_in"
    folder.mkdir()
    for i, img in enumerate(blob_case(11, size_xyz=(40, 36, 20), spacing=(0.8, 0.9, 3.0))[:2]):
        array = sitk.GetArrayFromImage(img)
        array[:, :2, :] = 0
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(img.GetSpacing())
        out.SetOrigin((10.0, -20.0, 5.0))
        out.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(out, str(folder / f"case_{i:04d}.nii.gz"))
    return folder


@pytest.fixture(scope="session")
def imported(nnunet_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "blobs"
    proc = subprocess.run([sys.executable, "-m", "napari_medseg.cli", "models", "import-nnunet",
                           str(nnunet_root / "results" / RESULT), "--out", str(out)],
                          capture_output=True, text=True, env=_env(nnunet_root))
    assert proc.returncode == 0, proc.stderr
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def _agree(ours: Path, reference: Path, labels) -> None:
    a, b = sitk.ReadImage(str(ours)), sitk.ReadImage(str(reference))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    A, B = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
    assert (A == B).mean() >= 0.995
    for value in labels:
        assert _dice(A == value, B == value) >= 0.98, value
    return A, B


def test_import_card_from_plans_and_dataset(imported, nnunet_root):
    from napari_medseg.registry import load_model

    model = load_model(imported)
    card = model.card
    plans = json.loads((nnunet_root / "results" / RESULT / "plans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    assert {v: lab.name for v, lab in card.labels.items()} == {0: "background", 1: "left", 2: "right"}
    assert [(c.name, c.modality) for c in card.channels] == [("CT", "CT"), ("T2", "T2")]
    assert card.spacing == tuple(cfg["spacing"][::-1])  # SimpleITK (x, y, z) order
    assert list(card.patch_size) == cfg["patch_size"]
    assert card.architecture.name == "nnunet.PlainConvUNet"
    assert card.architecture.params["features_per_stage"] == cfg["architecture"]["arch_kwargs"]["features_per_stage"]
    nn = card.nnunet
    assert nn["folds"] == ["0", "1"] and nn["configuration"] == "3d_fullres" and nn["activation"] == "softmax"
    fg = plans["foreground_intensity_properties_per_channel"]["0"]
    assert nn["normalization"][0] == {"channel": "CT", "scheme": "CTNormalization", "use_mask_for_norm": False,
                                      "clip": [fg["percentile_00_5"], fg["percentile_99_5"]],
                                      "mean": fg["mean"], "std": fg["std"]}
    assert nn["normalization"][1]["scheme"] == "ZScoreNormalization"
    assert nn["mirroring_axes"] == [0, 1, 2] and nn["transpose_forward"] == plans["transpose_forward"]
    model.verify()  # every sha256 (weights, plans.json, dataset.json) matches
    network = model.load_network()  # what `medseg models verify --load` does: the allow-listed class, first fold
    assert type(network).__name__ == "PlainConvUNet" and not network.training
    assert network.decoder.seg_layers[-1].out_channels == 3
    keys = model.load_state_dict().keys()
    assert any(k.startswith("fold_0.") for k in keys) and any(k.startswith("fold_1.") for k in keys)


def test_predict_agrees_with_nnunetv2_predict(imported, nnunet_root, test_inputs, tmp_path, run_cli):
    env = _env(nnunet_root)
    ref = tmp_path / "ref"
    proc = subprocess.run([_nnunet_cli("nnUNetv2_predict"), "-i", str(test_inputs), "-o", str(ref), "-d", "901",
                           "-c", "3d_fullres", "-f", "0", "1", "-device", "cpu", "-npp", "1", "-nps", "1",
                           "--disable_progress_bar"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = tmp_path / "ours.nii.gz"
    run_cli("predict", test_inputs / "case_0000.nii.gz", test_inputs / "case_0001.nii.gz", ours, "--model", imported,
            "--uncertainty", tmp_path / "unc.nii.gz", "--no-progress", env=env)
    A, B = _agree(ours, ref / "case.nii.gz", (1, 2))
    # The factory's training is seeded so that every label appears; the comparison is only
    # meaningful when the reference itself predicts more than background.
    assert len(np.unique(B)) >= 2 and set(np.unique(A)) == set(np.unique(B))
    unc = sitk.ReadImage(str(tmp_path / "unc.nii.gz"))
    assert unc.GetNumberOfComponentsPerPixel() == 2 + 3  # entropy, mutual information, one variance per label
    mi = sitk.GetArrayFromImage(unc)[..., 1]
    assert mi.min() >= 0 and mi.max() > 0  # the two folds disagree somewhere


def _evil_copy(nnunet_root: Path, tmp_path: Path) -> Path:
    folder = tmp_path / RESULT
    shutil.copytree(nnunet_root / "results" / RESULT, folder,
                    ignore=shutil.ignore_patterns("checkpoint_best.pth", "*.png", "*.txt"))
    return folder


class _Evil:
    """Unpickling this would create a folder: a stand-in for code run by a malicious checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused(nnunet_root, tmp_path, run_cli):
    import torch

    folder = _evil_copy(nnunet_root, tmp_path)
    marker = tmp_path / "pwned"
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    good = torch.load(checkpoint, weights_only=False)  # our own file, trusted here
    torch.save({**good, "logging": _Evil(str(marker))}, checkpoint)
    proc = run_cli("models", "import-nnunet", folder, "--out", tmp_path / "m", check_rc=2, env=_env(nnunet_root))
    assert "cannot be loaded safely" in proc.stderr and "checkpoint_final.pth" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "m").exists()


def test_network_class_outside_allow_list_is_refused(nnunet_root, tmp_path, run_cli):
    folder = _evil_copy(nnunet_root, tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    proc = run_cli("models", "import-nnunet", folder, "--out", tmp_path / "m", check_rc=2, env=_env(nnunet_root))
    assert "'os.system' is not allowed" in proc.stderr


def test_unknown_fold_is_refused(nnunet_root, tmp_path, run_cli):
    proc = run_cli("models", "import-nnunet", nnunet_root / "results" / RESULT, "--folds", "3", "--out",
                   tmp_path / "m", check_rc=2, env=_env(nnunet_root))
    assert "fold_3" in proc.stderr


def test_region_based_model_agrees_with_nnunet(nnunet_root, test_inputs, tmp_path, run_cli):
    """A region-based (sigmoid) dataset: regions {1, 2} and {2}, regions_class_order [1, 2].

    The network is built by nnU-Net's own get_network_from_plans with a fixed seed and saved as
    nnU-Net saves checkpoints; nnU-Net's predictor on the result folder is the reference."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    folder = tmp_path / "Dataset902_Regions" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    src = nnunet_root / "results" / RESULT
    shutil.copy(src / "plans.json", folder / "plans.json")
    dataset = json.loads((src / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "both": [1, 2], "right": 2}
    dataset["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(dataset))
    arch = json.loads((src / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(0)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 2, 2, deep_supervision=False)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    env = _env(nnunet_root)
    run_cli("models", "import-nnunet", folder, "--out", tmp_path / "m", env=env)
    from napari_medseg.registry import load_model

    card = load_model(tmp_path / "m").card
    assert card.nnunet["activation"] == "sigmoid" and card.nnunet["regions"] == [[1, 2], [2]]
    assert {v: lab.name for v, lab in card.labels.items()} == {0: "background", 1: "both", 2: "right"}

    # the reference: nnU-Net's own predictor on the result folder, in-process (the file is our own)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    ref = tmp_path / "ref"
    ref.mkdir()
    predictor.predict_from_files_sequential(str(test_inputs), str(ref))
    run_cli("predict", test_inputs / "case_0000.nii.gz", test_inputs / "case_0001.nii.gz", tmp_path / "ours.nii.gz",
            "--model", tmp_path / "m", "--no-progress", env=env)
    A, B = _agree(tmp_path / "ours.nii.gz", ref / "case.nii.gz", ())
    for value in (1, 2):
        if (B == value).any():
            assert _dice(A == value, B == value) >= 0.98
