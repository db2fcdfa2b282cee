"""Volumes: round trips on real and generated files, geometry, resampling, reorientation, bad input."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import oblique_geometry
from pydicom.data import get_testdata_file

from napari_medseg.errors import FileFormatError, GeometryMismatchError, InvalidInputError
from napari_medseg.volume import (
    Geometry,
    Volume,
    check_same_grid,
    read_labels,
    read_volume,
    reorient,
    resample_like,
    resample_to_spacing,
    segments_from_metadata,
    write_volume,
)

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
FILE_SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]
DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]


def _random_volume(dtype, shape=(5, 9, 11), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(max(info.min, -30000), min(info.max, 60000), size=shape, endpoint=True).astype(dtype)
    else:
        array = (rng.standard_normal(shape) * 1e3).astype(dtype)
    return Volume(array, oblique_geometry())


def _assert_same(a: Volume, b: Volume, atol: float = 1e-6) -> None:
    assert a.array.dtype == b.array.dtype
    assert a.array.shape == b.array.shape
    assert np.array_equal(a.array, b.array)  # bit-exact
    assert a.geometry.isclose(b.geometry, atol=atol), (a.geometry, b.geometry)


def _nibabel_geometry(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Spacing-scaled direction and origin in LPS from nibabel's RAS affine (an independent reader)."""
    affine = nib.load(str(path)).affine
    lps = np.diag([-1, -1, 1]) @ affine[:3, :]
    return lps[:, :3], lps[:, 3]


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("suffix", FILE_SUFFIXES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_oblique_anisotropic_is_bit_exact(tmp_path, suffix, dtype):
    volume = _random_volume(dtype)
    first = read_volume(write_volume(volume, tmp_path / f"a{suffix}"))
    # the values survive the first write exactly; the geometry to the format's precision
    assert np.array_equal(first.array, volume.array) and first.array.dtype == volume.array.dtype
    assert first.geometry.isclose(volume.geometry, atol=1e-5)
    second = read_volume(write_volume(first, tmp_path / f"b{suffix}"))
    _assert_same(first, second)


def test_round_trip_keeps_multicomponent_images(tmp_path):
    rng = np.random.default_rng(1)
    volume = Volume(rng.random((4, 6, 7, 3)).astype(np.float32), oblique_geometry())
    back = read_volume(write_volume(volume, tmp_path / "rgb.nrrd"))
    _assert_same(volume, back)
    assert back.n_components == 3


def test_nrrd_and_mha_keep_custom_metadata(tmp_path):
    volume = Volume(np.zeros((2, 3, 4), np.uint8), oblique_geometry(), {"medseg_model": "demo", "note": "x y"})
    for suffix in (".nrrd", ".mha"):
        back = read_volume(write_volume(volume, tmp_path / f"m{suffix}"))
        assert back.metadata["medseg_model"] == "demo" and back.metadata["note"] == "x y"


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz"])
def test_nibabel_test_files_read_like_nibabel_and_round_trip(tmp_path, name):
    path = NIBABEL_DATA / name
    volume = read_volume(path)
    reference = np.asanyarray(nib.load(str(path)).dataobj)
    reference = np.squeeze(reference) if reference.ndim > 3 else reference
    assert np.array_equal(volume.array, reference.transpose(2, 1, 0))
    scaled_direction, origin = _nibabel_geometry(path)
    ours = volume.geometry.direction_matrix @ np.diag(volume.geometry.spacing)
    assert np.allclose(ours, scaled_direction, atol=1e-4)
    assert np.allclose(volume.geometry.origin, origin, atol=1e-4)
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        _assert_same(volume, read_volume(write_volume(volume, tmp_path / f"out{suffix}")))


def test_big_endian_nifti_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(-2000, 2000, size=(7, 8, 9)).astype(">i2")
    affine = np.array([[0.8, 0.1, 0, -10.0], [-0.1, 0.8, 0, 20.0], [0, 0, 3.0, 5.5], [0, 0, 0, 1]])
    # an orthonormal direction scaled by the spacing: normalise the in-plane rotation
    affine[:2, :2] = np.array([[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]]) * 0.8
    header = nib.Nifti1Header(endianness=">")
    image = nib.Nifti1Image(data, affine, header)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path = tmp_path / "big.nii"
    nib.save(image, str(path))
    assert nib.load(str(path)).header.endianness == ">"
    volume = read_volume(path)
    assert np.array_equal(volume.array, data.astype(np.int16).transpose(2, 1, 0))
    assert np.allclose(volume.geometry.spacing, (0.8, 0.8, 3.0), atol=1e-5)
    for suffix in (".nii.gz", ".nrrd", ".mhd"):
        _assert_same(volume, read_volume(write_volume(volume, tmp_path / f"b{suffix}")))


def test_big_endian_metaimage_and_nrrd_read_exactly(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) * 1000 - 5000
    (tmp_path / "big.raw").write_bytes(data.astype(">i2").tobytes())
    (tmp_path / "big.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = True\n"
        "ElementByteOrderMSB = True\nTransformMatrix = 0 1 0 -1 0 0 0 0 1\nOffset = 1.5 -2 3\n"
        "ElementSpacing = 0.5 0.75 2\nDimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = big.raw\n"
    )
    volume = read_volume(tmp_path / "big.mhd")
    assert np.array_equal(volume.array, data)
    assert volume.geometry.spacing == (0.5, 0.75, 2.0) and volume.geometry.origin == (1.5, -2.0, 3.0)
    nrrd = tmp_path / "big.nrrd"
    nrrd.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 3 2\n"
        b"space directions: (0,0.5,0) (-0.75,0,0) (0,0,2)\nkinds: domain domain domain\nendian: big\n"
        b"encoding: raw\nspace origin: (1.5,-2,3)\n\n" + data.astype(">i2").tobytes()
    )
    from_nrrd = read_volume(nrrd)
    _assert_same(volume, from_nrrd)
    _assert_same(volume, read_volume(write_volume(from_nrrd, tmp_path / "little.nii.gz")))


