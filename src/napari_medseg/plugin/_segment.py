"""The Segment dock widget: run a registry model (optionally with Monte-Carlo dropout) on image layers.

The widget translates between napari and one core call, :func:`napari_medseg.inference.predict`,
which runs in a napari worker through :class:`._worker.TaskRunner` (progress bar, Cancel, errors
as notifications). On the main thread it then adds:

- a Labels layer ``"<image> [<model>]"`` with the card's label names (``features``, shown in the
  status bar) and colours;
- optionally one probability Image layer per label and the entropy and mutual-information Image
  layers;
- a list of the most uncertain regions (:func:`napari_medseg.uncertainty.uncertain_regions` on the
  mutual information, or the entropy for a deterministic run); clicking one centres the view on it.

"Folder of cases" runs :func:`napari_medseg.batch.run_cohort` on an input folder (or list) into an
output folder, with a progress bar over cases and Cancel; nothing is added to the viewer.

Every layer carries the input's geometry and the prediction's provenance (model name and sha256,
parameters) in its metadata (:func:`._layers.layer_kwargs`). Re-thresholding recomputes the
labels from the kept probabilities (:func:`napari_medseg.uncertainty.labels_from_probabilities`),
without running the model, and updates the same Labels layer.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_medseg.errors import InvalidInputError, MedsegError
from napari_medseg.choices import Device
from napari_medseg.inference import Prediction, predict
from napari_medseg.plugin._layers import (
    PROVENANCE_KEY,
    display_transform,
    label_style,
    layer_kwargs,
    volume_from_layer,
)
from napari_medseg.plugin._settings import plugin_config, registry_from_config
from napari_medseg.plugin._widgets import (
    LayerCombo,
    close_when_undocked,
    double_spin,
    int_spin,
    refill,
)
from napari_medseg.plugin._worker import TaskRunner, notify_error, plugin_events, warn
from napari_medseg.registry import card_warnings
from napari_medseg.uncertainty import (
    UncertainRegion,
    labels_from_probabilities,
    uncertain_regions,
)
from napari_medseg.volume import Geometry

if TYPE_CHECKING:
    import napari

    from napari_medseg.registry import ModelCard, RegistryModel

__all__ = ["SegmentWidget", "SegmentResult", "run_segmentation", "run_folder_segmentation", "card_summary_html", "N_REGIONS"]

#: how many uncertain regions the list shows
N_REGIONS = 10


@dataclass
class SegmentResult:
    """What the worker hands to the main thread."""

    prediction: Prediction
    image_name: str
    model_name: str
    regions: list[UncertainRegion] = field(default_factory=list)
    regions_map: str = "entropy"


def run_segmentation(
    layers: Sequence[Any],
    model: RegistryModel | None,
    *,
    device: str = "auto",
    overlap: float | None = None,
    batch_size: int | None = None,
    mc_samples: int = 0,
    dropout_rate: float | None = None,
    tta_flips: bool = False,
    seed: int = 0,
    progress=None,
    cancel=None,
) -> SegmentResult:
    """The worker's job: layers -> volumes -> :func:`predict` -> uncertain regions.

    Raises
    ------
    InvalidInputError
        No model or no image layer; a layer that is not a 3D volume; anything
        :func:`predict` refuses.
    CancelledError
        If ``cancel`` is set.
    """
    if model is None:
        raise InvalidInputError("no model selected: add one to the registry (Models widget) or set a model folder")
    if not layers or any(layer is None for layer in layers):
        raise InvalidInputError("choose an image layer for every input channel of the model")
    volumes = [volume_from_layer(layer, labels=False) for layer in layers]
    prediction = predict(
        volumes if len(volumes) > 1 else volumes[0], model, device=device, overlap=overlap, batch_size=batch_size,
        mc_samples=mc_samples, dropout_rate=dropout_rate, tta_flips=tta_flips, seed=seed, progress=progress,
        cancel=cancel, warn=False,  # a worker thread: the widget shows prediction.warnings on the main thread
    )
    map_name = "mutual_information" if "mutual_information" in prediction.uncertainty else "entropy"
    u = prediction.uncertainty[map_name]
    regions = uncertain_regions(u.array, spacing_mm=u.geometry.spacing_zyx, n=N_REGIONS)
    return SegmentResult(prediction, layers[0].name, model.name, regions, map_name)


def run_folder_segmentation(
    source: str,
    output_folder: str,
    model: RegistryModel | None,
    *,
    overwrite: bool = False,
    uncertainty: bool = False,
    probabilities: bool = False,
    progress=None,
    cancel=None,
    **options: Any,
):
    """The folder worker's job: :func:`napari_medseg.batch.discover_cases` then
    :func:`~napari_medseg.batch.run_cohort`; maps go to ``<output>/uncertainty`` and
    ``<output>/probabilities``. Returns the :class:`~napari_medseg.batch.CohortSummary`.

    Raises
    ------
    InvalidInputError
        No model, an empty folder name, or what case discovery refuses.
    CancelledError
        If ``cancel`` is set (finished cases stay written).
    """
    from pathlib import Path

    from napari_medseg.batch import PredictOptions, discover_cases, run_cohort

    if model is None:
        raise InvalidInputError("no model selected: add one to the registry (Models widget) or set a model folder")
    if not source:
        raise InvalidInputError("choose an input folder (or a .txt/.csv list of cases)")
    if not output_folder:
        raise InvalidInputError("choose an output folder")
    out = Path(output_folder)
    cases = discover_cases(source, out, channel_names=[c.name for c in model.card.channels])
    return run_cohort(
        cases, [model], options=PredictOptions(**options), overwrite=overwrite,
        uncertainty_dir=out / "uncertainty" if uncertainty else None,
        probabilities_dir=out / "probabilities" if probabilities else None,
        progress=progress, cancel=cancel,
    )


def _rgb_hex(colour: Sequence[float]) -> str:
    return "#" + "".join(f"{round(255 * float(c)):02x}" for c in colour[:3])


def card_summary_html(card: ModelCard) -> str:
    """:func:`napari_medseg.card_summary.card_facts` as read-only HTML, the labels with their colours."""
    from napari_medseg.card_summary import card_facts

    e = html.escape
    rows = []
    for title, text in card_facts(card):
        if title == "model":
            rows.append(f"<b>{e(text)}</b>")
        elif title == "description":
            rows.append(f"<i>{e(text)}</i>")
        elif title == "labels":  # every label with its colour swatch (the background too: it has one)
            rows.append("Labels: " + " ".join(
                f"<span style='color:{_rgb_hex(spec.color)}'>&#9632;</span>&nbsp;{e(spec.name)}&nbsp;({value})"
                for value, spec in card.labels.items()
            ))
        else:
            rows.append(f"{e(title.capitalize())}: {e(text)}")
    return "<br>".join(rows)


class SegmentWidget(QWidget):
    """Dock widget: segment image layers with a registry model, with MC-dropout uncertainty.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (npe2 passes it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        close_when_undocked(self)
        self.viewer = napari_viewer
        self._models: dict[str, RegistryModel] = {}
        self._result: dict[str, Any] | None = None
        self._shown_model: tuple[str, str] | None = None
        self.regions: list[UncertainRegion] = []
        config = plugin_config()

        layout = QVBoxLayout(self)

        # model picker and card
        model_box = QGroupBox("Model")
        model_layout = QVBoxLayout(model_box)
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Scan the model registry again")
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.refresh_button)
        model_layout.addLayout(row)
        self.card_label = QLabel()
        self.card_label.setWordWrap(True)
        self.card_label.setTextFormat(Qt.TextFormat.RichText)
        self.card_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        model_layout.addWidget(self.card_label)
        layout.addWidget(model_box)

        # inputs: one image layer per card channel
        input_box = QGroupBox("Input")
        input_layout = QVBoxLayout(input_box)
        self._channel_form = QFormLayout()
        input_layout.addLayout(self._channel_form)
        self.channel_combos: list[LayerCombo] = []
        self.mismatch_label = QLabel()
        self.mismatch_label.setWordWrap(True)
        self.mismatch_label.setStyleSheet("color: #e0a030")
        input_layout.addWidget(self.mismatch_label)
        layout.addWidget(input_box)

        # parameters
        params_box = QGroupBox("Parameters")
        form = QFormLayout(params_box)
        self.device_combo = QComboBox()
        self.device_combo.addItems([d.value for d in Device])
        index = self.device_combo.findText(config.device)
        self.device_combo.setCurrentIndex(max(index, 0))
        form.addRow("Device", self.device_combo)
        self.overlap_spin = double_spin(0.0, 0.0, 0.95, 0.05, decimals=2,
                                        tooltip="Fraction of a patch shared with its neighbour (default: the card's)")
        form.addRow("Overlap", self.overlap_spin)
        self.batch_spin = int_spin(0, 0, 256, tooltip="Patches per network call (auto: 1 on the CPU, 4 on a GPU, "
                                                      "16 slices for 2D models)")
        self.batch_spin.setSpecialValueText("auto")
        form.addRow("Batch size", self.batch_spin)
        self.dropout_spin = double_spin(0.0, 0.0, 0.95, 0.05, decimals=2,
                                        tooltip="Dropout level for Monte-Carlo sampling (default: the card's rate)")
        form.addRow("Dropout rate", self.dropout_spin)
        self.mc_spin = int_spin(0, 0, 200, tooltip="Monte-Carlo dropout samples; 0 = deterministic")
        form.addRow("MC samples", self.mc_spin)
        self.seed_spin = int_spin(0, 0, 2**31 - 1)
        form.addRow("Seed", self.seed_spin)
        self.tta_check = QCheckBox("Test-time flips")
        form.addRow(self.tta_check)
        self.probabilities_check = QCheckBox("Probability layers")
        self.uncertainty_check = QCheckBox("Uncertainty layers (entropy, mutual information)")
        self.uncertainty_check.setChecked(True)
        form.addRow(self.probabilities_check)
        form.addRow(self.uncertainty_check)
        layout.addWidget(params_box)

        # run
        self.run_button = QPushButton("Run")
        self.progress_bar = QProgressBar()
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        self.runner = TaskRunner(self.run_button, self.progress_bar, self.status_label, what="Segmentation")

        # folder mode: every case of a folder, written to an output folder (napari_medseg.batch)
        folder_box = QGroupBox("Folder of cases")
        folder_form = QFormLayout(folder_box)
        self.input_folder_edit = QLineEdit()
        self.input_folder_edit.setPlaceholderText("input folder (or a .txt/.csv list, or a glob)")
        self.output_folder_edit = QLineEdit()
        self.output_folder_edit.setPlaceholderText("output folder")
        for title, edit in (("Input", self.input_folder_edit), ("Output", self.output_folder_edit)):
            row = QHBoxLayout()
            browse = QPushButton("Browse...")
            browse.clicked.connect(lambda _=False, e=edit: self._browse_folder(e))
            row.addWidget(edit, 1)
            row.addWidget(browse)
            folder_form.addRow(title, row)
        self.overwrite_check = QCheckBox("Overwrite cases whose outputs exist")
        folder_form.addRow(self.overwrite_check)
        self.folder_button = QPushButton("Run folder")
        self.folder_bar = QProgressBar()
        self.folder_status = QLabel()
        self.folder_status.setWordWrap(True)
        folder_form.addRow(self.folder_button)
        folder_form.addRow(self.folder_bar)
        folder_form.addRow(self.folder_status)
        self.folder_summary_label = QLabel()
        self.folder_summary_label.setWordWrap(True)
        self.folder_summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        folder_form.addRow(self.folder_summary_label)
        self.folder_runner = TaskRunner(self.folder_button, self.folder_bar, self.folder_status, what="Folder segmentation")
        self.folder_summary = None  # the last run's CohortSummary
        layout.addWidget(folder_box)

        # results: uncertain regions and re-thresholding
        results_box = QGroupBox("Results")
        results_layout = QVBoxLayout(results_box)
        results_layout.addWidget(QLabel("Most uncertain regions (click to centre the view):"))
        self.regions_list = QListWidget()
        self.regions_list.setMaximumHeight(160)
        results_layout.addWidget(self.regions_list)
        row = QHBoxLayout()
        self.threshold_spin = double_spin(
            0.0, 0.0, 1.0, 0.05, decimals=2,
            tooltip="A voxel keeps its most probable label only if that probability is at least this value, "
                    "else it becomes background (0 = plain argmax)",
        )
        self.threshold_button = QPushButton("Re-threshold")
        row.addWidget(QLabel("Min. probability"))
        row.addWidget(self.threshold_spin)
        row.addWidget(self.threshold_button)
        results_layout.addLayout(row)
        self.threshold_bar = QProgressBar()
        self.threshold_bar.setMaximumHeight(8)
        self.threshold_bar.setTextVisible(False)
        results_layout.addWidget(self.threshold_bar)
        self.threshold_runner = TaskRunner(self.threshold_button, self.threshold_bar, self.status_label,
                                           what="Re-thresholding")
        layout.addWidget(results_box)
        layout.addStretch(1)

        # wiring
        self.refresh_button.clicked.connect(self.refresh_models)
        self.model_combo.currentTextChanged.connect(self._on_model_changed)
        self.run_button.clicked.connect(self._on_run_clicked)
        self.folder_button.clicked.connect(self._on_folder_clicked)
        self.threshold_button.clicked.connect(self._on_threshold_clicked)
        self.regions_list.itemClicked.connect(self._on_region_clicked)
        plugin_events().registry_changed.connect(self.refresh_models)
        self.refresh_models()

    # ------------------------------------------------------------------------------ models
    def refresh_models(self) -> None:
        """Scan the registry again and refill the model picker (keeps the selection if it still exists)."""
        try:
            models = registry_from_config().scan().models
        except MedsegError as exc:
            notify_error(exc, what="Reading the model registry")
            models = []
        self._models = {m.name: m for m in models}
        refill(self.model_combo, list(self._models))
        self._on_model_changed(self.model_combo.currentText())

    @property
    def model(self) -> RegistryModel | None:
        """The selected registry model (None when the registry is empty)."""
        return self._models.get(self.model_combo.currentText())

    def _on_model_changed(self, _name: str = "") -> None:
        model = self.model
        if model is None:
            self._shown_model = None
            self.card_label.setText("No model in the registry: import one in the Models widget or set a model folder "
                                    "in the MedSeg settings.")
            self._build_channel_combos([])
            return
        card = model.card
        self.card_label.setText(card_summary_html(card))
        key = (model.name, model.sha256)
        if key != self._shown_model:  # a refresh of the same model keeps the user's values
            self._shown_model = key
            self.overlap_spin.setValue(card.overlap)
            self.dropout_spin.setValue(card.dropout.rate)
        self._build_channel_combos([f"{c.name} ({c.modality})" for c in card.channels])

    # ------------------------------------------------------------------------------ inputs
    def _build_channel_combos(self, titles: list[str]) -> None:
        """One image-layer picker per card channel; channel ``i`` keeps its layer, else takes the
        ``i``-th image layer (the newest one for a single-channel model)."""
        previous = [c.layer() for c in self.channel_combos]
        for combo in self.channel_combos:
            combo.disconnect_viewer()
        while self._channel_form.rowCount():
            self._channel_form.removeRow(0)
        self.channel_combos = []
        for i, title in enumerate(titles):
            combo = LayerCombo(self.viewer, "image", default_index=i if len(titles) > 1 else -1)
            if i < len(previous) and previous[i] is not None and previous[i] in self.viewer.layers:
                combo.set_layer(previous[i])
            combo.currentTextChanged.connect(self._update_mismatch)
            self._channel_form.addRow(title, combo)
            self.channel_combos.append(combo)
        self._update_mismatch()

    def input_layers(self) -> list[Any]:
        """The selected image layer per card channel (None where none is chosen)."""
        return [combo.layer() for combo in self.channel_combos]

    def closeEvent(self, event: Any) -> None:
        for combo in self.channel_combos:
            combo.disconnect_viewer()
        super().closeEvent(event)

    def mismatch_messages(self) -> list[str]:
        """How the first input differs from the selected card (spacing, orientation); [] if it matches."""
        model, layers = self.model, self.input_layers()
        if model is None or not layers or layers[0] is None:
            return []
        try:
            volume = volume_from_layer(layers[0], labels=False)
        except MedsegError as exc:
            return [str(exc)]
        return card_warnings(volume, model.card)

    def _update_mismatch(self, _text: str = "") -> None:
        messages = self.mismatch_messages()
        self.mismatch_label.setText("\n".join(f"\u26a0 {m}" for m in messages))

    # --------------------------------------------------------------------------------- run
    def _on_run_clicked(self) -> None:
        if self.runner.running:
            self.runner.cancel()
            return
        self.run()

    def run(self):
        """Start the segmentation in a worker (what the Run button does); returns the worker.

        Card mismatches show in the widget now and, from the prediction's own ``warnings``, as
        notifications when it returns (the worker never touches the ``warnings`` module)."""
        messages = self.mismatch_messages()
        self.mismatch_label.setText("\n".join(f"\u26a0 {m}" for m in messages))
        layers = self.input_layers()
        return self.runner.start(
            run_segmentation, layers, self.model, on_returned=self._add_result_layers,
            device=self.device_combo.currentText(), overlap=float(self.overlap_spin.value()),
            batch_size=self.batch_spin.value() or None, mc_samples=int(self.mc_spin.value()),
            dropout_rate=float(self.dropout_spin.value()), tta_flips=self.tta_check.isChecked(),
            seed=int(self.seed_spin.value()),
        )

    # --------------------------------------------------------------------------- folder mode
    def _browse_folder(self, edit: QLineEdit) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text())
        if folder:
            edit.setText(folder)

    def _on_folder_clicked(self) -> None:
        if self.folder_runner.running:
            self.folder_runner.cancel()
            return
        self.run_folder()

    def run_folder(self):
        """Segment every case of the input folder into the output folder in a worker (the Run
        folder button); the same core call as ``medseg predict FOLDER OUT``. Returns the worker."""
        return self.folder_runner.start(
            run_folder_segmentation, self.input_folder_edit.text().strip(), self.output_folder_edit.text().strip(),
            self.model, on_returned=self._show_folder_summary, overwrite=self.overwrite_check.isChecked(),
            uncertainty=self.uncertainty_check.isChecked(), probabilities=self.probabilities_check.isChecked(),
            device=self.device_combo.currentText(), overlap=float(self.overlap_spin.value()),
            batch_size=self.batch_spin.value() or None, mc_samples=int(self.mc_spin.value()),
            dropout_rate=float(self.dropout_spin.value()), tta_flips=self.tta_check.isChecked(),
            seed=int(self.seed_spin.value()),
        )

    def _show_folder_summary(self, summary) -> None:
        self.folder_summary = summary
        text = summary.describe()
        for result in summary.results:
            for message in result.warnings:
                warn(f"{result.case.name}: {message}")
        if summary.failed:
            warn(f"Folder segmentation: {text}")
        self.folder_summary_label.setText(text)

    def _add_result_layers(self, result: SegmentResult) -> Iterator[None]:
        """Create the output layers (main thread), one per step of the event loop (see TaskRunner)."""
        from napari.layers import Labels

        prediction = result.prediction
        for message in prediction.warnings:  # returned as data by the worker; shown here, on the main thread
            warn(message)
        card = self._models[result.model_name].card if result.model_name in self._models else None
        provenance = dict(prediction.provenance)
        provenance["inputs"] = [result.image_name]
        geometry = prediction.labels.geometry
        header = prediction.labels.metadata
        base = f"{result.image_name} [{result.model_name}]"
        label_names = {int(v): n for v, n in prediction.provenance.get("labels", {}).items()}
        colours = {v: spec.color for v, spec in card.labels.items()} if card is not None else None
        values = sorted(label_names)

        if self.probabilities_check.isChecked():
            for i, value in enumerate(values):
                self._add_image(prediction.probabilities.array[..., i], geometry, provenance, header,
                                name=f"{base} p({label_names[value]})", colormap="magma",
                                contrast_limits=(0.0, 1.0), visible=value != 0,
                                metadata={"medseg_label_value": value})
                yield
        if self.uncertainty_check.isChecked():
            for key in ("entropy", "mutual_information"):
                if key in prediction.uncertainty:
                    array = prediction.uncertainty[key].array
                    top = float(np.log(len(values))) if len(values) > 1 else 1.0
                    self._add_image(array, geometry, provenance, header, name=f"{base} {key.replace('_', ' ')}",
                                    colormap="inferno", contrast_limits=(0.0, top), blending="additive",
                                    metadata={"medseg_uncertainty": key})
                    yield
        kwargs = layer_kwargs(geometry, name=base, provenance=provenance, header=header,
                              **label_style(label_names, colours))
        labels_layer = self.viewer.add_layer(Labels(prediction.labels.array, **kwargs))
        self._result = {
            "probabilities": prediction.probabilities.array,
            "label_values": values,
            "layer": labels_layer,
            "geometry": geometry,
        }
        self.regions = list(result.regions)
        self.regions_list.clear()
        unit = "nats"
        for region in self.regions:
            text = (f"#{region.region_id}: {region.volume_mm3:.3g} mm\u00b3, mean {region.mean:.3f}, "
                    f"max {region.max:.3f} {unit} ({result.regions_map.replace('_', ' ')})")
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, region.region_id - 1)
            self.regions_list.addItem(item)

    def _add_image(self, array, geometry: Geometry, provenance, header, *, name: str, **extra) -> Any:
        from napari.layers import Image

        kwargs = layer_kwargs(geometry, name=name, provenance=provenance, header=header, **extra)
        return self.viewer.add_layer(Image(array, **kwargs))

    # ------------------------------------------------------------------------ uncertain regions
    def region_world_position(self, index: int) -> tuple[float, float, float]:
        """World (napari, z y x mm) position of region ``index`` (0-based) of the last result.

        The position of the voxel nearest the region's centroid, so that it lies on napari's slice
        grid (napari snaps ``dims.point`` to it).
        """
        if self._result is None or not 0 <= index < len(self.regions):
            raise InvalidInputError(f"no uncertain region #{index + 1}: run a segmentation first")
        transform = display_transform(self._result["geometry"])
        voxel = np.floor(np.asarray(self.regions[index].centroid_zyx, float) + 0.5)
        world = np.asarray(transform["rotate"]) @ (np.asarray(transform["scale"]) * voxel) + np.asarray(transform["translate"])
        return tuple(float(w) for w in world)

    def go_to_region(self, index: int) -> None:
        """Centre the view on uncertain region ``index`` (0-based): dims point and camera centre."""
        world = self.region_world_position(index)
        ndim = self.viewer.dims.ndim
        axes = list(range(ndim - 3, ndim))
        self.viewer.dims.set_point(axes, world)
        # napari >= 0.9 keeps the camera on viewer.scene (viewer.camera is deprecated there)
        getattr(self.viewer, "scene", self.viewer).camera.center = world

    def _on_region_clicked(self, item: QListWidgetItem) -> None:
        try:
            self.go_to_region(int(item.data(Qt.ItemDataRole.UserRole)))
        except MedsegError as exc:
            notify_error(exc, what="Going to the region")

    # --------------------------------------------------------------------------- re-threshold
    def _on_threshold_clicked(self) -> None:
        if self.threshold_runner.running:
            return
        self.rethreshold(float(self.threshold_spin.value()))

    def rethreshold(self, min_probability: float):
        """Recompute the last Labels layer from the kept probabilities (no model run); returns the worker."""
        result = self._result
        probabilities = None if result is None else result["probabilities"]
        values = [] if result is None else result["label_values"]
        return self.threshold_runner.start(
            _rethreshold_task, probabilities, values, min_probability=min_probability or None,
            pass_progress=False, pass_cancel=False,
            on_returned=lambda labels: self._apply_labels(labels, min_probability),
        )

    def _apply_labels(self, labels: np.ndarray, min_probability: float) -> None:
        layer = self._result["layer"] if self._result else None
        if layer is None or layer not in self.viewer.layers:
            raise InvalidInputError("the segmentation's Labels layer was removed; run the segmentation again")
        layer.data = labels
        provenance = dict(layer.metadata.get(PROVENANCE_KEY, {}))
        provenance["min_probability"] = float(min_probability)
        layer.metadata = {**layer.metadata, PROVENANCE_KEY: provenance}


def _rethreshold_task(probabilities, label_values, *, min_probability=None) -> np.ndarray:
    if probabilities is None:
        raise InvalidInputError("nothing to re-threshold: run a segmentation first")
    return labels_from_probabilities(probabilities, label_values, min_probability=min_probability)
