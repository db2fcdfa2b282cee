"""``medseg evaluate`` end to end on files with oblique, anisotropic geometry."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import oblique_geometry

from napari_medseg.metrics import METRIC_KEYS, evaluate
from napari_medseg.volume import Volume, read_labels, write_volume

GEOMETRY = oblique_geometry()  # spacing (x, y, z) = (0.7, 0.9, 2.5) mm: a voxel is 1.575 mm^3


@pytest.fixture
def pair(tmp_path):
    """ref: label 1 a 4x6x6 box, label 2 a small box; pred: label 1 shifted one slice along z."""
    ref = np.zeros((9, 12, 14), np.uint8)
    ref[2:6, 3:9, 4:10] = 1
    ref[7:9, 1:3, 1:3] = 2
    pred = np.zeros_like(ref)
    pred[3:7, 3:9, 4:10] = 1
    pred_path, ref_path = tmp_path / "pred.nrrd", tmp_path / "ref.nii.gz"
    write_volume(Volume(pred, GEOMETRY), pred_path)
    write_volume(Volume(ref, GEOMETRY), ref_path)
    return pred_path, ref_path


def test_evaluate_json_hand_computed(run_cli, pair):
    pred_path, ref_path = pair
    proc = run_cli("evaluate", "--pred", pred_path, "--ref", ref_path, "--json")
    result = json.loads(proc.stdout)
    assert list(result) == ["labels"] and list(result["labels"]) == ["1", "2"]
    one, two = result["labels"]["1"], result["labels"]["2"]
    assert tuple(one) == METRIC_KEYS and tuple(two) == METRIC_KEYS
    # label 1: 3 of 4 slices overlap; 144 voxels each in a 1512-voxel image
    assert one["dice"] == pytest.approx(0.75)
    assert one["iou"] == pytest.approx(3 / 5)
    assert one["precision"] == pytest.approx(0.75) and one["recall"] == pytest.approx(0.75)
    assert one["specificity"] == pytest.approx((1512 - 144 - 36) / (1512 - 144))
    assert one["arvd"] == 0.0
    assert one["hausdorff_mm"] == pytest.approx(2.5)  # one slice along z
    assert one["volume_pred_ml"] == pytest.approx(144 * 1.575e-3)
    assert one["volume_ref_ml"] == pytest.approx(144 * 1.575e-3)
    # label 2 is missing from the prediction: infinite distances are null, never NaN
    assert two["dice"] == 0.0 and two["hd95_mm"] is None and two["hausdorff_mm"] is None and two["msd_mm"] is None
    assert two["arvd"] == 1.0 and two["volume_pred_ml"] == 0.0
    assert two["volume_ref_ml"] == pytest.approx(8 * 1.575e-3)
    # the command prints exactly what the API returns for the files it read
    assert result == evaluate(read_labels(pred_path), read_labels(ref_path))
    assert "NaN" not in proc.stdout and "Infinity" not in proc.stdout


def test_evaluate_labels_option(run_cli, pair):
    pred_path, ref_path = pair
    proc = run_cli("evaluate", "--pred", pred_path, "--ref", ref_path, "--labels", "2,1", "--json")
    assert list(json.loads(proc.stdout)["labels"]) == ["2", "1"]
    proc = run_cli("evaluate", "--pred", pred_path, "--ref", ref_path, "--labels", "1,9", "--json")
    assert json.loads(proc.stdout)["labels"]["9"]["dice"] == 1.0
    assert "warning: labels [9] appear in neither" in proc.stderr


def test_evaluate_table_and_csv(run_cli, pair, tmp_path):
    pred_path, ref_path = pair
    csv_path = tmp_path / "out" / "metrics.csv"
    proc = run_cli("evaluate", "--pred", pred_path, "--ref", ref_path, "--csv", csv_path)
    out = proc.stdout
    for text in ("label 1", "label 2", "Dice", "HD95 (mm)", "0.7500", "2.500", "inf", f"wrote {csv_path}"):
        assert text in out, text
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["label"] for row in rows] == ["1", "2"]
    assert list(rows[0]) == ["label", *METRIC_KEYS]
    assert float(rows[0]["dice"]) == pytest.approx(0.75) and float(rows[0]["hausdorff_mm"]) == pytest.approx(2.5)
    assert rows[1]["msd_mm"] == "inf" and float(rows[1]["msd_mm"]) == float("inf")
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["metrics.csv"]  # no temporary file left


def test_evaluate_help(run_cli):
    proc = run_cli("evaluate", "--help")
    assert "--pred" in proc.stdout and "--csv" in proc.stdout


def _one_line_error(proc, *fragments):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("medseg evaluate: error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_invalid_geometry_mismatch(run_cli, pair, tmp_path):
    pred_path, _ = pair
    labels = read_labels(pred_path).array
    shifted = tmp_path / "shifted.nii.gz"
    write_volume(Volume(labels, oblique_geometry(origin=(10.5, -20.25, 40.0))), shifted)
    csv_path = tmp_path / "m.csv"
    proc = run_cli("evaluate", "--pred", pred_path, "--ref", shifted, "--csv", csv_path, check_rc=2)
    _one_line_error(proc, "not on the same grid", "origin", str(pred_path), str(shifted))
    assert not csv_path.exists()
    resampled = tmp_path / "other_spacing.mha"
    write_volume(Volume(labels, oblique_geometry(spacing=(0.7, 0.9, 3.0))), resampled)
    proc = run_cli("evaluate", "--pred", pred_path, "--ref", resampled, check_rc=2)
    _one_line_error(proc, "not on the same grid", "spacing")


def test_invalid_missing_file(run_cli, pair, tmp_path):
    pred_path, _ = pair
    proc = run_cli("evaluate", "--pred", pred_path, "--ref", tmp_path / "missing.nii.gz", check_rc=2)
    _one_line_error(proc, "missing.nii.gz", "not found")


def test_invalid_non_integer_labels(run_cli, pair, tmp_path):
    _, ref_path = pair
    probabilities = tmp_path / "probabilities.nii.gz"
    values = np.full((9, 12, 14), 0.25, np.float32)
    write_volume(Volume(values, GEOMETRY), probabilities)
    proc = run_cli("evaluate", "--pred", probabilities, "--ref", ref_path, check_rc=2)
    _one_line_error(proc, str(probabilities), "non-integer")


def test_invalid_labels_option(run_cli, pair):
    pred_path, ref_path = pair
    proc = run_cli("evaluate", "--pred", pred_path, "--ref", ref_path, "--labels", "1,x", check_rc=2)
    _one_line_error(proc, "--labels='1,x'")
    proc = run_cli("evaluate", "--pred", pred_path, check_rc=2)  # --ref is required
    assert "--ref" in proc.stderr
