"""Tests of napari_medseg.training.augment: image and label move together, label values are kept,
seeds reproduce, intensity changes leave labels alone, 2D and 3D."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_medseg.errors import InvalidInputError
from napari_medseg.training.augment import build_augmentation

OFF = {
    "flip_probability": 0.0,
    "affine_probability": 0.0,
    "elastic_probability": 0.0,
    "gamma_probability": 0.0,
    "contrast_probability": 0.0,
    "bias_field_probability": 0.0,
    "noise_probability": 0.0,
}
ALL_ON = {key: 1.0 for key in OFF}


def _labelled_volume(shape=(20, 24, 22), seed=0):
    """Labels {0, 1, 3} in blocks (no 2, so a blend of 1 and 3 would show), image = 10 * label + noise."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[4:12, 5:15, 3:10] = 1
    label[10:16, 12:20, 8:18] = 3
    image = (10.0 * label + rng.normal(0, 1, shape)).astype(np.float32)[None]
    return image, label


def _marker(spatial, start, size):
    image = np.zeros((1, *spatial), np.float32)
    label = np.zeros((1, *spatial), np.int64)
    region = (slice(None),) + tuple(slice(s, s + size) for s in start)
    image[region] = 1.0
    label[region] = 1
    return image, label


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.array([c.mean() for c in np.nonzero(mask)])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_label_values_stay_in_the_original_set(spatial_dims):
    image, label = _labelled_volume()
    if spatial_dims == 2:
        image, label = image[:, 11], label[11]  # holds 0, 1 and 3
    augment = build_augmentation(spatial_dims, **ALL_ON, seed=1)
    changed = False
    for _ in range(4):
        out = augment({"image": image, "label": label})
        assert out["label"].dtype == torch.uint8 and tuple(out["label"].shape) == label.shape
        assert out["image"].dtype == torch.float32 and tuple(out["image"].shape) == image.shape
        assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 3}
        changed |= not np.array_equal(out["label"].numpy(), label)
    assert changed


def test_flip_is_exact_and_moves_both():
    image, label = _labelled_volume()
    augment = build_augmentation(3, **{**OFF, "flip_probability": 1.0}, flip_axes=(-1, 0), seed=0)
    out = augment({"image": image, "label": label[None]})
    assert np.array_equal(out["image"].numpy(), np.flip(image, axis=(1, 3)))
    assert np.array_equal(out["label"].numpy()[0], np.flip(label, axis=(0, 2)))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("step", ["affine", "elastic"])
def test_marker_label_follows_the_image(spatial_dims, step):
    """A bright cube labelled 1: after the spatial transforms the voxels where the image is > 0.5
    are (up to the interpolation at its border) the voxels labelled 1, and the cube has moved."""
    spatial = (24, 26, 28)[-spatial_dims:]
    image, label = _marker(spatial, (8, 6, 9)[-spatial_dims:], 8)
    params = {**OFF, f"{step}_probability": 1.0, "flip_probability": 1.0, "translate_vox": 3.0}
    moved = False
    for seed in range(4):
        out = build_augmentation(spatial_dims, **params, seed=seed)({"image": image, "label": label})
        bright, labelled = out["image"].numpy()[0] > 0.5, out["label"].numpy()[0] == 1
        assert labelled.sum() > 0
        dice = 2 * (bright & labelled).sum() / (bright.sum() + labelled.sum())
        assert dice > 0.9, (seed, dice)
        assert np.abs(_centroid(bright) - _centroid(labelled)).max() < 0.5
        moved |= np.abs(_centroid(labelled) - _centroid(label[0] == 1)).max() > 1.0
    assert moved


def test_rotation_within_quarter_pi_and_zoom_within_range():
    """2D marker 12 pixels right of the centre. Rotation only: its distance is kept and its angle
    changes by at most pi/4. Zoom only: the sampling grid is scaled by s in [0.5, 1.5] per axis, so
    the distance becomes d / s, in [d / 1.5, d / 0.5]."""
    image, label = _marker((41, 41), (19, 31), 3)  # centre of the marker (20, 32); image centre (20, 20)
    angles = []
    for seed in range(8):
        rotate = build_augmentation(
            2, **{**OFF, "affine_probability": 1.0}, scale_range=(1.0, 1.0), translate_vox=0.0, seed=seed
        )
        y, x = _centroid(rotate({"image": image, "label": label})["label"].numpy()[0] == 1) - 20.0
        assert math.hypot(y, x) == pytest.approx(12.0, abs=1.0)
        angles.append(math.atan2(y, x))
        assert abs(angles[-1]) <= math.pi / 4 + 0.1
    assert max(abs(a) for a in angles) > 0.1
    ratios = []
    for seed in range(8):
        zoom = build_augmentation(2, **{**OFF, "affine_probability": 1.0}, rotation_rad=0.0, translate_vox=0.0, seed=seed)
        y, x = _centroid(zoom({"image": image, "label": label})["label"].numpy()[0] == 1) - 20.0
        assert abs(y) < 0.5
        ratios.append(x / 12.0)
    assert all(1 / 1.5 - 0.1 <= r <= 1 / 0.5 + 0.1 for r in ratios)
    assert max(ratios) - min(ratios) > 0.2


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_intensity_steps_change_the_image_only(spatial_dims):
    image, label = _labelled_volume()
    if spatial_dims == 2:
        image, label = image[:, 11], label[11]  # holds 0, 1 and 3
    intensity = {**OFF, "gamma_probability": 1.0, "contrast_probability": 1.0, "bias_field_probability": 1.0, "noise_probability": 1.0}
    out = build_augmentation(spatial_dims, **intensity, seed=3)({"image": image, "label": label})
    assert np.array_equal(out["label"].numpy(), label)
    assert not np.allclose(out["image"].numpy(), image)
    assert np.isfinite(out["image"].numpy()).all()
    # no spatial change: the labelled blocks are still the brighter ones
    values = out["image"].numpy()[0]
    assert values[label == 3].mean() > values[label == 1].mean() > values[label == 0].mean()


