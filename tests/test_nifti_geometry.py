"""NIfTI geometry as the standard and nibabel choose it: every qform_code x sform_code, NIfTI-1 and -2.

Files are made with nibabel in the test; nibabel's ``img.affine`` (``get_best_affine``) is the
reference, compared through the world position (LPS here, RAS in nibabel) of several voxels.
"""

from __future__ import annotations

import re
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_medseg.errors import FileFormatError
from napari_medseg.nifti import NiftiGeometryWarning
from napari_medseg.volume import read_volume, write_volume

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
VOXELS = np.array([[0, 0, 0, 1], [3, 4, 5, 1], [1, 2, 3, 1], [4, 0, 6, 1]], dtype=float).T
SHAPE_XYZ = (5, 6, 7)


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _affine(rotation: np.ndarray, zooms, offset) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rotation @ np.diag(zooms)
    a[:3, 3] = offset
    return a


# the qform flips z (qfac -1); the sform is rotated differently and 10-27 mm away: choosing the wrong one shows
QFORM = _affine(_rotation((1, 2, 3), 20) @ np.diag([1, 1, -1]), (0.9, 1.1, 2.5), (-40.0, 12.0, 7.5))
SFORM = _affine(_rotation((0, 1, 1), -35), (0.8, 1.2, 3.0), (-30.0, 25.0, -20.0))


def _make(tmp_path, version: int, qcode: int, scode: int, *, qform=QFORM, sform=SFORM, name=None):
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    data = np.arange(np.prod(SHAPE_XYZ), dtype=np.int16).reshape(SHAPE_XYZ)
    image = klass(data, None)
    image.set_qform(qform, code=qcode)
    image.set_sform(sform, code=scode)
    path = tmp_path / (name or f"v{version}_q{qcode}_s{scode}.nii.gz")
    nib.save(image, path)
    return path


def _world_lps(volume) -> np.ndarray:
    return volume.geometry.index_to_physical() @ VOXELS


