"""The Models dock widget on a temporary registry: list, card, verify, tamper, import, remove."""

from __future__ import annotations

import threading

import pytest
from _models import make_model, tissue_card, write_bundle

from napari_medseg.errors import CancelledError
from napari_medseg.plugin._models import (
    COLUMNS,
    OK,
    ModelsWidget,
    card_text,
    verify_models,
)
from napari_medseg.plugin._worker import plugin_events
from napari_medseg.registry import Registry

from ._helpers import click_and_wait


@pytest.fixture
def two_models(medseg_env, tiny_model):
    """``tiny-seg`` in MEDSEG_MODELS (source env) and ``user-seg`` in the user folder (source user)."""
    user = make_model(medseg_env.user_models, card=tissue_card("user-seg", labels=(0, 1), spacing=(0.5, 0.5, 3.0)), seed=1)
    return tiny_model, user


def _widget(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = ModelsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def _ours(widget, column: str) -> dict[str, str]:
    """A column without the shipped models (the checkout's models/ folder is always searched)."""
    sources = widget.column("source")
    return {name: text for name, text in widget.column(column).items() if sources[name] != "shipped"}


def _verify_all(qtbot, widget):
    assert click_and_wait(qtbot, widget.verify_button, widget.runner, timeout_ms=20000) == "done"


def test_lists_models_with_their_card(make_napari_viewer, two_models):
    tiny, user = two_models
    widget = _widget(make_napari_viewer)
    headers = [widget.table.horizontalHeaderItem(i).text() for i in range(widget.table.columnCount())]
    assert headers == list(COLUMNS)
    assert _ours(widget, "source") == {"tiny-seg": "env", "user-seg": "user"}
    assert _ours(widget, "labels") == {"tiny-seg": "0: background, 1: tissue1, 2: tissue2",
                                       "user-seg": "0: background, 1: tissue1"}
    assert _ours(widget, "spacing (mm, x y z)") == {"tiny-seg": "1 x 1 x 2", "user-seg": "0.5 x 0.5 x 3"}
    assert _ours(widget, "sha256") == {"tiny-seg": tiny.sha256[:12], "user-seg": user.sha256[:12]}
    assert _ours(widget, "folder") == {"tiny-seg": str(tiny.folder), "user-seg": str(user.folder)}
    widget.select("user-seg")
    text = widget.card_view.toPlainText()
    assert text == card_text(widget.selected_model())
    for fragment in ("# user-seg 1.0 (user:", "architecture:", "patch_size:", "dropout:", user.sha256,
                     "license: Apache-2.0", "tissue1", "metrics:"):
        assert fragment in text, fragment


def test_scan_problems_are_listed(make_napari_viewer, medseg_env, tiny_model):
    broken = medseg_env.models / "broken"
    broken.mkdir()
    (broken / "model.yaml").write_text("name: broken\nversion: 1\n")
    widget = _widget(make_napari_viewer)
    assert list(_ours(widget, "name")) == ["tiny-seg"]
    items = [widget.problem_list.item(i).text() for i in range(widget.problem_list.count())]
    assert len(items) == 1 and items[0].startswith(f"{broken}: ") and "architecture" in items[0]


def test_verify_ok_then_tampered_weights(make_napari_viewer, qtbot, two_models, notifications):
    tiny, _ = two_models
    widget = _widget(make_napari_viewer)
    _verify_all(qtbot, widget)
    assert _ours(widget, "verified") == {"tiny-seg": OK, "user-seg": OK}
    weights = tiny.weights_path()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    widget.select("tiny-seg")
    with qtbot.waitSignal(widget.runner.finished, timeout=20000):
        widget.verify_selected_button.click()
    verified = _ours(widget, "verified")
    assert verified["user-seg"] == OK
    assert verified["tiny-seg"].startswith(f"{weights}: sha256 mismatch: expected {tiny.sha256}")
    assert any("'tiny-seg' failed verification" in m and "sha256 mismatch" in m for m, _ in notifications)


def test_import_folder_then_remove(make_napari_viewer, qtbot, two_models, tmp_path, medseg_env):
    widget = _widget(make_napari_viewer)
    incoming = make_model(tmp_path / "incoming", card=tissue_card("third-seg"), seed=2)
    changed = []
    plugin_events().registry_changed.connect(lambda: changed.append(True))
    with qtbot.waitSignal(widget.import_runner.finished, timeout=20000):
        widget.import_folder(incoming.folder)
    assert widget.import_runner.last_outcome == "done", widget.import_runner.last_error
    assert changed == [True]
    assert _ours(widget, "source")["third-seg"] == "user"
    assert _ours(widget, "folder")["third-seg"] == str((medseg_env.user_models / "third-seg").resolve())
    assert widget.selected_model().name == "third-seg"
    assert "third-seg" in Registry().names()
    with qtbot.waitSignal(plugin_events().registry_changed, timeout=5000):
        assert widget.remove_selected(confirm=False)
    assert "third-seg" not in _ours(widget, "name") and "third-seg" not in Registry().names()
    assert not (medseg_env.user_models / "third-seg").exists()


def test_import_monai_bundle(make_napari_viewer, qtbot, medseg_env, tmp_path):
    widget = _widget(make_napari_viewer)
    bundle, _ = write_bundle(tmp_path / "spleen_ct_segmentation")
    with qtbot.waitSignal(widget.import_runner.finished, timeout=30000):
        widget.import_bundle(bundle)
    assert widget.import_runner.last_outcome == "done", widget.import_runner.last_error
    assert _ours(widget, "source") == {"spleen_ct_segmentation": "user"}
    assert _ours(widget, "labels")["spleen_ct_segmentation"] == "0: background, 1: spleen"
    assert widget.bundle_button.isEnabled() and widget.import_button.isEnabled()


def test_verify_models_cancel(two_models):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        verify_models(list(two_models), cancel=cancel)
    calls = []
    assert verify_models(list(two_models), progress=lambda d, t: calls.append((d, t))) == {"tiny-seg": OK,
                                                                                          "user-seg": OK}
    assert calls == [(0, 2), (1, 2), (2, 2)]


def test_invalid_remove_env_model(make_napari_viewer, two_models, notifications):
    widget = _widget(make_napari_viewer)
    widget.select("tiny-seg")
    assert widget.remove_selected(confirm=False) is False
    assert any("Removing the model failed" in m and "only models in the user folder can be removed" in m
               for m, _ in notifications), notifications
    assert "tiny-seg" in _ours(widget, "name") and two_models[0].folder.exists()


def test_invalid_import_existing_name(make_napari_viewer, qtbot, two_models, notifications):
    tiny, _ = two_models
    widget = _widget(make_napari_viewer)
    with qtbot.waitSignal(widget.import_runner.finished, timeout=20000):
        widget.import_folder(tiny.folder)
    assert widget.import_runner.last_outcome == "failed"
    assert any("Import failed" in m and "already exists" in m for m, _ in notifications), notifications
    assert sorted(_ours(widget, "name")) == ["tiny-seg", "user-seg"]
    assert widget.bundle_button.isEnabled()


def test_invalid_import_not_a_model(make_napari_viewer, qtbot, medseg_env, tmp_path, notifications):
    widget = _widget(make_napari_viewer)
    empty = tmp_path / "empty"
    empty.mkdir()
    with qtbot.waitSignal(widget.import_runner.finished, timeout=20000):
        widget.import_folder(empty)
    assert any("holds no card" in m for m, _ in notifications), notifications
    with qtbot.waitSignal(widget.import_runner.finished, timeout=20000):
        widget.import_bundle(empty)
    assert any("Bundle import failed" in m and "not a MONAI bundle" in m for m, _ in notifications), notifications
    assert _ours(widget, "name") == {}
