"""``medseg train``, ``medseg finetune`` and ``medseg refine``.

Each can run in the foreground (a progress line per epoch) or as a background job (the hidden
``--job-dir`` option that :mod:`napari_medseg.jobs` passes; events go to the job's events file and
the job's cancel flag stops the run cleanly). ``torchrun --nproc_per_node N -m napari_medseg.cli
train ...`` runs data-parallel.
"""

from __future__ import annotations

import argparse
import os
import sys


def _job_support(parser: argparse.ArgumentParser) -> None:
    from napari_medseg.jobs import add_job_dir_argument

    add_job_dir_argument(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    from napari_medseg.cli import DEVICE_METAVAR, device_argument

    parser.add_argument("--config", help="YAML training config (see 'medseg train --print-config')")
    parser.add_argument("--data", help="dataset folder (imagesTr/labelsTr) or CSV of image,label[,patient]")
    parser.add_argument("--output", help="run folder for checkpoints, logs and the exported model")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    parser.add_argument("--iterations-per-epoch", type=int, help="optimiser steps per epoch")
    parser.add_argument("--batch-size", type=int, help="patches per step (per process under torchrun)")
    parser.add_argument("--learning-rate", type=float, help="base learning rate")
    parser.add_argument("--loss", help="loss name (ce, topk_ce, dice, focal, tversky, focal_tversky, cosine_tversky, combo, mixed_focal, unified_focal)")
    parser.add_argument("--mixup-alpha", type=float, help="mixup Beta(alpha, alpha); 0 disables (paper: 0.5)")
    parser.add_argument("--device", type=device_argument, metavar=DEVICE_METAVAR, help="where training runs (default: the config's, auto)")
    parser.add_argument("--seed", type=int, help="seed of every random choice")
    parser.add_argument("--name", help="name of the exported registry model")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    parser.add_argument("--add-to-registry", action="store_true", help="add the exported model to the user registry")
    _job_support(parser)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a segmentation model from a dataset",
        description="Train a model from a config (command-line options override it). Writes checkpoints "
        "(resumable with --resume), metrics.csv/metrics.jsonl and the exported registry model to --output.",
    )
    _common(train)
    train.add_argument("--print-config", action="store_true", help="print the default config as valid YAML and exit")
    train.set_defaults(func=run_train)

    finetune = subparsers.add_parser(
        "finetune",
        help="fine-tune a registry model on your own labelled cases",
        description="Start from a registry model, freeze part of it, and train on --data.",
    )
    finetune.add_argument("--model", required=True, help="registry model name or model folder to start from")
    finetune.add_argument("--freeze", choices=["encoder", "all-but-last", "none"], default="encoder", help="what stays fixed (default: encoder)")
    finetune.add_argument("--pretrained-lr-factor", type=float, default=0.1, help="learning rate of pretrained layers as a fraction (default 0.1)")
    finetune.add_argument("--label-map", help="dataset->model label values, e.g. '1:2,2:1' (labels may be a subset of the model's)")
    _common(finetune)
    finetune.set_defaults(func=run_finetune)

    refine = subparsers.add_parser(
        "refine",
        help="iterative label refinement: fine-tune on weak labels, re-predict, repeat",
        description="MIUA 2023 (liver ground truth by iterative fine-tuning): each round fine-tunes the base model "
        "on the current labels, predicts every case, and replaces the labels; every round restarts from the base "
        "weights. Every round's labels, metrics and model are kept under --output/round_N.",
    )
    refine.add_argument("--model", required=True, help="base registry model")
    refine.add_argument("--rounds", type=int, default=3, help="number of rounds (default 3)")
    refine.add_argument("--freeze", choices=["encoder", "all-but-last", "none"], default="encoder")
    refine.add_argument("--reference", help="optional folder of reference labels (same names) to score each round")
    _common(refine)
    refine.set_defaults(func=run_refine)


def _overrides(args) -> dict:
    """Config overrides from a typed training request (or a namespace: the fields have the same names)."""
    keys = {
        "data": args.data,
        "output": args.output,
        "epochs": args.epochs,
        "iterations_per_epoch": args.iterations_per_epoch,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "loss": args.loss,
        "mixup_alpha": args.mixup_alpha,
        "device": args.device,
        "seed": args.seed,
        "name": args.name,
    }
    return {k: v for k, v in keys.items() if v is not None}


