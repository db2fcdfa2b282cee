"""``medseg postprocess`` end to end, on oblique anisotropic files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_geometry

from napari_medseg.cli import main
from napari_medseg.postprocess import apply_chain
from napari_medseg.volume import Volume, read_labels, read_volume, write_volume

VOXEL_MM3 = 0.7 * 0.9 * 2.5  # oblique_geometry's spacing


def _labels() -> np.ndarray:
    array = np.zeros((6, 20, 24), dtype=np.uint8)
    array[1:5, 4:14, 5:15] = 1  # 400 voxels...
    array[2:4, 7:10, 8:11] = 0  # ...with an 18-voxel cavity
    array[0, 18, 20] = 1  # a 1-voxel speck (1.575 mm^3)
    array[3, 2:4, 18:22] = 2  # 8 voxels (12.6 mm^3)
    array[0, 16:18, 2:4] = 2  # 4 voxels (6.3 mm^3): a second, smaller piece of label 2
    return array


@pytest.fixture
def labels_nii(tmp_path):
    path = tmp_path / "labels.nii.gz"
    write_volume(Volume(_labels(), oblique_geometry()), path)
    return path


def test_postprocess_flags_end_to_end(run_cli, labels_nii, tmp_path):
    out_path = tmp_path / "clean.nii.gz"
    proc = run_cli("postprocess", labels_nii, out_path, "--fill-holes", "--min-size-mm3", "5", "--keep-largest", "--json")
    report = json.loads(proc.stdout)
    assert report["chain"] == [
        {"op": "fill_holes", "slice_wise": False, "axis": 0},
        {"op": "remove_small", "min_size_mm3": 5.0, "connectivity": 1},
        {"op": "keep_largest", "n": 1, "connectivity": 1},
    ]
    expected = np.zeros((6, 20, 24), dtype=np.uint8)
    expected[1:5, 4:14, 5:15] = 1
    expected[3, 2:4, 18:22] = 2
    out = read_labels(out_path)
    assert out.array.dtype == np.uint8
    assert np.array_equal(out.array, expected)
    assert report["labels"] == {
        "1": {"voxels_before": 383, "ml_before": pytest.approx(383 * VOXEL_MM3 / 1000, rel=1e-6),
              "voxels_after": 400, "ml_after": pytest.approx(400 * VOXEL_MM3 / 1000, rel=1e-6)},
        "2": {"voxels_before": 12, "ml_before": pytest.approx(12 * VOXEL_MM3 / 1000, rel=1e-6),
              "voxels_after": 8, "ml_after": pytest.approx(8 * VOXEL_MM3 / 1000, rel=1e-6)},
    }
    # geometry: exactly as read from IN (NIfTI stores float32 and a quaternion, hence 1e-6 for direction)
    original = read_volume(labels_nii).geometry
    assert out.geometry.spacing == original.spacing
    assert out.geometry.origin == original.origin
    assert out.geometry.isclose(original, atol=1e-6)
    assert out.geometry.isclose(oblique_geometry(), atol=1e-6)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left


def test_postprocess_chain_file_nrrd_keeps_geometry(run_cli, tmp_path):
    geometry = oblique_geometry()
    in_path, out_path, chain_path = tmp_path / "in.nrrd", tmp_path / "out.nrrd", tmp_path / "chain.json"
    write_volume(Volume(_labels(), geometry), in_path)
    chain = [
        {"op": "remove_small", "min_size_mm3": 5},
        {"op": "closing", "radius_mm": 1.0, "labels": [1]},
        {"op": "fill_holes", "slice_wise": True},
        {"op": "keep_largest", "n": 1, "labels": [1]},
    ]
    chain_path.write_text(json.dumps(chain))
    proc = run_cli("postprocess", in_path, out_path, "--chain", chain_path)
    assert proc.stdout.splitlines()[0] == (
        "chain: remove small min_size_mm3=5, connectivity=1 -> closing radius_mm=1 (labels 1) -> "
        "fill holes slice_wise=True, axis=0 -> keep largest n=1, connectivity=1 (labels 1)"
    )
    assert proc.stdout.splitlines()[1].split() == ["label", "voxels", "before", "mL", "before", "voxels", "after", "mL", "after"]
    out = read_labels(out_path)
    # NRRD stores spacing x direction in float64; splitting it again costs a few ulps
    assert out.geometry.isclose(read_volume(in_path).geometry, atol=1e-12)
    assert out.geometry.isclose(geometry, atol=1e-12)
    assert np.array_equal(out.array, apply_chain(_labels(), chain, spacing_mm=geometry.spacing_zyx))
    assert int((out.array == 2).sum()) == 12  # label 2: both pieces kept (>= 5 mm^3, no keep_largest)
    assert json.loads(out.metadata["medseg_postprocess"])[1] == {"op": "closing", "radius_mm": 1.0, "labels": [1]}


def _main(argv, capsys) -> tuple[int, str, str]:
    """Run the CLI in-process (same parser and error handling as the console script)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own exits (--help, usage errors)
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_postprocess_labels_option_leaves_other_labels(capsys, labels_nii, tmp_path):
    out_path = tmp_path / "out.nii.gz"
    rc, stdout, _ = _main(["postprocess", labels_nii, out_path, "--labels", "2", "--keep-largest", "--fill-holes-2d"], capsys)
    assert rc == 0
    assert stdout.splitlines()[0] == "chain: fill holes slice_wise=True, axis=0 (labels 2) -> keep largest n=1, connectivity=1 (labels 2)"
    out = read_labels(out_path).array
    expected = _labels()
    expected[0, 16:18, 2:4] = 0  # label 2's smaller piece; label 1 (cavity, speck) untouched
    assert np.array_equal(out, expected)


