"""The regulariser objects give exactly the registrations of the flat keyword API they replaced.

The expected numbers were recorded with main 53ae626 (``register(..., regularizer="elastic",
mu=0.7, lambda_=0.3, tau=0.5)`` and the other two the same way, and ``medseg register`` with the
same flags) before the objects existed: the final metric value, the iteration count and sums and
samples of the displacement field must match to 1e-6.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_medseg.registration import Diffusive, Elastic, Gaussian, register
from napari_medseg.registration.synthetic import synthetic_pair
from napari_medseg.registration.volumes import volume_to_displacement
from napari_medseg.volume import Geometry, Volume, read_volume, write_volume

# main 53ae626, 48x48 synthetic pair, spacing (0.5, 0.5) mm, 2 levels, at most 20 iterations per level
RECORDED = {
    "elastic": {"metric": 4.637894153594971, "iterations": 33, "u_sum": 38.374533666896696,
                "u_sq": 124.52702321479265, "u_at": [0.19924671947956085, -0.2668033838272095]},
    "diffusive": {"metric": 4.848267078399658, "iterations": 26, "u_sum": 42.87772484705056,
                  "u_sq": 154.03205332577684, "u_at": [0.26396703720092773, -0.3399434983730316]},
    "gaussian": {"metric": 3.885110378265381, "iterations": 29, "u_sum": 67.45117837774478,
                 "u_sq": 171.78292885327318, "u_at": [0.2789413630962372, -0.3643414378166199]},
}
# the same through 'medseg register' (--mu 0.7 --lambda 0.3 --tau 0.5; diffusive with its default alpha 0.5)
RECORDED_CLI = {
    "elastic": {"udt_ssd": 3.3031420707702637, "iterations": 33, "f_measure": 0.9939879759519039,
                "u_sum": 38.374533666896696, "u_sq": 124.52702321479265,
                "u_at": [0.19924671947956085, -0.2668033838272095]},
    "diffusive": {"udt_ssd": 4.2489237785339355, "iterations": 28, "f_measure": 0.9939879759519039,
                  "u_sum": 39.289703351438675, "u_sq": 173.95682147842336,
                  "u_at": [0.2348790168762207, -0.3728472888469696]},
}
OBJECTS = {
    "elastic": (Elastic(mu=0.7, lambda_=0.3), 0.5),
    "diffusive": (Diffusive(alpha=0.8), 1.0),
    "gaussian": (Gaussian(sigma_vox=1.2), 1.0),
}


def _field_summary(u: np.ndarray) -> dict:
    u = np.asarray(u, np.float64)
    return {"u_sum": float(u.sum()), "u_sq": float((u**2).sum()), "u_at": [float(u[0, 20, 14]), float(u[1, 30, 33])]}


def _assert_field(u: np.ndarray, expected: dict) -> None:
    got = _field_summary(u)
    for key in ("u_sum", "u_sq"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-6), key
    assert got["u_at"] == pytest.approx(expected["u_at"], rel=1e-6, abs=1e-6)


@pytest.fixture(scope="module")
def pair():
    return synthetic_pair((48, 48))


@pytest.mark.parametrize("name", ["elastic", "diffusive", "gaussian"])
def test_object_api_reproduces_the_flat_keyword_registration(pair, name):
    regularizer, tau = OBJECTS[name]
    result = register(
        pair.fixed, pair.moving_prealigned, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_prealigned_mask,
        regularizer=regularizer, tau=tau, levels=2, max_iterations=20, spacing_mm=(0.5, 0.5),
    )
    expected = RECORDED[name]
    assert result.iterations == expected["iterations"]
    assert result.metric_history[-1] == pytest.approx(expected["metric"], rel=1e-6)
    _assert_field(result.displacement, expected)
    assert result.parameters == {
        "metric": "udt", **regularizer.to_dict(), "tau": tau, "levels": 2, "max_iterations": [20, 20],
        "spacing_mm": [0.5, 0.5], "force_gradient": "warped", "scale_invariant": False,
        "plateau_window": 10, "plateau_tol": 1e-3,
    }


def test_a_name_means_that_regularizer_with_its_defaults(pair):
    kwargs = dict(fixed_mask=pair.fixed_mask, moving_mask=pair.moving_prealigned_mask, levels=2, max_iterations=5)
    by_name = register(pair.fixed, pair.moving_prealigned, regularizer="diffusive", **kwargs)
    by_object = register(pair.fixed, pair.moving_prealigned, regularizer=Diffusive(), **kwargs)
    assert np.array_equal(by_name.displacement, by_object.displacement)


@pytest.mark.parametrize("name, flags", [("elastic", ["--mu", "0.7", "--lambda", "0.3", "--tau", "0.5"]), ("diffusive", [])])
def test_cli_flags_build_the_same_regularizer(run_cli, tmp_path, pair, name, flags):
    g = Geometry((0.5, 0.5, 1.0), (1.0, 2.0, 0.0))
    files = {
        "fixed": pair.fixed, "moving": pair.moving_prealigned,
        "fm": pair.fixed_mask.astype(np.uint8), "mm": pair.moving_prealigned_mask.astype(np.uint8),
    }
    for stem, array in files.items():
        write_volume(Volume(array[None], g), tmp_path / f"{stem}.nii.gz")
    proc = run_cli(
        "register", "--fixed", tmp_path / "fixed.nii.gz", "--moving", tmp_path / "moving.nii.gz",
        "--fixed-mask", tmp_path / "fm.nii.gz", "--moving-mask", tmp_path / "mm.nii.gz",
        "--out", tmp_path / "warped.nii.gz", "--field", tmp_path / "field.mha",
        "--levels", "2", "--iterations", "20", "--regularizer", name, "--json", *flags,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = RECORDED_CLI[name]
    assert report["iterations"] == expected["iterations"] and report["regularizer"] == name
    assert report["udt_ssd"] == pytest.approx(expected["udt_ssd"], rel=1e-6)
    assert report["f_measure"] == pytest.approx(expected["f_measure"], rel=1e-9)
    _assert_field(volume_to_displacement(read_volume(tmp_path / "field.mha")), expected)


def test_cli_rejects_a_bad_regularizer_option_naming_it(run_cli, tmp_path):
    proc = run_cli(
        "register", "--fixed", tmp_path / "missing.nii.gz", "--moving", tmp_path / "missing2.nii.gz",
        "--out", tmp_path / "w.nii.gz", "--mu", "-1", check_rc=2,
    )
    assert "mu=-1.0" in proc.stderr and "Traceback" not in proc.stderr
