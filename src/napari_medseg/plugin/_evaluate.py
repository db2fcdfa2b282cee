"""The Evaluate dock widget: a prediction Labels layer against a reference -> per-label metrics.

Run calls :func:`napari_medseg.metrics.evaluate` on the two layers' volumes (their exact geometry,
:func:`~napari_medseg.plugin._layers.volume_from_layer`) in a worker with a progress bar (one step
per label) and a working Cancel. Layers on different grids give the core's
``GeometryMismatchError`` message as a notification. The table has one row per label (value, name
from the layers' features or provenance, then every metric of :data:`METRIC_KEYS` with its unit);
Export CSV writes, atomically, exactly what ``medseg evaluate --csv`` writes
(:func:`napari_medseg.metrics.write_metrics_csv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from napari_medseg.errors import InvalidInputError
from napari_medseg.metrics import (
    METRIC_KEYS,
    METRIC_TITLES,
    evaluate,
    evaluation_warnings,
    write_metrics_csv,
)
from napari_medseg.plugin._postprocess import label_names, parse_label_list
from napari_medseg.plugin._widgets import (
    LayerCombo,
    cell_value,
    close_when_undocked,
    set_cell,
)
from napari_medseg.progress import CancelEvent, ProgressCallback

if TYPE_CHECKING:
    import napari

    from napari_medseg.volume import Volume

__all__ = ["COLUMNS", "EvaluateWidget", "evaluate_with_warnings"]

#: the table's columns: label value, label name, then one per metric (title with its unit)
COLUMNS = ("label", "name", *(METRIC_TITLES[key] for key in METRIC_KEYS))
_FORMATS = {key: "{:.4f}" for key in ("dice", "iou", "precision", "recall", "specificity", "arvd")}
_FORMATS.update({key: "{:.3f}" for key in ("hd95_mm", "hausdorff_mm", "msd_mm")})
_FORMATS.update({key: "{:.4g}" for key in ("volume_pred_ml", "volume_ref_ml")})


def evaluate_with_warnings(
    pred: Volume,
    ref: Volume,
    *,
    labels: list[int] | None = None,
    names: tuple[str, str] = ("pred", "ref"),
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
) -> tuple[dict, list[str]]:
    """:func:`~napari_medseg.metrics.evaluate` and its warnings as data
    (:func:`~napari_medseg.metrics.evaluation_warnings`).

    A worker thread cannot show notifications, and catching warnings there is not thread safe
    (the filters are process-global); the widget shows these on the main thread.
    """
    result = evaluate(pred, ref, labels=labels, names=names, progress=progress, cancel=cancel, warn=False)
    return result, evaluation_warnings(pred, ref, labels=labels)


class EvaluateWidget(QWidget):
    """Dock widget: compare a prediction Labels layer with a reference Labels layer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (npe2 passes it).

    Attributes
    ----------
    result : dict or None
        The last :func:`~napari_medseg.metrics.evaluate` result shown in the table.
    """

    evaluated = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        from napari_medseg.plugin._worker import TaskRunner

        super().__init__()
        close_when_undocked(self)
        self.viewer = napari_viewer
        self.result: dict | None = None
        self._result_names: tuple[str, str] | None = None

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.pred_combo = LayerCombo(napari_viewer, "labels", parent=self)
        self.ref_combo = LayerCombo(napari_viewer, "labels", default_index=1, parent=self)
        self.labels_edit = QLineEdit()
        self.labels_edit.setPlaceholderText("all (or e.g. 1,2)")
        form.addRow("Prediction", self.pred_combo)
        form.addRow("Reference", self.ref_combo)
        form.addRow("Labels", self.labels_edit)
        layout.addLayout(form)

        row = QHBoxLayout()
        self.run_button = QPushButton("Evaluate")
        self.progress_bar = QProgressBar()
        row.addWidget(self.run_button)
        row.addWidget(self.progress_bar)
        layout.addLayout(row)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        layout.addWidget(self.table)
        self.caption = QLabel("")
        layout.addWidget(self.caption)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        layout.addWidget(self.export_button)

        self.runner = TaskRunner(self.run_button, self.progress_bar, self.status_label, what="Evaluation")
        self.run_button.clicked.connect(self._run_clicked)
        self.export_button.clicked.connect(lambda: self.export_csv())

    def _run_clicked(self) -> None:
        if self.runner.running:
            self.runner.cancel()
        else:
            self.run()

    def run(self) -> None:
        """Evaluate the selected prediction against the selected reference (in a worker)."""
        from napari_medseg.plugin._layers import volume_from_layer
        from napari_medseg.plugin._worker import notify_error

        pred_layer, ref_layer = self.pred_combo.layer(), self.ref_combo.layer()
        try:
            if pred_layer is None or ref_layer is None:
                raise InvalidInputError("choose a prediction and a reference Labels layer")
            if pred_layer is ref_layer:
                raise InvalidInputError(f"the prediction and the reference are the same layer {pred_layer.name!r}")
            labels = parse_label_list(self.labels_edit.text().strip() or None, name="labels")  # empty: every label
            pred, ref = volume_from_layer(pred_layer), volume_from_layer(ref_layer)
        except InvalidInputError as exc:
            notify_error(exc, what="Evaluation")
            return
        names = (repr(pred_layer.name), repr(ref_layer.name))
        self.runner.start(
            evaluate_with_warnings, pred, ref, labels=labels, names=names,
            on_returned=lambda out: self._show(out, pred_layer, ref_layer),
        )

    def _show(self, out: tuple[dict, list[str]], pred_layer: Any, ref_layer: Any) -> None:
        from napari_medseg.plugin._worker import warn

        result, messages = out
        for message in messages:
            warn(message)
        names = {**label_names(pred_layer), **label_names(ref_layer)}
        self.result = result
        self._result_names = (pred_layer.name, ref_layer.name)
        rows = result["labels"]
        self.table.setRowCount(len(rows))
        has_inf = False
        for row, (label, values) in enumerate(rows.items()):
            cells: list[tuple[str, Any]] = [(label, int(label)), (names.get(int(label), ""), None)]
            for key in METRIC_KEYS:
                value = values[key]
                has_inf |= value is None
                cells.append(("inf" if value is None else _FORMATS[key].format(value), value))
            for column, (text, value) in enumerate(cells):
                set_cell(self.table, row, column, text, value=value, tooltip="" if value is None else repr(value),
                         align_right=True)
        self.table.resizeColumnsToContents()
        caption = f"{pred_layer.name} vs {ref_layer.name}"
        if not rows:
            caption += ": no non-zero label in either layer"
        if has_inf:
            caption += " (inf: one of the label's two masks is empty)"
        self.caption.setText(caption)
        self.export_button.setEnabled(True)
        self.evaluated.emit()

    def table_values(self) -> dict[str, dict[str, float | None]]:
        """The table as ``{label: {metric key: exact value or None (inf)}}``."""
        out = {}
        for row in range(self.table.rowCount()):
            label = str(cell_value(self.table, row, 0))
            out[label] = {key: cell_value(self.table, row, 2 + i) for i, key in enumerate(METRIC_KEYS)}
        return out

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the last result as CSV (the columns of ``medseg evaluate --csv``), atomically.

        Asks for the file when ``path`` is None. Returns the path written, or None (dialog
        cancelled, or nothing evaluated yet: a notification says so).
        """
        from napari_medseg.plugin._worker import notify_error

        if self.result is None:
            notify_error(InvalidInputError("nothing to export: run the evaluation first"), what="Export")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export the metrics", "metrics.csv", "CSV (*.csv)")
            if not path:
                return None
        try:
            written = write_metrics_csv(self.result, path)
        except (OSError, InvalidInputError) as exc:
            notify_error(exc, what="Export")
            return None
        self.status_label.setText(f"wrote {written}")
        return written

    def closeEvent(self, event: Any) -> None:
        self.pred_combo.disconnect_viewer()
        self.ref_combo.disconnect_viewer()
        super().closeEvent(event)
