"""The Train / fine-tune dock widget: real background jobs (python -m napari_medseg.cli finetune)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ellipsoid_mask

from napari_medseg.errors import InvalidInputError
from napari_medseg.jobs import JobStatus, list_jobs
from napari_medseg.plugin._layers import image_layer_data, labels_layer_data
from napari_medseg.plugin._settings import registry_from_config
from napari_medseg.plugin._worker import plugin_events
from napari_medseg.volume import Volume

from ._helpers import add_layer, click_and_wait

JOB_TIMEOUT_MS = 150_000


@pytest.fixture
def viewer_with_case(make_napari_viewer, small_volume):
    viewer = make_napari_viewer()
    add_layer(viewer, image_layer_data(small_volume, name="t1"))
    mask = ellipsoid_mask(small_volume.shape, (4.5, 11.5, 13.5), (6.0, 8.0, 9.0), small_volume.spacing_zyx)
    add_layer(viewer, labels_layer_data(Volume(mask.astype(np.uint8), small_volume.geometry), name="tissue"))
    return viewer


def _widget(qtbot, viewer):
    from napari_medseg.plugin._train import TrainWidget

    widget = TrainWidget(viewer)
    qtbot.addWidget(widget)
    return widget


def _setup(widget, *, name, epochs, iterations):
    widget.mode_combo.setCurrentText("fine-tune")
    widget.model_combo.setCurrentText("tiny-seg")
    widget.layers_check.setChecked(True)
    widget.image_combo.setCurrentText("t1")
    widget.labels_combo.setCurrentText("tissue")
    widget.epochs_spin.setValue(epochs)
    widget.iterations_spin.setValue(iterations)
    widget.batch_spin.setValue(1)
    widget.loss_combo.setCurrentText("dice")
    widget.device_combo.setCurrentText("cpu")
    widget.name_edit.setText(name)


def _launch(qtbot, widget):
    outcome = click_and_wait(qtbot, widget.launch_button, widget.launch_runner)
    assert outcome == "done", widget.launch_runner.last_error
    return widget.last_launched


def _status_cell(widget, job_id):
    return widget.table.item(list(widget.views).index(job_id), 2).text()


def test_finetune_job_from_layers_reaches_the_model_picker(qtbot, viewer_with_case, tiny_model, medseg_env, small_volume):
    widget = _widget(qtbot, viewer_with_case)
    fired = []
    plugin_events().registry_changed.connect(lambda: fired.append(1))
    picker = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert "tiny-seg" in picker and "tiny-ft" not in picker
    _setup(widget, name="tiny-ft", epochs=1, iterations=2)
    job = _launch(qtbot, widget)
    assert job.kind == "finetune" and "--add-to-registry" in job.argv
    assert job.argv[job.argv.index("--model") + 1] == str(tiny_model.folder)
    request = job.request  # the widget built a typed request; job.json holds it as data
    assert request.kind == "finetune" and request.model == str(tiny_model.folder) and request.name == "tiny-ft"
    assert request.epochs == 1 and request.iterations_per_epoch == 2 and request.to_argv() == job.argv
    assert job.folder.parent == medseg_env.jobs
    row = list(widget.views).index(job.id)
    assert widget.table.item(row, 0).text() == job.id and widget.selected_job_id() == job.id
    # the layers were written as a case with their exact geometry
    case_dir = job.folder.parent / "runs"
    (run,) = list(case_dir.iterdir())
    from napari_medseg.volume import read_labels, read_volume

    image = read_volume(run / "data" / "imagesTr" / "layers_0000.nrrd")
    assert image.geometry.isclose(small_volume.geometry, atol=1e-12)
    assert np.array_equal(image.array, small_volume.array)
    labels = read_labels(run / "data" / "labelsTr" / "layers.nrrd")
    assert np.array_equal(labels.array, viewer_with_case.layers["tissue"].data)

    qtbot.waitUntil(lambda: widget.views[job.id].status.is_final, timeout=JOB_TIMEOUT_MS)
    view = widget.views[job.id]
    assert view.status == JobStatus.DONE, job.log_tail(40)
    assert _status_cell(widget, job.id) == "done"
    assert fired, "registry_changed was not emitted"
    assert "tiny-ft" in [m.name for m in registry_from_config().scan().models]
    assert "tiny-ft" in [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    epochs = [e for e, _ in widget.plot_data(job.id)["loss"]]
    assert epochs == [1]
    epoch_event = next(e for e in job.read_events(0)[0] if e["event"] == "epoch")
    assert widget.plot_data(job.id)["loss"] == [(1, epoch_event["train_loss"])]
    assert list(widget.loss_line.get_ydata()) == [epoch_event["train_loss"]]
    widget.log_button.click()
    assert job.id in widget.log_view.toPlainText()

    # napari restarted: a new widget lists the finished job from the jobs folder
    again = _widget(qtbot, viewer_with_case)
    assert job.id in again.views and _status_cell(again, job.id) == "done"
    assert again.plot_data(job.id)["loss"] == [(1, epoch_event["train_loss"])]


def test_cancel_running_job_and_resume_it(qtbot, viewer_with_case, tiny_model):
    widget = _widget(qtbot, viewer_with_case)
    _setup(widget, name="tiny-long", epochs=500, iterations=3)
    job = _launch(qtbot, widget)
    # wait for the first epoch (its checkpoint is written before the next step checks the flag)
    qtbot.waitUntil(lambda: len(widget.views[job.id].loss) >= 1, timeout=60000)
    assert widget.views[job.id].status == JobStatus.RUNNING
    widget.select_job(job.id)
    widget.cancel_button.click()
    assert job.record["cancel_requested"]
    qtbot.waitUntil(lambda: widget.views[job.id].status.is_final, timeout=60000)
    assert widget.views[job.id].status == JobStatus.CANCELLED, job.log_tail(40)
    assert _status_cell(widget, job.id) == "cancelled"
    assert "tiny-long" not in [m.name for m in registry_from_config().scan().models]

    # Resume: a new job with --resume that continues after the last checkpointed epoch
    with qtbot.waitSignal(widget.resume_runner.finished, timeout=20000):
        widget.resume_button.click()
    resumed = widget.last_launched
    assert resumed.id != job.id and resumed.record["resumed_from"] == job.id and resumed.argv[-1] == "--resume"
    assert widget.selected_job_id() == resumed.id
    last_epoch = widget.views[job.id].loss[-1][0]
    qtbot.waitUntil(lambda: len(widget.views[resumed.id].loss) >= 1, timeout=60000)
    assert widget.views[resumed.id].loss[0][0] == last_epoch + 1
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: widget.views[resumed.id].status.is_final, timeout=60000)
    assert widget.views[resumed.id].status == JobStatus.CANCELLED


def test_invalid_no_label_layer(qtbot, make_napari_viewer, small_volume, tiny_model, medseg_env):
    viewer = make_napari_viewer()
    add_layer(viewer, image_layer_data(small_volume, name="t1"))
    widget = _widget(qtbot, viewer)
    _setup(widget, name="x", epochs=1, iterations=1)
    with qtbot.waitSignal(widget.launch_runner.finished, timeout=10000):
        widget.launch_button.click()
    assert isinstance(widget.launch_runner.last_error, InvalidInputError)
    assert "choose a Labels layer" in str(widget.launch_runner.last_error)
    assert list_jobs(medseg_env.jobs) == [] and widget.views == {}


def test_invalid_zero_epochs(qtbot, viewer_with_case, tiny_model, medseg_env):
    widget = _widget(qtbot, viewer_with_case)
    _setup(widget, name="x", epochs=0, iterations=1)
    with qtbot.waitSignal(widget.launch_runner.finished, timeout=20000):
        widget.launch_button.click()
    assert isinstance(widget.launch_runner.last_error, InvalidInputError)
    assert "epochs" in str(widget.launch_runner.last_error) and "greater than or equal to 1" in str(
        widget.launch_runner.last_error
    )
    assert list_jobs(medseg_env.jobs) == [] and not (medseg_env.jobs / "runs").exists()


def test_invalid_no_data_source(qtbot, viewer_with_case, tiny_model, medseg_env):
    widget = _widget(qtbot, viewer_with_case)
    _setup(widget, name="x", epochs=1, iterations=1)
    widget.layers_check.setChecked(False)
    with qtbot.waitSignal(widget.launch_runner.finished, timeout=10000):
        widget.launch_button.click()
    assert "choose a dataset folder" in str(widget.launch_runner.last_error)
    assert list_jobs(medseg_env.jobs) == []


def test_dataset_folder_plus_layers_make_one_csv(qtbot, viewer_with_case, tiny_model, small_volume, tmp_path):
    from napari_medseg.training.data import discover_cases, write_training_case

    mask = (small_volume.array > 60).astype(np.uint8)
    existing = write_training_case(small_volume, Volume(mask, small_volume.geometry), tmp_path / "ds", case_id="c1")
    widget = _widget(qtbot, viewer_with_case)
    _setup(widget, name="tiny-csv", epochs=1, iterations=1)
    widget.dataset_edit.setText(str(tmp_path / "ds"))
    widget.mode_combo.setCurrentText("train")
    assert not widget.model_combo.isEnabled() and widget.lr_spin.value() == 5e-4  # medseg train's default
    job = _launch(qtbot, widget)
    try:
        assert job.kind == "train" and "--model" not in job.argv
        data = job.argv[job.argv.index("--data") + 1]
        assert data.endswith("dataset.csv")
        cases = discover_cases(data)
        assert len(cases) == 2 and cases[0].images == existing.images
        assert cases[1].images[0].name == "layers_0000.nrrd"
        assert job.argv[job.argv.index("--learning-rate") + 1] == "0.0005"
        assert job.argv[job.argv.index("--loss") + 1] == "dice"
        assert job.request.learning_rate == 5e-4 and job.request.loss == "dice" and job.request.data == data
    finally:
        status = job.cancel(timeout_s=0.0, kill_after_s=0.0)  # this test needs no training: stop it now
    assert status == JobStatus.CANCELLED
    qtbot.waitUntil(lambda: widget.views[job.id].status == JobStatus.CANCELLED, timeout=5000)
