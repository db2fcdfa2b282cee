"""The Register (MALDI-MRI) dock widget: deformable UDT-SSD registration of two layers.

A thin face over :func:`napari_medseg.registration.register_volumes` (the same parameters as
``medseg register``): the fixed and moving images (and optional masks; default the core's Otsu
mask) come from layers with their exact geometry, the registration runs in a worker through
:class:`~napari_medseg.plugin._worker.TaskRunner` (progress per iteration, Cancel between
iterations), and on the main thread the widget adds the warped image, the warped mask and the
deformation magnitude (mm), all on the fixed layer's geometry with the parameters in their
metadata, and shows the evaluation of
:func:`~napari_medseg.registration.evaluate.registration_report` (the numbers of
``medseg register --json`` plus the values before registration). The field is kept so that
"Apply field" warps any other moving-space layer (:func:`~napari_medseg.registration.apply_field`,
nearest neighbour for Labels). An imzML helper adds an ion image
(:func:`~napari_medseg.registration.imzml.ion_image`) as a layer, also in a worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from napari_medseg.errors import GeometryMismatchError, InvalidInputError
from napari_medseg.plugin._layers import HEADER_KEY, layer_kwargs, volume_from_layer
from napari_medseg.plugin._widgets import (
    LayerCombo,
    close_when_undocked,
    double_spin,
    int_spin,
    set_cell,
)
from napari_medseg.plugin._worker import TaskRunner
from napari_medseg.registration.metric import Metric
from napari_medseg.registration.regularizers import Regularizer
from napari_medseg.volume import Geometry, Volume

if TYPE_CHECKING:
    import napari

__all__ = ["AUTO_MASK", "RegisterWidget", "RegistrationOutput", "run_registration"]

AUTO_MASK = "(auto: Otsu + fill holes)"
_RESULT_ROWS = (
    ("UDT-SSD (mm²)", "udt_ssd_before", "udt_ssd"),
    ("precision", "precision_before", "precision"),
    ("recall", "recall_before", "recall"),
    ("F-measure", "f_measure_before", "f_measure"),
    ("MI (nats)", None, "mutual_information_nats"),
    ("MI (bits)", None, "mutual_information_bits"),
    ("min Jacobian", None, "jacobian_min"),
    ("folding (%)", None, "folding_percent"),
    ("iterations", None, "iterations"),
    ("seconds", None, "seconds"),
    ("diverged", None, "diverged"),
)


@dataclass(frozen=True)
class RegistrationOutput:
    """What :func:`run_registration` returns to the widget (all on the fixed grid)."""

    registration: Any  # napari_medseg.registration.volumes.VolumeRegistration
    magnitude: Volume
    report: dict
    parameters: dict


def run_registration(
    fixed: Volume,
    moving: Volume,
    *,
    fixed_mask: Volume | None = None,
    moving_mask: Volume | None = None,
    resample_moving: bool = False,
    parameters: dict,
    progress=None,
    cancel=None,
) -> RegistrationOutput:
    """``register_volumes`` + ``registration_report`` + ``displacement_magnitude`` (worker side).

    ``parameters`` are the widget's JSON-ready values (``metric``, ``regularizer``, ``mu``,
    ``lambda_``, ``tau``, ``levels``, ``max_iterations``, ``scale_invariant``): the regulariser's
    name and options become its object, the rest are keyword arguments of
    :func:`~napari_medseg.registration.register`. Raises what they raise; a grid mismatch names
    the widget's option.
    """
    from napari_medseg.registration.evaluate import (
        displacement_magnitude,
        registration_report,
    )
    from napari_medseg.registration.regularizers import regularizer_from_options
    from napari_medseg.registration.volumes import register_volumes

    kwargs = dict(parameters)
    options = {k: kwargs.pop(k) for k in ("mu", "lambda_", "alpha", "sigma_vox") if k in kwargs}
    kwargs["regularizer"] = regularizer_from_options(kwargs.get("regularizer", "elastic"), **options)

    try:
        registration = register_volumes(
            fixed,
            moving,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            resample_moving=resample_moving,
            progress=progress,
            cancel=cancel,
            **kwargs,
        )
    except GeometryMismatchError as exc:
        if resample_moving or "resample" not in str(exc):
            raise
        raise GeometryMismatchError(f"{exc}; tick 'Resample moving onto the fixed grid' to do so here") from None
    report = registration_report(registration, moving_mask=moving_mask)
    return RegistrationOutput(registration, displacement_magnitude(registration.field), report, dict(parameters))


def _layer_volume(layer: napari.layers.Layer, *, labels: bool | None = None) -> Volume:
    """A layer as a Volume; a 2D ``(y, x)`` layer becomes a single-slice volume, as the CLI reads 2D files."""
    if np.ndim(layer.data) == 2 and not getattr(layer, "rgb", False):
        scale = [float(s) for s in layer.scale[-2:]]
        if not all(s > 0 for s in scale):
            raise InvalidInputError(f"layer {layer.name!r}: scale {tuple(scale)} must be > 0 (mm per pixel)")
        translate = [float(t) for t in layer.translate[-2:]]
        geometry = Geometry((scale[1], scale[0], 1.0), (translate[1], translate[0], 0.0))
        data = np.asarray(layer.data)[None]
        if (labels or type(layer).__name__ == "Labels") and not np.issubdtype(data.dtype, np.integer):
            raise InvalidInputError(f"layer {layer.name!r}: labels must be integers, got {data.dtype}")
        header = layer.metadata.get(HEADER_KEY, {}) if isinstance(layer.metadata, dict) else {}
        return Volume(data, geometry, dict(header))
    return volume_from_layer(layer, labels=labels)


class RegisterWidget(QWidget):
    """Dock widget: register a moving layer onto a fixed one (UDT-SSD, Grélard et al. MIUA 2023).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers are registered and receive the outputs.

    Attributes
    ----------
    runner, apply_runner, ion_runner : TaskRunner
        The registration, apply-field and ion-image tasks (progress, Cancel, errors).
    last_output : RegistrationOutput or None
        The last successful registration (its field is what "Apply field" uses).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        close_when_undocked(self)
        self.viewer = napari_viewer
        self.last_output: RegistrationOutput | None = None
        self._last_names: tuple[str, str] | None = None

        # ---- inputs
        viewer = napari_viewer
        self.fixed_combo = LayerCombo(viewer, "image", parent=self)
        self.moving_combo = LayerCombo(viewer, "image", default_index=1, parent=self)
        self.fixed_mask_combo = LayerCombo(viewer, "labels", optional=True, none_text=AUTO_MASK, parent=self)
        self.moving_mask_combo = LayerCombo(viewer, "labels", optional=True, none_text=AUTO_MASK, parent=self)
        inputs = QFormLayout()
        inputs.addRow("Fixed image", self.fixed_combo)
        inputs.addRow("Moving image", self.moving_combo)
        inputs.addRow("Fixed mask", self.fixed_mask_combo)
        inputs.addRow("Moving mask", self.moving_mask_combo)
        self.resample_check = QCheckBox("Resample moving onto the fixed grid if the grids differ")

        # ---- parameters (defaults of medseg register / register())
        self.metric_combo = QComboBox()
        self.metric_combo.addItems([m.value for m in Metric])
        self.regularizer_combo = QComboBox()
        self.regularizer_combo.addItems([r.value for r in Regularizer])
        # the core validates the values (one source of truth): the ranges only bound typing
        self.mu_spin = double_spin(0.5, -1e6, 1e6, 0.1)
        self.lambda_spin = double_spin(0.5, -1e6, 1e6, 0.1)
        self.tau_spin = double_spin(1.0, -1e6, 1e6, 0.1)
        self.levels_spin = int_spin(3, 1, 10)
        self.iterations_spin = int_spin(400, 0, 100_000)
        self.scale_invariant_check = QCheckBox("Scale-invariant distance transform")
        params = QFormLayout()
        params.addRow("Metric", self.metric_combo)
        params.addRow("Regulariser", self.regularizer_combo)
        params.addRow("mu", self.mu_spin)
        params.addRow("lambda", self.lambda_spin)
        params.addRow("tau (time step)", self.tau_spin)
        params.addRow("Levels", self.levels_spin)
        params.addRow("Max iterations / level", self.iterations_spin)
        params.addRow(self.scale_invariant_check)
        params.addRow(self.resample_check)

        self.run_button = QPushButton("Register")
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.runner = TaskRunner(self.run_button, self.progress_bar, self.status_label, what="Registration")
        self.run_button.clicked.connect(self._on_run_clicked)

        # ---- results
        self.results_table = QTableWidget(len(_RESULT_ROWS), 2)
        self.results_table.setHorizontalHeaderLabels(["before", "after"])
        self.results_table.setVerticalHeaderLabels([row[0] for row in _RESULT_ROWS])

        # ---- apply the field to another layer
        self.apply_combo = LayerCombo(viewer, ("image", "labels"), parent=self)
        self.apply_button = QPushButton("Apply field")
        self.apply_progress = QProgressBar()
        self.apply_status = QLabel("")
        self.apply_runner = TaskRunner(self.apply_button, self.apply_progress, self.apply_status, what="Applying the field")
        self.apply_button.clicked.connect(self._on_apply_clicked)
        apply_box = QGroupBox("Apply the field to a moving-space layer")
        apply_layout = QFormLayout(apply_box)
        apply_layout.addRow("Layer", self.apply_combo)
        apply_layout.addRow(self.apply_button, self.apply_progress)
        apply_layout.addRow(self.apply_status)

        # ---- imzML ion image
        self.imzml_edit = QLineEdit()
        self.imzml_edit.setPlaceholderText("path/to/file.imzML")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_imzml)
        path_row = QHBoxLayout()
        path_row.addWidget(self.imzml_edit)
        path_row.addWidget(browse)
        self.mz_spin = double_spin(0.0, 0.0, 1e6, 0.1, decimals=4)
        self.tolerance_spin = double_spin(10.0, 0.0, 1e6, 1.0, decimals=4)
        self.tolerance_unit = QComboBox()
        self.tolerance_unit.addItems(["ppm", "Da"])
        tol_row = QHBoxLayout()
        tol_row.addWidget(self.tolerance_spin)
        tol_row.addWidget(self.tolerance_unit)
        self.tic_check = QCheckBox("TIC normalisation")
        self.ion_button = QPushButton("Add ion image")
        self.ion_progress = QProgressBar()
        self.ion_status = QLabel("")
        self.ion_runner = TaskRunner(self.ion_button, self.ion_progress, self.ion_status, what="Ion image")
        self.ion_button.clicked.connect(self._on_ion_clicked)
        ion_box = QGroupBox("imzML ion image")
        ion_layout = QFormLayout(ion_box)
        ion_layout.addRow("File", path_row)
        ion_layout.addRow("m/z", self.mz_spin)
        ion_layout.addRow("Tolerance", tol_row)
        ion_layout.addRow(self.tic_check)
        ion_layout.addRow(self.ion_button, self.ion_progress)
        ion_layout.addRow(self.ion_status)

        layout = QVBoxLayout(self)
        layout.addWidget(ion_box)
        layout.addLayout(inputs)
        layout.addLayout(params)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.results_table)
        layout.addWidget(apply_box)
        layout.addStretch(1)

    # ------------------------------------------------------------------------------------ layers
    def _layer_combos(self) -> tuple[LayerCombo, ...]:
        return (self.fixed_combo, self.moving_combo, self.fixed_mask_combo, self.moving_mask_combo, self.apply_combo)

    def _refresh_layers(self, event=None) -> None:
        """Refill every layer picker from the viewer (they also follow its events themselves)."""
        for combo in self._layer_combos():
            combo.refresh()

    @staticmethod
    def _layer(combo: LayerCombo, what: str):
        layer = combo.layer()
        if layer is None:
            raise InvalidInputError(f"{what}: choose a layer (got none)")
        return layer

    def closeEvent(self, event) -> None:
        for combo in self._layer_combos():
            combo.disconnect_viewer()
        super().closeEvent(event)

    # ------------------------------------------------------------------------------------ register
    def parameters(self) -> dict:
        """The keyword arguments for ``register`` from the controls (not validated here)."""
        return {
            "metric": self.metric_combo.currentText(),
            "regularizer": self.regularizer_combo.currentText(),
            "mu": float(self.mu_spin.value()),
            "lambda_": float(self.lambda_spin.value()),
            "tau": float(self.tau_spin.value()),
            "levels": int(self.levels_spin.value()),
            "max_iterations": int(self.iterations_spin.value()),
            "scale_invariant": bool(self.scale_invariant_check.isChecked()),
        }

    def _on_run_clicked(self) -> None:
        if self.runner.running:
            self.runner.cancel()
            return
        try:
            fixed_layer = self._layer(self.fixed_combo, "fixed image")
            moving_layer = self._layer(self.moving_combo, "moving image")
            fixed = _layer_volume(fixed_layer, labels=False)
            moving = _layer_volume(moving_layer, labels=False)
            masks = []
            for combo in (self.fixed_mask_combo, self.moving_mask_combo):
                layer = combo.layer()  # None: the core's automatic mask
                masks.append(None if layer is None else _layer_volume(layer, labels=True))
        except InvalidInputError as exc:
            self._fail_now(exc)
            return
        self._last_names = (fixed_layer.name, moving_layer.name)
        self.runner.start(
            run_registration,
            fixed,
            moving,
            fixed_mask=masks[0],
            moving_mask=masks[1],
            resample_moving=self.resample_check.isChecked(),
            parameters=self.parameters(),
            on_returned=self._add_outputs,
        )

    def _fail_now(self, exc: Exception) -> None:
        """An input error found before starting: reported exactly like a task error."""
        self.runner.start(_raise, exc, pass_progress=False, pass_cancel=False)

    def _add_outputs(self, output: RegistrationOutput) -> Iterator[None]:
        """Add the output layers, one per event-loop turn (TaskRunner runs the steps)."""
        registration = output.registration
        fixed_name, moving_name = self._last_names or ("fixed", "moving")
        geometry = registration.warped.geometry
        provenance = {
            "operation": "register",
            "fixed": fixed_name,
            "moving": moving_name,
            "parameters": output.parameters,
            "evaluation": output.report,
        }
        from napari_medseg import __version__

        provenance["version"] = __version__
        meta = {"medseg_registration": dict(output.parameters)}
        self.viewer.add_image(
            registration.warped.array,
            **layer_kwargs(geometry, name=f"{moving_name} registered", provenance=provenance, metadata=meta),
        )
        yield
        self.viewer.add_labels(
            registration.warped_mask.array,
            **layer_kwargs(geometry, name=f"{moving_name} registered mask", provenance=provenance, metadata=meta),
        )
        yield
        self.viewer.add_image(
            output.magnitude.array,
            **layer_kwargs(
                geometry,
                name=f"{moving_name} deformation (mm)",
                provenance=provenance,
                metadata={**meta, "medseg_units": "mm"},
                colormap="magma",
                visible=False,
            ),
        )
        self.last_output = output
        self._show_report(output.report)

    def _show_report(self, report: dict) -> None:
        self.results_table.clearContents()
        for row, (_, before_key, after_key) in enumerate(_RESULT_ROWS):
            for col, key in enumerate((before_key, after_key)):
                if key is None or key not in report:
                    continue
                value = report[key]
                text = f"{value:.6g}" if isinstance(value, float) else str(value)
                set_cell(self.results_table, row, col, text, value=value)

    # ------------------------------------------------------------------------------------ apply field
    def _on_apply_clicked(self) -> None:
        if self.apply_runner.running:
            self.apply_runner.cancel()
            return
        from napari_medseg.registration.volumes import apply_field

        try:
            if self.last_output is None:
                raise InvalidInputError("apply field: run a registration first (no field yet)")
            layer = self._layer(self.apply_combo, "apply field")
            nearest = type(layer).__name__ == "Labels"
            image = _layer_volume(layer, labels=nearest or None)
        except InvalidInputError as exc:
            self.apply_runner.start(_raise, exc, pass_progress=False, pass_cancel=False)
            return
        field = self.last_output.registration.field
        provenance = {
            "operation": "apply_field",
            "source": layer.name,
            "nearest": nearest,
            "parameters": self.last_output.parameters,
        }

        def add(warped: Volume) -> None:
            kwargs = layer_kwargs(warped.geometry, name=f"{layer.name} warped", provenance=provenance)
            if nearest:
                self.viewer.add_labels(warped.array, **kwargs)
            else:
                self.viewer.add_image(warped.array, **kwargs)

        self.apply_runner.start(apply_field, image, field, nearest=nearest, pass_progress=False, pass_cancel=False, on_returned=add)

    # ------------------------------------------------------------------------------------ ion image
    def _browse_imzml(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an imzML file", "", "imzML (*.imzML *.imzml)")
        if path:
            self.imzml_edit.setText(path)

    def _on_ion_clicked(self) -> None:
        if self.ion_runner.running:
            self.ion_runner.cancel()
            return
        from napari_medseg.registration.imzml import ion_image

        path = self.imzml_edit.text().strip()
        mz = float(self.mz_spin.value())
        tolerance = float(self.tolerance_spin.value())
        unit = self.tolerance_unit.currentText()
        tol = {"tolerance_ppm": tolerance} if unit == "ppm" else {"tolerance_da": tolerance}
        if not path:
            self.ion_runner.start(_raise, InvalidInputError("imzML: choose an .imzML file"), pass_progress=False, pass_cancel=False)
            return

        def add(volume: Volume) -> None:
            name = f"{Path(path).name} m/z {mz:g}" + (" (TIC)" if self.tic_check.isChecked() else "")
            provenance = {"operation": "ion_image", "source": path, "mz": mz, **tol, "tic_normalize": self.tic_check.isChecked()}
            self.viewer.add_image(volume.array, **layer_kwargs(volume.geometry, name=name, provenance=provenance, header=volume.metadata))

        self.ion_runner.start(
            ion_image, path, mz, tic_normalize=self.tic_check.isChecked(), pass_progress=False, pass_cancel=False,
            on_returned=add, **tol,
        )


def _raise(exc: Exception):
    raise exc

