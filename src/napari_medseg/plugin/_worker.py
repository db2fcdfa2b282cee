"""Run one core call in a napari worker with a progress bar, a working Cancel and user-facing errors.

Every dock widget runs its long operation through :class:`TaskRunner`: the core function gets
``progress`` (a callable ``(done, total)``) and ``cancel`` (a ``threading.Event``), exactly the
convention of ``napari_medseg.progress``; it runs in a napari ``FunctionWorker`` thread, and

- progress reaches the Qt progress bar through a queued Qt signal (thread-safe), throttled;
- the Run button becomes Cancel while the task runs; Cancel sets the event and the core stops at
  its next check (between patches, samples, iterations), raising ``CancelledError``;
- ``on_returned`` runs on the main thread (layers are only created there); a cancelled task
  changes nothing and says "cancelled" in the status line;
- a ``MedsegError`` reaches the user as a napari error notification with its specific message; an
  unexpected exception is shown with its type and message and its traceback goes to the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from napari_medseg.errors import CancelledError, MedsegError

__all__ = ["TaskRunner", "notify_error", "warn", "plugin_events"]

_LOG = logging.getLogger(__name__)
_PROGRESS_INTERVAL_S = 0.05


def notify_error(exc: BaseException, *, what: str) -> None:
    """Show ``exc`` to the user: the specific message of our errors, type and message otherwise."""
    if isinstance(exc, MedsegError | ValueError | TypeError | FileNotFoundError | PermissionError):
        show_error(f"{what} failed: {exc}")
    else:
        _LOG.error("%s failed", what, exc_info=exc)
        show_error(f"{what} failed with an unexpected {type(exc).__name__}: {exc}")


class _Signals(QObject):
    progressed = Signal(int, int)


class _QuietWorker(FunctionWorker):
    """A ``FunctionWorker`` that leaves the ``warnings`` module alone.

    superqt's ``WorkerBase.run`` wraps the call in ``warnings.catch_warnings()`` and replaces
    ``warnings.showwarning`` for the whole process while the worker runs: that is not thread safe,
    and a warning the GUI thread issues meanwhile goes to the worker's ``warned`` signal and is
    lost. The core returns its warnings as data instead (e.g. ``Prediction.warnings``), which the
    widgets show on the main thread.
    """

    def run(self) -> None:  # the same signals as WorkerBase.run, without the warnings side channel
        self.started.emit()
        self._running = True
        try:
            result = self.work()
            if not self.abort_requested:
                self.returned.emit(result)
        except Exception as exc:  # noqa: BLE001 - handed to the errored signal, as superqt does
            self.errored.emit(exc)
        self._running = False
        self.finished.emit()
        self._finished.emit(self)


class TaskRunner(QObject):
    """Runs core calls one at a time for a widget, driving its Run button, progress bar and status.

    Parameters
    ----------
    run_button : QPushButton
        The widget's Run button; it reads ``cancel_text`` while a task runs and cancels it when
        clicked. The widget connects its own click handler, which calls :meth:`start` or
        :meth:`cancel` depending on :attr:`running` (see :meth:`toggle`).
    progress_bar : QProgressBar
        Shows done/total of the running task.
    status : QLabel or None
        A one-line status ("running", "done in 3.2 s", "cancelled", "failed: ...").
    what : str
        What the task is, for messages (``"Segmentation"``).
    cancel_text : str
        The button text while running (default ``"Cancel"``).
    """

    finished = Signal()  # after returned / cancelled / errored handling, on the main thread

    def __init__(
        self,
        run_button: QPushButton,
        progress_bar: QProgressBar,
        status: QLabel | None = None,
        *,
        what: str,
        cancel_text: str = "Cancel",
    ) -> None:
        super().__init__()
        self.run_button = run_button
        self.progress_bar = progress_bar
        self.status = status
        self.what = what
        self.cancel_text = cancel_text
        self._run_text = run_button.text()
        self._signals = _Signals()
        self._signals.progressed.connect(self._on_progress)
        self.worker = None
        self.cancel_event: threading.Event | None = None
        self.last_error: BaseException | None = None
        self.last_outcome: str | None = None  # "done", "cancelled", "failed"
        self._started = 0.0

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _set_status(self, text: str) -> None:
        if self.status is not None:
            self.status.setText(text)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setMaximum(max(int(total), 1))
        self.progress_bar.setValue(min(int(done), max(int(total), 1)))

    def start(
        self,
        function: Callable[..., Any],
        /,
        *args: Any,
        on_returned: Callable[[Any], None] | None = None,
        pass_progress: bool = True,
        pass_cancel: bool = True,
        **kwargs: Any,
    ):
        """Run ``function(*args, progress=..., cancel=..., **kwargs)`` in a worker thread.

        Returns the napari worker (already started). ``on_returned(result)`` runs on the main thread;
        if it is a generator function, each step runs in its own turn of the event loop (create one
        layer per step: napari needs 0.1-0.3 s to set up each big layer's visual, and the GUI stays
        responsive between them) and ``finished`` fires after the last step.
        Raises RuntimeError if a task is already running (the widget's button prevents that).
        """
        if self.running:
            raise RuntimeError(f"{self.what} is already running")
        cancel = threading.Event()
        signals = self._signals
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last[0] >= _PROGRESS_INTERVAL_S:
                last[0] = now
                signals.progressed.emit(int(done), int(total))

        if pass_progress:
            kwargs["progress"] = progress
        if pass_cancel:
            kwargs["cancel"] = cancel
        worker = create_worker(
            function, *args, _start_thread=False, _ignore_errors=True, _worker_class=_QuietWorker, **kwargs
        )
        self.worker, self.cancel_event = worker, cancel
        self.last_error, self.last_outcome = None, None
        self._started = time.monotonic()
        self.progress_bar.setMaximum(1)
        self.progress_bar.setValue(0)
        self.run_button.setText(self.cancel_text)
        self._set_status(f"{self.what}: running ...")

        def returned(result: Any) -> None:
            if cancel.is_set():  # finished anyway after a late cancel: keep the viewer unchanged
                self._finish("cancelled")
                return
            try:
                steps = on_returned(result) if on_returned is not None else None
            except Exception as exc:  # noqa: BLE001 - shown to the user, not swallowed
                self._fail(exc)
                return
            if isinstance(steps, Iterator):
                self.run_button.setEnabled(False)  # the result is being shown; nothing left to cancel
                self._set_status(f"{self.what}: adding layers ...")
                QTimer.singleShot(0, lambda: self._step(steps))
                return
            self._finish("done")

        def errored(exc: BaseException) -> None:
            if isinstance(exc, CancelledError):
                self._finish("cancelled")
                return
            self._fail(exc)

        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.start()
        return worker

    def _fail(self, exc: BaseException) -> None:
        self.last_error = exc
        notify_error(exc, what=self.what)
        self._finish("failed", f"failed: {exc}")

    def _step(self, steps: Iterator[Any]) -> None:
        """One step of a generator ``on_returned``, then yield to the event loop for the next."""
        try:
            next(steps)
        except StopIteration:
            self._finish("done")
            return
        except Exception as exc:  # noqa: BLE001 - shown to the user, not swallowed
            self._fail(exc)
            return
        QTimer.singleShot(0, lambda: self._step(steps))

    def cancel(self) -> None:
        """Ask the running task to stop at its next check (no-op when idle)."""
        if self.cancel_event is not None and self.running:
            self.cancel_event.set()
            self._set_status(f"{self.what}: cancelling ...")
            self.run_button.setEnabled(False)

    def _finish(self, outcome: str, status: str | None = None) -> None:
        elapsed = time.monotonic() - self._started
        self.worker, self.cancel_event = None, None
        self.last_outcome = outcome
        self.run_button.setText(self._run_text)
        self.run_button.setEnabled(True)
        if outcome == "done":
            self.progress_bar.setValue(self.progress_bar.maximum())
            self._set_status(f"{self.what}: done in {elapsed:.1f} s")
        elif outcome == "cancelled":
            self.progress_bar.setValue(0)
            self._set_status(f"{self.what}: cancelled")
            show_info(f"{self.what} cancelled; nothing was changed.")
        else:
            self._set_status(f"{self.what}: {status or 'failed'}")
        self.finished.emit()


def warn(message: str) -> None:
    """A napari warning notification (input doubtful, e.g. spacing differs from the model card)."""
    show_warning(message)


class _PluginEvents(QObject):
    """Plugin-wide signals between dock widgets (all on the main thread)."""

    #: the model registry changed (a model was added, imported or removed): pickers refresh
    registry_changed = Signal()


_EVENTS: _PluginEvents | None = None


def plugin_events() -> _PluginEvents:
    """The plugin's event hub (created on first use, on the main thread)."""
    global _EVENTS
    if _EVENTS is None:
        _EVENTS = _PluginEvents()
    return _EVENTS
