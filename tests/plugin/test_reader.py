"""The napari reader: every format to layers with exact geometry, header and label names; errors notify."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import oblique_geometry

from napari_medseg.plugin._layers import (
    GEOMETRY_KEY,
    HEADER_KEY,
    display_transform,
    volume_from_layer,
)
from napari_medseg.plugin._reader import layer_name, napari_get_reader
from napari_medseg.volume import Geometry, Volume, write_volume


def _volume(geometry=None, dtype=np.float32, shape=(4, 5, 6)) -> Volume:
    array = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    return Volume(array, geometry or Geometry((0.8, 1.1, 2.5), (-3.5, 12.0, 40.25)), {"patient_note": "abc 1"})


def _read(path):
    reader = napari_get_reader(str(path))
    assert callable(reader)
    return reader(str(path))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_reads_image_with_geometry(tmp_path, suffix):
    volume = _volume()
    path = write_volume(volume, tmp_path / f"t1{suffix}")
    [(data, kwargs, kind)] = _read(path)
    assert kind == "image" and kwargs["name"] == "t1"
    assert np.array_equal(data, volume.array)
    assert np.allclose(kwargs["scale"], (2.5, 1.1, 0.8), rtol=0, atol=1e-6)  # NIfTI stores float32
    assert np.allclose(kwargs["translate"], (40.25, 12.0, -3.5), rtol=0, atol=1e-6)
    assert kwargs["units"] == ("mm", "mm", "mm") and kwargs["axis_labels"] == ("z", "y", "x")
    assert Geometry(**{k: kwargs["metadata"][GEOMETRY_KEY][k] for k in ("spacing", "origin", "direction")}).isclose(
        volume.geometry, atol=1e-6
    )
    if suffix in (".nrrd", ".mha"):  # NIfTI has no free header keys
        assert kwargs["metadata"][HEADER_KEY]["patient_note"] == "abc 1"


def test_oblique_volume_notice_and_exact_geometry(tmp_path, make_napari_viewer, notifications):
    volume = _volume(oblique_geometry())
    path = write_volume(volume, tmp_path / "obl.nrrd")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-medseg")
    assert volume_from_layer(layer).geometry.isclose(volume.geometry, atol=1e-6)
    assert np.allclose(layer.rotate, display_transform(volume.geometry)["rotate"])
    assert any("'obl'" in m and "oblique" in m for m, _ in notifications)


def test_label_map_by_name_and_seg_nrrd(tmp_path):
    labels = Volume(np.array([[[0, 1, 2], [2, 1, 0]]], np.int16), Geometry((1.0, 1.0, 3.0)))
    [(data, kwargs, kind)] = _read(write_volume(labels, tmp_path / "brain_mask.nii.gz"))
    assert kind == "labels" and data.dtype == np.uint8 and data.tolist() == [[[0, 1, 2], [2, 1, 0]]]
    [(_, _, kind)] = _read(write_volume(labels, tmp_path / "brain.nii.gz"))
    assert kind == "image"  # an integer file without a label-like name stays an image

    seg = write_volume(labels, tmp_path / "tissue.seg.nrrd", label_names={1: "grey", 2: "white"},
                       label_colors={1: (1.0, 0.0, 0.0), 2: (0.0, 0.5, 1.0)})
    [(data, kwargs, kind)] = _read(seg)
    assert kind == "labels" and kwargs["name"] == "tissue"
    assert kwargs["features"] == {"index": [1, 2], "name": ["grey", "white"]}
    colours = kwargs["colormap"].color_dict
    assert np.allclose(colours[1], (1.0, 0.0, 0.0, 1.0)) and np.allclose(colours[2], (0.0, 0.5, 1.0, 1.0))
    assert np.allclose(colours[0], 0.0)  # background transparent


def test_seg_nrrd_names_show_in_viewer(tmp_path, make_napari_viewer):
    labels = Volume(np.array([[[0, 1, 2], [2, 1, 0]]], np.uint8), Geometry((1.0, 1.0, 3.0)))
    seg = write_volume(labels, tmp_path / "tissue.seg.nrrd", label_names={1: "grey", 2: "white"},
                       label_colors={1: (1.0, 0.0, 0.0), 2: (0.0, 0.5, 1.0)})
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(seg), plugin="napari-medseg")
    assert type(layer).__name__ == "Labels"
    assert layer._get_properties((0, 0, 2)) == ["name: white"]
    assert np.allclose(layer.colormap.map(np.array([1]))[0], (1.0, 0.0, 0.0, 1.0))


def test_dicom_folder_and_single_file(tmp_path):
    volume = Volume(np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5), Geometry((0.5, 0.5, 2.0), (1.0, 2.0, 3.0)))
    folder = write_volume(volume, tmp_path / "series")
    [(data, kwargs, kind)] = _read(folder)
    assert kind == "image" and np.array_equal(data, volume.array)
    assert np.allclose(kwargs["scale"], (2.0, 0.5, 0.5)) and np.allclose(kwargs["translate"], (3.0, 2.0, 1.0))
    one_file = sorted(folder.glob("*.dcm"))[1]
    [(data, kwargs, _)] = _read(one_file)
    assert data.shape == (3, 4, 5)  # the whole series the file belongs to


def _write_imzml(path):
    from pyimzml.ImzMLWriter import ImzMLWriter

    mzs = np.array([100.0, 200.0, 200.01, 300.0, 400.0])
    with ImzMLWriter(str(path), mode="continuous") as writer:
        for y in range(3):
            for x in range(4):
                writer.addSpectrum(mzs, np.array([y + 1, x, 10, 1, 2], np.float32), (x + 1, y + 1, 1))
    return path


@pytest.mark.filterwarnings("ignore:.*no pixel size")
def test_imzml_tic_and_top_peaks(tmp_path, monkeypatch):
    pytest.importorskip("pyimzml")
    path = _write_imzml(tmp_path / "maldi.imzML")
    monkeypatch.delenv("MEDSEG_IMZML_MZ", raising=False)
    layers = _read(path)
    names = [kwargs["name"] for _, kwargs, _ in layers]
    # mean spectrum [2, 1.5, 10, 1, 2]: its local maxima are 100, 200.01 and 400
    assert names == ["maldi TIC", "maldi m/z 100.0000", "maldi m/z 200.0100", "maldi m/z 400.0000"]
    tic = layers[0][0]
    assert tic.shape == (1, 3, 4)
    assert np.array_equal(tic[0], np.arange(1, 4)[:, None] + np.arange(4)[None, :] + 13)
    assert np.array_equal(layers[1][0][0], np.repeat(np.arange(1, 4)[:, None], 4, axis=1))
    assert np.array_equal(layers[2][0][0], np.full((3, 4), 10.0))  # 200.01 only (+-0.005 Da)


@pytest.mark.filterwarnings("ignore:.*no pixel size")
def test_imzml_mz_from_environment(tmp_path, monkeypatch):
    pytest.importorskip("pyimzml")
    path = _write_imzml(tmp_path / "maldi.imzML")
    monkeypatch.setenv("MEDSEG_IMZML_MZ", "200")
    layers = _read(path)
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["maldi TIC", "maldi m/z 200.0000"]
    assert np.array_equal(layers[1][0][0], np.repeat(np.arange(4)[None, :], 3, axis=0))


@pytest.mark.parametrize("name", ["notes.txt", "photo.png", "table.csv"])
def test_returns_none_for_other_files(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a volume")
    assert napari_get_reader(str(path)) is None
    assert napari_get_reader([str(path)]) is None


def test_returns_none_for_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert napari_get_reader(str(tmp_path)) is None


def test_layer_name_strips_double_extensions():
    assert layer_name("/x/ct.nii.gz") == "ct" and layer_name("seg.seg.nrrd") == "seg" and layer_name("a.mha") == "a"


def test_invalid_corrupt_file_notifies_and_adds_nothing(tmp_path, make_napari_viewer, notifications):
    path = tmp_path / "broken.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n\x00\x01")
    assert _read(path) == [(None,)]
    assert any(s == "error" and "broken.nrrd" in m and "cannot read" in m for m, s in notifications)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-medseg")
    assert len(viewer.layers) == 0


@pytest.mark.filterwarnings("ignore:.*no pixel size")
def test_invalid_imzml_mz_environment(tmp_path, monkeypatch, notifications):
    pytest.importorskip("pyimzml")
    path = _write_imzml(tmp_path / "maldi.imzML")
    monkeypatch.setenv("MEDSEG_IMZML_MZ", "abc")
    assert _read(path) == [(None,)]
    assert any("MEDSEG_IMZML_MZ='abc'" in m for m, _ in notifications)


def test_dicom_study_gives_one_layer_per_series_and_4d_layers(tmp_path, make_napari_viewer, notifications):
    from _dicom import ORIENTATIONS, write_series

    rng = np.random.default_rng(0)
    t1 = rng.integers(0, 500, (4, 10, 8)).astype(np.int16)
    dwi = rng.integers(0, 500, (3, 5, 10, 8)).astype(np.int16)
    study = tmp_path / "study"
    write_series(study / "p" / "t1", t1, number=2, description="T1")
    write_series(study / "p" / "dwi", dwi, number=4, description="DWI", orientation=ORIENTATIONS["axial_hfp"])
    write_series(study / "p" / "gap", t1, number=6, description="broken", skip=(1,))
    layers = _read(study)
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["T1 (#2)", "DWI (#4)"]
    (t1_data, t1_kwargs, _), (dwi_data, dwi_kwargs, kind) = layers
    assert np.array_equal(t1_data, t1) and t1_kwargs["scale"] == pytest.approx((2.0, 0.8, 0.9))
    assert kind == "image" and dwi_data.shape == (3, 5, 10, 8) and np.array_equal(dwi_data, dwi)
    assert dwi_kwargs["axis_labels"] == ("volume", "z", "y", "x") and dwi_kwargs["scale"][0] == 1.0
    assert np.allclose(np.diag(dwi_kwargs["rotate"]), (1, 1, -1, -1))  # HFP: x and y flipped, z along the normal
    assert any(s == "error" and "broken" in m and "missing slice" in m for m, s in notifications)
    viewer = make_napari_viewer()
    viewer.open(str(study), plugin="napari-medseg")
    assert [layer.name for layer in viewer.layers] == ["T1 (#2)", "DWI (#4)"]
    assert viewer.layers["DWI (#4)"].data.ndim == 4 and viewer.dims.ndim == 4
