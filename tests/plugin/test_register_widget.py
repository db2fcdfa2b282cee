"""The Register (MALDI-MRI) dock widget in a real viewer: the synthetic pair end to end."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.errors import GeometryMismatchError, InvalidInputError
from napari_medseg.plugin._layers import (
    GEOMETRY_KEY,
    PROVENANCE_KEY,
    image_layer_data,
    labels_layer_data,
)
from napari_medseg.registration.evaluate import overlap_scores, registration_report
from napari_medseg.registration.regularizers import Elastic
from napari_medseg.registration.synthetic import synthetic_pair
from napari_medseg.registration.volumes import apply_field, register_volumes
from napari_medseg.volume import Geometry, Volume

from ._helpers import add_layer, click_and_wait

GEOMETRY = Geometry((0.5, 0.5, 1.0), (10.0, -5.0, 2.0))
PARAMS = {"levels": 2, "max_iterations": 60}


@pytest.fixture
def pair_volumes():
    pair = synthetic_pair((48, 48))
    return {
        "fixed": Volume(pair.fixed[None], GEOMETRY),
        "moving": Volume(pair.moving[None], GEOMETRY),
        "fixed mask": Volume(pair.fixed_mask[None].astype(np.uint8), GEOMETRY),
        "moving mask": Volume(pair.moving_mask[None].astype(np.uint8), GEOMETRY),
    }


@pytest.fixture
def widget(make_napari_viewer, qtbot, pair_volumes):
    from napari_medseg.plugin._register import RegisterWidget

    viewer = make_napari_viewer()
    for name, volume in pair_volumes.items():
        maker = labels_layer_data if "mask" in name else image_layer_data
        add_layer(viewer, maker(volume, name=name))
    w = RegisterWidget(viewer)
    qtbot.addWidget(w)
    w.fixed_combo.setCurrentText("fixed")
    w.moving_combo.setCurrentText("moving")
    w.fixed_mask_combo.setCurrentText("fixed mask")
    w.moving_mask_combo.setCurrentText("moving mask")
    w.levels_spin.setValue(PARAMS["levels"])
    w.iterations_spin.setValue(PARAMS["max_iterations"])
    return w


def test_register_synthetic_pair(widget, qtbot, pair_volumes):
    viewer = widget.viewer
    click_and_wait(qtbot, widget.run_button, widget.runner)
    assert widget.runner.last_outcome == "done", widget.runner.last_error
    warped = viewer.layers["moving registered"]
    mask = viewer.layers["moving registered mask"]
    magnitude = viewer.layers["moving deformation (mm)"]
    assert type(mask).__name__ == "Labels" and type(warped).__name__ == "Image"
    fixed_layer = viewer.layers["fixed"]
    for layer in (warped, mask, magnitude):
        assert layer.data.shape == (1, 48, 48)
        assert tuple(layer.scale) == tuple(fixed_layer.scale) == (1.0, 0.5, 0.5)
        assert tuple(layer.translate) == tuple(fixed_layer.translate) == (2.0, -5.0, 10.0)
        assert layer.metadata[GEOMETRY_KEY] == GEOMETRY.to_dict()
        assert layer.metadata["medseg_registration"]["tau"] == 1.0
        assert layer.metadata[PROVENANCE_KEY]["parameters"]["levels"] == 2

    # the same numbers as a direct core call with the same parameters (medseg register --json)
    direct = register_volumes(
        pair_volumes["fixed"], pair_volumes["moving"], fixed_mask=pair_volumes["fixed mask"],
        moving_mask=pair_volumes["moving mask"], metric="udt", regularizer=Elastic(mu=0.5, lambda_=0.5), tau=1.0,
        scale_invariant=False, **PARAMS,
    )
    expected = registration_report(direct, moving_mask=pair_volumes["moving mask"])
    report = widget.last_output.report
    assert {k: v for k, v in report.items() if k != "seconds"} == {k: v for k, v in expected.items() if k != "seconds"}
    assert np.array_equal(warped.data, direct.warped.array)
    assert np.array_equal(mask.data, direct.warped_mask.array)
    assert np.allclose(magnitude.data[0], np.hypot(*direct.result.displacement), atol=1e-5)
    assert report["f_measure"] > report["f_measure_before"]
    assert report["udt_ssd"] < report["udt_ssd_before"]
    assert widget.results_table.item(3, 1).text() == f"{report['f_measure']:.6g}"
    assert widget.results_table.item(0, 0).text() == f"{report['udt_ssd_before']:.6g}"

    # apply the stored field to the moving mask: nearest-neighbour labels on the fixed grid
    widget.apply_combo.setCurrentText("moving mask")
    click_and_wait(qtbot, widget.apply_button, widget.apply_runner)
    applied = viewer.layers["moving mask warped"]
    assert type(applied).__name__ == "Labels"
    assert np.array_equal(applied.data, apply_field(pair_volumes["moving mask"], direct.field, nearest=True).array)
    assert overlap_scores(applied.data > 0, mask.data > 0).f_measure > 0.97
    assert tuple(applied.translate) == tuple(fixed_layer.translate)


def test_cancel_mid_run_adds_no_layer(widget, qtbot):
    widget.levels_spin.setValue(1)
    widget.iterations_spin.setValue(100_000)
    widget.metric_combo.setCurrentText("intensity")
    before = [layer.name for layer in widget.viewer.layers]
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.progress_bar.value() > 0 or not widget.runner.running, timeout=20000)
    with qtbot.waitSignal(widget.runner.finished, timeout=20000):
        widget.run_button.click()  # the Run button is Cancel while running
    assert widget.runner.last_outcome == "cancelled"
    assert [layer.name for layer in widget.viewer.layers] == before
    assert widget.last_output is None


def test_invalid_negative_tau(widget, qtbot):
    widget.tau_spin.setValue(-1.0)
    before = len(widget.viewer.layers)
    click_and_wait(qtbot, widget.run_button, widget.runner)
    assert widget.runner.last_outcome == "failed"
    assert isinstance(widget.runner.last_error, InvalidInputError)
    assert "tau=-1.0: expected a finite value > 0" in str(widget.runner.last_error)
    assert "tau=-1.0" in widget.status_label.text()
    assert len(widget.viewer.layers) == before


def test_invalid_grid_mismatch_offers_resample(widget, qtbot, pair_volumes):
    shifted = Volume(pair_volumes["moving"].array, Geometry((0.5, 0.5, 1.0), (11.0, -5.0, 2.0)))
    add_layer(widget.viewer, image_layer_data(shifted, name="shifted"))
    widget.moving_combo.setCurrentText("shifted")
    widget.moving_mask_combo.setCurrentText(widget.moving_mask_combo.itemText(0))  # auto mask
    widget.iterations_spin.setValue(5)
    click_and_wait(qtbot, widget.run_button, widget.runner)
    assert isinstance(widget.runner.last_error, GeometryMismatchError)
    assert "Resample moving onto the fixed grid" in str(widget.runner.last_error)
    widget.resample_check.setChecked(True)
    click_and_wait(qtbot, widget.run_button, widget.runner)
    assert widget.runner.last_outcome == "done"
    assert widget.viewer.layers["shifted registered"].data.shape == (1, 48, 48)


def test_invalid_apply_without_field(widget, qtbot):
    widget.apply_combo.setCurrentText("moving mask")
    before = len(widget.viewer.layers)
    click_and_wait(qtbot, widget.apply_button, widget.apply_runner)
    assert "run a registration first" in str(widget.apply_runner.last_error)
    assert len(widget.viewer.layers) == before


@pytest.mark.filterwarnings("ignore:.*no pixel size")
def test_ion_image_helper(widget, qtbot, tmp_path):
    pytest.importorskip("pyimzml")
    from pyimzml.ImzMLWriter import ImzMLWriter

    path = tmp_path / "tiny.imzML"
    with ImzMLWriter(str(path), mode="continuous") as writer:
        for y in range(3):
            for x in range(4):
                writer.addSpectrum(np.array([100.0, 200.0]), np.array([y + 1, x], np.float32), (x + 1, y + 1, 1))
    widget.imzml_edit.setText(str(path))
    widget.mz_spin.setValue(100.0)
    widget.tolerance_spin.setValue(10.0)
    click_and_wait(qtbot, widget.ion_button, widget.ion_runner)
    assert widget.ion_runner.last_outcome == "done", widget.ion_runner.last_error
    layer = widget.viewer.layers["tiny.imzML m/z 100"]
    assert np.array_equal(layer.data[0], np.arange(1, 4)[:, None] * np.ones((1, 4)))
    assert "moving" in [widget.moving_combo.itemText(i) for i in range(widget.moving_combo.count())]
    assert "tiny.imzML m/z 100" in [widget.fixed_combo.itemText(i) for i in range(widget.fixed_combo.count())]
    widget.mz_spin.setValue(900.0)  # outside the spectra's range: the core's message
    click_and_wait(qtbot, widget.ion_button, widget.ion_runner)
    assert "outside the spectra's m/z range" in str(widget.ion_runner.last_error)


def test_2d_layers_register_as_single_slices(make_napari_viewer, qtbot):
    from napari_medseg.plugin._register import RegisterWidget

    pair = synthetic_pair((40, 40))
    viewer = make_napari_viewer()
    viewer.add_image(pair.fixed, name="f2d", scale=(0.5, 0.25), translate=(3.0, 1.0))
    viewer.add_image(pair.moving, name="m2d", scale=(0.5, 0.25), translate=(3.0, 1.0))
    widget = RegisterWidget(viewer)
    qtbot.addWidget(widget)
    widget.fixed_combo.setCurrentText("f2d")
    widget.moving_combo.setCurrentText("m2d")
    widget.levels_spin.setValue(1)
    widget.iterations_spin.setValue(5)
    click_and_wait(qtbot, widget.run_button, widget.runner)
    assert widget.runner.last_outcome == "done", widget.runner.last_error
    out = viewer.layers["m2d registered"]
    assert out.data.shape == (1, 40, 40)
    assert tuple(out.scale) == (1.0, 0.5, 0.25) and tuple(out.translate) == (0.0, 3.0, 1.0)
    direct = register_volumes(Volume(pair.fixed[None], Geometry((0.25, 0.5, 1.0), (1.0, 3.0, 0.0))),
                              Volume(pair.moving[None], Geometry((0.25, 0.5, 1.0), (1.0, 3.0, 0.0))),
                              levels=1, max_iterations=5)
    assert np.array_equal(out.data, direct.warped.array)