# -------------------------------------------------------------------------------------------- DICOM
def _dicom_values(path: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    values = ds.pixel_array.astype(np.float64)
    return values * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm"])
def test_pydicom_test_files_read_with_their_geometry(tmp_path, name):
    source = get_testdata_file(name)
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(source, folder / "image.dcm")
    for path in (source, folder):
        volume = read_volume(path)
        assert volume.shape[0] == 1
        assert np.array_equal(volume.array[0].astype(np.float64), _dicom_values(source))
        ds = pydicom.dcmread(source)
        assert np.allclose(volume.geometry.spacing[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])])
        assert np.allclose(volume.geometry.origin, [float(v) for v in ds.ImagePositionPatient], atol=1e-4)
        row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        assert np.allclose(volume.geometry.direction_matrix[:, 0], row, atol=1e-5)
        assert np.allclose(volume.geometry.direction_matrix[:, 1], col, atol=1e-5)
    converted = read_volume(write_volume(read_volume(folder), tmp_path / "ct.nii.gz"))
    assert np.array_equal(converted.array, read_volume(source).array)


def test_dicom_series_round_trip_sorted_by_position(tmp_path):
    volume = _random_volume(np.int16, shape=(6, 10, 12))
    folder = write_volume(volume, tmp_path / "series")
    # file names in reverse slice order: the reader must sort by position, not by name
    files = sorted(folder.iterdir())
    for i, f in enumerate(files):
        f.rename(folder / f"x{len(files) - i:03d}.dcm")
    back = read_volume(folder)
    assert np.array_equal(back.array, volume.array)
    assert back.geometry.isclose(volume.geometry, atol=1e-5)


