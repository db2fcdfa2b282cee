"""``medseg register`` and ``medseg register apply`` through the real console entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_medseg.registration.evaluate import overlap_scores
from napari_medseg.registration.synthetic import synthetic_pair
from napari_medseg.volume import Geometry, Volume, read_volume, write_volume

KEYS = {"precision", "recall", "f_measure", "mutual_information_nats", "mutual_information_bits", "udt_ssd", "iterations", "seconds"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("reg")
    p = synthetic_pair((64, 64))
    g = Geometry((0.5, 0.5, 1.0), (1.0, 2.0, 0.0))
    write_volume(Volume(p.fixed[None], g), d / "fixed.nii.gz")
    write_volume(Volume(p.moving_prealigned[None], g), d / "moving.nii.gz")
    write_volume(Volume(p.fixed_mask[None].astype(np.uint8), g), d / "fixed_mask.nii.gz")
    write_volume(Volume(p.moving_prealigned_mask[None].astype(np.uint8), g), d / "moving_mask.nii.gz")
    labels = p.moving_prealigned_mask.astype(np.uint8) * 3
    labels[p.moving_prealigned > 0.9] = 5  # the bright disk
    write_volume(Volume(labels[None], g), d / "labels.nii.gz")
    write_volume(Volume(p.moving_prealigned[None, ::2, ::2].copy(), Geometry((1.0, 1.0, 1.0), (1.0, 2.0, 0.0))), d / "coarse.nii.gz")
    return d, p


def test_register_json_field_and_apply_to_labels(run_cli, files):
    d, p = files
    proc = run_cli(
        "register", "--fixed", d / "fixed.nii.gz", "--moving", d / "moving.nii.gz", "--out", d / "warped.nii.gz",
        "--fixed-mask", d / "fixed_mask.nii.gz", "--moving-mask", d / "moving_mask.nii.gz",
        "--levels", "2", "--iterations", "50", "--field", d / "field.mha", "--json",
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # exactly the documented keys (docs/registration.md): registration_report without its "_before" values
    assert set(report) == KEYS | {"diverged", "jacobian_min", "folding_percent", "metric", "regularizer"}
    before = overlap_scores(p.fixed_mask, p.moving_prealigned_mask).f_measure
    assert report["f_measure"] > before and report["f_measure"] > 0.99
    assert report["mutual_information_bits"] == pytest.approx(report["mutual_information_nats"] / np.log(2))
    assert report["iterations"] > 0 and not report["diverged"]
    warped = read_volume(d / "warped.nii.gz")
    assert warped.shape == (1, 64, 64) and warped.geometry.isclose(read_volume(d / "fixed.nii.gz").geometry, atol=1e-5)
    field = read_volume(d / "field.mha")
    assert field.n_components == 3
    run_cli("register", "apply", "--field", d / "field.mha", d / "labels.nii.gz", d / "labels_w.nii.gz", "--nearest")
    lw = read_volume(d / "labels_w.nii.gz").array[0]
    assert set(np.unique(lw).tolist()) == {0, 3, 5}  # nearest keeps label values
    # nearest-neighbour labels vs the linearly interpolated mask thresholded at 0.5: a few boundary pixels
    assert overlap_scores(p.fixed_mask, lw > 0).f_measure == pytest.approx(report["f_measure"], abs=0.005)


@pytest.mark.filterwarnings("ignore:.*no pixel size")
def test_register_imzml_moving_and_apply_all_ions(tmp_path, capsys):
    """In-process through ``main`` (the console script's code) to keep the file fast."""
    from pyimzml.ImzMLWriter import ImzMLWriter

    from napari_medseg.cli import main

    def run_cli(*args, check_rc=0):
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        assert rc == check_rc, out.err
        return out

    p = synthetic_pair((40, 40))
    mzs = np.array([500.0, 600.0, 700.0])
    with ImzMLWriter(str(tmp_path / "m.imzML"), mode="continuous") as w:
        for y in range(40):
            for x in range(40):
                v = float(p.moving_prealigned[y, x])
                w.addSpectrum(mzs, np.array([v, 2 * v, 1.0], np.float32), (x + 1, y + 1, 1))
    write_volume(Volume(p.fixed[None], Geometry((1.0, 1.0, 1.0))), tmp_path / "fixed.nrrd")
    proc = run_cli(
        "register", "--fixed", tmp_path / "fixed.nrrd", "--moving", tmp_path / "m.imzML", "--mz", "600",
        "--tolerance-ppm", "20", "--out", tmp_path / "w.nrrd", "--field", tmp_path / "f.nii.gz",
        "--levels", "2", "--iterations", "30", "--json",
    )
    report = json.loads(proc.out.strip().splitlines()[-1])
    assert report["f_measure"] > 0.98
    run_cli("register", "apply", "--field", tmp_path / "f.nii.gz", tmp_path / "m.imzML", tmp_path / "all.nrrd", "--all-mz")
    cube = read_volume(tmp_path / "all.nrrd")
    assert cube.array.shape == (1, 40, 40, 3)
    warped = read_volume(tmp_path / "w.nrrd").array[0]
    np.testing.assert_allclose(cube.array[0, ..., 1], warped, atol=1e-4)  # same ion, same field
    np.testing.assert_allclose(cube.array[0, ..., 0], warped / 2, atol=1e-4)
    run_cli("register", "apply", "--field", tmp_path / "f.nii.gz", tmp_path / "m.imzML", tmp_path / "two.nrrd",
            "--mz", "500,700", "--tolerance-da", "0.1")
    assert read_volume(tmp_path / "two.nrrd").array.shape == (1, 40, 40, 2)
    bad = run_cli("register", "--fixed", tmp_path / "fixed.nrrd", "--moving", tmp_path / "m.imzML", "--mz", "5000",
                  "--tolerance-ppm", "20", "--out", tmp_path / "x.nrrd", check_rc=2)
    assert "m/z 5000 is outside the spectra's m/z range 500-700" in bad.err
    assert not (tmp_path / "x.nrrd").exists()


def test_register_cli_errors(files, capsys, tmp_path):
    """Error paths in-process through ``main`` (the same code the console script runs)."""
    from napari_medseg.cli import main

    d, p = files

    def run(*args):
        rc = main([str(a) for a in args])
        return rc, capsys.readouterr().err

    rc, err = run("register", "--fixed", d / "fixed.nii.gz")
    assert rc == 2 and "needs --moving, --out" in err
    rc, err = run("register", "--fixed", d / "fixed.nii.gz", "--moving", d / "moving.nii.gz", "--out", tmp_path / "o.nii.gz",
                  "--metric", "udtt")
    assert rc == 2 and "did you mean 'udt'" in err
    rc, err = run("register", "--fixed", d / "fixed.nii.gz", "--moving", d / "coarse.nii.gz", "--out", tmp_path / "o.nii.gz")
    assert rc == 2 and "not on the same grid" in err and "--resample" in err
    assert not (tmp_path / "o.nii.gz").exists()
    rc, err = run("register", "--fixed", d / "fixed.nii.gz", "--moving", d / "coarse.nii.gz", "--out", tmp_path / "o.nii.gz",
                  "--resample", "--levels", "1", "--iterations", "5")
    assert rc == 0 and (tmp_path / "o.nii.gz").exists()
    rc, err = run("register", "apply", "--field", d / "fixed.nii.gz", d / "labels.nii.gz", tmp_path / "x.nii.gz")
    assert rc == 2 and "3 components" in err
    nan = d / "nan.nii.gz"
    arr = p.moving_prealigned.copy()
    arr[5, 5] = np.nan
    write_volume(Volume(arr[None], read_volume(d / "fixed.nii.gz").geometry), nan)
    rc, err = run("register", "--fixed", d / "fixed.nii.gz", "--moving", nan, "--out", tmp_path / "o2.nii.gz",
                  "--moving-mask", d / "moving_mask.nii.gz")
    assert rc == 2 and "moving: contains 1 NaN" in err
