"""MedSegLib.logic end to end: real ``medseg`` job child processes, real MRML nodes (slicer-core)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import vtk
from conftest import oblique_geometry
from MedSegLib import nodes
from MedSegLib.logic import MedSegLogic, TaskKind, card_mismatches, slice_of

from medseg_slicer.conftest import small_array
from napari_medseg.errors import InvalidInputError
from napari_medseg.jobs import JobStatus
from napari_medseg.metrics import evaluate
from napari_medseg.registration.synthetic import synthetic_pair
from napari_medseg.registration.volumes import apply_field
from napari_medseg.volume import (
    Geometry,
    Volume,
    read_labels,
    read_volume,
    write_volume,
)

SMALL = Geometry((1.0, 1.0, 2.0), (3.5, -7.25, 11.0), tuple(oblique_geometry(0.2).direction))


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture
def logic(scene, medseg_env):
    return MedSegLogic(scene, jobs_root=medseg_env.jobs, work_root=medseg_env.work, cancel_grace_s=60)


def test_predict_job_loads_segmentation_that_matches_medseg_predict(logic, scene, tiny_model, medseg_env, tmp_path):
    volume = Volume(small_array(), SMALL)
    node = nodes.volume_to_node(volume, scene, name="case 1")
    assert "tiny-seg" in logic.model_names()
    assert "labels: 1 tissue1, 2 tissue2" in logic.describe_card("tiny-seg")
    assert logic.mismatch_warnings(node, "tiny-seg") == []  # spacing 1 x 1 x 2 mm as the card's
    task = logic.start_predict([node], "tiny-seg", device="cpu", mc_samples=2, seed=3,
                               postprocess={"min_size_mm3": 4.0, "labels": [1, 2]})
    assert task.kind == TaskKind.PREDICT and task.job.kind == "predict"
    assert logic.wait(task, timeout_s=120) == JobStatus.DONE, task.job.log_tail(20)
    assert task.progress[0] == task.progress[1] > 0 and task.fraction == 1.0
    seg = task.outputs["segmentation"]
    segmentation = seg.GetSegmentation()
    assert [segmentation.GetSegment(f"label_{v}").GetName() for v in (1, 2)] == ["tissue1", "tissue2"]
    assert segmentation.GetSegment("label_1").GetColor() == pytest.approx((1.0, 0.0, 0.0))
    assert segmentation.GetSegment("label_2").GetColor() == pytest.approx((0.0, 0.8, 0.2))
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == node.GetID()
    exported = nodes.segmentation_to_labels(seg, node)

    # the same input file through ``medseg predict`` directly gives the same label map
    write_volume(volume, tmp_path / "case.nrrd")
    proc = subprocess.run(
        [sys.executable, "-m", "napari_medseg.cli", "predict", str(tmp_path / "case.nrrd"), str(tmp_path / "direct.nrrd"),
         "--model", "tiny-seg", "--device", "cpu", "--mc-samples", "2", "--seed", "3", "--min-size-mm3", "4",
         "--labels", "1,2", "--no-progress"], capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    direct = read_labels(tmp_path / "direct.nrrd")
    assert np.array_equal(exported.array, direct.array) and exported.geometry == volume.geometry
    assert set(np.unique(direct.array)) <= {0, 1, 2}

    unc = task.outputs["uncertainty"]
    assert list(unc) == ["entropy", "mutual_information", "variance_background", "variance_tissue1", "variance_tissue2"]
    probs = task.outputs["probabilities"]
    assert [n.GetName() for n in probs.values()] == [f"case 1 tiny-seg p({c})" for c in ("background", "tissue1", "tissue2")]
    for out in (*unc.values(), *probs.values()):
        np.testing.assert_array_equal(ijk_to_ras(out), ijk_to_ras(node))  # the input's IJK-to-RAS, exactly
    total = sum(nodes.volume_from_node(n).array.astype(np.float64) for n in probs.values())
    # the maps are stored 8-bit (napari_medseg.compact): each within its stated rounding error
    stated = task.outputs["provenance"]["outputs"]["probabilities"]["precision"]
    precision = float(stated.rsplit("max rounding error", 1)[1])
    np.testing.assert_allclose(total, 1.0, atol=len(probs) * precision + 1e-6)
    entropy = nodes.volume_from_node(unc["entropy"]).array
    assert entropy.shape == volume.shape and entropy.min() >= 0
    model = task.outputs["provenance"]["models"][0]
    assert model["name"] == "tiny-seg" and model["sha256"] == tiny_model.sha256


def test_cancel_predict_job_is_cancelled_not_failed(logic, scene, tiny_model):
    node = nodes.volume_to_node(Volume(small_array(), SMALL), scene)
    task = logic.start_predict(node, "tiny-seg", device="cpu", mc_samples=400)
    deadline = time.monotonic() + 60
    while task.progress[0] == 0 and time.monotonic() < deadline:  # cancel while it computes
        logic.poll(task)
        time.sleep(0.05)
    assert task.status == JobStatus.RUNNING and 0 < task.progress[0] < task.progress[1]
    logic.cancel(task)
    assert logic.wait(task, timeout_s=60) == JobStatus.CANCELLED
    assert task.job.summary()["final"]["event"] == "cancelled"  # the child stopped itself, cleanly
    assert task.error is None and task.outputs == {}
    assert logic.cancel(task) == JobStatus.CANCELLED  # cancelling a finished task changes nothing


def test_register_job_gives_warped_volume_and_transform_that_matches_the_field(logic, scene):
    pair = synthetic_pair((40, 40))
    geometry = Geometry((0.5, 0.5, 1.0), (4.0, -2.0, 30.0))
    fixed = nodes.volume_to_node(Volume(pair.fixed[None], geometry), scene, name="MRI slice")
    moving = nodes.volume_to_node(Volume(pair.moving_prealigned[None], geometry), scene, name="MALDI")
    task = logic.start_register(fixed, moving, levels=2, iterations=40)
    assert task.job.kind == "register"
    assert logic.wait(task, timeout_s=120) == JobStatus.DONE, task.job.log_tail(20)
    warped, transform = task.outputs["warped"], task.outputs["transform"]
    assert warped.GetName() == "MALDI registered" and transform.IsA("vtkMRMLGridTransformNode")
    np.testing.assert_array_equal(ijk_to_ras(warped), ijk_to_ras(fixed))
    assert task.outputs["report"]["f_measure"] > 0.9
    field = read_volume(task.job.summary()["final"]["outputs"]["field"])
    # the transform applied to a fixed point lands where apply_field samples the moving image
    index = np.indices((1, 40, 40), dtype=np.float64)
    ijk = np.stack([index[2], index[1], index[0], np.ones(index.shape[1:])])
    physical = np.einsum("ij,j...->i...", geometry.index_to_physical(), ijk)[:3]
    mapped = [apply_field(Volume(physical[a], geometry), field).array for a in range(2)]
    for j, i in ((20, 20), (12, 25), (27, 14)):
        q = nodes.LPS_TO_RAS @ np.array(transform.GetTransformFromParent().TransformPoint(*(nodes.LPS_TO_RAS @ physical[:, 0, j, i])))
        np.testing.assert_allclose(q[:2], [mapped[0][0, j, i], mapped[1][0, j, i]], atol=1e-4)
        assert q[2] == pytest.approx(physical[2, 0, j, i])
    expected = apply_field(Volume(pair.moving_prealigned[None], geometry), field)
    np.testing.assert_allclose(nodes.volume_from_node(warped).array, expected.array, atol=1e-5)


def test_evaluate_two_segmentations_gives_the_metrics_table(logic, scene):
    geometry = oblique_geometry()
    pred = np.zeros((6, 20, 24), np.uint8)
    ref = np.zeros_like(pred)
    pred[1:5, 4:14, 5:15] = 1
    ref[1:5, 5:15, 5:15] = 1
    pred[2:4, 15:19, 16:22] = 2
    ref[2:4, 15:19, 17:22] = 2
    image = nodes.volume_to_node(Volume(np.zeros(pred.shape, np.float32), geometry), scene, name="image")
    specs = {1: ("liver", (1, 0, 0)), 2: ("spleen", (0, 1, 0))}
    a = nodes.labels_to_segmentation(Volume(pred, geometry), scene, label_specs=specs, name="auto")
    b = nodes.labels_to_segmentation(Volume(ref, geometry), scene, label_specs=specs, name="manual")
    table = logic.evaluate(a, b, image).GetTable()
    expected = evaluate(Volume(pred, geometry), Volume(ref, geometry))
    assert [table.GetValueByName(r, "name").ToString() for r in range(2)] == ["liver", "spleen"]
    for row, label in enumerate(("1", "2")):
        for key, value in expected["labels"][label].items():
            assert table.GetValueByName(row, key).ToDouble() == pytest.approx(value, rel=1e-12)
    assert expected["labels"]["1"]["dice"] == pytest.approx(2 * 4 * 9 * 10 / (2 * 4 * 10 * 10))


def test_finetune_case_written_with_exact_geometry_and_argv_parses(logic, scene, tiny_model, tmp_path):
    from napari_medseg.cli import build_parser

    volume = Volume(small_array(), SMALL)
    node = nodes.volume_to_node(volume, scene, name="patient 7")
    labels = np.zeros(volume.shape, np.uint8)
    labels[3:7, 6:16, 8:20] = 2  # "corrected in Segment Editor": painted by hand, value from the card's name
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.AddSegmentFromBinaryLabelmapRepresentation(nodes._oriented_image(labels // 2, SMALL), "tissue2", [0, 1, 0])
    argv, work, params = logic.prepare_finetune(node, seg, "tiny-seg", epochs=2, device="cpu")
    image = read_volume(work / "case" / "imagesTr" / "slicer_case_0000.nrrd")
    label = read_labels(work / "case" / "labelsTr" / "slicer_case.nrrd")
    assert image.geometry == volume.geometry and np.array_equal(image.array, volume.array)
    assert label.geometry == volume.geometry and np.array_equal(label.array, labels)
    args = build_parser().parse_args(argv)
    assert args.model == "tiny-seg" and args.epochs == 2 and args.add_to_registry and args.data == str(work / "case")
    assert params["name"] == "tiny-seg-patient_7-finetuned" == args.name
    from napari_medseg.jobs import FinetuneRequest

    assert FinetuneRequest.from_namespace(args).to_argv() == argv  # the logic's argv is a typed request's
    # with a dataset folder: one CSV with this case and the dataset's
    dataset = tmp_path / "dataset"
    write_volume(volume, dataset / "imagesTr" / "other_0000.nrrd")
    write_volume(Volume(labels, SMALL), dataset / "labelsTr" / "other.nrrd")
    argv, work, _ = logic.prepare_finetune(node, seg, "tiny-seg", dataset=dataset)
    data = argv[argv.index("--data") + 1]
    assert data.endswith("dataset.csv") and len(Path(data).read_text().strip().splitlines()) == 3


def test_invalid_logic_arguments(logic, scene, tiny_model, tmp_path):
    node = nodes.volume_to_node(Volume(small_array(), SMALL), scene)
    with pytest.raises(InvalidInputError, match="tiny-seg"):
        logic.start_predict(node, "tiny-sag")
    with pytest.raises(InvalidInputError, match="at least one"):
        logic.start_predict([], "tiny-seg")
    with pytest.raises(InvalidInputError, match="mc_samples"):
        logic.predict_argv(["a.nrrd"], tmp_path, "tiny-seg", mc_samples=-1)
    with pytest.raises(InvalidInputError, match="dropout_rate"):
        logic.predict_argv(["a.nrrd"], tmp_path, "tiny-seg", dropout_rate=1.5)
    with pytest.raises(InvalidInputError, match="min_size_mm3"):
        logic.predict_argv(["a.nrrd"], tmp_path, "tiny-seg", postprocess={"min_size_mm": 3})
    with pytest.raises(InvalidInputError, match="exactly one"):
        logic.start_register(node)
    with pytest.raises(InvalidInputError, match="tolerance"):
        logic.start_register(node, moving_imzml=tmp_path / "x.imzML", mz=100.0)
    with pytest.raises(InvalidInputError, match="levels"):
        logic.start_register(node, node, levels=0)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(InvalidInputError, match="epochs"):
        logic.prepare_finetune(node, seg, "tiny-seg", epochs=0)
    with pytest.raises(InvalidInputError, match="freeze"):
        logic.prepare_finetune(node, seg, "tiny-seg", freeze="decoder")
    with pytest.raises(InvalidInputError, match="slice index"):
        slice_of(Volume(small_array(), SMALL), 10)
    with pytest.raises(InvalidInputError, match="scene"):
        MedSegLogic(None)


def test_slice_of_keeps_the_slice_in_place_and_card_mismatches(tiny_model, logic):
    volume = Volume(small_array(), SMALL)
    one = slice_of(volume, 4)
    assert one.shape == (1, 24, 28) and np.array_equal(one.array[0], volume.array[4])
    np.testing.assert_allclose(one.geometry.index_to_physical() @ [3, 5, 0, 1], volume.geometry.index_to_physical() @ [3, 5, 4, 1])
    card = logic.card("tiny-seg")
    off = Volume(volume.array, Geometry((1.0, 1.0, 1.0)))
    assert card_mismatches(off, card) == ["the input's spacing (1, 1, 1) mm differs from model 'tiny-seg''s (1, 1, 2) mm; resampling to it and back"]
    assert "single slice" in card_mismatches(one, card)[-1]
