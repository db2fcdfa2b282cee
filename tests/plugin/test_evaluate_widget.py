"""The Evaluate dock widget in a real viewer: metrics table, CSV export identical to the CLI, errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ellipsoid_mask

from napari_medseg.metrics import METRIC_KEYS, evaluate, metrics_csv
from napari_medseg.plugin._evaluate import COLUMNS, EvaluateWidget
from napari_medseg.plugin._layers import PROVENANCE_KEY, labels_layer_data
from napari_medseg.volume import Geometry, Volume, write_volume

from ._helpers import click_and_wait

GEOMETRY = Geometry((1.0, 1.0, 2.0), (-12.5, 30.0, 7.25))  # a voxel is 2 mm^3
SHAPE = (10, 24, 28)


def _pair():
    """Label 1: a 4 x 6 x 6 box, shifted one slice (2 mm) in the prediction; label 2: two ellipsoids."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:6, 3:9, 4:10] = 1
    ref[ellipsoid_mask(SHAPE, (5.0, 15.0, 19.0), (6.0, 5.0, 5.0), (2.0, 1.0, 1.0))] = 2
    pred = np.zeros_like(ref)
    pred[3:7, 3:9, 4:10] = 1
    pred[ellipsoid_mask(SHAPE, (5.0, 15.0, 20.0), (6.0, 5.0, 5.0), (2.0, 1.0, 1.0))] = 2
    return Volume(pred, GEOMETRY), Volume(ref, GEOMETRY)


def _viewer(make_napari_viewer, pred: Volume, ref: Volume):
    viewer = make_napari_viewer()
    provenance = {"model": "tiny-seg", "labels": {"1": "tissue1", "2": "tissue2"}}
    for volume, name, extra in ((pred, "pred", {"metadata": {PROVENANCE_KEY: provenance}}), (ref, "ref", {})):
        data, kwargs, _ = labels_layer_data(volume, name=name, **extra)
        viewer.add_labels(data, **kwargs)
    widget = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.pred_combo.set_layer(viewer.layers["pred"])
    widget.ref_combo.set_layer(viewer.layers["ref"])
    return viewer, widget


def _run(qtbot, widget):
    return click_and_wait(qtbot, widget.run_button, widget.runner, timeout_ms=20000)


def test_table_equals_evaluate(make_napari_viewer, qtbot):
    pred, ref = _pair()
    viewer, widget = _viewer(make_napari_viewer, pred, ref)
    _run(qtbot, widget)
    assert widget.runner.last_outcome == "done"
    expected = evaluate(pred, ref)
    assert widget.result == expected
    assert widget.table_values() == expected["labels"]
    one = widget.table_values()["1"]
    assert one["dice"] == 0.75 and one["iou"] == 0.6 and one["hausdorff_mm"] == 2.0  # one slice of 2 mm
    assert one["volume_pred_ml"] == one["volume_ref_ml"] == pytest.approx(144 * 2.0 / 1000.0)
    headers = [widget.table.horizontalHeaderItem(i).text() for i in range(widget.table.columnCount())]
    assert headers == list(COLUMNS) and "HD95 (mm)" in headers and "volume ref (mL)" in headers
    assert [widget.table.item(r, 1).text() for r in range(2)] == ["tissue1", "tissue2"]
    assert widget.table.item(0, 2).text() == "0.7500"
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 2  # one step per label


def test_label_subset_and_missing_label_warning(make_napari_viewer, qtbot, notifications):
    pred, ref = _pair()
    viewer, widget = _viewer(make_napari_viewer, pred, ref)
    widget.labels_edit.setText("2, 7")
    _run(qtbot, widget)
    assert list(widget.table_values()) == ["2", "7"]
    assert widget.table_values()["2"] == evaluate(pred, ref, labels=[2])["labels"]["2"]
    assert any("labels [7] appear in neither" in m for m, _ in notifications), notifications


def test_csv_export_identical_to_cli(make_napari_viewer, qtbot, run_cli, tmp_path):
    pred, ref = _pair()
    ref_array = ref.array.copy()
    ref_array[0, 0, 0:3] = 3  # a label missing from the prediction: infinite distances, "inf"
    ref = Volume(ref_array, GEOMETRY)
    viewer, widget = _viewer(make_napari_viewer, pred, ref)
    _run(qtbot, widget)
    written = widget.export_csv(tmp_path / "gui" / "metrics.csv")
    assert written == tmp_path / "gui" / "metrics.csv"
    write_volume(pred, tmp_path / "pred.nii.gz")
    write_volume(ref, tmp_path / "ref.nrrd")
    cli_csv = tmp_path / "cli.csv"
    run_cli("evaluate", "--pred", tmp_path / "pred.nii.gz", "--ref", tmp_path / "ref.nrrd", "--csv", cli_csv)
    assert written.read_text() == cli_csv.read_text()
    assert written.read_text().splitlines()[0] == "label," + ",".join(METRIC_KEYS)
    assert ",inf," in written.read_text()
    assert sorted(p.name for p in written.parent.iterdir()) == ["metrics.csv"]  # atomic: no temporary left
    assert widget.table.item(2, 2 + METRIC_KEYS.index("msd_mm")).text() == "inf"
    assert written.read_text() == metrics_csv(widget.result)


def test_invalid_geometry_mismatch(make_napari_viewer, qtbot, notifications):
    pred, ref = _pair()
    shifted = Volume(ref.array, Geometry((1.0, 1.0, 2.0), (-10.5, 30.0, 7.25)))
    viewer, widget = _viewer(make_napari_viewer, pred, shifted)
    _run(qtbot, widget)
    assert widget.runner.last_outcome == "failed"
    assert any("Evaluation failed" in m and "not on the same grid" in m and "origin" in m for m, _ in notifications)
    assert widget.result is None and widget.table.rowCount() == 0
    assert widget.export_csv("unused.csv") is None
    assert any("run the evaluation first" in m for m, _ in notifications)


def test_invalid_same_layer_and_labels(make_napari_viewer, qtbot, notifications):
    pred, ref = _pair()
    viewer, widget = _viewer(make_napari_viewer, pred, ref)
    widget.ref_combo.set_layer(viewer.layers["pred"])
    widget.run_button.click()
    assert any("same layer 'pred'" in m for m, _ in notifications)
    widget.ref_combo.set_layer(viewer.layers["ref"])
    widget.labels_edit.setText("one")
    widget.run_button.click()
    assert any("labels='one'" in m for m, _ in notifications)
    assert not widget.runner.running and widget.result is None
