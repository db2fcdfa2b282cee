"""The shared Qt pieces of the plugin's widgets: LayerCombo, spin boxes, read-only table cells."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QComboBox, QTableWidget

from napari_medseg.errors import InvalidInputError
from napari_medseg.plugin._widgets import (
    PREVIEW_KEY,
    LayerCombo,
    cell_value,
    double_spin,
    int_spin,
    refill,
    set_cell,
)

IMAGE = np.zeros((2, 3, 4), np.float32)
LABELS = np.zeros((2, 3, 4), np.uint8)


def _items(combo: QComboBox) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(IMAGE, name="a")
    viewer.add_labels(LABELS, name="seg")
    viewer.add_image(IMAGE, name="b")
    return viewer


def test_lists_only_its_type_in_viewer_order(viewer, qtbot):
    images, labels = LayerCombo(viewer, "image"), LayerCombo(viewer, "labels")
    both = LayerCombo(viewer, ("image", "labels"))
    assert _items(images) == ["a", "b"] and images.layer() is viewer.layers["a"]
    assert _items(labels) == ["seg"] and labels.currentText() == "seg"
    assert _items(both) == ["a", "seg", "b"]


def test_keeps_the_selected_layer_through_inserts_moves_and_renames(viewer, qtbot):
    combo = LayerCombo(viewer, "image")
    changes: list[int] = []
    combo.currentIndexChanged.connect(changes.append)
    combo.setCurrentText("b")
    assert combo.layer() is viewer.layers["b"] and changes == [1]
    viewer.add_image(IMAGE, name="c")
    viewer.layers.move(3, 0)  # c, a, seg, b
    assert _items(combo) == ["c", "a", "b"] and combo.layer() is viewer.layers["b"]
    viewer.layers["b"].name = "renamed"
    assert _items(combo) == ["c", "a", "renamed"] and combo.currentText() == "renamed"
    assert changes == [1]  # the same layer stayed selected: no change signalled


def test_lost_selection_goes_to_default_index_and_is_signalled(viewer, qtbot):
    combo = LayerCombo(viewer, "image", default_index=-1)
    assert combo.currentText() == "b"  # the newest image
    texts: list[str] = []
    combo.currentTextChanged.connect(texts.append)
    viewer.add_image(IMAGE, name="c")
    assert combo.currentText() == "b"
    viewer.layers.remove("b")
    assert combo.currentText() == "c" and texts == ["c"]
    second = LayerCombo(viewer, "image", default_index=1)
    assert second.currentText() == "c"
    single = LayerCombo(viewer, "labels", default_index=1)  # out of range: the first one
    assert single.currentText() == "seg"
    viewer.layers.remove("seg")
    assert single.layer() is None and single.currentIndex() == -1


def test_optional_entry_preview_and_exclude(viewer, qtbot):
    combo = LayerCombo(viewer, "labels", optional=True, none_text="(auto)")
    assert _items(combo) == ["(auto)", "seg"] and combo.layer() is None  # starts on the optional entry
    combo.set_layer(viewer.layers["seg"])
    assert combo.currentIndex() == 1
    combo.set_layer(None)
    assert combo.currentText() == "(auto)"
    viewer.add_labels(LABELS, name="seg [preview]", metadata={PREVIEW_KEY: True})
    assert _items(combo) == ["(auto)", "seg"]  # preview layers are never offered
    combo.setCurrentText("seg")
    viewer.layers.remove("seg")
    assert combo.currentText() == "(auto)" and combo.layer() is None
    no_b = LayerCombo(viewer, "image", exclude=lambda layer: layer.name == "b")
    assert _items(no_b) == ["a"]


def test_disconnect_viewer_stops_following(viewer, qtbot):
    combo = LayerCombo(viewer, "image")
    combo.disconnect_viewer()
    combo.disconnect_viewer()  # twice is fine
    viewer.add_image(IMAGE, name="c")
    viewer.layers["a"].name = "a2"
    assert _items(combo) == ["a", "b"]


def test_invalid_layer_type_and_set_layer(viewer, qtbot):
    with pytest.raises(InvalidInputError, match="layer_type='points'"):
        LayerCombo(viewer, "points")
    with pytest.raises(InvalidInputError, match=r"layer_type=\(\)"):
        LayerCombo(viewer, ())
    combo = LayerCombo(viewer, "image")
    with pytest.raises(InvalidInputError, match="'seg' is not one of the viewer's image layers"):
        combo.set_layer(viewer.layers["seg"])
    with pytest.raises(InvalidInputError, match="None is not one of the viewer's image layers"):
        combo.set_layer(None)


def test_spin_boxes(qtbot):
    box = double_spin(0.25, 0.0, 1.0, 0.05, decimals=2, tooltip="t")
    assert (box.value(), box.minimum(), box.maximum(), box.singleStep(), box.decimals(), box.toolTip()) == (
        0.25, 0.0, 1.0, 0.05, 2, "t")
    # the decimals are set before the range and the value: a default needing 3 decimals is kept exactly
    # (Qt's own default of 2 decimals would round it to 0.13 and the minimum to 0.0)
    fine = double_spin(0.125, 0.001, 1.0, 0.001)
    assert (fine.value(), fine.minimum(), fine.decimals(), fine.toolTip()) == (0.125, 0.001, 3, "")
    spin = int_spin(7, 0, 10, 2)
    assert (spin.value(), spin.minimum(), spin.maximum(), spin.singleStep()) == (7, 0, 10, 2)
    assert int_spin(3, 0, 10, 0).singleStep() == 1  # a zero step would freeze the arrows: at least 1


def test_refill_keeps_the_current_text(qtbot):
    combo = QComboBox()
    combo.addItems(["x", "y"])
    combo.setCurrentText("y")
    seen: list[str] = []
    combo.currentTextChanged.connect(seen.append)
    assert refill(combo, ["z", "y"]) is False and combo.currentText() == "y"
    assert refill(combo, ["z"]) is True and combo.currentText() == "z"
    assert seen == []  # a refill is not a user's choice: no signal


def test_set_cell_keeps_exact_values(qtbot):
    table = QTableWidget(1, 2)
    item = set_cell(table, 0, 0, "0.3333", value=1 / 3, tooltip="1/3", align_right=True)
    assert table.item(0, 0) is item and item.text() == "0.3333" and item.toolTip() == "1/3"
    assert cell_value(table, 0, 0) == 1 / 3
    again = set_cell(table, 0, 0, "inf")  # updated in place; the value and tooltip are cleared
    assert again is item and item.text() == "inf" and cell_value(table, 0, 0) is None and item.toolTip() == ""
    assert cell_value(table, 0, 1) is None  # no item there
