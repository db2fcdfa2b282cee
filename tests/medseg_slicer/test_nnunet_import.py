"""MedSegLogic.import_nnunet: a real nnU-Net v2 result folder (built by nnunetv2 in tests/conftest.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from MedSegLib.logic import MedSegLogic

from napari_medseg.errors import InvalidInputError

pytestmark = pytest.mark.slow

RESULT = "results/Dataset901_Blobs/nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture
def logic(scene, medseg_env):
    return MedSegLogic(scene, jobs_root=medseg_env.jobs, work_root=medseg_env.work)


def test_import_nnunet_adds_the_model(logic, medseg_env, nnunet_root):
    name = logic.import_nnunet(nnunet_root / RESULT, folds=[1], name="blobs-slicer")
    assert name == "blobs-slicer" and "blobs-slicer" in logic.model_names()
    assert "labels: 1 left, 2 right" in logic.describe_card("blobs-slicer")
    assert logic.card("blobs-slicer").nnunet["folds"] == ["1"]


def test_import_nnunet_refusal_names_the_reason(logic, medseg_env, nnunet_root, tmp_path):
    folder = tmp_path / "Dataset901_Blobs" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.copytree(nnunet_root / RESULT, folder, ignore=shutil.ignore_patterns("checkpoint_best.pth"))
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "subprocess.Popen"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(InvalidInputError, match="'subprocess.Popen' is not allowed"):
        logic.import_nnunet(folder)
    assert not any(medseg_env.user_models.iterdir())