def _parse_label_map(text: str | None) -> dict[int, int] | None:
    from napari_medseg.cli import UsageError

    if not text:
        return None
    mapping = {}
    for item in text.split(","):
        try:
            src, dst = item.split(":")
            mapping[int(src)] = int(dst)
        except ValueError:
            raise UsageError(f"--label-map={text!r}: expected pairs like '1:2,2:1'") from None
    mapping.setdefault(0, 0)
    return mapping


class _ConsoleEvents:
    """Print epoch lines to stderr when not running as a job."""

    def __call__(self, event: str, **fields) -> None:
        if event == "epoch":
            extras = ", ".join(f"{k} {v:.4f}" for k, v in fields.items() if k.startswith(("train_loss", "dice")) and isinstance(v, float))
            print(f"epoch {fields['epoch']}/{fields['epochs']}: {extras} ({fields.get('seconds', 0):.1f} s)", file=sys.stderr)
        elif event == "log":
            print(fields.get("message", ""), file=sys.stderr)


def _run(args: argparse.Namespace, config) -> None:
    from napari_medseg.jobs import reporter_from_args, run_reported
    from napari_medseg.training.trainer import train

    reporter = reporter_from_args(args)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if reporter is None:
        result = train(config, resume=args.resume, events=_ConsoleEvents() if is_main else None, add_to_registry=args.add_to_registry)
        if is_main:
            print(f"best epoch {result.best_epoch + 1} (mean Dice {result.best_metric:.4f}); model: {result.model_folder}")
        return
    with run_reported(reporter) as job:
        result = train(config, resume=args.resume, events=job.emit, cancel=job.cancel, add_to_registry=args.add_to_registry)
        job.outputs.update({"model_folder": str(result.model_folder), "output": str(result.output)})


def run_train(args: argparse.Namespace) -> None:
    from napari_medseg.training.config import default_config_yaml, load_config

    from napari_medseg.jobs import TrainRequest

    if args.print_config:
        print(default_config_yaml(), end="")
        return
    request = TrainRequest.from_namespace(args)  # the request a face or a job record would hold
    _run(args, load_config(request.config, overrides=_overrides(request)))


def _finetune_config(args):
    """The training config of a typed fine-tune or refine request (or a namespace with those fields)."""
    from napari_medseg.training.config import load_config

    overrides = _overrides(args)
    overrides["finetune"] = {
        "base_model": args.model,
        "freeze": args.freeze,
        "pretrained_lr_factor": getattr(args, "pretrained_lr_factor", 0.1),
        "label_map": _parse_label_map(getattr(args, "label_map", None)),
    }
    if not args.config:  # the card's grid and inputs: napari_medseg.training.finetune
        from napari_medseg.registry import load_model
        from napari_medseg.training.finetune import finetune_overrides

        overrides = finetune_overrides(load_model(args.model).card, overrides)
    return load_config(args.config, overrides=overrides)


def run_finetune(args: argparse.Namespace) -> None:
    from napari_medseg.jobs import FinetuneRequest

    _run(args, _finetune_config(FinetuneRequest.from_namespace(args)))


def run_refine(args: argparse.Namespace) -> None:
    import json

    from napari_medseg.jobs import reporter_from_args, run_reported
    from napari_medseg.training.refine import refine_labels

    from napari_medseg.jobs import RefineRequest

    config = _finetune_config(RefineRequest.from_namespace(args))
    reporter = reporter_from_args(args)
    if reporter is None:
        rows = refine_labels(config, rounds=args.rounds, reference=args.reference, events=_ConsoleEvents(), resume=args.resume)
        for row in rows:
            print(json.dumps(row))
        return
    with run_reported(reporter) as job:
        rows = refine_labels(
            config, rounds=args.rounds, reference=args.reference, events=job.emit, cancel=job.cancel, resume=args.resume
        )
        job.outputs.update({"rounds": rows, "output": str(config.output)})
