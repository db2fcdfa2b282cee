"""Qt pieces shared by the plugin's dock widgets: one layer picker and a few small helpers.

- :class:`LayerCombo` is *the* picker of a viewer's image or Labels layers. It follows
  ``viewer.layers`` (insert, remove, move) and layer renames, keeps the selected *layer* (not just
  its name) across refreshes, never lists MedSeg preview layers (:func:`is_preview`), can offer a
  first "(none)" entry, and stops following the viewer when asked (:meth:`LayerCombo.disconnect_viewer`)
  or when its Qt object is gone.
- :func:`double_spin` / :func:`int_spin` build spin boxes in one call.
- :func:`set_cell` / :func:`cell_value` fill and read a read-only table cell that keeps the exact
  value next to the formatted text (``Qt.UserRole``).

The module needs Qt (it is imported by the widgets only); nothing in the core imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_medseg.errors import InvalidInputError

if TYPE_CHECKING:
    import napari

__all__ = [
    "LAYER_TYPES",
    "PREVIEW_KEY",
    "LayerCombo",
    "cell_value",
    "close_when_undocked",
    "double_spin",
    "int_spin",
    "is_preview",
    "refill",
    "set_cell",
]

#: metadata flag of a MedSeg preview layer (a temporary layer: pickers never list it)
PREVIEW_KEY = "medseg_preview"
#: the ``layer_type`` values :class:`LayerCombo` accepts -> napari layer class name
LAYER_TYPES = {"image": "Image", "labels": "Labels"}


def is_preview(layer: Any) -> bool:
    """Whether ``layer`` is a MedSeg preview layer (``metadata[PREVIEW_KEY]`` is true)."""
    metadata = getattr(layer, "metadata", None)
    return isinstance(metadata, Mapping) and bool(metadata.get(PREVIEW_KEY))


def _layer_classes(layer_type: str | Sequence[str]) -> tuple[type, ...]:
    import napari.layers

    kinds = (layer_type,) if isinstance(layer_type, str) else tuple(layer_type)
    if not kinds or any(kind not in LAYER_TYPES for kind in kinds):
        raise InvalidInputError(f"layer_type={layer_type!r}: expected one of {sorted(LAYER_TYPES)} or a sequence of them")
    return tuple(getattr(napari.layers, LAYER_TYPES[kind]) for kind in kinds)


class LayerCombo(QComboBox):
    """A picker of a viewer's image and/or Labels layers that stays up to date.

    The items' texts are the layer names, so ``currentText()`` / ``setCurrentText(name)`` work as
    on any ``QComboBox``; :meth:`layer` / :meth:`set_layer` work with the layer objects. Layers are
    listed in the viewer's order; MedSeg preview layers (:func:`is_preview`) are never listed.

    When a refresh (a layer inserted, removed, moved or renamed) loses the selected layer, the
    picker selects the optional entry if it has one, else the layer at ``default_index``. Whenever
    the selected layer changes through a refresh, ``currentIndexChanged`` is emitted (and
    ``currentTextChanged`` whenever the shown text changes), as if the user had picked it.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layer list is followed.
    layer_type : {"image", "labels"} or sequence of them, optional
        Which layers are listed (napari ``Image`` / ``Labels`` layers and their subclasses).
        Default ``"image"``.
    optional : bool, optional
        Offer a first entry meaning "no layer" (:meth:`layer` returns None for it). Default False.
    none_text : str, optional
        The text of that entry. Default ``"(none)"``.
    exclude : callable, optional
        ``exclude(layer) -> bool``: layers for which it returns True are not listed (besides the
        preview layers). Default None (list every layer of the type).
    default_index : int, optional
        Which layer a picker without an optional entry selects when it has no selection (first
        fill, or the selected layer went away): an index into the listed layers, negative counting
        from the end; out of range means the first layer. Default 0.
    parent : QWidget, optional
        The Qt parent.

    Raises
    ------
    InvalidInputError
        If ``layer_type`` is not ``"image"``, ``"labels"`` or a sequence of them.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        layer_type: str | Sequence[str] = "image",
        *,
        optional: bool = False,
        none_text: str = "(none)",
        exclude: Callable[[Any], bool] | None = None,
        default_index: int = 0,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._classes = _layer_classes(layer_type)
        self.layer_type = layer_type
        self.optional = bool(optional)
        self.none_text = str(none_text)
        self._exclude = exclude
        self.default_index = int(default_index)
        self._connected: list[Any] = []
        self._following = True
        for emitter in self._layer_list_events():
            emitter.connect(self.refresh)
        self.refresh()

    def _layer_list_events(self) -> tuple[Any, ...]:
        events = self._viewer.layers.events
        return events.inserted, events.removed, events.moved

    def candidates(self) -> list[Any]:
        """The layers the picker lists, in the viewer's order."""
        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, self._classes)
            and not is_preview(layer)
            and not (self._exclude is not None and self._exclude(layer))
        ]

    def refresh(self, *_: Any) -> None:
        """Rebuild the list from the viewer, keeping the selected layer if it is still listed."""
        try:
            self._refresh()
        except RuntimeError:  # the Qt object is gone (dock closed) while the viewer lives on
            self.disconnect_viewer()

    def _refresh(self) -> None:
        current, text = self.layer(), self.currentText()
        had_selection = self.currentIndex() >= 0
        layers = self.candidates()
        for layer in layers:
            if not any(layer is seen for seen in self._connected):
                layer.events.name.connect(self.refresh)
        for layer in self._connected:
            if not any(layer is kept for kept in layers):
                layer.events.name.disconnect(self.refresh)
        self._connected = list(layers)
        self.blockSignals(True)
        try:
            self.clear()
            if self.optional:
                self.addItem(self.none_text, None)
            for layer in layers:
                self.addItem(layer.name, layer)
            offset = 1 if self.optional else 0
            position = next((i for i, layer in enumerate(layers) if layer is current), None)
            if position is not None:
                index = position + offset
            elif self.optional:
                index = 0
            elif layers:
                n = len(layers)
                index = self.default_index if -n <= self.default_index < n else 0
                index %= n
            else:
                index = -1
            self.setCurrentIndex(index)
        finally:
            self.blockSignals(False)
        if current is not self.layer() or (had_selection != (self.currentIndex() >= 0)):
            self.currentIndexChanged.emit(self.currentIndex())
        if text != self.currentText():
            self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Any:
        """The selected layer, or None (nothing listed, or the optional entry)."""
        index = self.currentIndex()
        return self.itemData(index) if index >= 0 else None

    def set_layer(self, layer: Any) -> None:
        """Select ``layer``; None selects the optional entry.

        Raises
        ------
        InvalidInputError
            If ``layer`` is not listed (not a layer of the viewer of the picker's type, or None
            without an optional entry).
        """
        if layer is None and self.optional:
            self.setCurrentIndex(0)
            return
        for i in range(self.count()):
            if layer is not None and self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return
        kinds = self.layer_type if isinstance(self.layer_type, str) else "/".join(self.layer_type)
        raise InvalidInputError(f"layer {getattr(layer, 'name', layer)!r} is not one of the viewer's {kinds} layers")

    def disconnect_viewer(self) -> None:
        """Stop following the viewer (before the widget goes away); safe to call twice."""
        if not self._following:
            return
        self._following = False
        for emitter in self._layer_list_events():
            emitter.disconnect(self.refresh)
        for layer in self._connected:
            layer.events.name.disconnect(self.refresh)
        self._connected = []