def test_dicom_folder_with_two_series_is_refused_unless_named(tmp_path):
    big = _random_volume(np.int16, shape=(5, 8, 8), seed=1)
    small = _random_volume(np.int16, shape=(3, 8, 8), seed=2)
    a, b = write_volume(big, tmp_path / "a"), write_volume(small, tmp_path / "b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for src in (a, b):
        for f in src.iterdir():
            shutil.copy(f, mixed / f"{src.name}_{f.name}")
    # UIDs never reach a volume's metadata (napari_medseg.dicom_tags): read them with pydicom
    small_uid = pydicom.dcmread(next(b.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    big_uid = pydicom.dcmread(next(a.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    # never silently the largest: the error lists both series
    with pytest.raises(InvalidInputError, match="holds 2 series") as excinfo:
        read_volume(mixed)
    assert small_uid in str(excinfo.value) and big_uid in str(excinfo.value)
    assert np.array_equal(read_volume(mixed, series_uid=small_uid).array, small.array)
    assert np.array_equal(read_volume(mixed, series_uid=big_uid).array, big.array)
    with pytest.raises(InvalidInputError, match="no series with SeriesInstanceUID"):
        read_volume(mixed, series_uid="1.2.3")


def test_dicom_output_refuses_floats(tmp_path):
    with pytest.raises(InvalidInputError, match="DICOM output supports integer"):
        write_volume(_random_volume(np.float32), tmp_path / "dicom_out")
    assert not (tmp_path / "dicom_out").exists()


# -------------------------------------------------------------------------------------- 2D images
def test_png_reads_as_single_slice_and_writes_back(tmp_path):
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(0, 255, size=(12, 17)).astype(np.uint8))
    image.SetSpacing((0.5, 0.25))
    sitk.WriteImage(image, str(tmp_path / "slice.png"))
    volume = read_volume(tmp_path / "slice.png")
    assert volume.shape == (1, 12, 17)
    assert np.array_equal(volume.array[0], sitk.GetArrayFromImage(image))
    back = read_volume(write_volume(volume, tmp_path / "copy.png"))
    assert np.array_equal(back.array, volume.array)
    with pytest.raises(InvalidInputError, match="cannot be written as a 2D image"):
        write_volume(_random_volume(np.uint8), tmp_path / "multi.png")


# ---------------------------------------------------------------------------------------- labels
def test_seg_nrrd_keeps_segment_names_and_colours(tmp_path):
    labels = np.zeros((3, 5, 5), np.uint8)
    labels[1, 1:3, 1:3] = 1
    labels[2, 2:4, 2:4] = 3
    volume = Volume(labels, oblique_geometry())
    path = write_volume(volume, tmp_path / "s.seg.nrrd", label_names={1: "liver", 3: "tumour"}, label_colors={1: (1, 0, 0), 3: (0, 1, 0)})
    back = read_labels(path)
    assert np.array_equal(back.array, labels)
    assert segments_from_metadata(back.metadata) == {1: ("liver", (1.0, 0.0, 0.0)), 3: ("tumour", (0.0, 1.0, 0.0))}
    # segment fields survive a second write without being given again
    again = read_labels(write_volume(back, tmp_path / "t.seg.nrrd"))
    assert segments_from_metadata(again.metadata) == segments_from_metadata(back.metadata)


def test_read_labels_casts_integer_valued_floats_to_smallest_uint(tmp_path):
    volume = Volume(np.array([[[0.0, 1.0], [2.0, 300.0]]], dtype=np.float32), Geometry())
    labels = read_labels(write_volume(volume, tmp_path / "l.nii.gz"))
    assert labels.array.dtype == np.uint16
    assert labels.array.tolist() == [[[0, 1], [2, 300]]]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[[0.0, 1.5]]], np.float32), "non-integer values"),
        (np.array([[[0, -1]]], np.int16), "negative values"),
        (np.array([[[0.0, np.nan]]], np.float32), "NaN or Inf"),
    ],
)
def test_invalid_label_values_name_the_file(tmp_path, array, message):
    path = write_volume(Volume(array), tmp_path / "bad_labels.nii.gz")
    with pytest.raises(InvalidInputError, match=message) as info:
        read_labels(path)
    assert "bad_labels.nii.gz" in str(info.value)


# ---------------------------------------------------------------------------- resample / reorient
def test_resample_labels_to_half_spacing_and_back_is_exact():
    rng = np.random.default_rng(5)
    labels = Volume(rng.integers(0, 4, size=(4, 6, 8)).astype(np.uint8), oblique_geometry())
    fine_spacing = tuple(s / 2 for s in labels.geometry.spacing)
    fine = resample_to_spacing(labels, fine_spacing, interpolation="nearest")
    assert fine.shape == (8, 12, 16)
    back = resample_like(fine, labels, interpolation="nearest")
    assert np.array_equal(back.array, labels.array)
    assert back.geometry == labels.geometry


def test_label_aware_resampling_keeps_label_values():
    rng = np.random.default_rng(6)
    labels = Volume(rng.choice([0, 2, 7], size=(5, 9, 9)).astype(np.uint8), oblique_geometry())
    coarse = resample_to_spacing(labels, (1.3, 1.1, 1.7), interpolation="label")
    assert set(np.unique(coarse.array)) <= {0, 2, 7}