def test_postprocess_help(capsys):
    rc, stdout, _ = _main(["postprocess", "--help"], capsys)
    assert rc == 0
    assert "fixed order" in stdout and "--chain CHAIN.json" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fill-holes", "--chain", "{chain}"], "--chain cannot be combined with --fill-holes"),
        (["--labels", "1", "--chain", "{chain}"], "--chain cannot be combined with --labels"),
        ([], "nothing to do"),
        (["--chain", "{bad_chain}"], "chain step 1: op='keep_bigest'"),
        (["--chain", "{tmp}/missing.json"], "chain file not found"),
        (["--chain", "{empty_chain}"], "the chain has no steps"),
        (["--opening-mm", "-1"], r"chain step 0 (opening): radius_mm=-1.0"),
        (["--keep-largest", "0"], "--keep-largest 0"),
        (["--labels", "one", "--fill-holes"], "--labels='one'"),
        (["--fill-holes", "--fill-holes-2d"], "not allowed with argument --fill-holes"),
    ],
)
def test_invalid_postprocess_arguments(capsys, labels_nii, tmp_path, args, message):
    (tmp_path / "chain.json").write_text('[{"op": "fill_holes"}]')
    (tmp_path / "bad.json").write_text('[{"op": "fill_holes"}, {"op": "keep_bigest"}]')
    (tmp_path / "empty.json").write_text("[]")
    names = {"chain": tmp_path / "chain.json", "bad_chain": tmp_path / "bad.json", "empty_chain": tmp_path / "empty.json", "tmp": tmp_path}
    out_path = tmp_path / "out.nii.gz"
    rc, _, stderr = _main(["postprocess", labels_nii, out_path, *[a.format(**names) for a in args]], capsys)
    assert rc == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out_path.exists()


def test_invalid_postprocess_inputs(run_cli, capsys, tmp_path):
    out_path = tmp_path / "out.nii.gz"
    proc = run_cli("postprocess", tmp_path / "missing.nii.gz", out_path, "--fill-holes", check_rc=2)
    assert proc.stderr.strip() == f"medseg postprocess: error: {tmp_path / 'missing.nii.gz'}: file not found"
    floats = tmp_path / "prob.nii.gz"
    write_volume(Volume(np.full((3, 4, 5), 0.25, dtype=np.float32), oblique_geometry()), floats)
    rc, _, stderr = _main(["postprocess", floats, out_path, "--fill-holes"], capsys)
    assert rc == 2 and "prob.nii.gz: label image has non-integer values" in stderr
    series = sitk.JoinSeries([sitk.Image(5, 4, 3, sitk.sitkUInt8)] * 2)  # a 4D (x, y, z, t) image
    four_d = tmp_path / "series.nii.gz"
    sitk.WriteImage(series, str(four_d))
    rc, _, stderr = _main(["postprocess", four_d, out_path, "--fill-holes"], capsys)
    assert rc == 2 and "series.nii.gz" in stderr and "4D" in stderr
    assert not out_path.exists()
