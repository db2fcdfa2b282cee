"""The Post-process dock widget: a morphology chain in millimetres, per label, with a live preview.

The user builds a :class:`~napari_medseg.postprocess.PostprocessChain` (the same JSON steps as
``medseg postprocess --chain``) step by step, sees it applied to the current slice of a Labels
layer while editing, and applies it to the whole volume as a new layer.

Preview
-------
The preview is a Labels layer ``"<name> [preview]"`` on top of the source, removed when the widget
closes (or the source changes). When every step is local (erosion, dilation, opening, closing,
slice-wise hole filling across the sliced axis), only a slab of slices around the current one is
processed: :func:`preview_margin_vox` is wide enough that the shown slice is *exactly* the
whole-volume result (a test checks it). A global step (3D hole filling, remove small components,
keep largest) makes every slice depend on the whole volume: the chain then runs once on the whole
volume and the result is cached until the chain or the layer data change. Either way the
computation runs in a napari worker (a :class:`TaskRunner` with its own progress bar and Cancel),
never on the GUI thread; requests that arrive while one runs are merged into one follow-up.

Apply and Undo
--------------
Apply runs the whole chain in a worker and adds a **new** layer ``"<name> [post-processed]"``
with the source's geometry, header and provenance and the chain in its metadata
(``medseg_postprocess``); the source layer is never modified. Undo removes the last layer Apply
added (repeatedly, newest first). The per-label volume table (mL, with the layer's true spacing)
shows the source and the result of the last Apply.

The Qt-free helpers (:func:`label_names`, :func:`parse_label_list`, :func:`preview_margin_vox`,
:func:`preview_slice`) are plain functions so they can be tested without a viewer. The layer
picker and the table cells are the shared ones of :mod:`napari_medseg.plugin._widgets`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from napari_medseg._validate import parse_label_list  # the one label-list parser; importable from here (old name)
from napari_medseg.errors import InvalidInputError
from napari_medseg.plugin._widgets import (
    PREVIEW_KEY,
    LayerCombo,
    cell_value,
    close_when_undocked,
    set_cell,
)
from napari_medseg.postprocess import (
    PostprocessChain,
    PostprocessOp,
    apply_chain,
    label_volumes_ml,
    postprocess,
    preview_margin_vox,
    preview_slice,
)
from napari_medseg.progress import CancelEvent, ProgressCallback

if TYPE_CHECKING:
    import napari

    from napari_medseg.volume import Volume

__all__ = [
    "POSTPROCESS_KEY",
    "PREVIEW_KEY",
    "PostprocessWidget",
    "label_names",
    "parse_label_list",
    "postprocess_with_volumes",
]

_LOG = logging.getLogger(__name__)
#: metadata key of an applied layer: the chain as a list of step dicts
POSTPROCESS_KEY = "medseg_postprocess"


# ------------------------------------------------------------------------------ Qt-free helpers
def label_names(layer: Any) -> dict[int, str]:
    """Label value -> name known for a Labels layer, from its features or its metadata.

    Looks, in order, at the layer's ``features`` table (a ``name`` column with an ``index``,
    ``label`` or ``value`` column, or the row index), then at the provenance a MedSeg prediction
    records (``metadata["medseg_provenance"]["labels"]``, ``{"1": "tissue1"}``), then at
    ``metadata["label_names"]``. Returns an empty dict when nothing names the labels.
    """
    from napari_medseg.plugin._layers import PROVENANCE_KEY

    names: dict[int, str] = {}
    metadata = getattr(layer, "metadata", None) or {}
    for source in (metadata.get(PROVENANCE_KEY, {}).get("labels") if isinstance(metadata.get(PROVENANCE_KEY), Mapping) else None,
                   metadata.get("label_names")):
        if isinstance(source, Mapping):
            for key, value in source.items():
                try:
                    names[int(key)] = str(value)
                except (TypeError, ValueError):
                    continue
    features = getattr(layer, "features", None)
    if features is not None and len(features) and "name" in getattr(features, "columns", ()):
        column = next((c for c in ("index", "label", "value") if c in features.columns), None)
        values = features[column] if column is not None else features.index
        for value, name in zip(values, features["name"]):
            try:
                names[int(value)] = str(name)
            except (TypeError, ValueError):
                continue
    return names


def postprocess_with_volumes(
    volume: Volume,
    chain: PostprocessChain | Sequence[Mapping[str, Any]] | str,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
) -> tuple[Volume, dict[int, float], dict[int, float]]:
    """:func:`~napari_medseg.postprocess.postprocess` plus each label's volume (mL) before and after.

    Returns
    -------
    result : Volume
        The post-processed volume (same grid, ``medseg_postprocess`` in its metadata).
    before, after : dict of int to float
        :func:`~napari_medseg.postprocess.label_volumes_ml` of the input and of the result.
    """
    result = postprocess(volume, chain, progress=progress, cancel=cancel)
    spacing = volume.spacing_zyx
    return result, label_volumes_ml(volume.array, spacing_mm=spacing), label_volumes_ml(result.array, spacing_mm=spacing)


# ------------------------------------------------------------------------------------- the widget
#: the editor's operations: (display text, op, fixed extra fields, parameter name or None)
_OPERATIONS = (
    ("opening", PostprocessOp.OPENING, {}, "radius_mm"),
    ("closing", PostprocessOp.CLOSING, {}, "radius_mm"),
    ("erosion", PostprocessOp.EROSION, {}, "radius_mm"),
    ("dilation", PostprocessOp.DILATION, {}, "radius_mm"),
    ("fill holes (3D)", PostprocessOp.FILL_HOLES, {"slice_wise": False}, None),
    ("fill holes (slice-wise, z)", PostprocessOp.FILL_HOLES, {"slice_wise": True, "axis": 0}, None),
    ("remove small components", PostprocessOp.REMOVE_SMALL, {}, "min_size_mm3"),
    ("keep N largest components", PostprocessOp.KEEP_LARGEST, {}, "n"),
)
_PARAMETERS = {  # name -> (label, minimum, maximum, decimals, default)
    "radius_mm": ("radius (mm)", 0.0, 1000.0, 2, 1.0),
    "min_size_mm3": ("min size (mm³)", 0.0, 1e9, 1, 50.0),
    "n": ("N", 1.0, 100000.0, 0, 1.0),
}


class LabelsLayerCombo(LayerCombo):
    """Kept for existing callers: ``LayerCombo(viewer, "labels", parent=parent)``."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, "labels", parent=parent)


