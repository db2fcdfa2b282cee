"""A small, real, checkpointed job for tests and demos (``medseg jobs selftest``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_medseg._atomic import write_text_atomic
from napari_medseg.errors import CancelledError, InvalidInputError
from napari_medseg.jobs.protocol import EventType

SELFTEST_CHECKPOINT = "selftest-checkpoint.json"


def _selftest_problem():
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.normal(size=(32, 8))
    b = a @ rng.normal(size=8) + 0.1 * rng.normal(size=32)
    lr = 1.0 / np.linalg.eigvalsh(a.T @ a / len(a)).max()
    return a, b, lr


def run_selftest(
    output_dir: str | os.PathLike,
    *,
    steps: int,
    step_seconds: float = 0.0,
    checkpoint_every: int = 5,
    resume: bool = False,
    fail_at_step: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    emit: Callable[..., Any] | None = None,
) -> dict:
    """A small, deterministic, checkpointed computation that behaves like a training run.

    Gradient descent on a fixed least-squares problem (32 x 8, seed 0, step 1/L): each step is one
    gradient step, then a pause of ``step_seconds`` (one uninterruptible unit of work, like an
    epoch). It emits ``epoch``, ``metric`` (``loss``, the half mean squared residual) and
    ``checkpoint`` events, writes the checkpoint atomically every ``checkpoint_every`` steps, on
    cancel and at the end, and continues exactly from it with ``resume``: a run cancelled at any
    step and resumed ends with the same state, bit for bit, as an uninterrupted one.

    Parameters
    ----------
    output_dir : str or os.PathLike
        Folder for ``selftest-checkpoint.json`` (created if needed; reported as an absolute path).
    steps : int
        Number of gradient steps in all (>= 1).
    step_seconds : float, keyword-only
        Pause after each step, seconds. Default 0.
    checkpoint_every : int, keyword-only
        Checkpoint period in steps (>= 1). Default 5.
    resume : bool, keyword-only
        Continue from the checkpoint in ``output_dir`` (start afresh, with a ``log`` event, when
        there is none). Default False.
    fail_at_step : int or None, keyword-only
        Raise ``RuntimeError`` when this step begins, to exercise failure handling. Default None.
    progress : callable or None, keyword-only
        ``progress(done, total)`` after each step.
    cancel : object with ``is_set()`` or None, keyword-only
        Checked before each step; when set, the checkpoint is written and CancelledError raised.
    emit : callable or None, keyword-only
        ``emit(event, **fields)``, e.g. :meth:`JobReporter.emit`.

    Returns
    -------
    dict
        ``{"steps": steps, "loss": float, "x": list of 8 floats, "checkpoint": str}``.

    Raises
    ------
    InvalidInputError
        If a count is out of range, ``step_seconds`` is negative, or the checkpoint does not fit.
    CancelledError
        If ``cancel`` is set before the last step (the checkpoint holds the last finished step).
    RuntimeError
        At ``fail_at_step``.
    """
    import numpy as np

    for name, value, low in (("steps", steps, 1), ("checkpoint_every", checkpoint_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(f"{name}={value!r} must be an integer >= {low}")
    if not step_seconds >= 0:
        raise InvalidInputError(f"step_seconds={step_seconds!r} must be >= 0")
    emit = emit or (lambda event, **fields: None)
    folder = Path(output_dir).resolve()  # events carry absolute paths: readers run elsewhere
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SELFTEST_CHECKPOINT
    a, b, lr = _selftest_problem()
    x, start = np.zeros(a.shape[1]), 0
    if resume and path.exists():
        try:
            state = json.loads(path.read_text())
            x, start = np.array(state["x"], dtype=float), int(state["step"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{path}: not a selftest checkpoint ({exc})") from exc
        if x.shape != (a.shape[1],) or not 0 <= start <= steps:
            raise InvalidInputError(
                f"{path}: checkpoint at step {start} with {x.size} values does not fit --steps {steps}"
            )
        emit(EventType.LOG, message=f"resumed from {path} at step {start}", level="info")
    elif resume:
        emit(EventType.LOG, message=f"no checkpoint in {folder}: starting from step 0", level="warning")

    def loss_of(x):
        return float(0.5 * np.mean((a @ x - b) ** 2))

    def save(step: int) -> None:
        write_text_atomic(path, json.dumps({"step": step, "x": x.tolist(), "loss": loss_of(x)}))
        emit(EventType.CHECKPOINT, path=str(path), epoch=step)

    for step in range(start, steps):
        if cancel is not None and cancel.is_set():
            save(step)
            raise CancelledError(f"selftest cancelled after step {step} of {steps}; the checkpoint is {path}")
        if fail_at_step is not None and step + 1 == fail_at_step:
            raise RuntimeError(f"selftest: failure injected at step {step + 1} (--fail-at-step)")
        x = x - lr * a.T @ (a @ x - b) / len(a)
        if step_seconds:
            time.sleep(step_seconds)
        emit(EventType.EPOCH, epoch=step + 1, epochs=steps)
        emit(EventType.METRIC, name="loss", value=loss_of(x), epoch=step + 1)
        if progress is not None:
            progress(step + 1, steps)
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save(step + 1)
    save(steps)
    return {"steps": steps, "loss": loss_of(x), "x": x.tolist(), "checkpoint": str(path)}
