"""Iterative label refinement: fine-tune on weak labels, re-predict, replace the labels, repeat.

The method of "liver ground truth by iterative fine-tuning on weak labels" (MIUA 2023, p. 771):
quickly made weak labels are improved by a pretrained U-Net. Each round

1. fine-tunes the *base* model (every round restarts from the base weights, so errors do not
   accumulate in the weights) on the current labels;
2. predicts every case with the fine-tuned model;
3. replaces the labels with the predictions.

Every round's labels (``round_N/labels/``), training run (``round_N/run/``, with its exported
model) and metrics are kept; ``rounds.jsonl`` has one line per round with the agreement between
the new and the previous labels (mean Dice) and, when reference labels are given, the Dice of
each round's labels against them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg._atomic import copy_file_atomic, write_text_atomic
from napari_medseg.errors import InvalidInputError
from napari_medseg.progress import CancelEvent, check_cancelled
from napari_medseg.training.config import TrainConfig
from napari_medseg.training.data import discover_cases
from napari_medseg.volume import read_labels, read_volume, write_volume

__all__ = ["refine_labels"]


def _mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    from napari_medseg.metrics import dice

    values = [dice(a == v, b == v) for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
    return float(np.mean(values)) if values else 1.0


def refine_labels(
    config: TrainConfig,
    *,
    rounds: int = 3,
    reference: str | os.PathLike | None = None,
    events: Any = None,
    cancel: CancelEvent | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run ``rounds`` rounds of fine-tune / predict / replace on ``config.data``.

    Parameters
    ----------
    config : TrainConfig
        A fine-tuning config (``config.finetune.base_model`` set); ``data`` holds the weak labels
        and ``output`` receives every round.
    rounds : int, default 3
        Number of rounds (>= 1).
    reference : path, optional
        A folder of reference label files named like the cases' labels, to score every round.
    events, cancel
        As for :func:`napari_medseg.training.trainer.train`.
    resume : bool, default False
        Continue an interrupted refinement in ``output``: finished rounds (listed in
        ``rounds.jsonl``) are kept, and an interrupted round resumes its training checkpoint.

    Returns
    -------
    list of dict
        One row per round: ``round``, ``agreement_with_previous`` (mean Dice) and, with
        ``reference``, ``dice_vs_reference``.

    Raises
    ------
    InvalidInputError
        If the config is not a fine-tuning config, ``rounds < 1`` or a reference file is missing.
    """
    from napari_medseg.inference import predict
    from napari_medseg.registry import load_model_folder
    from napari_medseg.training.trainer import train

    if config.finetune is None:
        raise InvalidInputError("refine needs a base model (config.finetune.base_model or --model)")
    if rounds < 1:
        raise InvalidInputError(f"rounds={rounds}: expected >= 1")
    if config.data is None or config.output is None:
        raise InvalidInputError("refine: 'data' and 'output' must be set")
    output = Path(config.output)
    cases = discover_cases(config.data, patient_pattern=config.patient_pattern)
    current_dir = Path(config.data)
    rows: list[dict[str, Any]] = []
    log_path = output / "rounds.jsonl"
    if resume and log_path.exists():
        rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        if rows:
            current_dir = output / f"round_{rows[-1]['round']}"
    elif log_path.exists():
        raise InvalidInputError(f"{output}: a refinement already exists there; pass --resume to continue it")
    for round_index in range(len(rows) + 1, rounds + 1):
        check_cancelled(cancel, "label refinement")
        round_dir = output / f"round_{round_index}"
        # a dataset folder for this round: the images and the current labels
        data_dir = round_dir / "data"
        (data_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
        (data_dir / "labelsTr").mkdir(parents=True, exist_ok=True)
        for case in cases:
            for image in case.images:
                target = data_dir / "imagesTr" / image.name
                if not target.exists():
                    try:  # images never change between rounds: link instead of copying
                        os.symlink(image.resolve(), target)
                    except OSError:
                        copy_file_atomic(image, target)  # a killed copy never leaves a short image
            label_src = current_dir / "labelsTr" / case.label.name if round_index > 1 else case.label
            copy_file_atomic(label_src, data_dir / "labelsTr" / case.label.name)
        round_config = config.model_copy(update={"data": str(data_dir), "output": str(round_dir / "run")})
        interrupted = (round_dir / "run" / "checkpoints" / "last.pt").exists()
        result = train(round_config, events=events, cancel=cancel, resume=resume and interrupted)
        model = load_model_folder(result.model_folder)
        labels_dir = round_dir / "labels"
        agreements, ref_scores = [], []
        for case in cases:
            check_cancelled(cancel, "label refinement")
            channels = [read_volume(p) for p in case.images]
            prediction = predict(channels if len(channels) > 1 else channels[0], model, device=config.device)
            previous = read_labels(data_dir / "labelsTr" / case.label.name)
            write_volume(prediction.labels, labels_dir / case.label.name)
            agreements.append(_mean_dice(prediction.labels.array, previous.array))
            if reference is not None:
                ref_path = Path(reference) / case.label.name
                if not ref_path.exists():
                    raise InvalidInputError(f"{ref_path}: reference label for case {case.id!r} not found")
                ref_scores.append(_mean_dice(prediction.labels.array, read_labels(ref_path).array))
        # the next round trains on this round's predictions
        (round_dir / "labelsTr").mkdir(exist_ok=True)
        for case in cases:
            copy_file_atomic(labels_dir / case.label.name, round_dir / "labelsTr" / case.label.name)
        current_dir = round_dir
        row: dict[str, Any] = {"round": round_index, "agreement_with_previous": float(np.mean(agreements)), "model": str(result.model_folder)}
        if ref_scores:
            row["dice_vs_reference"] = float(np.mean(ref_scores))
        rows.append(row)
        write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in rows))
        if events is not None:
            events("log", message=f"refinement round {round_index}: {row}", level="info")
    return rows