def test_linear_resampling_reproduces_a_linear_ramp():
    geometry = Geometry((1.0, 2.0, 3.0), (5.0, 6.0, 7.0))
    z, y, x = np.meshgrid(np.arange(6), np.arange(7), np.arange(8), indexing="ij")
    ramp = (x * 1.0 + y * 2.0 + z * 3.0).astype(np.float64)  # linear in mm along each axis
    fine = resample_to_spacing(Volume(ramp, geometry), (0.5, 1.0, 1.5))
    zf, yf, xf = np.meshgrid(*[np.arange(n) for n in fine.shape], indexing="ij")
    expected = xf * 0.5 + yf * 1.0 + zf * 1.5
    inside = (xf <= 14) & (yf <= 12) & (zf <= 10)  # voxels within the input's extent
    assert np.allclose(fine.array[inside], expected[inside], atol=1e-9)


@pytest.mark.parametrize("code", ["RAS", "LPS", "PIR", "SAL"])
def test_reorient_and_back_is_identical(oblique_volume, code):
    oriented = reorient(oblique_volume, code)
    assert oriented.geometry.orientation == code
    back = reorient(oriented, oblique_volume.geometry.orientation)
    assert np.array_equal(back.array, oblique_volume.array)
    assert back.geometry.isclose(oblique_volume.geometry, atol=1e-9)


def test_reorient_keeps_physical_positions():
    volume = Volume(np.arange(24, dtype=np.int32).reshape(2, 3, 4), Geometry((1, 2, 3), (10, 20, 30)))
    ras = reorient(volume, "RAS")
    to_phys = ras.geometry.index_to_physical()
    original = volume.geometry.index_to_physical()
    # the value at each physical point is the same after reorientation
    for k, j, i in np.ndindex(*ras.shape):
        point = to_phys @ np.array([i, j, k, 1.0])
        src = np.round(np.linalg.solve(original, point)).astype(int)
        assert ras.array[k, j, i] == volume.array[src[2], src[1], src[0]]


def test_affine_zyx_maps_indices_like_simpleitk(oblique_volume):
    from napari_medseg.volume import to_sitk

    image = to_sitk(oblique_volume)
    affine = oblique_volume.geometry.affine_zyx()
    for index in [(0, 0, 0), (2, 5, 7), (5, 19, 23)]:
        x, y, z = image.TransformIndexToPhysicalPoint(tuple(int(i) for i in index[::-1]))
        assert np.allclose(affine @ np.array([*index, 1.0]), [z, y, x, 1.0])


