"""Metrics tables: titles with units, CSV text and atomic CSV files, progress and cancel of evaluate."""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest

from napari_medseg.errors import CancelledError, InvalidInputError
from napari_medseg.metrics import (
    METRIC_KEYS,
    METRIC_TITLES,
    evaluate,
    label_metrics,
    metrics_csv,
    write_metrics_csv,
)
from napari_medseg.volume import Geometry, Volume

GEOMETRY = Geometry((0.5, 1.0, 2.0))  # (x, y, z) mm: a voxel is 1 mm^3


def _pair():
    ref = np.zeros((6, 8, 10), np.uint8)
    ref[1:5, 2:6, 2:8] = 1  # 96 voxels
    ref[0, 0, 0:2] = 3  # 2 voxels, missing from the prediction
    pred = np.zeros_like(ref)
    pred[2:5, 2:6, 2:8] = 1  # 72 voxels, all inside the reference
    return Volume(pred, GEOMETRY), Volume(ref, GEOMETRY)


def test_titles_cover_every_key_in_order():
    assert tuple(METRIC_TITLES) == METRIC_KEYS
    assert METRIC_TITLES["hd95_mm"] == "HD95 (mm)" and METRIC_TITLES["volume_ref_ml"] == "volume ref (mL)"


def test_metrics_csv_hand_computed():
    pred, ref = _pair()
    result = evaluate(pred, ref)
    lines = metrics_csv(result).splitlines()
    assert lines[0] == "label," + ",".join(METRIC_KEYS)
    rows = list(csv.DictReader(lines))
    assert [row["label"] for row in rows] == ["1", "3"]
    one, three = rows
    assert float(one["dice"]) == 2 * 72 / (72 + 96)  # full precision: the text reads back exactly
    assert float(one["precision"]) == 1.0 and float(one["recall"]) == 0.75
    assert float(one["volume_pred_ml"]) == pytest.approx(0.072) and float(one["volume_ref_ml"]) == pytest.approx(0.096)
    assert float(one["hausdorff_mm"]) == 2.0  # one slice of 2 mm along z
    assert three["hd95_mm"] == "inf" and three["msd_mm"] == "inf" and float(three["dice"]) == 0.0
    for key in METRIC_KEYS:  # every value is repr() of what evaluate returned
        expected = result["labels"]["1"][key]
        assert one[key] == repr(expected)


def test_write_metrics_csv_atomic(tmp_path):
    pred, ref = _pair()
    result = evaluate(pred, ref)
    target = tmp_path / "deep" / "metrics.csv"
    assert write_metrics_csv(result, target) == target
    assert target.read_text() == metrics_csv(result)
    write_metrics_csv({"labels": {}}, target)  # replaced, no temporary file left
    assert target.read_text() == "label," + ",".join(METRIC_KEYS) + "\n"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.csv"]


def test_evaluate_reports_progress_per_label():
    pred, ref = _pair()
    calls = []
    result = evaluate(pred, ref, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 2), (1, 2), (2, 2)]
    assert result == evaluate(pred, ref)  # progress changes nothing


def test_label_metrics_cancel():
    pred, ref = _pair()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError, match="label 1"):
        label_metrics(pred.array, ref.array, spacing_mm=(2.0, 1.0, 0.5), cancel=cancel)
    with pytest.raises(CancelledError):
        evaluate(pred, ref, cancel=cancel)


def test_invalid_metrics_csv_result(tmp_path):
    with pytest.raises(InvalidInputError, match="result: expected the dict evaluate"):
        metrics_csv({"1": {}})
    with pytest.raises(InvalidInputError, match="label '1' lacks the metric.*hd95_mm"):
        metrics_csv({"labels": {"1": {"dice": 1.0}}})
    target = tmp_path / "m.csv"
    with pytest.raises(InvalidInputError):
        write_metrics_csv([], target)
    assert not target.exists()
