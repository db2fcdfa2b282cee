"""The Models widget imports a real nnU-Net v2 result folder (built by nnunetv2 in tests/conftest.py)."""

from __future__ import annotations

import pytest

from napari_medseg.plugin._models import ModelsWidget

pytestmark = pytest.mark.slow

RESULT = "results/Dataset901_Blobs/nnUNetTrainer__nnUNetPlans__3d_fullres"


def test_import_nnunet_folder(make_napari_viewer, qtbot, medseg_env, nnunet_root):
    viewer = make_napari_viewer()
    widget = ModelsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    with qtbot.waitSignal(widget.import_runner.finished, timeout=120000):
        widget.import_nnunet(nnunet_root / RESULT, folds=[0], name="blobs-fold0")
    assert widget.import_runner.last_outcome == "done", widget.import_runner.last_error
    assert widget.column("source")["blobs-fold0"] == "user"
    assert widget.column("labels")["blobs-fold0"] == "0: background, 1: left, 2: right"
    assert (medseg_env.user_models / "blobs-fold0" / "nnunet" / "plans.json").is_file()
    assert widget.nnunet_button.isEnabled() and widget.import_button.isEnabled()


def test_import_nnunet_missing_fold_is_reported(make_napari_viewer, qtbot, medseg_env, nnunet_root):
    viewer = make_napari_viewer()
    widget = ModelsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    with qtbot.waitSignal(widget.import_runner.finished, timeout=120000):
        widget.import_nnunet(nnunet_root / RESULT, folds=[7])
    assert widget.import_runner.last_outcome == "failed"
    assert "fold_7" in str(widget.import_runner.last_error)
    assert not any(medseg_env.user_models.iterdir())
