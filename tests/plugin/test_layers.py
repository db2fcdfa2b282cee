"""Volume <-> layer geometry and the TaskRunner (progress, cancel, errors) in a real viewer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_medseg.errors import CancelledError, InvalidInputError
from napari_medseg.plugin._layers import (
    GEOMETRY_KEY,
    geometry_notice,
    image_layer_data,
    labels_layer_data,
    layer_geometry,
    volume_from_layer,
)
from napari_medseg.volume import Geometry, Volume

from ._helpers import add_layer


def test_identity_geometry_is_physical_space(make_napari_viewer, small_volume):
    viewer = make_napari_viewer()
    layer = add_layer(viewer, image_layer_data(small_volume, name="t1"))
    assert tuple(layer.scale) == (2.0, 1.0, 1.0)
    assert tuple(layer.translate) == (7.25, 30.0, -12.5)
    assert tuple(layer.units) != () and str(layer.units[0]) in ("mm", "millimeter")
    # voxel (z, y, x) = (3, 4, 5) sits at LPS (x, y, z) = origin + index * spacing
    assert np.allclose(layer.data_to_world((3, 4, 5)), (7.25 + 6.0, 30.0 + 4.0, -12.5 + 5.0))
    assert geometry_notice(small_volume.geometry, "t1") is None
    back = volume_from_layer(layer)
    assert back.geometry.isclose(small_volume.geometry, atol=0)
    assert np.array_equal(back.array, small_volume.array)


def test_flipped_geometry_world_coordinates_are_lps(make_napari_viewer, ras_volume):
    viewer = make_napari_viewer()
    layer = add_layer(viewer, image_layer_data(ras_volume, name="ras"))
    index_xyz = np.array([5, 4, 3, 1.0])
    expected_xyz = ras_volume.geometry.index_to_physical() @ index_xyz
    assert np.allclose(layer.data_to_world((3, 4, 5)), expected_xyz[:3][::-1])
    assert geometry_notice(ras_volume.geometry, "ras") is None
    assert volume_from_layer(layer).geometry.isclose(ras_volume.geometry, atol=0)


def test_oblique_geometry_kept_in_metadata_with_notice(make_napari_viewer, oblique_volume):
    viewer = make_napari_viewer()
    layer = add_layer(viewer, image_layer_data(oblique_volume, name="obl"))
    notice = geometry_notice(oblique_volume.geometry, "obl")
    assert notice is not None and "oblique" in notice and "'obl'" in notice
    assert GEOMETRY_KEY in layer.metadata
    assert volume_from_layer(layer).geometry.isclose(oblique_volume.geometry, atol=1e-12)
    labels = Volume((oblique_volume.array > 100).astype(np.uint8), oblique_volume.geometry)
    lab_layer = add_layer(viewer, labels_layer_data(labels, name="mask"))
    assert volume_from_layer(lab_layer).geometry.isclose(oblique_volume.geometry, atol=1e-12)


def test_moved_layer_uses_what_the_user_sees(make_napari_viewer, small_volume):
    viewer = make_napari_viewer()
    layer = add_layer(viewer, image_layer_data(small_volume, name="t1"))
    layer.translate = (0.0, 0.0, 0.0)
    assert layer_geometry(layer) == Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0))


def test_invalid_layer_not_3d(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((5, 6)), name="flat")
    with pytest.raises(InvalidInputError, match="'flat'.*3D"):
        volume_from_layer(layer)


def test_invalid_float_labels(make_napari_viewer, small_volume):
    viewer = make_napari_viewer()
    layer = add_layer(viewer, image_layer_data(small_volume, name="t1"))
    with pytest.raises(InvalidInputError, match="'t1'.*integers"):
        volume_from_layer(layer, labels=True)


# ----------------------------------------------------------------------------------- TaskRunner
def _slow_sum(n: int, *, progress, cancel):
    total = 0
    for i in range(n):
        if cancel.is_set():
            raise CancelledError("summing cancelled")
        time.sleep(0.01)
        total += i
        progress(i + 1, n)
    return total


def _runner(qtbot):
    from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

    from napari_medseg.plugin._worker import TaskRunner

    button, bar, status = QPushButton("Run"), QProgressBar(), QLabel()
    for w in (button, bar, status):
        qtbot.addWidget(w)
    return TaskRunner(button, bar, status, what="Summing"), button, bar, status


def test_task_runner_returns_on_main_thread(qtbot):
    runner, button, bar, status = _runner(qtbot)
    results = []
    runner.start(_slow_sum, 20, on_returned=lambda r: results.append((r, threading.current_thread())))
    assert button.text() == "Cancel" and runner.running
    with qtbot.waitSignal(runner.finished, timeout=10000):
        pass
    assert results == [(190, threading.main_thread())]
    assert runner.last_outcome == "done" and button.text() == "Run"
    assert bar.value() == bar.maximum() == 20
    assert "done" in status.text()


def test_task_runner_cancel(qtbot):
    runner, button, bar, status = _runner(qtbot)
    results = []
    runner.start(_slow_sum, 10_000, on_returned=results.append)
    qtbot.waitUntil(lambda: bar.value() > 2, timeout=10000)
    runner.cancel()
    with qtbot.waitSignal(runner.finished, timeout=10000):
        pass
    assert results == [] and runner.last_outcome == "cancelled"
    assert status.text() == "Summing: cancelled" and button.isEnabled()


def _fails(*, progress, cancel):
    raise InvalidInputError("layer 'x': expected a 3D volume")


def test_task_runner_error_reaches_the_user(qtbot):
    runner, button, bar, status = _runner(qtbot)
    runner.start(_fails)
    with qtbot.waitSignal(runner.finished, timeout=10000):
        pass
    assert runner.last_outcome == "failed"
    assert isinstance(runner.last_error, InvalidInputError)
    assert "expected a 3D volume" in status.text()


def test_task_runner_generator_steps_yield_to_the_event_loop(qtbot):
    from qtpy.QtCore import QTimer

    runner, button, bar, status = _runner(qtbot)
    order = []
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(len(order)))
    timer.start(0)

    def add_layers(result):
        for i in range(3):
            order.append((result, i, threading.current_thread()))
            yield

    runner.start(_slow_sum, 3, on_returned=add_layers)
    with qtbot.waitSignal(runner.finished, timeout=10000):
        pass
    timer.stop()
    assert order == [(3, i, threading.main_thread()) for i in range(3)]
    assert runner.last_outcome == "done" and button.isEnabled() and button.text() == "Run"
    # the event loop ran between steps: the timer saw 1 and 2 steps done before the last one
    assert {1, 2} <= set(ticks)


def test_task_runner_generator_step_error_reaches_the_user(qtbot):
    runner, button, bar, status = _runner(qtbot)

    def add_layers(result):
        yield
        raise InvalidInputError("layer 'out': cannot be added")

    runner.start(_slow_sum, 2, on_returned=add_layers)
    with qtbot.waitSignal(runner.finished, timeout=10000):
        pass
    assert runner.last_outcome == "failed" and "cannot be added" in status.text()
