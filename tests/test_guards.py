"""Input guards: the card's input_fingerprint, warnings on a CT-like input, --strict refuses."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ellipsoid_mask
from _models import make_model

from napari_medseg.cli import main
from napari_medseg.guards import fingerprint_from_volumes, image_features, input_fit_messages
from napari_medseg.registry import card_warnings, load_model
from napari_medseg.volume import Geometry, Volume, write_volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_SHAPE, _SPACING = (12, 24, 24), (2.0, 2.0, 4.0)  # x, y, z mm: a 48 x 48 x 48 mm field of view


def _head(rng, *, scale=1.0, contrast=1.0) -> np.ndarray:
    """A T1-like head: zero air, a bright ellipsoid with darker core and noise."""
    spacing_zyx = _SPACING[::-1]
    head = ellipsoid_mask(_SHAPE, (5.5, 11.5, 11.5), (18, 18, 18), spacing_zyx)
    core = ellipsoid_mask(_SHAPE, (5.5, 11.5, 11.5), (9, 9, 9), spacing_zyx)
    a = np.where(head, 160.0, 0.0) - np.where(core, 60.0, 0.0) + head * rng.normal(0, 8, _SHAPE)
    return (scale * np.clip(a, 0, None) ** contrast).astype(np.float32)


def _ct_like(rng) -> np.ndarray:
    spacing_zyx = _SPACING[::-1]
    head = ellipsoid_mask(_SHAPE, (5.5, 11.5, 11.5), (18, 18, 18), spacing_zyx)
    skull = head & ~ellipsoid_mask(_SHAPE, (5.5, 11.5, 11.5), (14, 14, 14), spacing_zyx)
    hu = np.where(head, 35.0, -1000.0) + np.where(skull, 965.0, 0.0)
    return (hu + rng.normal(0, 5, _SHAPE)).astype(np.float32)


@pytest.fixture
def fingerprint():
    rng = np.random.default_rng(0)
    volumes = [Volume(_head(rng, scale=s, contrast=c), Geometry(_SPACING)) for s, c in ((1, 1), (3, 1), (1, 1.2), (0.5, 0.9))]
    return fingerprint_from_volumes(volumes, modality="MR")


@pytest.fixture
def guarded_model(tmp_path, fingerprint):
    return make_model(tmp_path / "models", spacing=_SPACING, input_fingerprint=fingerprint)


def test_features_of_an_mr_head_and_a_ct():
    rng = np.random.default_rng(1)
    mr = image_features(Volume(_head(rng), Geometry(_SPACING)))
    ct = image_features(Volume(_ct_like(rng), Geometry(_SPACING)))
    assert mr["negative_fraction"] == 0.0 and ct["negative_fraction"] > 0.3
    assert 0.2 < mr["foreground_fraction"] < 0.7
    assert mr["foreground_extent_mm"][0] == pytest.approx(36.0, abs=4.5)  # the 36 mm ellipsoid
    assert mr["foreground_extent_mm"] == sorted(mr["foreground_extent_mm"], reverse=True)


def test_fitting_inputs_pass_and_misfits_warn(guarded_model):
    card = load_model(guarded_model.folder).card
    assert card.input_fingerprint.modality == "MR" and card.input_fingerprint.n_cases == 4
    rng = np.random.default_rng(2)
    assert input_fit_messages(Volume(_head(rng, scale=40.0), Geometry(_SPACING)), card) == []  # scale-free
    ct = input_fit_messages(Volume(_ct_like(rng), Geometry(_SPACING)), card)
    assert any("strongly negative" in m and "-10" in m for m in ct), ct
    noise = input_fit_messages(Volume(rng.uniform(0, 200, _SHAPE).astype(np.float32), Geometry(_SPACING)), card)
    assert any("foreground" in m for m in noise), noise
    slab = input_fit_messages(Volume(_head(rng)[4:7], Geometry(_SPACING)), card)  # 12 mm of 48
    assert any("field of view" in m for m in slab), slab
    # every face shows them through card_warnings
    assert any("strongly negative" in m for m in card_warnings(Volume(_ct_like(rng), Geometry(_SPACING)), card))


def test_predict_warns_and_strict_refuses(capsys, tmp_path, guarded_model):
    rng = np.random.default_rng(3)
    write_volume(Volume(_ct_like(rng), Geometry(_SPACING)), tmp_path / "ct.nii.gz")
    write_volume(Volume(_head(rng), Geometry(_SPACING)), tmp_path / "t1.nii.gz")
    rc = main(["predict", str(tmp_path / "ct.nii.gz"), str(tmp_path / "seg.nii.gz"), "--model", str(guarded_model.folder), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning" in err and "strongly negative" in err
    rc = main(["predict", str(tmp_path / "ct.nii.gz"), str(tmp_path / "strict.nii.gz"), "--model", str(guarded_model.folder), "--strict"])
    err = capsys.readouterr().err
    assert rc == 2 and "ct.nii.gz" in err and "(--strict)" in err and not (tmp_path / "strict.nii.gz").exists()
    rc = main(["predict", str(tmp_path / "t1.nii.gz"), str(tmp_path / "ok.nii.gz"), "--model", str(guarded_model.folder), "--strict", "--no-progress"])
    assert rc == 0 and (tmp_path / "ok.nii.gz").exists()


def test_strict_in_a_cohort_fails_only_the_misfit(capsys, tmp_path, guarded_model):
    rng = np.random.default_rng(4)
    folder = tmp_path / "in"
    folder.mkdir()
    write_volume(Volume(_head(rng), Geometry(_SPACING)), folder / "a.nii.gz")
    write_volume(Volume(_ct_like(rng), Geometry(_SPACING)), folder / "b.nii.gz")
    rc = main(["predict", str(folder), str(tmp_path / "out"), "--model", str(guarded_model.folder), "--strict", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 2 and "b: FAILED" in out.out and "strongly negative" in out.out
    assert (tmp_path / "out" / "a.nii.gz.json").is_file() and not (tmp_path / "out" / "b.nii.gz").exists()


def test_invalid_fingerprint_inputs():
    from napari_medseg.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="at least one training image"):
        fingerprint_from_volumes([], modality="MR")