def test_seed_reproduces_and_differs():
    image, label = _labelled_volume()
    first = build_augmentation(3, **ALL_ON, seed=7)
    second = build_augmentation(3, **ALL_ON, seed=7)
    other = build_augmentation(3, **ALL_ON, seed=8)
    sample = {"image": image, "label": label}
    runs_a = [first(sample) for _ in range(2)]
    runs_b = [second(sample) for _ in range(2)]
    for a, b in zip(runs_a, runs_b):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(runs_a[0]["image"], runs_a[1]["image"])  # the sequence moves on
    assert not torch.equal(other(sample)["image"], runs_a[0]["image"])
    first.set_random_state(7)
    assert torch.equal(first(sample)["image"], runs_a[0]["image"])


def test_tuple_form_with_per_call_seed():
    image, label = _labelled_volume()
    augment = build_augmentation(3, **ALL_ON)
    image_t, label_t = torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))[None]
    first = augment(image_t, label_t, seed=11)
    augment(image_t, label_t)  # moves the sequence on
    again = augment(image_t, label_t, seed=11)
    as_dict = build_augmentation(3, **ALL_ON, seed=11)({"image": image, "label": label[None]})
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert torch.equal(first[0], as_dict["image"]) and torch.equal(first[1], as_dict["label"].long())
    assert first[1].dtype == torch.int64 and tuple(first[1].shape) == (1, *label.shape)
    image_only, no_label = augment(image_t, seed=1)
    assert no_label is None and image_only.shape == image_t.shape


def test_inputs_not_modified_and_other_keys_kept():
    image, label = _labelled_volume()
    image_t, label_t = torch.from_numpy(image.copy()), torch.from_numpy(label.copy())
    sample = {"image": image_t, "label": label_t, "case": "case_001"}
    out = build_augmentation(3, **ALL_ON, seed=0)(sample)
    assert torch.equal(image_t, torch.from_numpy(image)) and torch.equal(label_t, torch.from_numpy(label))
    assert out["case"] == "case_001"
    assert type(out["image"]) is torch.Tensor and type(out["label"]) is torch.Tensor
    only_image = build_augmentation(3, **ALL_ON, seed=0)({"image": image})
    assert "label" not in only_image and only_image["image"].shape == image.shape


# ------------------------------------------------------------------------------------------
# invalid input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"spatial_dims": True}, "spatial_dims"),
        ({"flip_probability": 1.5}, "flip_probability"),
        ({"noise_probability": -0.1}, "noise_probability"),
        ({"flip_axes": (3,)}, "flip_axes"),
        ({"flip_axes": (0, -3)}, "names an axis twice"),
        ({"flip_axes": 0}, "flip_axes"),
        ({"rotation_rad": 4.0}, "rotation_rad"),
        ({"rotation_rad": (0.1, 0.2)}, "rotation_rad"),
        ({"scale_range": (1.5, 0.5)}, "scale_range"),
        ({"scale_range": (0.0, 1.5)}, "scale_range"),
        ({"translate_vox": -1.0}, "translate_vox"),
        ({"elastic_scale_vox": (0.0, 2.0)}, "elastic_scale_vox"),
        ({"elastic_magnitude": (5.0,)}, "elastic_magnitude"),
        ({"gamma_range": (-0.5, 1.5)}, "gamma_range"),
        ({"contrast_range": (-0.5, 1.5)}, "contrast_range"),
        ({"bias_field_coeff": (0.2, 0.1)}, "bias_field_coeff"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"seed": -1}, "seed"),
        ({"image_key": "x", "label_key": "x"}, "must differ"),
        ({"label_key": ""}, "label_key"),
    ],
)
def test_invalid_parameters(params, match):
    params = {"spatial_dims": 3, **params}
    with pytest.raises(InvalidInputError, match=match):
        build_augmentation(params.pop("spatial_dims"), **params)


def test_invalid_samples():
    augment = build_augmentation(3, **OFF)
    image, label = _labelled_volume()
    with pytest.raises(InvalidInputError, match="'image' entry"):
        augment({"label": label})
    with pytest.raises(InvalidInputError, match="expected \\(C, Z, Y, X\\)"):
        augment({"image": image[0]})
    with pytest.raises(InvalidInputError, match="to match image"):
        augment({"image": image, "label": label[:, :5]})
    with pytest.raises(InvalidInputError, match="integer label values"):
        augment({"image": image, "label": label + 0.5})
    with pytest.raises(InvalidInputError, match="inside the sample mapping"):
        augment({"image": image}, label)
    with pytest.raises(InvalidInputError, match="seed"):
        augment(image, label, seed=-2)
