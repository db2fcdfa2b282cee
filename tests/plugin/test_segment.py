"""The Segment dock widget end to end: a real viewer, a tiny registry model, MC dropout, cancel, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _models import make_model, tissue_card
from qtpy.QtCore import Qt

from napari_medseg.errors import InvalidInputError
from napari_medseg.plugin._layers import (
    GEOMETRY_KEY,
    PROVENANCE_KEY,
    volume_from_layer,
)
from napari_medseg.plugin._segment import SegmentWidget
from napari_medseg.uncertainty import labels_from_probabilities
from napari_medseg.volume import Geometry, Volume

from ._helpers import add_volume, click_and_wait
from .conftest import _small_array

_TIMEOUT_MS = 60_000


def _widget(viewer, qtbot, model="tiny-seg") -> SegmentWidget:
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    if model is not None:
        widget.model_combo.setCurrentText(model)
        assert widget.model_combo.currentText() == model
    return widget


def _run(widget, qtbot):
    return click_and_wait(qtbot, widget.run_button, widget.runner, timeout_ms=_TIMEOUT_MS)


@pytest.mark.parametrize("volume_fixture", ["small_volume", "ras_volume"])
def test_segment_with_mc_samples(make_napari_viewer, qtbot, tiny_model, volume_fixture, request):
    volume = request.getfixturevalue(volume_fixture)
    viewer = make_napari_viewer()
    image = add_volume(viewer, volume, "t1")
    widget = _widget(viewer, qtbot)
    assert widget.model_combo.currentText() == "tiny-seg"
    assert widget.channel_combos[0].currentText() == "t1"
    assert widget.dropout_spin.value() == pytest.approx(0.2)  # the card's rate
    assert widget.mismatch_label.text() == ""  # spacing and orientation fit the card
    widget.mc_spin.setValue(3)
    widget.dropout_spin.setValue(0.3)
    widget.probabilities_check.setChecked(True)

    assert _run(widget, qtbot) == "done", widget.status_label.text()

    base = "t1 [tiny-seg]"
    names = [layer.name for layer in viewer.layers]
    assert names == ["t1", f"{base} p(background)", f"{base} p(tissue1)", f"{base} p(tissue2)",
                     f"{base} entropy", f"{base} mutual information", base]
    labels = viewer.layers[base]
    assert type(labels).__name__ == "Labels"
    for layer in viewer.layers[1:]:
        assert np.allclose(layer.scale, image.scale) and np.allclose(layer.translate, image.translate)
        assert np.allclose(layer.rotate, image.rotate)
        assert Geometry(**{k: layer.metadata[GEOMETRY_KEY][k] for k in ("spacing", "origin", "direction")}) == volume.geometry
        provenance = layer.metadata[PROVENANCE_KEY]
        assert provenance["models"][0]["sha256"] == tiny_model.sha256
        assert provenance["parameters"]["mc_samples"] == 3 and provenance["parameters"]["dropout_rate"] == 0.3
        assert provenance["inputs"] == ["t1"]
    assert volume_from_layer(labels).geometry == volume.geometry
    assert set(np.unique(labels.data)) <= {0, 1, 2} and labels.data.shape == volume.shape
    assert list(labels.features["name"]) == ["background", "tissue1", "tissue2"]
    assert np.allclose(labels.colormap.map(np.array([1]))[0], (1.0, 0.0, 0.0, 1.0))
    probabilities = np.stack([viewer.layers[f"{base} p({n})"].data for n in ("background", "tissue1", "tissue2")], -1)
    assert np.allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert np.array_equal(labels.data, labels_from_probabilities(probabilities, [0, 1, 2]))
    assert (viewer.layers[f"{base} entropy"].data >= 0).all()
    assert (viewer.layers[f"{base} mutual information"].data >= 0).all()
    assert widget.regions and widget.regions_list.count() == len(widget.regions)
    assert "done" in widget.status_label.text()


def test_card_summary_and_registry_refresh(make_napari_viewer, qtbot, tiny_model, medseg_env):
    viewer = make_napari_viewer()
    widget = _widget(viewer, qtbot)
    text = widget.card_label.text()
    for expected in ("tiny-seg", "T1 (MR)", "tissue1", "tissue2", "#ff0000", "1 x 1 x 2 mm (x, y, z)",
                     "decoder, head", "rate 0.2", "dice_tissue1 0.5"):
        assert expected in text, expected
    make_model(medseg_env.models, card=tissue_card("other-seg", labels=(0, 1)))
    from napari_medseg.plugin._worker import plugin_events

    plugin_events().registry_changed.emit()
    names = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert "other-seg" in names and "tiny-seg" in names
    assert widget.model_combo.currentText() == "tiny-seg"  # the selection is kept


def test_mismatch_warning_shows(make_napari_viewer, qtbot, tiny_model, notifications):
    viewer = make_napari_viewer()
    add_volume(viewer, Volume(_small_array(), Geometry((1.0, 1.0, 1.0))), "iso")
    widget = _widget(viewer, qtbot)
    assert "spacing (1, 1, 1) mm differs from model 'tiny-seg'" in widget.mismatch_label.text()
    assert _run(widget, qtbot) == "done"
    assert any(s == "warning" and "differs from model 'tiny-seg'" in m for m, s in notifications)
    provenance = viewer.layers["iso [tiny-seg]"].metadata[PROVENANCE_KEY]
    assert any("spacing" in w for w in provenance["warnings"])


def test_cancel_mid_run_leaves_viewer_unchanged(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    add_volume(viewer, Volume(rng.normal(size=(48, 96, 96)).astype(np.float32), Geometry((1.0, 1.0, 2.0))), "t1")
    widget = _widget(viewer, qtbot)
    widget.mc_spin.setValue(5)
    before = [layer.name for layer in viewer.layers]
    with qtbot.waitSignal(widget.runner.finished, timeout=_TIMEOUT_MS):
        qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
        assert widget.run_button.text() == "Cancel"
        qtbot.waitUntil(lambda: widget.progress_bar.value() >= 1, timeout=_TIMEOUT_MS)
        qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    assert widget.runner.last_outcome == "cancelled"
    assert [layer.name for layer in viewer.layers] == before
    assert widget.run_button.text() == "Run" and widget.regions_list.count() == 0


def test_rethreshold_updates_the_same_layer(make_napari_viewer, qtbot, tiny_model, small_volume):
    viewer = make_napari_viewer()
    add_volume(viewer, small_volume, "t1")
    widget = _widget(viewer, qtbot)
    widget.probabilities_check.setChecked(True)
    assert _run(widget, qtbot) == "done"
    base = "t1 [tiny-seg]"
    labels = viewer.layers[base]
    probabilities = np.stack([viewer.layers[f"{base} p({n})"].data for n in ("background", "tissue1", "tissue2")], -1)
    threshold = round(float(np.median(probabilities.max(-1))), 2)
    expected = labels_from_probabilities(probabilities, [0, 1, 2], min_probability=threshold)
    assert not np.array_equal(expected, labels.data)  # the threshold changes something
    widget.threshold_spin.setValue(threshold)
    n_layers = len(viewer.layers)
    with qtbot.waitSignal(widget.threshold_runner.finished, timeout=_TIMEOUT_MS):
        qtbot.mouseClick(widget.threshold_button, Qt.MouseButton.LeftButton)
    assert widget.threshold_runner.last_outcome == "done"
    assert viewer.layers[base] is labels and np.array_equal(labels.data, expected)
    assert labels.metadata[PROVENANCE_KEY]["min_probability"] == threshold
    assert len(viewer.layers) == n_layers  # no layer added


def test_clicking_an_uncertain_region_centres_the_view(make_napari_viewer, qtbot, tiny_model, ras_volume):
    viewer = make_napari_viewer()
    image = add_volume(viewer, ras_volume, "t1")
    widget = _widget(viewer, qtbot)
    widget.mc_spin.setValue(3)
    widget.show()
    assert _run(widget, qtbot) == "done"
    assert widget.regions_list.count() >= 1
    index = min(1, widget.regions_list.count() - 1)
    item = widget.regions_list.item(index)
    region = widget.regions[index]
    rect = widget.regions_list.visualItemRect(item)
    qtbot.mouseClick(widget.regions_list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    nearest_voxel = np.floor(np.asarray(region.centroid_zyx) + 0.5)
    expected = image.data_to_world(nearest_voxel)
    assert np.allclose(viewer.dims.point[-3:], expected, atol=1e-6)
    assert np.allclose(getattr(viewer, "scene", viewer).camera.center[-2:], expected[-2:], atol=1e-6)


def test_invalid_2d_layer_notifies_and_adds_nothing(make_napari_viewer, qtbot, tiny_model, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((24, 28), np.float32), name="flat")
    widget = _widget(viewer, qtbot)
    assert _run(widget, qtbot) == "failed"
    assert isinstance(widget.runner.last_error, InvalidInputError)
    assert "'flat'" in widget.status_label.text() and "3D" in widget.status_label.text()
    assert any(s == "error" and "'flat'" in m for m, s in notifications)
    assert [layer.name for layer in viewer.layers] == ["flat"]


def test_invalid_no_model_and_no_result(make_napari_viewer, qtbot, small_volume, monkeypatch, tmp_path):
    from napari_medseg.plugin import _segment
    from napari_medseg.registry import Registry

    empty = tmp_path / "empty_registry"
    empty.mkdir()
    monkeypatch.setattr(_segment, "registry_from_config", lambda: Registry([empty], user_dir=empty))
    viewer = make_napari_viewer()
    add_volume(viewer, small_volume, "t1")
    widget = _widget(viewer, qtbot, model=None)
    assert widget.model is None and "No model" in widget.card_label.text()
    assert _run(widget, qtbot) == "failed"
    assert "no model selected" in str(widget.runner.last_error)
    with qtbot.waitSignal(widget.threshold_runner.finished, timeout=_TIMEOUT_MS):
        qtbot.mouseClick(widget.threshold_button, Qt.MouseButton.LeftButton)
    assert "run a segmentation first" in str(widget.threshold_runner.last_error)
    assert [layer.name for layer in viewer.layers] == ["t1"]


def test_dock_widget_from_the_manifest(make_napari_viewer, tiny_model):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medseg", "Segment")
    assert isinstance(widget, SegmentWidget)
    assert "tiny-seg" in [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    widget.model_combo.setCurrentText("tiny-seg")
    viewer.add_image(np.zeros((4, 5, 6), np.float32), name="new image")  # the widget got this viewer
    assert widget.channel_combos[0].currentText() == "new image"


def test_run_a_folder_of_cases(make_napari_viewer, qtbot, tiny_model, tmp_path):
    from napari_medseg.volume import read_volume, write_volume

    viewer = make_napari_viewer()
    src, out = tmp_path / "cases", tmp_path / "segs"
    src.mkdir()
    for i in range(2):
        write_volume(Volume(_small_array() + i, Geometry((1.0, 1.0, 2.0))), src / f"case{i}.nii.gz")
    (src / "broken.nii.gz").write_bytes(b"not a nifti")
    widget = _widget(viewer, qtbot)
    widget.input_folder_edit.setText(str(src))
    widget.output_folder_edit.setText(str(out))
    before = [layer.name for layer in viewer.layers]
    click_and_wait(qtbot, widget.folder_button, widget.folder_runner, timeout_ms=_TIMEOUT_MS)
    assert widget.folder_runner.last_outcome == "done"
    summary = widget.folder_summary
    assert [r.case.name for r in summary.done] == ["case0", "case1"] and [r.case.name for r in summary.failed] == ["broken"]
    assert "2 done" in widget.folder_summary_label.text() and "broken" in widget.folder_summary_label.text()
    assert read_volume(out / "case1.nii.gz").shape == (10, 24, 28)
    assert read_volume(out / "uncertainty" / "case1.nii.gz").shape == (10, 24, 28)
    assert [layer.name for layer in viewer.layers] == before  # folder mode writes files only
    widget.output_folder_edit.setText("")
    click_and_wait(qtbot, widget.folder_button, widget.folder_runner, timeout_ms=_TIMEOUT_MS)
    assert widget.folder_runner.last_outcome == "failed" and "output folder" in str(widget.folder_runner.last_error)


def test_worker_warning_is_shown_and_main_thread_warning_is_not_swallowed(
    make_napari_viewer, qtbot, tiny_model, notifications
):
    """The prediction's card warning comes back as data and is notified; a warning the GUI thread
    issues while the worker runs reaches the GUI's own handler (superqt's worker would catch it)."""
    import threading
    import warnings

    from napari_medseg.plugin._segment import run_segmentation

    viewer = make_napari_viewer()
    layer = add_volume(viewer, Volume(_small_array(), Geometry((1.0, 1.0, 1.0))), "iso")  # card: 1 x 1 x 2 mm
    widget = _widget(viewer, qtbot)
    in_worker, main_warned = threading.Event(), threading.Event()

    def segment_when_told(*args, **kwargs):  # the real predict, held until the GUI thread has warned
        in_worker.set()
        assert main_warned.wait(30)
        return run_segmentation(*args, **kwargs)

    shown: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest, **kw: shown.append(str(message))
        handler = warnings.showwarning
        widget.runner.start(segment_when_told, [layer], widget.model, device="cpu",
                            on_returned=widget._add_result_layers)
        assert in_worker.wait(30)
        assert warnings.showwarning is handler  # the worker leaves the process-wide hook alone
        warnings.warn("from the GUI thread while the worker runs", UserWarning)
        main_warned.set()
        qtbot.waitUntil(lambda: widget.runner.last_outcome is not None, timeout=_TIMEOUT_MS)
    assert widget.runner.last_outcome == "done", widget.status_label.text()
    assert shown == ["from the GUI thread while the worker runs"]  # not swallowed; predict warned nothing itself
    assert any(s == "warning" and "differs from model 'tiny-seg'" in m for m, s in notifications)
