"""The Models dock widget: browse, verify, import and remove registry models.

The table lists what :func:`~napari_medseg.plugin._settings.registry_from_config` finds (name,
version, source, labels, spacing, short sha256, folder, and the last verification result), the
folders that could not be read as models (with the reason) below it, and the full card of the
selected model. Verify checks the sha256 of every file a card names, in a worker (progress per
model, Cancel between models); each model shows ``OK`` or the core's ``IntegrityError`` message.
Import copies a model folder into the user folder (:meth:`Registry.add`, validated and atomic) or
converts a MONAI bundle first (:func:`~napari_medseg.registry.import_monai_bundle`, staged in a
temporary folder, then added the same way), or an nnU-Net v2 result folder
(:func:`~napari_medseg.nnunet.add_nnunet`, the same way). Remove deletes a user-folder model after a
confirmation. Every change emits ``plugin_events().registry_changed`` so model pickers refresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from napari_medseg.card_summary import card_text, spacing_text  # the one card summary; card_text importable from here
from napari_medseg.errors import FileFormatError, IntegrityError, InvalidInputError
from napari_medseg.plugin._widgets import close_when_undocked, set_cell
from napari_medseg.progress import (
    CancelEvent,
    ProgressCallback,
    check_cancelled,
    report,
)
from napari_medseg.registry import Registry, RegistryModel, add_monai_bundle

if TYPE_CHECKING:
    import napari

__all__ = ["COLUMNS", "OK", "ModelsWidget", "card_text", "import_bundle", "verify_models"]

COLUMNS = ("name", "version", "source", "labels", "spacing (mm, x y z)", "sha256", "folder", "verified")
OK = "OK"


def verify_models(
    models: Sequence[RegistryModel],
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
) -> dict[str, str]:
    """Verify each model's files; ``{name: "OK" or the failure message}`` (never raises for a bad model).

    Raises
    ------
    CancelledError
        If ``cancel`` is set (checked before each model).
    """
    results: dict[str, str] = {}
    report(progress, 0, len(models))
    for index, model in enumerate(models):
        check_cancelled(cancel, "verification")
        try:
            model.verify()
        except (IntegrityError, FileFormatError) as exc:
            results[model.name] = str(exc)
        else:
            results[model.name] = OK
        report(progress, index + 1, len(models))
    return results


def import_bundle(bundle_dir: str | Path, registry: Registry, *, name: str | None = None) -> RegistryModel:
    """Convert a MONAI bundle (in a temporary folder) and add it to ``registry``'s user folder.

    As ``medseg models import-bundle --add``: the bundle is checked (the network is built and the
    weights loaded) before anything reaches the registry.

    Raises
    ------
    FileFormatError, InvalidInputError, IntegrityError
        As :func:`~napari_medseg.registry.add_monai_bundle`.
    """
    return add_monai_bundle(bundle_dir, registry, name=name)


class ModelsWidget(QWidget):
    """Dock widget: the model registry (table, card, verify, import, remove).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (npe2 passes it; the widget does not use its layers).
    """

    refreshed = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        from napari_medseg.plugin._worker import TaskRunner, plugin_events

        super().__init__()
        close_when_undocked(self)
        self.viewer = napari_viewer
        self.models: list[RegistryModel] = []
        self.problems: list[tuple[Path, str]] = []
        self.verified: dict[str, str] = {}

        layout = QVBoxLayout(self)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        layout.addWidget(self.table)
        layout.addWidget(QLabel("Folders that could not be read as models:"))
        self.problem_list = QListWidget()
        self.problem_list.setMaximumHeight(80)
        layout.addWidget(self.problem_list)

        row = QHBoxLayout()
        self.refresh_button = QPushButton("Refresh")
        self.verify_selected_button = QPushButton("Verify selected")
        self.verify_button = QPushButton("Verify all")
        for button in (self.refresh_button, self.verify_selected_button, self.verify_button):
            row.addWidget(button)
        layout.addLayout(row)
        row = QHBoxLayout()
        self.import_button = QPushButton("Import folder…")
        self.bundle_button = QPushButton("Import MONAI bundle…")
        self.nnunet_button = QPushButton("Import nnU-Net…")
        self.remove_button = QPushButton("Remove")
        for button in (self.import_button, self.bundle_button, self.nnunet_button, self.remove_button):
            row.addWidget(button)
        layout.addLayout(row)
        self.progress_bar = QProgressBar()
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.card_view = QPlainTextEdit()
        self.card_view.setReadOnly(True)
        layout.addWidget(self.card_view)

        self.runner = TaskRunner(self.verify_button, self.progress_bar, self.status_label, what="Verification")
        self.import_runner = TaskRunner(self.import_button, self.progress_bar, self.status_label, what="Import",
                                        cancel_text="Importing…")
        self.import_runner.finished.connect(lambda: self.bundle_button.setEnabled(True))
        self.import_runner.finished.connect(lambda: self.nnunet_button.setEnabled(True))
        self.refresh_button.clicked.connect(self.refresh)
        self.verify_button.clicked.connect(self._verify_clicked)
        self.verify_selected_button.clicked.connect(lambda: self.verify(selected_only=True))
        self.import_button.clicked.connect(lambda: self.import_folder())
        self.bundle_button.clicked.connect(lambda: self.import_bundle())
        self.nnunet_button.clicked.connect(lambda: self.import_nnunet())
        self.remove_button.clicked.connect(lambda: self.remove_selected())
        self.table.itemSelectionChanged.connect(self._show_card)
        self._events = plugin_events()
        self._events.registry_changed.connect(self.refresh)
        self.refresh()

    # ------------------------------------------------------------------------------- listing
    def registry(self) -> Registry:
        """The registry the plugin settings select (scanned afresh each time)."""
        from napari_medseg.plugin._settings import registry_from_config

        return registry_from_config()

    def refresh(self) -> None:
        """Scan the registry and rebuild the table and the problem list (keeps the selection)."""
        selected = self.selected_model()
        scan = self.registry().scan()
        self.models, self.problems = list(scan.models), list(scan.problems)
        self.table.setRowCount(len(self.models))
        for row, model in enumerate(self.models):
            card = model.card
            cells = (
                model.name,
                card.version,
                model.source.value,
                ", ".join(f"{v}: {card.labels[v].name}" for v in card.label_values),
                spacing_text(model.card),
                model.sha256[:12],
                str(model.folder),
                self.verified.get(model.name, ""),
            )
            for column, text in enumerate(cells):
                tooltip = model.sha256 if column == 5 else text if column in (6, 7) else ""
                set_cell(self.table, row, column, text, tooltip=tooltip)
        self.problem_list.clear()
        for path, why in self.problems:
            self.problem_list.addItem(f"{path}: {why}")
        names = [m.name for m in self.models]
        if selected is not None and selected.name in names:
            self.select(selected.name)
        else:
            self._show_card()
        self.refreshed.emit()

    def selected_model(self) -> RegistryModel | None:
        """The model of the selected row, or None."""
        rows = {index.row() for index in self.table.selectionModel().selectedRows()} if self.table.selectionModel() else set()
        if not rows:
            return None
        row = min(rows)
        return self.models[row] if row < len(self.models) else None

    def select(self, name: str) -> None:
        """Select the row of model ``name``.

        Raises
        ------
        InvalidInputError
            If no listed model has that name.
        """
        for row, model in enumerate(self.models):
            if model.name == name:
                self.table.selectRow(row)
                self._show_card()
                return
        raise InvalidInputError(f"no model named {name!r} in the table; listed: {', '.join(m.name for m in self.models) or 'none'}")

    def _show_card(self) -> None:
        model = self.selected_model()
        self.card_view.setPlainText(card_text(model) if model is not None else "")

    def column(self, name: str) -> dict[str, str]:
        """One column of the table as ``{model name: cell text}`` (e.g. ``column("verified")``)."""
        index = COLUMNS.index(name)
        return {self.table.item(r, 0).text(): self.table.item(r, index).text() for r in range(self.table.rowCount())}

    # -------------------------------------------------------------------------------- verify
    def _verify_clicked(self) -> None:
        if self.runner.running:
            self.runner.cancel()
        else:
            self.verify()

    def verify(self, *, selected_only: bool = False) -> None:
        """Verify every listed model (or the selected one) in a worker; results go to the table."""
        from napari_medseg.plugin._worker import notify_error

        if self.runner.running:
            return
        if selected_only:
            model = self.selected_model()
            if model is None:
                notify_error(InvalidInputError("select a model to verify"), what="Verification")
                return
            models = [model]
        else:
            models = list(self.models)
        self.runner.start(verify_models, models, on_returned=self._verified)

    def _verified(self, results: dict[str, str]) -> None:
        from napari_medseg.plugin._worker import warn

        self.verified.update(results)
        failed = {name: why for name, why in results.items() if why != OK}
        for name, why in failed.items():
            warn(f"model {name!r} failed verification: {why}")
        self.refresh()
        self.status_label.setText(
            f"verified {len(results)} model(s): " + (f"{len(failed)} failed" if failed else "all OK")
        )

    # ---------------------------------------------------------------------------- add / remove
    def _start_import(self, function: Any, *args: Any, what: str, **kwargs: Any) -> None:
        self.import_runner.what = what
        self.import_runner.start(function, *args, pass_progress=False, pass_cancel=False, on_returned=self._imported,
                                 **kwargs)
        self.import_button.setEnabled(False)  # copying cannot be interrupted half-way: no Cancel
        self.bundle_button.setEnabled(False)
        self.nnunet_button.setEnabled(False)

    def import_folder(self, path: str | Path | None = None) -> None:
        """Add a model folder to the user folder (validated, sha256-checked, copied atomically), in a worker.

        Asks for the folder if ``path`` is None.
        """
        if self.import_runner.running:
            return
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Import a model folder (with model.yaml)")
            if not path:
                return
        self._start_import(self.registry().add, Path(path), what="Import")

    def import_bundle(self, path: str | Path | None = None, *, name: str | None = None) -> None:
        """Convert a MONAI bundle folder and add it to the user folder, in a worker.

        Asks for the folder if ``path`` is None.
        """
        if self.import_runner.running:
            return
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Import a MONAI bundle folder")
            if not path:
                return
        self._start_import(import_bundle, Path(path), self.registry(), name=name, what="Bundle import")

    def import_nnunet(self, path: str | Path | None = None, *, folds: Sequence[int | str] | None = None,
                      name: str | None = None) -> None:
        """Import an nnU-Net v2 result folder into the user folder (:func:`~napari_medseg.nnunet.add_nnunet`), in a worker.

        Asks for the folder (``<trainer>__<plans>__<configuration>``) if ``path`` is None.
        """
        from napari_medseg.nnunet import add_nnunet

        if self.import_runner.running:
            return
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Import an nnU-Net v2 result folder (trainer__plans__configuration)")
            if not path:
                return
        self._start_import(add_nnunet, Path(path), self.registry(), folds=folds, name=name, what="nnU-Net import")

    def _imported(self, model: RegistryModel) -> None:
        self.verified[model.name] = OK  # add() verified the copy
        self._events.registry_changed.emit()  # refreshes this table too
        self.select(model.name)
        self.status_label.setText(f"added {model.name} {model.card.version} to {model.folder}")

    def remove_selected(self, *, confirm: bool = True) -> bool:
        """Delete the selected model from the user folder (only user models can be removed).

        Parameters
        ----------
        confirm : bool, keyword-only, default True
            Ask the user first (a QMessageBox); tests pass False.

        Returns
        -------
        bool
            True if the model was removed.
        """
        from napari_medseg.plugin._worker import notify_error

        model = self.selected_model()
        if model is None:
            notify_error(InvalidInputError("select a model to remove"), what="Removing the model")
            return False
        if confirm:
            answer = QMessageBox.question(
                self, "Remove model",
                f"Delete {model.name} {model.card.version} from {model.folder}? This cannot be undone.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                return False
        try:
            folder = self.registry().remove(model.name)
        except (InvalidInputError, OSError) as exc:
            notify_error(exc, what="Removing the model")
            return False
        self.verified.pop(model.name, None)
        self._events.registry_changed.emit()
        self.status_label.setText(f"removed {model.name} ({folder})")
        return True

    def closeEvent(self, event: Any) -> None:
        try:
            self._events.registry_changed.disconnect(self.refresh)
        except (TypeError, RuntimeError):  # already disconnected
            pass
        super().closeEvent(event)

