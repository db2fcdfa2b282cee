"""imzML reading: ion images by m/z with ppm or Da tolerance, TIC normalisation, mean spectrum."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyimzml")
from pyimzml.ImzMLWriter import ImzMLWriter  # noqa: E402

from napari_medseg.errors import FileFormatError, InvalidInputError  # noqa: E402
from napari_medseg.registration.imzml import (  # noqa: E402
    ion_image,
    ion_images,
    mean_spectrum,
    open_imzml,
    tic_image,
)

MZS = np.array([100.0, 200.0, 200.01, 300.0, 400.0])


def write_imzml(path, *, mode="continuous", shape=(3, 4)):
    """Pixel (y, x) has intensities [y+1, x, 10, 1, 2] at MZS (processed: drops 400 where x == 0)."""
    with ImzMLWriter(str(path), mode=mode) as writer:
        for y in range(shape[0]):
            for x in range(shape[1]):
                ints = np.array([y + 1, x, 10, 1, 2], np.float32)
                mzs = MZS
                if mode == "processed" and x == 0:
                    mzs, ints = MZS[:-1], ints[:-1]
                writer.addSpectrum(mzs, ints, (x + 1, y + 1, 1))
    return path


@pytest.fixture
def imzml_file(tmp_path):
    return write_imzml(tmp_path / "tiny.imzML")


def test_open_and_geometry(imzml_file):
    with pytest.warns(UserWarning, match="no pixel size"):
        data = open_imzml(imzml_file)
    assert data.shape == (3, 4)
    assert data.mz_range == (100.0, 400.0)
    assert data.coordinates[:, 0].max() == 2 and data.coordinates[:, 1].max() == 3


@pytest.mark.filterwarnings("ignore:.*no pixel size")
def test_ion_image_ppm_and_da(imzml_file):
    img = ion_image(imzml_file, 100.0, tolerance_ppm=10)
    assert img.shape == (1, 3, 4)
    np.testing.assert_array_equal(img.array[0], np.arange(1, 4)[:, None] * np.ones((1, 4)))
    # 200 +- 10 ppm (0.002 Da) takes only the 200.0 peak; +- 0.02 Da also takes 200.01
    narrow = ion_image(imzml_file, 200.0, tolerance_ppm=10).array[0]
    wide = ion_image(imzml_file, 200.0, tolerance_da=0.02).array[0]
    np.testing.assert_array_equal(narrow, np.arange(4)[None, :] * np.ones((3, 1)))
    np.testing.assert_array_equal(wide, narrow + 10)
    assert img.metadata["mz"] == "100" and img.metadata["tolerance"] == "10 ppm"


@pytest.mark.filterwarnings("ignore:.*no pixel size")
def test_tic_normalisation_and_several_ions(imzml_file):
    stack = ion_images(imzml_file, [100.0, 300.0], tolerance_da=0.5, tic_normalize=True)
    assert stack.array.shape == (1, 3, 4, 2)
    y, x = 2, 3
    tic = (y + 1) + x + 10 + 1 + 2
    assert stack.array[0, y, x, 0] == pytest.approx((y + 1) / tic)
    assert stack.array[0, y, x, 1] == pytest.approx(1 / tic)
    tic_map = tic_image(imzml_file).array[0]
    assert tic_map[y, x] == tic


@pytest.mark.filterwarnings("ignore:.*no pixel size")
def test_mean_spectrum_continuous_and_processed(tmp_path, imzml_file):
    mzs, mean = mean_spectrum(imzml_file)
    np.testing.assert_array_equal(mzs, MZS)
    np.testing.assert_allclose(mean, [2.0, 1.5, 10.0, 1.0, 2.0])
    processed = write_imzml(tmp_path / "proc.imzML", mode="processed")
    mzs, mean = mean_spectrum(processed, bin_width_da=1.0)
    # bins of 1 Da from 100: the 400 peak is in the last bin, present in 9 of 12 pixels
    assert mean[-1] == pytest.approx(2.0 * 9 / 12)
    assert mean.sum() == pytest.approx(2.0 + 1.5 + 10.0 + 1.0 + 2.0 * 9 / 12)


@pytest.mark.filterwarnings("ignore:.*no pixel size")
def test_invalid_imzml_inputs(tmp_path, imzml_file):
    with pytest.raises(InvalidInputError, match="m/z 5000 is outside the spectra's m/z range 100-400"):
        ion_image(imzml_file, 5000.0, tolerance_ppm=5)
    with pytest.raises(InvalidInputError, match="exactly one of tolerance_ppm and tolerance_da"):
        ion_image(imzml_file, 100.0)
    with pytest.raises(InvalidInputError, match="tolerance_ppm"):
        ion_image(imzml_file, 100.0, tolerance_ppm=-1)
    with pytest.raises(InvalidInputError, match="at least one"):
        ion_images(imzml_file, [], tolerance_ppm=5)
    with pytest.raises(InvalidInputError, match="bin_width_da"):
        mean_spectrum(write_imzml(tmp_path / "p.imzML", mode="processed"), bin_width_da=0.0)
    with pytest.raises(FileFormatError, match="file not found"):
        open_imzml(tmp_path / "missing.imzML")
    broken = tmp_path / "broken.imzML"
    broken.write_text("<not imzml")
    with pytest.raises(FileFormatError, match="cannot read this imzML file"):
        open_imzml(broken)
