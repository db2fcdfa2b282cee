"""The model grid: one object for what a network sees, used by predict, the trainer and card_warnings.

The training-time and inference-time preprocessing of the same case are compared on real files
through the trainer's own ``prepare_cases`` and predict's own ``model_input``.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from conftest import oblique_geometry

from napari_medseg.inference.predictor import model_input
from napari_medseg.model_grid import SPACING_RTOL, CardMismatchWarning, ModelGrid
from napari_medseg.registry import ModelCard, card_warnings
from napari_medseg.training.config import TrainConfig
from napari_medseg.training.data import Case
from napari_medseg.training.trainer import prepare_cases
from napari_medseg.volume import Geometry, Volume, reorient, resample_to_spacing, write_volume

NORMALIZATION = {"kind": "percentile", "lower_percentile": 1.0, "upper_percentile": 99.0}


def _card(spacing, orientation=None) -> ModelCard:
    return ModelCard.model_validate({
        "name": "grid-test", "version": "1.0", "description": "", "task": "segmentation", "license": "MIT",
        "architecture": {"name": "unet", "params": {"channels": [4, 8]}}, "spatial_dims": 3,
        "channels": [{"name": "t1", "modality": "MR"}],
        "labels": {0: {"name": "background", "color": (0, 0, 0)}, 1: {"name": "lesion", "color": (1, 0, 0)}},
        "weights": {"file": "model.safetensors", "sha256": "0" * 64},
        "normalization": NORMALIZATION, "patch_size": [8, 8, 8], "spacing": spacing, "orientation": orientation,
    })


def _config(spacing, orientation=None) -> TrainConfig:
    return TrainConfig.model_validate({
        "labels": {0: "background", 1: "lesion"}, "spacing": spacing, "orientation": orientation,
        "normalization": NORMALIZATION, "patch_size": [8, 8, 8],
    })


def _case(tmp_path, spacing=(1.2, 1.1, 5.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)):
    """A 5 mm-slice MR-like case (LPS-stored as RAS-oriented axes) written as NRRD, its label touching the rim."""
    rng = np.random.default_rng(3)
    geometry = Geometry(spacing, (12.5, -30.0, 7.0), direction)
    image = Volume((rng.normal(300, 60, size=(10, 14, 12)) + np.arange(10)[:, None, None] * 40).astype(np.int16), geometry)
    label = np.zeros((10, 14, 12), np.uint8)
    label[6:, 4:10, 3:9] = 1  # reaches the last slice: the rim
    paths = (tmp_path / "img.nrrd", tmp_path / "lab.nrrd")
    write_volume(image, paths[0])
    write_volume(Volume(label, geometry), paths[1])
    return image, Volume(label, geometry), Case("c1", (paths[0],), paths[1], "c1")


def test_training_and_inference_preprocess_a_case_identically_rim_included(tmp_path):
    image, label, case = _case(tmp_path)
    card, config = _card((1.5, 1.5, 1.5), "LPS"), _config((1.5, 1.5, 1.5), "LPS")
    with pytest.warns(CardMismatchWarning, match="case 'c1': spacing"):
        (prepared,) = prepare_cases([case], config, label_values=[0, 1])
    grid, seen_by_predict = model_input(image, card)
    assert grid.reoriented and grid.resampled
    assert grid.shape == (33, 10, 10)  # round(size * spacing / 1.5): z 10 x 5 mm, y 14 x 1.1, x 12 x 1.2
    assert seen_by_predict.shape == (1, *grid.shape) == prepared.image.shape
    assert np.array_equal(prepared.image, seen_by_predict)
    assert prepared.spacing_mm == (1.5, 1.5, 1.5)
    assert np.array_equal(prepared.label, grid.labels_to_model(label).array)

    # the rim: z = 48 mm lies past the last 5 mm slice centre (45 mm) and its half voxel; both
    # paths give it the edge values, as inference always did
    on_grid = grid.image_to_model(image).array
    assert on_grid[-1].min() > 0 and prepared.label[-1].any()
    # what the trainer did before (resample_to_spacing fills 0 outside the input) differs exactly there
    old_image = resample_to_spacing(reorient(Volume(image.array.astype(np.float32), image.geometry), "LPS"), (1.5,) * 3)
    old_label = resample_to_spacing(reorient(label, "LPS"), (1.5,) * 3, interpolation="nearest")
    assert old_image.shape == grid.shape and not old_image.array[-1].any() and not old_label.array[-1].any()
    assert np.array_equal(old_image.array[:-1], on_grid[:-1])
    assert np.array_equal(old_label.array[:-1], prepared.label[:-1])


@pytest.mark.parametrize(("factor", "resampled"), [(1.005, False), (0.995, False), (1.02, True), (0.98, True)])
def test_spacing_tolerance_is_the_same_in_every_path(tmp_path, factor, resampled):
    image, label, case = _case(tmp_path, spacing=(1.5 * factor, 1.5, 1.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    card, config = _card((1.5, 1.5, 1.5)), _config((1.5, 1.5, 1.5))
    assert (abs(factor - 1) > SPACING_RTOL) == resampled
    grid, seen = model_input(image, card)
    assert grid.resampled == resampled and not grid.reoriented
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (prepared,) = prepare_cases([case], config, label_values=[0, 1])
    spacing_messages = [m for m in card_warnings(image, card) if "spacing" in m]
    training_warnings = [w for w in caught if issubclass(w.category, CardMismatchWarning)]
    assert np.array_equal(prepared.image, seen)
    if resampled:
        assert seen.shape[1:] == (10, 14, round(12 * factor))
        assert len(spacing_messages) == 1 and len(training_warnings) == 1
        assert prepared.spacing_mm == (1.5, 1.5, 1.5)
    else:
        assert seen.shape[1:] == image.shape == prepared.label.shape
        assert np.array_equal(prepared.label, label.array)
        assert spacing_messages == [] and training_warnings == []
        assert prepared.spacing_mm == pytest.approx(image.geometry.spacing_zyx)


def test_reoriented_geometry_is_what_reorient_gives():
    """The grid is computed from the header alone; it equals reorienting the data, bit for bit."""
    rng = np.random.default_rng(0)
    geometries = [oblique_geometry()]
    for perm, signs in itertools.product(itertools.permutations(range(3)), itertools.product((1, -1), repeat=3)):
        d = np.zeros((3, 3))
        for i, (p, s) in enumerate(zip(perm, signs)):
            d[p, i] = s
        geometries.append(Geometry((0.7, 1.3, 2.9), (1.1, -2.3, 3.7), tuple(d.ravel())))
    for geometry, code in itertools.product(geometries, ("RAS", "LPS", "PIR")):
        volume = Volume(rng.normal(size=(3, 4, 5)).astype(np.float32), geometry)
        grid = ModelGrid(geometry, (3, 4, 5), orientation=code)
        reoriented = reorient(volume, code)
        assert (grid.shape, grid.geometry) == (reoriented.shape, reoriented.geometry)
        assert np.array_equal(grid.image_to_model(volume).array, reoriented.array)
        assert np.array_equal(grid.to_input(reoriented.array), volume.array)  # exact inverse


def test_inverse_brings_every_output_back_to_the_input_grid():
    geometry = Geometry((1.5, 1.5, 5.0), (12.5, -30.0, 7.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))  # 5 mm slices only
    labels = np.zeros((10, 14, 12), np.uint8)
    labels[2:7, 3:11, 2:9] = 2
    labels[9] = 1
    grid = ModelGrid(geometry, labels.shape, orientation="LPS", spacing=(1.5, 1.5, 1.5))
    on_model = grid.labels_to_model(Volume(labels, geometry))
    assert on_model.shape == grid.shape and set(np.unique(on_model.array)) == {0, 1, 2}
    assert np.array_equal(grid.to_input(on_model.array, labels=True), labels)  # nearest: upsampling is undone exactly
    ramp = np.broadcast_to(np.linspace(0, 1, grid.shape[0], dtype=np.float32)[:, None, None], grid.shape).copy()
    back = grid.to_input(ramp)  # probabilities: linear
    assert back.shape == labels.shape and back.dtype == np.float32
    assert np.all(np.diff(back[:, 7, 6]) > 0) and 0 <= back.min() and back.max() <= 1
    assert ModelGrid(geometry, labels.shape).identity and grid.to_input(labels) is not labels