class PostprocessWidget(QWidget):
    """Dock widget: build a post-processing chain, preview it on the current slice, apply it.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (npe2 passes it).

    Signals
    -------
    preview_updated
        Emitted on the main thread after the preview layer shows a new result.
    """

    preview_updated = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        from napari_medseg.plugin._worker import TaskRunner

        super().__init__()
        close_when_undocked(self)
        self.viewer = napari_viewer
        self._steps: list[dict[str, Any]] = []
        self._applied: list[Any] = []
        self._preview_layer: Any = None
        self._preview_source: Any = None
        self._preview_written: tuple[int, int] | None = None  # (axis, index) of the slice shown, or None
        self._preview_pending = False
        self._preview_error: str | None = None
        self._full_cache: tuple[tuple, np.ndarray] | None = None
        self._data_version = 0
        self._watched: Any = None
        self.preview_key: tuple | None = None  # what the preview layer shows: (chain json, axis, index)
        self._closed = False

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.layer_combo = LayerCombo(napari_viewer, "labels", parent=self)
        form.addRow("Labels", self.layer_combo)
        self.names_label = QLabel("")
        self.names_label.setWordWrap(True)
        form.addRow("", self.names_label)
        layout.addLayout(form)

        # ---- the step editor
        editor = QGroupBox("Add a step")
        editor_form = QFormLayout(editor)
        self.op_combo = QComboBox()
        for text, op, _, _ in _OPERATIONS:
            self.op_combo.addItem(text, op.value)
        editor_form.addRow("Operation", self.op_combo)
        self.param_label = QLabel()
        self.param_spin = QDoubleSpinBox()
        editor_form.addRow(self.param_label, self.param_spin)
        self.labels_edit = QLineEdit()
        self.labels_edit.setPlaceholderText("all (or e.g. 1,2)")
        editor_form.addRow("Labels", self.labels_edit)
        self.add_button = QPushButton("Add step")
        editor_form.addRow(self.add_button)
        layout.addWidget(editor)

        # ---- the chain
        chain_box = QGroupBox("Chain (applied top to bottom)")
        chain_layout = QVBoxLayout(chain_box)
        self.step_list = QListWidget()
        self.step_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        chain_layout.addWidget(self.step_list)
        row = QHBoxLayout()
        self.remove_button = QPushButton("Remove")
        self.up_button = QPushButton("Up")
        self.down_button = QPushButton("Down")
        self.load_button = QPushButton("Load…")
        self.save_button = QPushButton("Save…")
        for button in (self.remove_button, self.up_button, self.down_button, self.load_button, self.save_button):
            row.addWidget(button)
        chain_layout.addLayout(row)
        layout.addWidget(chain_box)

        # ---- preview
        preview_row = QHBoxLayout()
        self.live_check = QCheckBox("Live preview")
        self.live_check.setChecked(True)
        self.preview_button = QPushButton("Update preview")
        self.preview_bar = QProgressBar()
        preview_row.addWidget(self.live_check)
        preview_row.addWidget(self.preview_button)
        preview_row.addWidget(self.preview_bar)
        layout.addLayout(preview_row)
        self.preview_status = QLabel("")
        layout.addWidget(self.preview_status)

        # ---- apply / undo
        apply_row = QHBoxLayout()
        self.apply_button = QPushButton("Apply")
        self.undo_button = QPushButton("Undo")
        self.undo_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        apply_row.addWidget(self.apply_button)
        apply_row.addWidget(self.undo_button)
        apply_row.addWidget(self.progress_bar)
        layout.addLayout(apply_row)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        self.volume_table = QTableWidget(0, 4)
        self.volume_table.setHorizontalHeaderLabels(["label", "name", "before (mL)", "after (mL)"])
        self.volume_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        layout.addWidget(self.volume_table)

        self.runner = TaskRunner(self.apply_button, self.progress_bar, self.status_label, what="Post-processing")
        self.preview_runner = TaskRunner(self.preview_button, self.preview_bar, self.preview_status, what="Preview")
        self.preview_runner.finished.connect(self._preview_finished)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(30)
        self._timer.timeout.connect(self.update_preview)

        self.op_combo.currentIndexChanged.connect(self._op_changed)
        self.add_button.clicked.connect(lambda: self.add_step())
        self.remove_button.clicked.connect(lambda: self.remove_step(self.step_list.currentRow()))
        self.up_button.clicked.connect(lambda: self.move_step(self.step_list.currentRow(), -1))
        self.down_button.clicked.connect(lambda: self.move_step(self.step_list.currentRow(), +1))
        self.load_button.clicked.connect(lambda: self.load_chain())
        self.save_button.clicked.connect(lambda: self.save_chain())
        self.live_check.toggled.connect(self._live_toggled)
        self.preview_button.clicked.connect(self._preview_clicked)
        self.apply_button.clicked.connect(self._apply_clicked)
        self.undo_button.clicked.connect(self.undo)
        self.layer_combo.currentIndexChanged.connect(self._layer_changed)
        napari_viewer.dims.events.current_step.connect(self._schedule_preview)
        napari_viewer.dims.events.ndisplay.connect(self._schedule_preview)
        napari_viewer.dims.events.order.connect(self._schedule_preview)
        self._op_changed()
        self._layer_changed()

    # ----------------------------------------------------------------------------- the chain
    def chain(self) -> PostprocessChain:
        """The chain as built so far (validated)."""
        return PostprocessChain.from_json(self._steps)

    def _op_changed(self, *_: Any) -> None:
        _, _, _, param = _OPERATIONS[self.op_combo.currentIndex()]
        if param is None:
            self.param_label.setText("(no parameter)")
            self.param_spin.setEnabled(False)
            return
        text, minimum, maximum, decimals, default = _PARAMETERS[param]
        self.param_label.setText(text)
        self.param_spin.setEnabled(True)
        self.param_spin.setDecimals(decimals)
        self.param_spin.setRange(minimum, maximum)
        self.param_spin.setValue(default)

    def add_step(self, op: str | None = None, value: float | None = None, labels: str | Sequence[int] | None = None) -> bool:
        """Append a step; the arguments default to the editor's controls.

        Parameters
        ----------
        op : str, optional
            One of the editor's operations (its text, e.g. ``"fill holes (slice-wise, z)"``) or a
            :class:`PostprocessOp` value (``"opening"``).
        value : float, optional
            The parameter: radius (mm), min size (mm^3) or N.
        labels : str or sequence of int, optional
            ``"all"``, ``"1,2"`` or a list.

        Returns
        -------
        bool
            True if the step was added; False if it is invalid (the user gets a notification with
            the core's message and the chain is unchanged).
        """
        from napari_medseg.plugin._worker import notify_error

        try:
            step = self._step_from(op, value, labels)
            chain = PostprocessChain.from_json([*self._steps, step])
        except InvalidInputError as exc:
            notify_error(exc, what="Adding the step")
            return False
        self._set_steps(chain.to_list())
        self.step_list.setCurrentRow(len(self._steps) - 1)
        return True

    def _step_from(self, op: str | None, value: float | None, labels: str | Sequence[int] | None) -> dict[str, Any]:
        if op is None:
            index = self.op_combo.currentIndex()
        else:
            matches = [i for i, entry in enumerate(_OPERATIONS) if op in (entry[0], entry[1].value)]
            if not matches:
                from napari_medseg._options import look_up_option

                look_up_option(op, PostprocessOp, name="op")  # raises with "did you mean"
            index = matches[0]
        _, kind, fixed, param = _OPERATIONS[index]
        step: dict[str, Any] = {"op": kind.value, **fixed}
        if param is not None:
            number = self.param_spin.value() if value is None else value
            step[param] = int(round(number)) if param == "n" else float(number)
        if labels is None:
            labels = self.labels_edit.text()
        # an empty field means every label (the shared parser refuses an empty text, as the CLI does)
        selection = parse_label_list(labels.strip() or None, name="labels") if isinstance(labels, str) else list(labels)
        if selection is not None:
            step["labels"] = selection
        return step

    def _set_steps(self, steps: list[dict[str, Any]]) -> None:
        self._steps = [dict(s) for s in steps]
        chain = self.chain()
        self.step_list.clear()
        for step in chain:
            self.step_list.addItem(step.describe())
        self._schedule_preview()

    def set_chain(self, chain: PostprocessChain | Sequence[Mapping[str, Any]] | str) -> bool:
        """Replace the chain (a chain, step dicts or JSON text); False with a notification if invalid."""
        from napari_medseg.plugin._worker import notify_error

        try:
            steps = PostprocessChain.from_json(chain).to_list()
        except InvalidInputError as exc:
            notify_error(exc, what="Setting the chain")
            return False
        self._set_steps(steps)
        return True

    def remove_step(self, index: int) -> None:
        """Remove step ``index`` (no-op when out of range)."""
        if 0 <= index < len(self._steps):
            steps = list(self._steps)
            del steps[index]
            self._set_steps(steps)
            self.step_list.setCurrentRow(min(index, len(steps) - 1))

    def move_step(self, index: int, delta: int) -> None:
        """Move step ``index`` up (``delta`` -1) or down (+1) (no-op at the ends)."""
        target = index + delta
        if 0 <= index < len(self._steps) and 0 <= target < len(self._steps):
            steps = list(self._steps)
            steps[index], steps[target] = steps[target], steps[index]
            self._set_steps(steps)
            self.step_list.setCurrentRow(target)

    def load_chain(self, path: str | Path | None = None) -> bool:
        """Load a chain JSON file (as ``medseg postprocess --chain``); asks for the file if ``path`` is None.

        Returns False (with a notification carrying the core's message; the chain unchanged) if
        the file is missing or invalid, or the dialog was cancelled.
        """
        from napari_medseg.plugin._worker import notify_error

        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load a post-processing chain", "", "JSON (*.json)")
            if not path:
                return False
        try:
            chain = PostprocessChain.from_file(path)
        except InvalidInputError as exc:
            notify_error(exc, what="Loading the chain")
            return False
        except Exception as exc:  # noqa: BLE001 - FileFormatError and OS errors reach the user
            notify_error(exc, what="Loading the chain")
            return False
        self._set_steps(chain.to_list())
        return True

    def save_chain(self, path: str | Path | None = None) -> Path | None:
        """Save the chain as JSON (atomically); asks for the file if ``path`` is None."""
        from napari_medseg.plugin._worker import notify_error

        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save the post-processing chain", "chain.json", "JSON (*.json)")
            if not path:
                return None
        try:
            return self.chain().save(path)
        except OSError as exc:
            notify_error(exc, what="Saving the chain")
            return None

    # ---------------------------------------------------------------------------- the source layer
    def source_layer(self) -> Any:
        """The selected Labels layer, or None."""
        return self.layer_combo.layer()

    def _layer_changed(self, *_: Any) -> None:
        layer = self.source_layer()
        if self._watched is not None and self._watched is not layer:
            for name in ("data", "paint", "labels_update"):
                getattr(self._watched.events, name).disconnect(self._data_changed)
            self._watched = None
        if layer is not None and self._watched is None:
            for name in ("data", "paint", "labels_update"):
                getattr(layer.events, name).connect(self._data_changed)
            self._watched = layer
        names = label_names(layer) if layer is not None else {}
        self.names_label.setText(", ".join(f"{v}: {n}" for v, n in sorted(names.items()) if v != 0))
        self._remove_preview_layer()
        self._full_cache = None
        self._schedule_preview()

    def _data_changed(self, *_: Any) -> None:
        self._data_version += 1
        self._full_cache = None
        self._schedule_preview()

    # ------------------------------------------------------------------------------------ preview
    def _live_toggled(self, on: bool) -> None:
        if on:
            self._schedule_preview()
        else:
            self._remove_preview_layer()

    def _preview_clicked(self) -> None:
        if self.preview_runner.running:
            self._preview_pending = False
            self.preview_runner.cancel()
        else:
            self.update_preview(force=True)

    def _schedule_preview(self, *_: Any) -> None:
        if self.live_check.isChecked():
            self._timer.start()

    def _current_slice(self, layer: Any) -> tuple[int, int] | None:
        """``(axis, index)`` of the layer's data shown in a 2D view, or None (3D view, not shown)."""
        dims = self.viewer.dims
        if dims.ndisplay != 2 or layer.data.ndim != 3 or len(dims.not_displayed) < 1:
            return None
        offset = dims.ndim - layer.data.ndim
        axis = dims.not_displayed[-1] - offset
        if not 0 <= axis < 3:
            return None
        point = layer.world_to_data(dims.point)
        index = int(np.round(point[axis]))
        if not 0 <= index < layer.data.shape[axis]:
            return None
        return axis, index

    def update_preview(self, *_: Any, force: bool = False) -> None:
        """Recompute the preview for the current chain and slice (in a worker)."""
        from napari_medseg.plugin._layers import volume_from_layer

        if not (self.live_check.isChecked() or force):
            return
        layer = self.source_layer()
        if layer is None or not self._steps:
            self._remove_preview_layer()
            return
        if self.preview_runner.running:
            self._preview_pending = True
            return
        try:
            volume = volume_from_layer(layer)
            chain = self.chain()
            place = self._current_slice(layer)
            margin = preview_margin_vox(chain, spacing_mm=volume.spacing_zyx, axis=place[0] if place else 0)
        except InvalidInputError as exc:
            self._show_preview_error(str(exc))
            return
        chain_json = chain.to_json()
        if margin is None or place is None:
            cache_key = (id(layer), self._data_version, chain_json)
            if self._full_cache is not None and self._full_cache[0] == cache_key:
                self._show_full(layer, volume, self._full_cache[1], (chain_json, None, None))
                return
            request = (layer, self._data_version, chain_json, None)
            self.preview_runner.start(
                apply_chain, volume.array, chain, spacing_mm=volume.spacing_zyx,
                on_returned=lambda result: self._full_returned(request, cache_key, result),
            )
            return
        axis, index = place
        request = (layer, self._data_version, chain_json, place)
        self.preview_runner.start(
            preview_slice, volume.array, chain, spacing_mm=volume.spacing_zyx, axis=axis, index=index,
            on_returned=lambda result: self._slice_returned(request, result),
        )

    def _stale(self, request: tuple) -> bool:
        layer, version, chain_json, place = request
        if layer is not self.source_layer() or version != self._data_version or not self._steps:
            return True
        if chain_json != self.chain().to_json():
            return True
        return place is not None and place != self._current_slice(layer)

    def _slice_returned(self, request: tuple, result: np.ndarray) -> None:
        if self._stale(request):
            self._preview_pending = True
            return
        layer, _, chain_json, (axis, index) = request
        preview = self._ensure_preview_layer(layer)
        data = preview.data
        if self._preview_written is None or self._preview_written == (-1, -1):
            data[...] = 0
        else:
            old_axis, old_index = self._preview_written
            index_tuple = [slice(None)] * 3
            index_tuple[old_axis] = old_index
            data[tuple(index_tuple)] = 0
        index_tuple = [slice(None)] * 3
        index_tuple[axis] = index
        data[tuple(index_tuple)] = result
        self._preview_written = (axis, index)
        preview.refresh()
        self.preview_key = (chain_json, axis, index)
        self._preview_error = None
        self.preview_updated.emit()

    def _full_returned(self, request: tuple, cache_key: tuple, result: np.ndarray) -> None:
        if request[1] == self._data_version and request[0] is self.source_layer():
            self._full_cache = (cache_key, result)
        if self._stale(request):
            self._preview_pending = True
            return
        from napari_medseg.plugin._layers import volume_from_layer

        self._show_full(request[0], volume_from_layer(request[0]), result, (request[2], None, None))

    def _show_full(self, layer: Any, volume: Volume, result: np.ndarray, key: tuple) -> None:
        preview = self._ensure_preview_layer(layer)
        preview.data[...] = result
        preview.refresh()
        self._preview_written = (-1, -1)
        self.preview_key = key
        self._preview_error = None
        self.preview_updated.emit()

    def _preview_finished(self) -> None:
        if self.preview_runner.last_outcome == "failed" and self.preview_runner.last_error is not None:
            self._preview_error = str(self.preview_runner.last_error)
        if self._preview_pending:
            self._preview_pending = False
            self._schedule_preview()

    def _show_preview_error(self, message: str) -> None:
        from napari_medseg.plugin._worker import notify_error

        self.preview_status.setText(f"Preview: {message}")
        if message != self._preview_error:  # once per distinct problem, not on every slice
            self._preview_error = message
            notify_error(InvalidInputError(message), what="Preview")

    def _ensure_preview_layer(self, layer: Any) -> Any:
        from napari_medseg.plugin._layers import layer_geometry, layer_kwargs

        preview = self._preview_layer
        if preview is not None and (self._preview_source is not layer or preview not in self.viewer.layers
                                    or preview.data.shape != layer.data.shape or preview.data.dtype != layer.data.dtype):
            self._remove_preview_layer()
            preview = None
        if preview is None:
            active = self.viewer.layers.selection.active
            kwargs = layer_kwargs(layer_geometry(layer), name=f"{layer.name} [preview]", opacity=0.7,
                                  metadata={PREVIEW_KEY: True})
            preview = self.viewer.add_labels(np.zeros(layer.data.shape, dtype=layer.data.dtype), **kwargs)
            preview.editable = False
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active  # keep the user's layer selected
            self._preview_layer, self._preview_source = preview, layer
            self._preview_written = None
        return preview

    @property
    def preview_layer(self) -> Any:
        """The preview Labels layer, or None."""
        return self._preview_layer

    def _remove_preview_layer(self) -> None:
        preview, self._preview_layer, self._preview_source = self._preview_layer, None, None
        self._preview_written, self.preview_key = None, None
        if preview is not None and preview in self.viewer.layers:
            self.viewer.layers.remove(preview)

    # -------------------------------------------------------------------------------- apply / undo
    def _apply_clicked(self) -> None:
        if self.runner.running:
            self.runner.cancel()
        else:
            self.apply()

    def apply(self) -> None:
        """Run the whole chain on the selected layer in a worker; a new layer is added when done."""
        from napari_medseg.plugin._layers import volume_from_layer
        from napari_medseg.plugin._worker import notify_error

        layer = self.source_layer()
        try:
            if layer is None:
                raise InvalidInputError("choose a Labels layer to post-process")
            chain = self.chain()
            if not len(chain):
                raise InvalidInputError("the chain has no steps: add at least one step")
            volume = volume_from_layer(layer)
        except InvalidInputError as exc:
            notify_error(exc, what="Post-processing")
            return
        self.runner.start(postprocess_with_volumes, volume, chain,
                          on_returned=lambda out: self._applied_result(layer, chain, out))

    def _applied_result(self, source: Any, chain: PostprocessChain, out: tuple) -> None:
        from napari_medseg.plugin._layers import PROVENANCE_KEY, layer_kwargs

        result, before, after = out
        provenance = dict(source.metadata.get(PROVENANCE_KEY, {}) or {})
        provenance["postprocess"] = chain.to_list()
        extra: dict[str, Any] = {"metadata": {POSTPROCESS_KEY: chain.to_list(), "medseg_source_layer": source.name}}
        if len(getattr(source, "features", ())):
            extra["features"] = source.features.copy()
        kwargs = layer_kwargs(result.geometry, name=f"{source.name} [post-processed]", provenance=provenance,
                              header=result.metadata, **extra)
        layer = self.viewer.add_labels(result.array, **kwargs)
        try:
            layer.colormap = source.colormap  # the same colours as the source labels
        except Exception as exc:  # noqa: BLE001 - a colormap napari cannot copy: keep the default one
            _LOG.info("could not copy the colormap of %r: %s", source.name, exc)
        self._applied.append(layer)
        self.undo_button.setEnabled(True)
        self._fill_volumes(source, before, after)

    def _fill_volumes(self, source: Any, before: Mapping[int, float], after: Mapping[int, float] | None) -> None:
        names = label_names(source)
        values = sorted(set(before) | set(after or {}))
        self.volume_table.setRowCount(len(values))
        for row, value in enumerate(values):
            cells = [str(value), names.get(value, ""), f"{before.get(value, 0.0):.4g}",
                     "" if after is None else f"{after.get(value, 0.0):.4g}"]
            numbers = [value, None, before.get(value, 0.0), None if after is None else after.get(value, 0.0)]
            for column, (text, number) in enumerate(zip(cells, numbers)):
                set_cell(self.volume_table, row, column, text, value=number)

    def volumes(self) -> dict[int, tuple[float, float | None]]:
        """The volume table as ``{label: (before_ml, after_ml or None)}`` (exact values)."""
        out = {}
        for row in range(self.volume_table.rowCount()):
            value, after = cell_value(self.volume_table, row, 0), cell_value(self.volume_table, row, 3)
            out[int(value)] = (float(cell_value(self.volume_table, row, 2)), None if after is None else float(after))
        return out

    def applied_layers(self) -> list[Any]:
        """The layers Apply added that Undo has not removed yet (oldest first)."""
        return [layer for layer in self._applied if layer in self.viewer.layers]

    def undo(self) -> None:
        """Remove the last layer Apply added (the source layer is never modified)."""
        while self._applied:
            layer = self._applied.pop()
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
                break
        for row in range(self.volume_table.rowCount()):
            set_cell(self.volume_table, row, 3, "")
        self.undo_button.setEnabled(bool(self.applied_layers()))

    # ------------------------------------------------------------------------------------ closing
    def cleanup(self) -> None:
        """Remove the preview layer and stop following the viewer (called when the widget closes)."""
        if self._closed:
            return
        self._closed = True
        self._timer.stop()
        self._preview_pending = False
        if self.preview_runner.running:
            self.preview_runner.cancel()
        self._remove_preview_layer()
        dims = self.viewer.dims.events
        for emitter in (dims.current_step, dims.ndisplay, dims.order):
            emitter.disconnect(self._schedule_preview)
        if self._watched is not None:
            for name in ("data", "paint", "labels_update"):
                getattr(self._watched.events, name).disconnect(self._data_changed)
            self._watched = None
        self.layer_combo.disconnect_viewer()

    def closeEvent(self, event: Any) -> None:
        self.cleanup()
        super().closeEvent(event)
