"""MedSegLogic imports MONAI bundles (and nnU-Net folders, tests/medseg_slicer/test_nnunet_import.py)
in a child process: the real ``medseg models import-bundle --add`` on a real bundle folder."""

from __future__ import annotations

import time

import pytest
from MedSegLib.logic import MedSegLogic
from MedSegLib.model_import import import_argv

from _bundle_factory import metadata, spleen_like, write_bundle
from napari_medseg.errors import InvalidInputError
from napari_medseg.registry import Registry

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def logic(scene, medseg_env):
    return MedSegLogic(scene, jobs_root=medseg_env.jobs, work_root=medseg_env.work,
                       registry=Registry([medseg_env.user_models], user_dir=medseg_env.user_models))


def test_import_bundle_runs_in_the_background_and_adds_the_model(logic, medseg_env, tmp_path):
    bundle, _ = write_bundle(tmp_path / "spleen_ct_segmentation", spleen_like(), metadata("Spleen CT"))
    task = logic.start_import("bundle", bundle)
    assert not task.is_final  # the call returned while the child converts and checks the bundle
    deadline = time.monotonic() + 120
    while not logic.poll_import(task):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert task.error is None and task.model == "spleen_ct_segmentation"
    assert logic.model_names() == ["spleen_ct_segmentation"]
    assert "labels: 1 spleen" in logic.describe_card("spleen_ct_segmentation")
    card = logic.card("spleen_ct_segmentation")
    assert card.monai_bundle["name"] == "Spleen CT" and card.axis_order == "xyz"
    assert (medseg_env.user_models / "spleen_ct_segmentation" / "model.yaml").is_file()


def test_refused_bundle_names_the_reason_and_leaves_the_registry_unchanged(logic, medseg_env, tmp_path):
    config = spleen_like()
    config["preprocessing"]["transforms"].insert(2, {"_target_": "RandFlipd", "keys": "image", "prob": 0.5})
    bundle, _ = write_bundle(tmp_path / "flip", config, metadata("flip"))
    with pytest.raises(InvalidInputError, match=r"MONAI bundle import of .*flip: .*RandFlipd is not reproduced") as info:
        logic.import_bundle(bundle)
    assert "medseg models" not in str(info.value)  # the CLI's prefix is dropped: the reason alone
    assert logic.model_names() == [] and not any(medseg_env.user_models.iterdir())


def test_import_past_its_deadline_is_stopped_and_adds_nothing(logic, medseg_env, tmp_path):
    bundle, _ = write_bundle(tmp_path / "slow", spleen_like(), metadata("slow"))
    task = logic.start_import("bundle", bundle, timeout_s=0.01)
    time.sleep(0.05)
    assert logic.poll_import(task)
    assert task.model is None and "did not finish in time" in task.error
    assert task.process.returncode not in (None, 0)
    assert logic.model_names() == [] and not any(medseg_env.user_models.iterdir())


def test_bad_import_requests_are_refused_before_a_child_starts(logic, tmp_path):
    with pytest.raises(InvalidInputError, match="folder=.*missing.*expected an existing nnU-Net folder"):
        logic.start_import("nnunet", tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="kind.*bundle"):
        logic.start_import("bundel", tmp_path)
    with pytest.raises(InvalidInputError, match="folds: only nnU-Net"):
        logic.start_import("bundle", tmp_path, folds=[0])
    with pytest.raises(InvalidInputError, match="timeout_s"):
        logic.start_import("bundle", tmp_path, timeout_s=0)


def test_import_argv_is_the_cli_command(tmp_path):
    argv = import_argv("nnunet", tmp_path, python="/py", name="m", folds=[0, 2], force=True)
    assert argv == ["/py", "-m", "napari_medseg.cli", "models", "import-nnunet", str(tmp_path), "--add",
                    "--folds", "0", "2", "--name", "m", "--force"]
    assert import_argv("bundle", tmp_path, python="/py")[4:] == ["import-bundle", str(tmp_path), "--add"]
