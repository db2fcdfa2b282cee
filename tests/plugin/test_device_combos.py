"""The napari widgets offer exactly the devices of napari_medseg.choices.Device, and the configured one."""

from __future__ import annotations

from napari_medseg.choices import DEVICE_NAMES


def _items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def test_segment_and_train_widgets_list_the_enum(make_napari_viewer, qtbot, medseg_env):
    from napari_medseg.plugin._segment import SegmentWidget
    from napari_medseg.plugin._train import TrainWidget

    viewer = make_napari_viewer()
    for widget_class in (SegmentWidget, TrainWidget):
        widget = widget_class(viewer)
        qtbot.addWidget(widget)
        assert _items(widget.device_combo) == list(DEVICE_NAMES), widget_class.__name__
        assert widget.device_combo.currentText() == "auto"  # the settings' default