# ------------------------------------------------------------------------------------- bad input
def test_invalid_missing_file(tmp_path):
    with pytest.raises(FileFormatError, match="file not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_invalid_extension(tmp_path):
    path = tmp_path / "image.xyz"
    path.write_text("hello")
    with pytest.raises(FileFormatError, match="unsupported file type '.xyz'"):
        read_volume(path)
    with pytest.raises(FileFormatError, match="unsupported file type"):
        write_volume(Volume(np.zeros((1, 2, 2))), tmp_path / "out.xyz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_invalid_truncated_file(tmp_path, suffix):
    path = write_volume(_random_volume(np.float32, shape=(8, 16, 16)), tmp_path / f"full{suffix}")
    data = path.read_bytes()
    truncated = tmp_path / f"cut{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=r"cut.*truncated, corrupt"):
        read_volume(truncated)


def test_invalid_corrupt_file(tmp_path):
    path = tmp_path / "noise.nii.gz"
    path.write_bytes(gzip.compress(os.urandom(500)))
    with pytest.raises(FileFormatError, match="noise.nii.gz"):
        read_volume(path)


@pytest.mark.parametrize("name", ["example4d.nii.gz", "example_nifti2.nii.gz"])
def test_invalid_4d_input_names_the_file(name):
    with pytest.raises(InvalidInputError, match=rf"{name}.*4D"):
        read_volume(NIBABEL_DATA / name)


def test_nifti2_reads_through_nibabel(tmp_path):
    rng = np.random.default_rng(9)
    data = rng.standard_normal((4, 5, 6)).astype(np.float32)
    affine = np.diag([-1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = (10, -4, 3)
    nib.save(nib.Nifti2Image(data, affine), str(tmp_path / "n2.nii"))
    volume = read_volume(tmp_path / "n2.nii")
    assert np.array_equal(volume.array, data.transpose(2, 1, 0))
    assert volume.geometry.spacing == (1.5, 2.0, 2.5)
    assert volume.geometry.origin == (-10.0, 4.0, 3.0)
    assert volume.geometry.direction == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def test_invalid_folder_without_dicom(tmp_path):
    with pytest.raises(FileFormatError, match="no DICOM series"):
        read_volume(tmp_path)


def test_invalid_geometry_values():
    with pytest.raises(InvalidInputError, match="spacing"):
        Geometry((1.0, 0.0, 1.0))
    with pytest.raises(InvalidInputError, match="orthonormal"):
        Geometry(direction=(1, 0, 0, 0, 2, 0, 0, 0, 1))
    with pytest.raises(InvalidInputError, match="origin"):
        Geometry(origin=(0, np.nan, 0))
    with pytest.raises(InvalidInputError, match=r"\(z, y, x\)"):
        Volume(np.zeros((3, 3)))


def test_invalid_options_suggest_the_closest(oblique_volume):
    with pytest.raises(InvalidInputError, match="did you mean 'linear'"):
        resample_to_spacing(oblique_volume, (1, 1, 1), interpolation="linaer")
    with pytest.raises(InvalidInputError, match="orientation='RAX'"):
        reorient(oblique_volume, "RAX")


def test_check_same_grid_names_the_difference(oblique_volume):
    other = Volume(oblique_volume.array, Geometry((1, 1, 1), oblique_volume.geometry.origin, oblique_volume.geometry.direction))
    with pytest.raises(GeometryMismatchError, match=r"pred and ref are not on the same grid: spacing"):
        check_same_grid(oblique_volume, other, names=("pred", "ref"))
    check_same_grid(oblique_volume, oblique_volume.derive(np.zeros(oblique_volume.shape)))


def test_failed_write_leaves_previous_file_and_no_temporaries(tmp_path, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "keep.nrrd")
    before = path.read_bytes()
    with pytest.raises(InvalidInputError, match="multi: DICOM output needs a scalar volume; got 3 components"):
        write_volume(Volume(np.zeros((2, 3, 4, 3), np.uint8)), tmp_path / "multi")  # DICOM: scalar only
    png = write_volume(Volume(np.zeros((1, 3, 4), np.uint8)), tmp_path / "keep.png")
    png_before = png.read_bytes()
    with pytest.raises(InvalidInputError, match="keep.png: cannot write this image"):
        write_volume(Volume(np.zeros((1, 3, 4), np.float64)), png)  # PNG holds no floats
    assert path.read_bytes() == before and png.read_bytes() == png_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nrrd", "keep.png"]


def test_nan_voxels_survive_nifti(tmp_path):
    array = np.array([[[0.0, np.nan], [np.inf, 2.5]]], np.float32)
    back = read_volume(write_volume(Volume(array), tmp_path / "nan.nii.gz"))
    assert np.isnan(back.array[0, 0, 1]) and np.isinf(back.array[0, 1, 0]) and back.array[0, 1, 1] == 2.5


def test_derive_keeps_geometry_and_refuses_other_shapes(oblique_volume):
    derived = oblique_volume.derive(np.ones(oblique_volume.shape, np.uint8), metadata={"k": "v"})
    assert derived.geometry == oblique_volume.geometry and derived.metadata["k"] == "v"
    with pytest.raises(GeometryMismatchError):
        oblique_volume.derive(np.ones((1, 2, 3)))


def test_written_files_get_ordinary_permissions(tmp_path, oblique_volume):
    from napari_medseg._atomic import write_text_atomic

    umask = os.umask(0o022)
    try:
        volume_file = write_volume(oblique_volume, tmp_path / "v.nrrd")
        text_file = write_text_atomic(tmp_path / "t.txt", "x")
        folder = write_volume(Volume(np.zeros((2, 3, 4), np.int16)), tmp_path / "dicom")
    finally:
        os.umask(umask)
    assert (volume_file.stat().st_mode & 0o777) == 0o644
    assert (text_file.stat().st_mode & 0o777) == 0o644
    assert (folder.stat().st_mode & 0o777) == 0o755


def test_dicom_io_keeps_the_process_locale(tmp_path):
    # GDCM sets the C locale; without the restore Python's default text encoding turns to ASCII
    import locale

    before = locale.setlocale(locale.LC_ALL)
    volume = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), Geometry((0.5, 0.5, 2.0)))
    write_volume(volume, tmp_path / "series")
    assert locale.setlocale(locale.LC_ALL) == before
    back = read_volume(tmp_path / "series")
    assert locale.setlocale(locale.LC_ALL) == before
    assert np.array_equal(back.array, volume.array)