def refill(combo: QComboBox, texts: Sequence[str]) -> bool:
    """Replace a combo box's items by ``texts``, keeping the current text if it is still offered.

    Signals are blocked while the items change (a refresh is not a user's choice); the first item
    is selected when the current text went away. Returns whether the current text changed.
    """
    current = combo.currentText()
    combo.blockSignals(True)
    try:
        combo.clear()
        combo.addItems(list(texts))
        if current in texts:
            combo.setCurrentText(current)
    finally:
        combo.blockSignals(False)
    return combo.currentText() != current


# ------------------------------------------------------------------------------------ spin boxes
def double_spin(
    value: float, low: float, high: float, step: float = 1.0, *, decimals: int = 3, tooltip: str = ""
) -> QDoubleSpinBox:
    """A ``QDoubleSpinBox`` with its range, step, decimals (default 3) and value set.

    The range only bounds typing: the core validates the values (one source of truth).
    """
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    if tooltip:
        box.setToolTip(tooltip)
    return box


def int_spin(value: int, low: int, high: int, step: int = 1, *, tooltip: str = "") -> QSpinBox:
    """A ``QSpinBox`` with its range, step and value set."""
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(max(1, int(step)))
    box.setValue(value)
    if tooltip:
        box.setToolTip(tooltip)
    return box


# ---------------------------------------------------------------------------- read-only tables
def set_cell(
    table: QTableWidget,
    row: int,
    column: int,
    text: str,
    *,
    value: Any = None,
    tooltip: str = "",
    align_right: bool = False,
) -> QTableWidgetItem:
    """Put ``text`` in a table cell; ``value`` is kept exactly as ``Qt.UserRole`` data (None: none).

    An existing item is updated in place (no flicker, selection kept); a new one is created
    otherwise. The cell's tooltip becomes ``tooltip`` (default none). Returns the item.
    """
    item = table.item(row, column)
    if item is None:
        item = QTableWidgetItem(text)
        table.setItem(row, column, item)
    elif item.text() != text:
        item.setText(text)
    item.setData(Qt.ItemDataRole.UserRole, value)
    item.setToolTip(tooltip)
    if align_right:
        item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
    return item


def cell_value(table: QTableWidget, row: int, column: int) -> Any:
    """The exact value :func:`set_cell` kept in a cell (None if none, or no item there)."""
    item = table.item(row, column)
    return None if item is None else item.data(Qt.ItemDataRole.UserRole)


class _UndockWatcher(QObject):
    """Closes a widget when it loses its parent after having had one (see :func:`close_when_undocked`)."""

    def __init__(self, widget: QWidget) -> None:
        super().__init__(widget)
        self._docked = widget.parent() is not None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange:
            if watched.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                watched.close()
        return False


def close_when_undocked(widget: QWidget) -> None:
    """Make ``widget.close()`` (and so its ``closeEvent`` clean-up) run when napari removes its dock.

    napari's ``remove_dock_widget`` (also the dock's close button) only unparents the inner widget
    and never closes it, so without this a widget would keep following the viewer's events (and,
    for Post-process, keep its preview layer) after the user closed it.
    """
    widget.installEventFilter(_UndockWatcher(widget))
