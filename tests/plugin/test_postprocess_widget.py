"""The Post-process dock widget in a real viewer: slice preview (exact), apply, undo, errors, volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ellipsoid_mask

from napari_medseg.errors import InvalidInputError
from napari_medseg.plugin._layers import (
    GEOMETRY_KEY,
    PROVENANCE_KEY,
    labels_layer_data,
    volume_from_layer,
)
from napari_medseg.plugin._postprocess import (
    POSTPROCESS_KEY,
    PostprocessWidget,
    label_names,
    parse_label_list,
)
from napari_medseg.postprocess import (
    PostprocessChain,
    apply_chain,
    label_volumes_ml,
    preview_margin_vox,
    preview_slice,
)
from napari_medseg.volume import Geometry, Volume

SPACING_ZYX = (2.0, 1.0, 1.0)


def _labels() -> np.ndarray:
    """Two ellipsoids with thin spurs and specks that an opening of 1.5 mm removes (10 x 24 x 28)."""
    shape = (10, 24, 28)
    labels = np.zeros(shape, np.uint8)
    labels[ellipsoid_mask(shape, (4.5, 10.0, 9.0), (7.0, 6.0, 6.5), SPACING_ZYX)] = 1
    labels[ellipsoid_mask(shape, (5.0, 12.0, 20.0), (6.0, 5.0, 5.0), SPACING_ZYX) & (labels == 0)] = 2
    labels[2:8, 10, 12:20] = 1  # a one-voxel-thin bridge
    rng = np.random.default_rng(3)
    specks = rng.random(shape) < 0.02
    labels[specks & (labels == 0)] = 2
    return labels


def _viewer_with(make_napari_viewer, qtbot, geometry: Geometry, labels: np.ndarray | None = None, **extra):
    viewer = make_napari_viewer()
    data, kwargs, _ = labels_layer_data(Volume(_labels() if labels is None else labels, geometry), name="seg", **extra)
    source = viewer.add_labels(data, **kwargs)
    widget = PostprocessWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, source, widget


def _add(qtbot, widget, op_text: str, value: float | None = None, labels: str = ""):
    widget.op_combo.setCurrentIndex(widget.op_combo.findText(op_text))
    if value is not None:
        widget.param_spin.setValue(value)
    widget.labels_edit.setText(labels)
    with qtbot.waitSignal(widget.preview_updated, timeout=10000):
        widget.add_button.click()


def _go_to(qtbot, viewer, widget, z: int):
    if viewer.dims.current_step[0] == z:
        return
    with qtbot.waitSignal(widget.preview_updated, timeout=10000):
        viewer.dims.set_current_step(0, z)


def test_slice_preview_is_exact_and_follows_the_slice(make_napari_viewer, qtbot, small_volume):
    viewer, source, widget = _viewer_with(make_napari_viewer, qtbot, small_volume.geometry)
    labels = source.data.copy()
    _add(qtbot, widget, "opening", 1.5)
    expected = apply_chain(labels, [{"op": "opening", "radius_mm": 1.5}], spacing_mm=SPACING_ZYX)
    assert not np.array_equal(expected, labels)  # the opening changes the labels
    preview = widget.preview_layer
    assert preview is not None and preview.name == "seg [preview]"
    assert tuple(preview.scale) == tuple(source.scale) and tuple(preview.translate) == tuple(source.translate)
    shown = viewer.dims.current_step[0]
    assert widget.preview_key[1:] == (0, shown) and preview.data[shown].any()
    for z in (7, 0, 9, 4):
        _go_to(qtbot, viewer, widget, z)
        assert widget.preview_key[1:] == (0, z)
        assert np.array_equal(preview.data[z], expected[z]), z
        others = np.delete(preview.data, z, axis=0)
        assert not others.any()  # only the current slice is computed and shown
    assert np.array_equal(source.data, labels)  # the source is never modified


def test_preview_follows_chain_edits(make_napari_viewer, qtbot, small_volume):
    viewer, source, widget = _viewer_with(make_napari_viewer, qtbot, small_volume.geometry)
    viewer.dims.set_current_step(0, 5)
    _add(qtbot, widget, "closing", 2.0, labels="1")
    _add(qtbot, widget, "dilation", 1.0)
    steps = [{"op": "closing", "radius_mm": 2.0, "labels": [1]}, {"op": "dilation", "radius_mm": 1.0}]
    assert widget.chain() == PostprocessChain.from_json(steps)
    expected = apply_chain(source.data, steps, spacing_mm=SPACING_ZYX)
    assert np.array_equal(widget.preview_layer.data[5], expected[5])
    widget.step_list.setCurrentRow(1)
    with qtbot.waitSignal(widget.preview_updated, timeout=10000):
        widget.up_button.click()
    expected = apply_chain(source.data, steps[::-1], spacing_mm=SPACING_ZYX)
    assert widget.chain() == PostprocessChain.from_json(steps[::-1])
    assert np.array_equal(widget.preview_layer.data[5], expected[5])


def test_global_step_previews_the_whole_volume(make_napari_viewer, qtbot, small_volume):
    viewer, source, widget = _viewer_with(make_napari_viewer, qtbot, small_volume.geometry)
    _add(qtbot, widget, "remove small components", 20.0)
    expected = apply_chain(source.data, [{"op": "remove_small", "min_size_mm3": 20.0}], spacing_mm=SPACING_ZYX)
    assert not np.array_equal(expected, source.data)
    assert np.array_equal(widget.preview_layer.data, expected)
    assert widget.preview_key[1:] == (None, None)


def test_apply_creates_a_layer_with_the_geometry_and_undo(make_napari_viewer, qtbot, ras_volume):
    provenance = {"model": "tiny-seg", "labels": {"1": "tissue1", "2": "tissue2"}}
    viewer, source, widget = _viewer_with(make_napari_viewer, qtbot, ras_volume.geometry,
                                          metadata={PROVENANCE_KEY: provenance})
    labels = source.data.copy()
    _add(qtbot, widget, "opening", 1.5)
    _add(qtbot, widget, "keep N largest components", 1, labels="2")
    chain = widget.chain()
    with qtbot.waitSignal(widget.runner.finished, timeout=20000):
        widget.apply_button.click()
    assert widget.runner.last_outcome == "done"
    [applied] = widget.applied_layers()
    assert applied.name == "seg [post-processed]" and applied in viewer.layers
    expected = apply_chain(labels, chain, spacing_mm=SPACING_ZYX)
    assert np.array_equal(applied.data, expected) and applied.data.dtype == labels.dtype
    for attribute in ("scale", "translate"):
        assert np.array_equal(getattr(applied, attribute), getattr(source, attribute))
    assert np.array_equal(np.asarray(applied.rotate), np.asarray(source.rotate))
    assert applied.metadata[GEOMETRY_KEY] == source.metadata[GEOMETRY_KEY]
    assert volume_from_layer(applied).geometry == ras_volume.geometry
    assert applied.metadata[POSTPROCESS_KEY] == chain.to_list()
    assert applied.metadata[PROVENANCE_KEY]["model"] == "tiny-seg"
    assert applied.metadata[PROVENANCE_KEY]["postprocess"] == chain.to_list()
    # per-label volumes (mL) with the true spacing: a voxel is 2 mm^3
    before = label_volumes_ml(labels, spacing_mm=SPACING_ZYX)
    after = label_volumes_ml(expected, spacing_mm=SPACING_ZYX)
    assert before[1] == np.count_nonzero(labels == 1) * 2.0 / 1000.0
    assert widget.volumes() == {v: (before.get(v, 0.0), after.get(v, 0.0)) for v in sorted(set(before) | set(after))}
    assert widget.volume_table.item(0, 1).text() == "tissue1"
    assert np.array_equal(source.data, labels)
    widget.undo_button.click()
    assert applied not in viewer.layers and widget.applied_layers() == []
    assert source in viewer.layers and np.array_equal(source.data, labels)
    assert not widget.undo_button.isEnabled()


def test_save_and_load_chain_as_cli_json(make_napari_viewer, qtbot, small_volume, tmp_path):
    viewer, source, widget = _viewer_with(make_napari_viewer, qtbot, small_volume.geometry)
    _add(qtbot, widget, "fill holes (slice-wise, z)")
    _add(qtbot, widget, "remove small components", 12.5, labels="1,2")
    path = widget.save_chain(tmp_path / "chain.json")
    data = json.loads(path.read_text())
    assert data == [{"op": "fill_holes", "slice_wise": True, "axis": 0},
                    {"op": "remove_small", "min_size_mm3": 12.5, "connectivity": 1, "labels": [1, 2]}]
    assert PostprocessChain.from_file(path) == widget.chain()
    with qtbot.waitSignal(widget.preview_updated, timeout=10000):
        widget.remove_button.click()  # the selected (last) step
    assert len(widget.chain()) == 1
    with qtbot.waitSignal(widget.preview_updated, timeout=10000):
        assert widget.load_chain(path)
    assert widget.chain() == PostprocessChain.from_file(path)


def test_close_removes_the_preview(make_napari_viewer, qtbot, small_volume):
    viewer, source, widget = _viewer_with(make_napari_viewer, qtbot, small_volume.geometry)
    _add(qtbot, widget, "erosion", 1.0)
    preview = widget.preview_layer
    assert preview in viewer.layers
    widget.close()
    assert preview not in viewer.layers and source in viewer.layers


def test_removing_the_dock_removes_the_preview_and_stops_following(make_napari_viewer, qtbot, small_volume):
    # napari's remove_dock_widget (the dock's close button) unparents the widget without closing it
    viewer, source, widget = _viewer_with(make_napari_viewer, qtbot, small_volume.geometry)
    viewer.window.add_dock_widget(widget, name="Post-process")
    _add(qtbot, widget, "erosion", 1.0)
    preview = widget.preview_layer
    assert preview in viewer.layers
    viewer.window.remove_dock_widget(widget)
    assert preview not in viewer.layers and source in viewer.layers
    viewer.dims.set_current_step(0, 3)  # a slice change no longer makes a preview
    qtbot.wait(200)
    assert not any(layer.name.endswith("[preview]") for layer in viewer.layers)


def test_invalid_negative_radius(make_napari_viewer, qtbot, small_volume, tmp_path, notifications):
    viewer, source, widget = _viewer_with(make_napari_viewer, qtbot, small_volume.geometry)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"op": "opening", "radius_mm": -1.0}]))
    assert widget.load_chain(path) is False
    assert any("radius_mm=-1.0" in m and str(path) in m for m, _ in notifications), notifications
    assert widget.add_step("closing", -2.0) is False
    assert any("Adding the step failed" in m and "radius_mm=-2.0" in m for m, _ in notifications), notifications
    assert len(widget.chain()) == 0 and widget.preview_layer is None
    widget.apply()  # nothing to apply: an error, no layer
    assert any("no steps" in m for m, _ in notifications)
    assert [layer.name for layer in viewer.layers] == ["seg"]


def test_invalid_labels_text(make_napari_viewer, qtbot, small_volume, notifications):
    viewer, source, widget = _viewer_with(make_napari_viewer, qtbot, small_volume.geometry)
    widget.labels_edit.setText("1,x")
    widget.add_button.click()
    assert any("labels='1,x'" in m for m, _ in notifications) and len(widget.chain()) == 0


# ------------------------------------------------------------------------------ Qt-free helpers
@pytest.mark.parametrize(
    "steps, spacing, margin",
    [
        ([{"op": "opening", "radius_mm": 1.5}], SPACING_ZYX, 1),  # floor(1.5 / 2) = 0 per pass
        ([{"op": "opening", "radius_mm": 4.0}], SPACING_ZYX, 5),  # 2 passes of 2 slices, + 1
        ([{"op": "dilation", "radius_mm": 4.0}, {"op": "closing", "radius_mm": 2.0}], SPACING_ZYX, 2 + 2 + 1),
        ([{"op": "fill_holes", "slice_wise": True, "axis": 0}, {"op": "erosion", "radius_mm": 1.0}], (1, 1, 1), 2),
        ([{"op": "fill_holes", "slice_wise": True, "axis": 1}], (1, 1, 1), None),
        ([{"op": "fill_holes"}], (1, 1, 1), None),
        ([{"op": "erosion", "radius_mm": 1.0}, {"op": "keep_largest"}], (1, 1, 1), None),
    ],
)
def test_preview_margin(steps, spacing, margin):
    assert preview_margin_vox(steps, spacing_mm=spacing) == margin


@pytest.mark.parametrize(
    "steps",
    [
        [{"op": "opening", "radius_mm": 4.0}],
        [{"op": "closing", "radius_mm": 4.5, "labels": [1]}],
        [{"op": "dilation", "radius_mm": 2.0}, {"op": "erosion", "radius_mm": 3.0}],
        [{"op": "fill_holes", "slice_wise": True, "axis": 0}, {"op": "opening", "radius_mm": 2.0}],
    ],
)
def test_preview_slice_equals_the_whole_volume_result(steps):
    labels = _labels()
    full = apply_chain(labels, steps, spacing_mm=SPACING_ZYX)
    for z in range(labels.shape[0]):
        assert np.array_equal(preview_slice(labels, steps, spacing_mm=SPACING_ZYX, axis=0, index=z), full[z]), z
    if preview_margin_vox(steps, spacing_mm=SPACING_ZYX, axis=2) is not None:  # slice-wise along z is global in x
        for x in (0, 13, 27):
            assert np.array_equal(preview_slice(labels, steps, spacing_mm=SPACING_ZYX, axis=2, index=x), full[:, :, x])


def test_label_names_from_provenance_and_features(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((2, 3, 4), np.uint8), metadata={PROVENANCE_KEY: {"labels": {"1": "liver"}}})
    assert label_names(layer) == {1: "liver"}
    layer.features = {"index": [0, 2], "name": ["background", "tumour"]}
    assert label_names(layer) == {1: "liver", 0: "background", 2: "tumour"}


def test_parse_label_list():
    # the core's one parser (tests/test_choices.py has its edge cases); an empty field is the widget's "all"
    assert parse_label_list("all") is None and parse_label_list(None) is None
    assert parse_label_list("2, 1") == [2, 1]
    with pytest.raises(InvalidInputError, match="no label given"):
        parse_label_list(" ")


def test_invalid_helpers():
    with pytest.raises(InvalidInputError, match="labels='0'"):
        parse_label_list("0")
    with pytest.raises(InvalidInputError, match="global step"):
        preview_slice(_labels(), [{"op": "keep_largest"}], spacing_mm=SPACING_ZYX, axis=0, index=0)
    with pytest.raises(InvalidInputError, match="index=10: expected a slice index from 0 to 9"):
        preview_slice(_labels(), [{"op": "erosion", "radius_mm": 1.0}], spacing_mm=SPACING_ZYX, axis=0, index=10)
    with pytest.raises(InvalidInputError, match="axis=3"):
        preview_margin_vox([], spacing_mm=SPACING_ZYX, axis=3)
    with pytest.raises(InvalidInputError, match="spacing_mm"):
        preview_margin_vox([], spacing_mm=(1.0, 0.0, 1.0))
