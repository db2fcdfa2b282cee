"""The Train / fine-tune dock widget: background training jobs, their table and a live plot.

A thin face over :mod:`napari_medseg.jobs` and ``medseg train`` / ``medseg finetune``: Launch
builds a typed :class:`~napari_medseg.jobs.TrainRequest` / :class:`~napari_medseg.jobs.FinetuneRequest`
(the request ``medseg train`` / ``medseg finetune`` parse into) and starts it with :func:`~napari_medseg.jobs.start_job` under the plugin's
jobs root, in a worker (writing the current layers as a case and spawning the child never block
the GUI). The training runs in a detached child process, so it survives napari; the table lists
every job under the jobs root (:func:`~napari_medseg.jobs.list_jobs`), so jobs started before a
restart, or by ``medseg jobs start``, are re-attached. A ``QTimer`` reads only the new events of
the jobs that are not final (:meth:`~napari_medseg.jobs.Job.read_events` with the last offset);
Cancel only creates the job's cancel flag (:meth:`~napari_medseg.jobs.Job.request_cancel`), so the
GUI never waits. When a job reports ``done`` with a model folder, the plugin's
``registry_changed`` signal fires (model pickers refresh) and the user is told the model is ready
in Segment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from napari_medseg.choices import DEVICE_NAMES
from napari_medseg.errors import InvalidInputError
from napari_medseg.jobs import (
    EventType,
    FinetuneRequest,
    Job,
    JobKind,
    JobStatus,
    TrainRequest,
    list_jobs,
    new_run_name,
    start_job,
)
from napari_medseg.plugin._layers import volume_from_layer
from napari_medseg.plugin._settings import (
    jobs_root_from_config,
    plugin_config,
    registry_from_config,
)
from napari_medseg.plugin._widgets import (
    LayerCombo,
    close_when_undocked,
    double_spin,
    int_spin,
    refill,
    set_cell,
)
from napari_medseg.plugin._worker import TaskRunner, notify_error, plugin_events
from napari_medseg.volume import Volume

if TYPE_CHECKING:
    import napari

__all__ = ["JOB_COLUMNS", "POLL_INTERVAL_MS", "TrainWidget", "TrainingRequest", "launch_training_job"]

_LOG = logging.getLogger(__name__)
POLL_INTERVAL_MS = 500
_RESCAN_EVERY = 10  # ticks: pick up jobs started elsewhere (medseg jobs start) every 5 s
JOB_COLUMNS = ("id", "kind", "status", "progress", "loss", "metric")
_DEVICES = DEVICE_NAMES  # the one list (napari_medseg.choices.Device)
_MODES = {"fine-tune": JobKind.FINETUNE, "train": JobKind.TRAIN}
_RUNS_FOLDER = "runs"  # under the jobs root; list_jobs skips folders without job.json
_LAYER_CASE_ID = "layers"


@dataclass(frozen=True)
class TrainingRequest:
    """What the widget asks for; :func:`launch_training_job` turns it into a job."""

    kind: JobKind
    dataset: str | None
    layer_case: tuple[Volume, Volume] | None
    base_model: str | None
    freeze: str
    name: str | None
    epochs: int
    iterations_per_epoch: int
    batch_size: int
    learning_rate: float
    loss: str
    mixup_alpha: float
    device: str


def launch_training_job(request: TrainingRequest, *, jobs_root: str | Path) -> Job:
    """Validate ``request``, write the layer case if any, and start the ``medseg`` job (worker side).

    The run folder is ``<jobs_root>/runs/<time>-<name>-<hex>/`` with ``data/`` (the layer case, in
    the imagesTr/labelsTr layout), ``dataset.csv`` (when a dataset folder and the layer case are
    combined) and ``output/`` (checkpoints and the exported model, added to the user registry).

    Raises
    ------
    InvalidInputError
        No data source, no base model for fine-tuning, or an option the training config refuses
        (the message names the field, as ``medseg train`` says it).
    FileFormatError
        If the dataset folder or CSV cannot be read.
    """
    from napari_medseg.training.config import load_config
    from napari_medseg.training.data import (
        discover_cases,
        write_dataset_csv,
        write_training_case,
    )

    if not request.dataset and request.layer_case is None:
        raise InvalidInputError("training data: choose a dataset folder or CSV, or tick 'current layers as a case'")
    if request.kind == JobKind.FINETUNE and not request.base_model:
        raise InvalidInputError("fine-tune: choose a base model (the registry has none?)")
    overrides = {
        "epochs": request.epochs,
        "iterations_per_epoch": request.iterations_per_epoch,
        "batch_size": request.batch_size,
        "learning_rate": request.learning_rate,
        "loss": request.loss,
        "mixup_alpha": request.mixup_alpha,
        "device": request.device,
        "name": request.name or None,
    }
    load_config(None, overrides=overrides)  # the config's own validation, before any file is written
    if request.dataset:
        dataset_cases = discover_cases(request.dataset)
    stem = request.name or (Path(request.base_model).name if request.base_model else "model")
    run = (Path(jobs_root) / _RUNS_FOLDER / new_run_name(stem)).resolve()
    run.mkdir(parents=True)
    data: Path | str
    if request.layer_case is not None:
        image, label = request.layer_case
        case = write_training_case(image, label, run / "data", case_id=_LAYER_CASE_ID)
        data = write_dataset_csv([*dataset_cases, case], run / "dataset.csv") if request.dataset else run / "data"
    else:
        data = Path(request.dataset).resolve()
    options = {
        "data": str(data),
        "output": str(run / "output"),
        "add_to_registry": True,
        "epochs": request.epochs,
        "iterations_per_epoch": request.iterations_per_epoch,
        "batch_size": request.batch_size,
        "learning_rate": float(request.learning_rate),
        "loss": request.loss,
        "mixup_alpha": float(request.mixup_alpha),
        "device": request.device,
        "name": request.name or None,
    }
    if request.kind == JobKind.FINETUNE:
        job_request = FinetuneRequest(model=str(request.base_model), freeze=request.freeze, **options)
    else:
        job_request = TrainRequest(**options)
    return start_job(job_request, jobs_root=jobs_root, cwd=run)


@dataclass
class _JobView:
    """What the widget knows of one job, updated from its new events only."""

    job: Job
    offset: int = 0
    status: JobStatus = JobStatus.PENDING
    progress: str = ""
    loss: list[tuple[int, float]] = field(default_factory=list)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    final: dict | None = None

    def consume(self, events: list[dict]) -> None:
        for event in events:
            name = event.get("event")
            if name == EventType.PROGRESS:
                self.progress = f"{event.get('what', '')} {event.get('done')}/{event.get('total')}".strip()
            elif name == EventType.EPOCH:
                epoch = int(event["epoch"])
                self.progress = f"epoch {epoch}/{event['epochs']}"
                loss = event.get("train_loss", event.get("loss"))
                if isinstance(loss, (int, float)):
                    self.loss.append((epoch, float(loss)))
            elif name == EventType.METRIC and event.get("name") not in ("train_loss", "loss"):
                value = event.get("value")
                if isinstance(value, (int, float)) and event.get("epoch") is not None:
                    self.metrics.setdefault(str(event["name"]), []).append((int(event["epoch"]), float(value)))
            elif name in (EventType.DONE, EventType.ERROR, EventType.CANCELLED):
                self.final = event

    @property
    def metric_name(self) -> str | None:
        if "dice_mean" in self.metrics:
            return "dice_mean"
        return next(iter(sorted(self.metrics)), None)


class TrainWidget(QWidget):
    """Dock widget: launch training / fine-tuning jobs, follow them, cancel, resume, read their logs.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose image and Labels layers can serve as a training case.

    Attributes
    ----------
    jobs_root : pathlib.Path
        The plugin's jobs folder (``jobs_root_from_config()``).
    views : dict of str to _JobView
        The jobs shown, by id.
    launch_runner : TaskRunner
        Writes the layer case and starts the job in a worker.
    timer : QTimer
        Polls the jobs that are not final every ``POLL_INTERVAL_MS``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        close_when_undocked(self)
        from napari_medseg.training.config import FreezeMode, TrainConfig
        from napari_medseg.training.losses import LossName

        self.viewer = napari_viewer
        self.jobs_root = Path(jobs_root_from_config())
        self.views: dict[str, _JobView] = {}
        self._notified: set[str] = set()
        self._ticks = 0
        defaults = {name: f.default for name, f in TrainConfig.model_fields.items()}

        # ---- what to train
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(_MODES))
        self.dataset_edit = QLineEdit()
        self.dataset_edit.setPlaceholderText("dataset folder (imagesTr/labelsTr) or CSV; optional")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_dataset)
        dataset_row = QHBoxLayout()
        dataset_row.addWidget(self.dataset_edit)
        dataset_row.addWidget(browse)
        self.layers_check = QCheckBox("Current layers as a case")
        self.image_combo = LayerCombo(napari_viewer, "image", parent=self)
        self.labels_combo = LayerCombo(napari_viewer, "labels", parent=self)
        self.model_combo = QComboBox()
        self.freeze_combo = QComboBox()
        self.freeze_combo.addItems([m.value for m in FreezeMode])
        self.loss_combo = QComboBox()
        self.loss_combo.addItems([n.value for n in LossName])  # every name medseg train --loss accepts
        self.loss_combo.setCurrentText(str(defaults["loss"]))
        self.mixup_spin = double_spin(float(defaults["mixup_alpha"]), 0.0, 100.0, 0.1, decimals=3)
        self.epochs_spin = int_spin(int(defaults["epochs"]), 0, 1_000_000)  # 0 is refused by the config
        self.iterations_spin = int_spin(int(defaults["iterations_per_epoch"]), 0, 1_000_000)
        self.batch_spin = int_spin(int(defaults["batch_size"]), 0, 4096)
        self.lr_spin = double_spin(1e-4, 0.0, 10.0, 1e-4, decimals=7)  # medseg finetune's default; train: 5e-4
        self._train_lr = float(defaults["learning_rate"])
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(_DEVICES))
        configured = plugin_config().device
        self.device_combo.setCurrentText(configured if configured in _DEVICES else "auto")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("name of the new model (default: <base>-finetuned / my-model)")

        form = QFormLayout()
        form.addRow("Mode", self.mode_combo)
        form.addRow("Dataset", dataset_row)
        form.addRow(self.layers_check)
        form.addRow("  image layer", self.image_combo)
        form.addRow("  labels layer", self.labels_combo)
        form.addRow("Base model", self.model_combo)
        form.addRow("Freeze", self.freeze_combo)
        form.addRow("Loss", self.loss_combo)
        form.addRow("Mixup alpha", self.mixup_spin)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Iterations / epoch", self.iterations_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("Model name", self.name_edit)

        self.launch_button = QPushButton("Launch job")
        self.launch_progress = QProgressBar()
        self.launch_status = QLabel("")
        self.launch_status.setWordWrap(True)
        self.launch_runner = TaskRunner(self.launch_button, self.launch_progress, self.launch_status, what="Launching the job")
        self.launch_button.clicked.connect(self._on_launch_clicked)
        self.last_launched: Job | None = None

        # ---- jobs
        self.table = QTableWidget(0, len(JOB_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(JOB_COLUMNS))
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        # the job id is long: it stretches, the short columns (status, progress, loss) fit their contents
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.currentCellChanged.connect(lambda *args: self._update_plot())
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.log_button = QPushButton("Open log")
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        self.resume_button.clicked.connect(self._on_resume_clicked)
        self.log_button.clicked.connect(self._on_log_clicked)
        self.resume_progress = QProgressBar()
        self.resume_progress.setVisible(False)
        self.resume_runner = TaskRunner(self.resume_button, self.resume_progress, None, what="Resuming the job")
        buttons = QHBoxLayout()
        for button in (self.cancel_button, self.resume_button, self.log_button):
            buttons.addWidget(button)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumHeight(160)

        # ---- live plot
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot(111)
        self.metric_axes = self.axes.twinx()
        (self.loss_line,) = self.axes.plot([], [], "o-", color="tab:blue", label="training loss")
        (self.metric_line,) = self.metric_axes.plot([], [], "s-", color="tab:orange", label="validation metric")
        self.axes.set_xlabel("epoch")
        self.axes.set_ylabel("loss")
        self.metric_axes.set_ylabel("metric")

        jobs_box = QGroupBox(f"Jobs ({self.jobs_root})")
        jobs_layout = QVBoxLayout(jobs_box)
        jobs_layout.addWidget(self.table)
        jobs_layout.addLayout(buttons)
        jobs_layout.addWidget(self.canvas)
        jobs_layout.addWidget(self.log_view)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.launch_button)
        layout.addWidget(self.launch_progress)
        layout.addWidget(self.launch_status)
        layout.addWidget(jobs_box)

        self.mode_combo.currentTextChanged.connect(self._on_mode_changed)
        plugin_events().registry_changed.connect(self.refresh_models)
        self.refresh_models()
        self._on_mode_changed(self.mode_combo.currentText())
        self.rescan_jobs()

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.poll)
        self.timer.start()

    # ------------------------------------------------------------------------------------ inputs
    def _browse_dataset(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder (imagesTr/labelsTr)")
        if folder:
            self.dataset_edit.setText(folder)

    def _on_mode_changed(self, text: str) -> None:
        finetune = _MODES.get(text) == JobKind.FINETUNE
        self.model_combo.setEnabled(finetune)
        self.freeze_combo.setEnabled(finetune)
        if not finetune and self.lr_spin.value() == 1e-4:
            self.lr_spin.setValue(self._train_lr)
        elif finetune and self.lr_spin.value() == self._train_lr:
            self.lr_spin.setValue(1e-4)

    def _refresh_layers(self, event=None) -> None:
        """Refill the layer pickers from the viewer (they also follow its events themselves)."""
        self.image_combo.refresh()
        self.labels_combo.refresh()

    def refresh_models(self) -> None:
        """Re-read the registry into the base-model picker (on ``registry_changed``)."""
        try:
            models = registry_from_config().scan().models
        except Exception as exc:  # noqa: BLE001 - a broken folder must not break the widget
            notify_error(exc, what="Reading the model registry")
            models = []
        self._model_folders = {m.name: str(m.folder) for m in models}
        refill(self.model_combo, list(self._model_folders))

    def request(self) -> TrainingRequest:
        """The launch request from the controls (layer data read here, on the main thread).

        Raises
        ------
        InvalidInputError
            If 'current layers as a case' is ticked without an image and a Labels layer.
        """
        kind = _MODES[self.mode_combo.currentText()]
        layer_case = None
        if self.layers_check.isChecked():
            image_layer, labels_layer = self.image_combo.layer(), self.labels_combo.layer()
            if image_layer is None:
                raise InvalidInputError("current layers as a case: choose an image layer")
            if labels_layer is None:
                raise InvalidInputError("current layers as a case: choose a Labels layer (the viewer has none)")
            image = volume_from_layer(image_layer, labels=False)
            labels = volume_from_layer(labels_layer, labels=True)
            # copies: the user may keep painting while the case is written in the worker
            layer_case = (Volume(image.array.copy(), image.geometry, image.metadata),
                          Volume(labels.array.copy(), labels.geometry, labels.metadata))
        base = self.model_combo.currentText()
        return TrainingRequest(
            kind=kind,
            dataset=self.dataset_edit.text().strip() or None,
            layer_case=layer_case,
            base_model=self._model_folders.get(base) if kind == JobKind.FINETUNE else None,
            freeze=self.freeze_combo.currentText(),
            name=self.name_edit.text().strip() or None,
            epochs=int(self.epochs_spin.value()),
            iterations_per_epoch=int(self.iterations_spin.value()),
            batch_size=int(self.batch_spin.value()),
            learning_rate=float(self.lr_spin.value()),
            loss=self.loss_combo.currentText(),
            mixup_alpha=float(self.mixup_spin.value()),
            device=self.device_combo.currentText(),
        )

    def _on_launch_clicked(self) -> None:
        if self.launch_runner.running:
            self.launch_runner.cancel()
            return
        try:
            request = self.request()
        except InvalidInputError as exc:
            self.launch_runner.start(_raise, exc, pass_progress=False, pass_cancel=False)
            return
        self.launch_runner.start(
            launch_training_job, request, jobs_root=self.jobs_root, pass_progress=False, pass_cancel=False,
            on_returned=self._on_launched,
        )

    def _on_launched(self, job: Job) -> None:
        self.last_launched = job
        self._add_view(job)
        self.select_job(job.id)
        show_info(f"started {job.kind} job {job.id}")

    # ------------------------------------------------------------------------------------ jobs
    def _add_view(self, job: Job) -> _JobView:
        view = self.views.get(job.id)
        if view is None:
            view = self.views[job.id] = _JobView(job)
            self.table.insertRow(self.table.rowCount())
            self._refresh_view(view, notify=False)
        return view

    def rescan_jobs(self) -> None:
        """List every job under the jobs root (re-attaches jobs started before a restart or elsewhere)."""
        for job in list_jobs(self.jobs_root):
            if job.id not in self.views:
                self._add_view(job)

    def _row_of(self, job_id: str) -> int:
        return list(self.views).index(job_id)

    def _refresh_view(self, view: _JobView, *, notify: bool) -> None:
        events, view.offset = view.job.read_events(view.offset)
        view.consume(events)
        previous = view.status
        view.status = view.job.status()
        row = self._row_of(view.job.id)
        loss = f"{view.loss[-1][1]:.4f}" if view.loss else ""
        metric_name = view.metric_name
        metric = f"{metric_name} {view.metrics[metric_name][-1][1]:.4f}" if metric_name else ""
        for col, text in enumerate((view.job.id, view.job.kind, str(view.status), view.progress, loss, metric)):
            set_cell(self.table, row, col, text)
        if events and view.job.id == self.selected_job_id():
            self._update_plot()
        if notify and view.status.is_final and not previous.is_final:
            self._on_final(view)

    def _on_final(self, view: _JobView) -> None:
        if view.job.id in self._notified:
            return
        self._notified.add(view.job.id)
        outputs = (view.final or {}).get("outputs") or {}
        folder = outputs.get("model_folder")
        if view.status == JobStatus.DONE and folder:
            name = Path(folder).name
            try:
                from napari_medseg.registry import find_card_file, read_card

                card = find_card_file(folder)
                name = read_card(card).name if card is not None else name
            except Exception as exc:  # noqa: BLE001 - the name is only for the message
                _LOG.debug("cannot read the card of %s: %s", folder, exc)
            plugin_events().registry_changed.emit()
            show_info(f'{view.job.kind} job {view.job.id} is done: the model "{name}" is ready in Segment.')
        elif view.status == JobStatus.FAILED:
            message = (view.final or {}).get("message", "see its log")
            notify_error(RuntimeError(message), what=f"{view.job.kind} job {view.job.id}")
        elif view.status == JobStatus.LOST:
            notify_error(RuntimeError("the process ended without a final event; see its log"), what=f"job {view.job.id}")
        else:
            show_info(f"job {view.job.id} is {view.status}")

    def poll(self) -> None:
        """One timer tick: new events of the jobs that are not final; a rescan now and then."""
        self._ticks += 1
        if self._ticks % _RESCAN_EVERY == 0:
            try:
                self.rescan_jobs()
            except Exception as exc:  # noqa: BLE001
                notify_error(exc, what="Listing the jobs")
        for view in list(self.views.values()):
            if view.status.is_final:
                continue
            try:
                self._refresh_view(view, notify=True)
            except Exception as exc:  # noqa: BLE001 - a broken job folder must not stop the timer
                view.status = JobStatus.LOST
                notify_error(exc, what=f"Following job {view.job.id}")

    def selected_job_id(self) -> str | None:
        row = self.table.currentRow()
        if row < 0 or row >= len(self.views):
            return None
        return list(self.views)[row]

    def select_job(self, job_id: str) -> None:
        self.table.selectRow(self._row_of(job_id))
        self.table.setCurrentCell(self._row_of(job_id), 0)
        self._update_plot()

    def _selected_view(self, what: str) -> _JobView:
        job_id = self.selected_job_id()
        if job_id is None:
            raise InvalidInputError(f"{what}: select a job in the table")
        return self.views[job_id]

    def _on_cancel_clicked(self) -> None:
        try:
            view = self._selected_view("cancel")
            if view.status.is_final:
                raise InvalidInputError(f"job {view.job.id} is already {view.status}")
            view.job.request_cancel()  # the flag file only: returns at once; the timer sees the result
        except Exception as exc:  # noqa: BLE001
            notify_error(exc, what="Cancel")
            return
        show_info(f"cancel requested for job {view.job.id}; it stops at its next step")

    def _on_resume_clicked(self) -> None:
        if self.resume_runner.running:
            return
        try:
            view = self._selected_view("resume")
        except InvalidInputError as exc:
            notify_error(exc, what="Resume")
            return
        self.resume_runner.start(view.job.resume, pass_progress=False, pass_cancel=False, on_returned=self._on_launched)

    def _on_log_clicked(self) -> None:
        try:
            view = self._selected_view("open log")
            text = view.job.log_tail(60) or "(the log is empty)"
        except Exception as exc:  # noqa: BLE001
            notify_error(exc, what="Open log")
            return
        final = view.final or {}
        header = f"job {view.job.id} ({view.status}) in {view.job.folder}\n"
        if final.get("message"):
            header += f"{final['event']}: {final['message']}\n"
        self.log_view.setPlainText(header + text)

    # ------------------------------------------------------------------------------------ plot
    def plot_data(self, job_id: str) -> dict[str, list[tuple[int, float]]]:
        """The series plotted for a job: ``{"loss": [(epoch, value)], <metric>: [...]}``."""
        view = self.views[job_id]
        data = {"loss": list(view.loss)}
        if view.metric_name:
            data[view.metric_name] = list(view.metrics[view.metric_name])
        return data

    def _update_plot(self) -> None:
        job_id = self.selected_job_id()
        view = self.views.get(job_id) if job_id else None
        loss = view.loss if view else []
        metric_name = view.metric_name if view else None
        metric = view.metrics.get(metric_name, []) if view and metric_name else []
        self.loss_line.set_data([e for e, _ in loss], [v for _, v in loss])
        self.metric_line.set_data([e for e, _ in metric], [v for _, v in metric])
        self.metric_axes.set_ylabel(metric_name or "metric")
        self.axes.set_title(job_id or "", fontsize=8)
        for axes in (self.axes, self.metric_axes):
            axes.relim()
            axes.autoscale_view()
        self.canvas.draw_idle()

    def closeEvent(self, event: Any) -> None:
        self.timer.stop()
        self.image_combo.disconnect_viewer()
        self.labels_combo.disconnect_viewer()
        super().closeEvent(event)


def _raise(exc: Exception):
    raise exc