def _nibabel_world_lps(path) -> np.ndarray:
    return RAS_TO_LPS @ nib.load(path).affine @ VOXELS


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("scode", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("qcode", [0, 1, 2, 3, 4])
def test_geometry_matches_nibabel_for_every_code_pair(tmp_path, version, qcode, scode):
    path = _make(tmp_path, version, qcode, scode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_volume(path)
    assert np.abs(_world_lps(volume) - _nibabel_world_lps(path)).max() < 1e-4
    # voxels in (z, y, x) order, identical to nibabel's
    assert np.array_equal(volume.array, np.asarray(nib.load(path).dataobj).transpose(2, 1, 0))
    messages = [str(w.message) for w in caught if issubclass(w.category, NiftiGeometryWarning)]
    if qcode and scode:  # both set, 10-27 mm apart: one warning naming both codes
        assert len(messages) == 1
        assert re.search(rf"sform_code {scode}\b.*qform_code {qcode}\b.*using the sform", messages[0])
    elif not qcode and not scode:
        assert len(messages) == 1 and "no qform or sform" in messages[0]
    else:
        assert messages == []


@pytest.mark.parametrize("version", [1, 2])
def test_agreeing_transforms_do_not_warn(tmp_path, version):
    path = _make(tmp_path, version, 1, 4, sform=QFORM)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NiftiGeometryWarning)
        volume = read_volume(path)
    assert np.abs(_world_lps(volume) - _nibabel_world_lps(path)).max() < 1e-4


@pytest.mark.parametrize("version", [1, 2])
def test_nifti1_and_nifti2_agree(tmp_path, version):
    one = read_volume(_make(tmp_path, 1, 1, 2))
    two = read_volume(_make(tmp_path, 2, 1, 2))
    assert np.abs(_world_lps(one) - _world_lps(two)).max() < 1e-4


@pytest.mark.parametrize("version", [1, 2])
def test_sheared_sform_uses_the_qform_with_a_warning(tmp_path, version):
    sheared = SFORM.copy()
    sheared[0, 1] += 0.5
    path = _make(tmp_path, version, 1, 2, sform=sheared)
    with pytest.warns(NiftiGeometryWarning, match=r"sform \(sform_code 2 \(aligned\)\) is sheared; using the qform"):
        volume = read_volume(path)
    reference = RAS_TO_LPS @ nib.load(path).header.get_qform() @ VOXELS
    assert np.abs(_world_lps(volume) - reference).max() < 1e-4


def test_sheared_sform_without_qform_is_refused(tmp_path):
    sheared = SFORM.copy()
    sheared[0, 1] += 0.5
    path = _make(tmp_path, 1, 0, 4, sform=sheared)
    with pytest.raises(FileFormatError, match=r"sform .*sheared and there is no qform"):
        read_volume(path)


def _patch_pixdim(path, index: int, value: float) -> None:
    """Write a raw pixdim value into an uncompressed NIfTI-1 (nibabel's save would 'fix' it)."""
    with open(path, "r+b") as fh:
        header = nib.Nifti1Header(binaryblock=fh.read(348), check=False)
        header["pixdim"][index] = value
        fh.seek(0)
        fh.write(header.binaryblock)


def test_negative_pixdim_with_a_qform_is_refused(tmp_path):
    # nibabel's load takes abs() (with a logged warning), niftilib reads it as 1 mm: refuse, naming it
    path = _make(tmp_path, 1, 1, 0, name="neg.nii")
    _patch_pixdim(path, 2, -1.1)
    with pytest.raises(FileFormatError, match=r"neg\.nii: header field pixdim\[1:4\] = .*value 1 is -1\.1"):
        read_volume(path)


def test_negative_pixdim_is_ignored_when_the_sform_is_used(tmp_path):
    path = _make(tmp_path, 1, 0, 1, name="neg_sform.nii")
    _patch_pixdim(path, 1, -0.9)
    volume = read_volume(path)  # the sform is used; pixdim plays no part in it (nibabel agrees)
    assert np.abs(_world_lps(volume) - _nibabel_world_lps(path)).max() < 1e-4


@pytest.mark.parametrize(
    "qcode, scode, name",
    [(1, 4, "mni.nii.gz"), (1, 0, "qonly.nii.gz"), (0, 2, "sonly.nii"), (2, 3, "tal.nii")],
)
def test_codes_survive_a_round_trip(tmp_path, qcode, scode, name):
    source = _make(tmp_path, 1, qcode, scode, sform=QFORM, name=name)
    volume = read_volume(source)
    out = write_volume(volume, tmp_path / f"out_{name}")
    header = nib.load(out).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (qcode, scode)
    assert np.abs(_world_lps(read_volume(out)) - _nibabel_world_lps(source)).max() < 1e-4
    assert np.abs(_nibabel_world_lps(out) - _nibabel_world_lps(source)).max() < 1e-4


def test_no_nifti_junk_in_nrrd_or_metaimage_headers(tmp_path):
    source = _make(tmp_path, 1, 1, 4, sform=QFORM)
    volume = read_volume(source)
    assert volume.metadata.get("nifti_sform_code") == "4"
    for suffix in (".nrrd", ".mha"):
        out = write_volume(volume, tmp_path / f"out{suffix}")
        text = out.read_bytes()[:4096].decode("latin-1")
        header = text.split("\n\n")[0] if suffix == ".nrrd" else text.split("ElementDataFile")[0]
        assert "UNKNOWN_PRINT" not in header
        keys = [re.split(r"[:=]", line)[0].strip().lower() for line in header.splitlines()]
        for junk in ("qfac", "dim_info", "nifti", "qform", "sform", "pixdim", "srow", "qto", "sto", "scl_"):
            assert not any(k.startswith(junk) for k in keys), (suffix, junk, keys)
        # and back to NIfTI from NRRD: SimpleITK's default codes, same geometry
        again = write_volume(read_volume(out), tmp_path / f"again{suffix}.nii.gz")
        assert np.abs(_nibabel_world_lps(again) - _nibabel_world_lps(source)).max() < 1e-4


def test_scaled_integers_read_as_nibabel_and_stay_integers(tmp_path):
    raw = (np.arange(60, dtype=np.uint16).reshape(3, 4, 5) * 1000)
    image = nib.Nifti1Image(raw, np.diag([1.0, 2.0, 3.0, 1.0]))
    image.header.set_data_dtype(np.uint16)
    image.header.set_slope_inter(2.0, -5.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(image, path)
    assert int(nib.load(path).header["datatype"]) == 512  # stored as uint16 with slope 2
    volume = read_volume(path)
    expected = nib.load(path).get_fdata().transpose(2, 1, 0)
    assert volume.array.dtype.kind in "iu"
    assert np.array_equal(volume.array, expected)
    out = write_volume(volume, tmp_path / "back.nii.gz")
    back = nib.load(out)
    assert back.get_data_dtype().kind in "iu"  # not silently float64
    assert np.array_equal(back.get_fdata(), nib.load(path).get_fdata())


def test_fractional_scaling_reads_float32_like_nibabel(tmp_path):
    raw = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = nib.Nifti1Image(raw, np.eye(4))
    image.header.set_data_dtype(np.int16)
    image.header.set_slope_inter(0.25, 1.5)
    path = tmp_path / "frac.nii"
    nib.save(image, path)
    volume = read_volume(path)
    assert volume.array.dtype == np.float32
    assert np.allclose(volume.array, nib.load(path).get_fdata().transpose(2, 1, 0), atol=1e-6)


def test_cli_prints_the_disagreement_as_one_warning_line(tmp_path, run_cli):
    path = _make(tmp_path, 2, 1, 4)
    proc = run_cli("info", path, "--json")
    assert proc.stderr.splitlines() == [
        f"medseg info: warning: {path}: the sform (sform_code 4 (mni)) and the qform (qform_code 1 (scanner)) "
        "place voxels up to " + proc.stderr.split("place voxels up to ")[1].split(" mm")[0] + " mm apart; using the "
        "sform, as the NIfTI standard and nibabel do"
    ]
    assert '"nifti_sform_code": "4"' in proc.stdout
