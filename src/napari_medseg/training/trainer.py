"""The trainer: patches in, a registry model out, resumable at every epoch.

:func:`train` runs a whole training or fine-tuning run from a :class:`TrainConfig`:

1. find the cases, check each one (geometry, labels) and split them by patient;
2. preprocess each case once exactly as inference will (the same :class:`napari_medseg.model_grid.ModelGrid`);
3. each epoch, sample ``iterations_per_epoch * batch_size`` patches (foreground ratio), augment,
   optionally mix them up (soft targets), and take optimiser steps (Adam + Lookahead by default,
   as in the mixup paper; gradient clipping; AMP on CUDA only);
4. validate with a sliding window on the held-out patients (Dice per label), keep the best
   weights, stop early when the metric plateaus;
5. write a resumable checkpoint atomically after every epoch, logs as CSV, JSON Lines and (when
   installed) TensorBoard, and finally export a registry model folder with its card.

Determinism: the patch of item ``i`` in epoch ``e`` comes from a generator seeded with
``(seed, e, i)``, and torch's generator is reseeded at every epoch, so a resumed run continues
exactly like an uninterrupted one. With ``torchrun`` the items are dealt to the ranks by a
``DistributedSampler``, gradients are averaged by ``DistributedDataParallel`` (gloo on CPU, nccl on
CUDA), validation metrics are reduced across ranks and only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_medseg import __version__
from napari_medseg._atomic import atomic_path, write_text_atomic
from napari_medseg.errors import InvalidInputError, MedsegError
from napari_medseg.progress import CancelEvent, check_cancelled
from napari_medseg.training.config import FreezeMode, OptimizerName, ScheduleName, TrainConfig, config_to_yaml
from napari_medseg.training.data import Case, discover_cases, load_case, sample_patch, split_cases
from napari_medseg.volume import Volume

__all__ = [
    "train",
    "TrainResult",
    "TrainingDivergedError",
    "Lookahead",
    "learning_rate_at",
    "PreparedCase",
    "prepare_cases",
    "freeze_parameters",
]

EventCallback = Callable[..., None]


class TrainingDivergedError(MedsegError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run produced."""

    output: Path
    model_folder: Path | None
    best_epoch: int
    best_metric: float
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


# ------------------------------------------------------------------------------------ optimisation
class Lookahead:
    """Lookahead wrapper (Zhang et al. 2019): every ``k`` fast steps, slow += alpha * (fast - slow).

    The mixup paper trains with Adam + Lookahead, ``k = 6`` (sync period) and ``alpha = 0.5``
    (step size). The wrapped optimiser's ``param_groups`` are shared, so learning-rate changes
    apply to it. ``state_dict`` holds the base optimiser's state, the slow weights and the step
    counter, so resuming is exact.
    """

    def __init__(self, base: torch.optim.Optimizer, *, sync_period: int = 6, step_size: float = 0.5) -> None:
        if sync_period < 1:
            raise InvalidInputError(f"lookahead sync_period={sync_period}: expected >= 1")
        if not 0 < step_size <= 1:
            raise InvalidInputError(f"lookahead step_size={step_size}: expected a value in (0, 1]")
        self.base = base
        self.sync_period = int(sync_period)
        self.step_size = float(step_size)
        self.steps = 0
        self.slow = [[p.detach().clone() for p in group["params"]] for group in base.param_groups]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.base.step()
        self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """Count one fast step (taken by the base optimiser) and pull towards the slow weights every k."""
        self.steps += 1
        if self.steps % self.sync_period == 0:
            for group, slow_group in zip(self.base.param_groups, self.slow):
                for fast, slow in zip(group["params"], slow_group):
                    slow.add_(fast.detach() - slow, alpha=self.step_size)
                    fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "slow": [[s.clone() for s in g] for g in self.slow], "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.steps = int(state["steps"])
        for slow_group, saved in zip(self.slow, state["slow"]):
            for slow, value in zip(slow_group, saved):
                slow.copy_(value)


def learning_rate_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) under the config's schedule and warm-up."""
    base = config.learning_rate
    if config.warmup_epochs and epoch < config.warmup_epochs:
        return base * (epoch + 1) / (config.warmup_epochs + 1)
    progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
    if config.schedule == ScheduleName.COSINE:
        return base * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == ScheduleName.POLY:
        return base * (1 - progress) ** 0.9
    if config.schedule == ScheduleName.STEP:
        return base * (0.1 ** int(progress * 3))
    return base


def _build_optimizer(config: TrainConfig, groups: list[dict[str, Any]]) -> Any:
    if config.optimizer == OptimizerName.SGD:
        base = torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay)
    elif config.optimizer == OptimizerName.ADAMW:
        base = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    else:
        base = torch.optim.Adam(groups, lr=config.learning_rate, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    for group in base.param_groups:
        group.setdefault("lr_factor", 1.0)
    if config.lookahead:
        return Lookahead(base, sync_period=config.lookahead_sync_period, step_size=config.lookahead_step_size)
    return base


def freeze_parameters(network: nn.Module, mode: FreezeMode | str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Freeze part of a pretrained network; return (trainable pretrained, frozen) parameters.

    ``encoder`` freezes the first half of the network's parameter tensors in registration order
    up to the bottleneck (for our U-Nets, the encoder stages come first); ``all-but-last``
    freezes every parameter except the final 1x1 convolution's; ``none`` freezes nothing.
    """
    mode = FreezeMode(mode)
    params = list(network.named_parameters())
    if mode == FreezeMode.NONE:
        frozen_names: set[str] = set()
    elif mode == FreezeMode.ALL_BUT_LAST:
        last_prefix = params[-1][0].rsplit(".", 1)[0]
        frozen_names = {n for n, _ in params if not n.startswith(last_prefix)}
    else:
        encoder = getattr(network, "encoder_parameter_names", None)
        names = set(encoder()) if callable(encoder) else {n for n, _ in params[: len(params) // 2]}
        frozen_names = names
    trainable, frozen = [], []
    for name, param in params:
        if name in frozen_names:
            param.requires_grad_(False)
            frozen.append(param)
        else:
            trainable.append(param)
    return trainable, frozen


# --------------------------------------------------------------------------------------------- data
@dataclass
class PreparedCase:
    """A case preprocessed like inference does: channels-first float32 image and its label."""

    id: str
    image: np.ndarray
    label: np.ndarray
    spacing_mm: tuple[float, ...]
    foreground: np.ndarray


def prepare_cases(
    cases: Sequence[Case], config: TrainConfig, *, label_values: Sequence[int], label_map: dict[int, int] | None = None
) -> list[PreparedCase]:
    """Load, check and preprocess cases (reorient, resample, normalise) as inference will."""
    prepared = []
    dataset_values = sorted(label_map) if label_map else list(label_values)
    for case in cases:
        channels, label = load_case(case, allowed_labels=dataset_values)
        if label_map:
            lut = np.zeros(int(max(label_map)) + 1, dtype=np.int64)
            for src, dst in label_map.items():
                lut[int(src)] = int(dst)
            label = label.derive(lut[label.array])
        index_of = np.zeros(int(max(label_values)) + 1, dtype=np.uint8)
        index_of[list(label_values)] = np.arange(len(label_values), dtype=np.uint8)
        image, label_array, spacing = _to_training_grid(channels, label, config, case_id=case.id)
        label_index = index_of[label_array]
        foreground = np.argwhere(label_index > 0)
        prepared.append(PreparedCase(case.id, image, label_index, spacing, foreground))
    return prepared


def _to_training_grid(
    channels: list[Volume], label: Volume, config: TrainConfig, *, case_id: str = "case"
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Reorient, resample and normalise a case on the model grid, exactly as inference does.

    The grid is :class:`napari_medseg.model_grid.ModelGrid`, the object
    :func:`napari_medseg.inference.predict` uses: images linear in float32 with the edge repeated
    past the last voxel centre, labels nearest, the same size formula, and no resampling within
    the spacing tolerance (a resampled case warns with :class:`CardMismatchWarning`).
    """
    from napari_medseg.model_grid import CardMismatchWarning, ModelGrid

    if len(channels) == 1:
        volume = channels[0]
    else:  # one multi-channel volume, as predict stacks its inputs
        volume = Volume(np.stack([c.array.astype(np.float32, copy=False) for c in channels], axis=-1), channels[0].geometry)
    grid = ModelGrid.for_volume(config, volume)
    if grid.resampled:
        sp = ", ".join(f"{s:g}" for s in grid.input_spacing)
        cs = ", ".join(f"{s:g}" for s in grid.spacing)
        warnings.warn(
            f"case {case_id!r}: spacing ({sp}) mm differs from the config's ({cs}) mm; resampling to it",
            CardMismatchWarning,
            stacklevel=3,
        )
    image = grid.preprocess(volume)
    label_on_grid = grid.labels_to_model(label)
    return image, label_on_grid.array, label_on_grid.spacing_zyx


class _EpochPatches(torch.utils.data.Dataset):
    """Item ``i`` of epoch ``e``: one augmented patch from a generator seeded with (seed, e, i)."""

    def __init__(self, cases: list[PreparedCase], config: TrainConfig, epoch: int, length: int, augment: Any) -> None:
        self.cases, self.config, self.epoch, self.length, self.augment = cases, config, epoch, length, augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        case = self.cases[int(rng.integers(len(self.cases)))]
        patch_size = self.config.patch_size
        if self.config.spatial_dims == 2:
            # a 2D model trains on single slices of the (z, y, x) volume
            z = int(rng.integers(case.label.shape[0]))
            if rng.random() < self.config.foreground_ratio and len(case.foreground):
                z = int(case.foreground[rng.integers(len(case.foreground))][0])
            image, label = case.image[:, z], case.label[z]
            fg = None
        else:
            image, label, fg = case.image, case.label, case.foreground
        image, label = sample_patch(image, label, patch_size, foreground_ratio=self.config.foreground_ratio, rng=rng, foreground_index=fg)
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        label_t = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))[None]
        if self.augment is not None:
            image_t, label_t = self.augment(image_t, label_t, seed=int(rng.integers(2**31)))
        return image_t, label_t[0]


# ------------------------------------------------------------------------------------ distributed
@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(device=device)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return _Dist(rank=rank, world=dist.get_world_size(), device=device)


def _all_reduce_sum(values: torch.Tensor, dist_info: _Dist) -> torch.Tensor:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _barrier(dist_info: _Dist) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


# -------------------------------------------------------------------------------------------- logs
class _RunLog:
    """metrics.csv, metrics.jsonl and TensorBoard events (when installed), rank 0 only."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.folder, self.enabled = folder, enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder / "tensorboard"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self.writer = None

    def write(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        lines = "".join(json.dumps(r) + "\n" for r in history)
        write_text_atomic(self.folder / "metrics.jsonl", lines)
        columns = sorted({k for r in history for k in r}, key=lambda k: (k != "epoch", k))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(self.folder / "metrics.csv", buffer.getvalue())
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()


# ---------------------------------------------------------------------------------------- the run
def _labels_of(config: TrainConfig, cases: Sequence[Case], data_root: Path) -> dict[int, str]:
    if config.labels is not None:
        return dict(sorted(config.labels.items()))
    dataset_json = data_root / "dataset.json" if data_root.is_dir() else None
    if dataset_json is not None and dataset_json.exists():
        meta = json.loads(dataset_json.read_text())
        labels = meta.get("labels") or {}
        parsed = {}
        for key, value in labels.items():
            # MSD: {"0": "background"}; nnU-Net v2: {"background": 0}
            if str(key).isdigit():
                parsed[int(key)] = str(value)
            elif isinstance(value, int):
                parsed[int(value)] = str(key)
        if parsed:
            parsed.setdefault(0, "background")
            return dict(sorted(parsed.items()))
    from napari_medseg.volume import read_labels

    values: set[int] = {0}
    for case in cases:
        values |= set(np.unique(read_labels(case.label).array).tolist())
    return {v: ("background" if v == 0 else f"label_{v}") for v in sorted(values)}


def _checkpoint_state(network, optimizer, epoch, best_metric, best_epoch, patience_left, history) -> dict[str, Any]:
    model = network.module if hasattr(network, "module") else network
    return {
        "format": "napari-medseg-checkpoint-1",
        "epoch": int(epoch),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "best_metric": float(best_metric),
        "best_epoch": int(best_epoch),
        "patience_left": -1 if patience_left is None else int(patience_left),
        "history_json": json.dumps(history),
        # every random draw is seeded from (seed, epoch, item), so the RNG state of a resumed run is
        # restored by the epoch number itself; torch's state is kept for the record
        "torch_rng": torch.get_rng_state(),
        "version": __version__,
    }


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint beside ``path``, verify it, then rename it over the earlier one.

    A full disk, a kill or a crash leaves the earlier checkpoint byte-identical: torch reports a
    short write as a RuntimeError (turned into a FileAccessError naming the path and the reason),
    and every member's CRC is checked before the rename.
    """
    import zipfile

    from napari_medseg.errors import FileAccessError

    def complete(tmp: Path) -> None:
        try:
            with zipfile.ZipFile(tmp) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile) as exc:
            bad = str(exc)
        if bad is not None:
            raise FileAccessError(f"{path}: cannot write: the checkpoint does not read back complete ({bad}); the earlier one is kept")

    with atomic_path(path, verify=complete) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch's zip writer reports ENOSPC/EFBIG this way
            from napari_medseg.volume import _write_failure

            failure = _write_failure(path, path.parent, str(exc), 1 << 16)
            raise failure from None


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is reported with the path
        raise InvalidInputError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None


def _validate(network, cases: list[PreparedCase], config: TrainConfig, n_labels: int, dist_info: _Dist) -> dict[str, float]:
    """Mean Dice per foreground label over the validation cases (reduced across ranks)."""
    from napari_medseg.inference import sliding_window_moments
    from napari_medseg.metrics import dice

    model = network.module if hasattr(network, "module") else network
    sums = torch.zeros(n_labels, dtype=torch.float64)
    counts = torch.zeros(n_labels, dtype=torch.float64)
    model.eval()
    with torch.inference_mode():
        for case in cases[dist_info.rank :: dist_info.world]:
            moments = sliding_window_moments(
                case.image, model, patch_size=config.patch_size, spatial_dims=config.spatial_dims, overlap=config.overlap, device=dist_info.device
            )
            predicted = np.argmax(moments.mean_p, axis=-1)
            for index in range(1, n_labels):
                ref = case.label == index
                pred = predicted == index
                if ref.any() or pred.any():
                    sums[index] += dice(pred, ref)
                    counts[index] += 1
    model.train()
    _all_reduce_sum(sums, dist_info)
    _all_reduce_sum(counts, dist_info)
    out = {}
    for index in range(1, n_labels):
        out[f"dice_{index}"] = float(sums[index] / counts[index]) if counts[index] > 0 else float("nan")
    finite = [v for v in out.values() if not math.isnan(v)]
    out["dice_mean"] = float(np.mean(finite)) if finite else float("nan")
    return out


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    events: EventCallback | None = None,
    cancel: CancelEvent | None = None,
    add_to_registry: bool = False,
) -> TrainResult:
    """Run a training (or fine-tuning, with ``config.finetune``) run.

    Parameters
    ----------
    config : TrainConfig
        The validated configuration (``data`` and ``output`` must be set).
    resume : bool, default False
        Continue from ``output/checkpoints/last.pt`` exactly (model, optimiser, schedule, RNG,
        epoch). Without it an existing checkpoint is refused, so nothing is overwritten by mistake.
    events : callable, optional
        ``events(name, **fields)`` receives "epoch", "metric", "checkpoint" and "log" events (the
        job protocol of :mod:`napari_medseg.jobs`).
    cancel : event, optional
        Checked between steps; when set the run stops, keeping the last epoch's checkpoint, and
        raises :class:`CancelledError`.
    add_to_registry : bool, default False
        Also add the exported model to the user registry.

    Returns
    -------
    TrainResult

    Raises
    ------
    InvalidInputError
        For a bad config or dataset (the message names the field or case).
    TrainingDivergedError
        If the loss becomes NaN/Inf; the last good checkpoint stays.
    CancelledError
        If ``cancel`` was set.
    """
    from napari_medseg.networks import build_network
    from napari_medseg.training.augment import build_augmentation
    from napari_medseg.training.losses import get_loss
    from napari_medseg.training.mixup import mixup

    emit = events or (lambda *a, **k: None)
    if config.data is None or config.output is None:
        raise InvalidInputError("config: 'data' and 'output' must be set (in the file or with --data/--output)")
    output = Path(config.output)
    checkpoint_path = output / "checkpoints" / "last.pt"
    best_path = output / "checkpoints" / "best.pt"
    if checkpoint_path.exists() and not resume:
        raise InvalidInputError(f"{output}: a run already exists there; pass --resume to continue it or choose another --output")
    if resume and not checkpoint_path.exists():
        raise InvalidInputError(f"{checkpoint_path}: no checkpoint to resume from")
    if config.threads:
        torch.set_num_threads(config.threads)

    from napari_medseg.inference import resolve_device  # the one "auto" rule (CUDA, then MPS, then CPU)

    dist_info = _setup_distributed(resolve_device(config.device))
    device = dist_info.device

    # ---- data
    cases = discover_cases(config.data, patient_pattern=config.patient_pattern)
    base_model = None
    if config.finetune is not None:
        from napari_medseg.registry import load_model

        base_model = load_model(config.finetune.base_model)
        model_labels = {v: s.name for v, s in sorted(base_model.card.labels.items())}
        labels = model_labels
    else:
        labels = _labels_of(config, cases, Path(config.data))
    label_values = sorted(labels)
    train_cases, val_cases = split_cases(
        cases, validation_fraction=config.validation_fraction, seed=config.seed, folds=config.folds, fold=config.fold
    )
    if not train_cases:
        raise InvalidInputError(f"{config.data}: no training cases left after the validation split")
    label_map = config.finetune.label_map if config.finetune is not None else None
    emit("log", message=f"{len(train_cases)} training and {len(val_cases)} validation cases", level="info")
    prepared_train = prepare_cases(train_cases, config, label_values=label_values, label_map=label_map)
    prepared_val = prepare_cases(val_cases, config, label_values=label_values, label_map=label_map)

    # ---- network, loss, optimiser
    torch.manual_seed(config.seed)
    if base_model is not None:
        card = base_model.card
        network = base_model.load_network(device="cpu")
        for module in network.modules():
            if isinstance(module, nn.Dropout | nn.Dropout2d | nn.Dropout3d) and config.dropout.rate > 0:
                module.p = config.dropout.rate
        trainable, _ = freeze_parameters(network, config.finetune.freeze)
        head = set(id(p) for p in list(network.parameters())[-2:])
        groups = [
            {"params": [p for p in trainable if id(p) not in head], "lr_factor": config.finetune.pretrained_lr_factor},
            {"params": [p for p in trainable if id(p) in head], "lr_factor": 1.0},
        ]
        groups = [g for g in groups if g["params"]]
        architecture, architecture_params = card.architecture.name, dict(card.architecture.params)
        dropout_spec = card.dropout.model_copy(update={"rate": config.dropout.rate or card.dropout.rate})
    else:
        architecture, architecture_params, dropout_spec = config.architecture, dict(config.architecture_params), config.dropout
        network = build_network(
            architecture,
            spatial_dims=config.spatial_dims,
            in_channels=len(config.channels),
            out_channels=len(label_values),
            dropout_rate=dropout_spec.rate,
            dropout_placement=[str(p) for p in dropout_spec.placement],
            **architecture_params,
        )
        groups = [{"params": [p for p in network.parameters() if p.requires_grad], "lr_factor": 1.0}]
    network = network.to(device)
    if dist_info.world > 1:
        network = nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = get_loss(config.loss, **config.loss_params)
    optimizer = _build_optimizer(config, groups)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    augment = build_augmentation(config.spatial_dims, **config.augmentation_params) if config.augment else None

    # ---- state (fresh or resumed)
    start_epoch, best_metric, best_epoch = 0, -math.inf, -1
    patience_left = config.early_stopping_patience
    history: list[dict[str, Any]] = []
    if resume:
        state = _load_checkpoint(checkpoint_path)
        (network.module if hasattr(network, "module") else network).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        best_metric, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        patience_left = None if int(state["patience_left"]) < 0 else int(state["patience_left"])
        history = json.loads(state["history_json"])
        emit("log", message=f"resumed at epoch {start_epoch}", level="info")
    if dist_info.main:
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output / "config.yaml", config_to_yaml(config))
    log = _RunLog(output, dist_info.main)

    n_items = config.iterations_per_epoch * config.batch_size * dist_info.world
    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 100_003 + epoch * 1_009 + dist_info.rank)
        lr = learning_rate_at(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_factor", 1.0)
        dataset = _EpochPatches(prepared_train, config, epoch, n_items, augment)
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=False
        )
        loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=0)
        network.train()
        started, losses = time.perf_counter(), []
        mix_gen = torch.Generator().manual_seed(config.seed * 7919 + epoch * 31 + dist_info.rank)
        for step, (images, targets) in enumerate(loader):
            check_cancelled(cancel, "training")
            images, targets = images.to(device), targets.to(device)
            target_in: torch.Tensor = targets
            if config.mixup_alpha > 0:
                mixed = mixup(images, targets, alpha=config.mixup_alpha, num_classes=len(label_values), generator=mix_gen)
                images, target_in = mixed.images, mixed.targets
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                loss = loss_fn(network(images), target_in)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {loss.item()} at epoch {epoch}, step {step}; the last good checkpoint "
                    f"({checkpoint_path if checkpoint_path.exists() else 'none yet'}) is kept. Lower learning_rate "
                    "or check the data for NaN voxels"
                )
            scaler.scale(loss).backward()
            if config.grad_clip_norm:
                scaler.unscale_(optimizer.base if isinstance(optimizer, Lookahead) else optimizer)
                nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip_norm)
            if use_amp:
                scaler.step(optimizer.base if isinstance(optimizer, Lookahead) else optimizer)
                scaler.update()
                if isinstance(optimizer, Lookahead):
                    optimizer.sync()  # the scaler stepped the base optimiser
            else:
                optimizer.step()
            losses.append(float(loss.detach()))
            emit("progress", done=step + 1, total=config.iterations_per_epoch, what=f"epoch {epoch + 1}/{config.epochs}")
        train_loss = float(np.mean(losses)) if losses else float("nan")
        loss_tensor = _all_reduce_sum(torch.tensor([train_loss * len(losses), float(len(losses))], dtype=torch.float64), dist_info)
        train_loss = float(loss_tensor[0] / max(loss_tensor[1], 1))
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "learning_rate": lr, "seconds": time.perf_counter() - started}
        improved, validated = False, True
        if prepared_val and (epoch + 1) % config.validate_every != 0:
            validated = False
        elif prepared_val:
            metrics = _validate(network, prepared_val, config, len(label_values), dist_info)
            row.update(metrics)
            score = metrics["dice_mean"]
            if not math.isnan(score) and score > best_metric:
                best_metric, best_epoch, improved = score, epoch, True
        else:  # no validation cases: the training loss decides
            score = -train_loss
            if score > best_metric:
                best_metric, best_epoch, improved = score, epoch, True
        history.append(row)
        emit("epoch", epoch=epoch + 1, epochs=config.epochs, **{k: v for k, v in row.items() if k != "epoch"})
        for key, value in row.items():
            if key.startswith(("dice", "train_loss")):
                emit("metric", name=key, value=value, epoch=epoch + 1)
        if improved:
            patience_left = config.early_stopping_patience
        elif patience_left is not None and validated:
            patience_left -= 1
        if dist_info.main:
            log.write(row, history)
            state = _checkpoint_state(network, optimizer, epoch, best_metric, best_epoch, patience_left, history)
            if improved:
                _save_checkpoint(best_path, {"model": state["model"], "epoch": epoch, "best_metric": best_metric})
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                _save_checkpoint(checkpoint_path, state)
                emit("checkpoint", path=str(checkpoint_path), epoch=epoch + 1)
        _barrier(dist_info)
        if patience_left is not None and patience_left <= 0:
            stopped_early = True
            emit("log", message=f"early stopping at epoch {epoch + 1}: no improvement for {config.early_stopping_patience} epochs", level="info")
            break

    model_folder = None
    if dist_info.main:
        model_folder = _export(
            config, output, labels, architecture, architecture_params, dropout_spec, best_path, history, best_epoch, add_to_registry, base_model
        )
        emit("log", message=f"exported {model_folder}", level="info")
    _barrier(dist_info)
    return TrainResult(output, model_folder, best_epoch, best_metric, epoch + 1, history, stopped_early)


def _export(config, output, labels, architecture, architecture_params, dropout_spec, best_path, history, best_epoch, add_to_registry, base_model) -> Path:
    from napari_medseg.registry import Registry, default_label_color, save_model_folder

    best = _load_checkpoint(best_path)["model"] if best_path.exists() else _load_checkpoint(output / "checkpoints" / "last.pt")["model"]
    best_row = next((r for r in history if r["epoch"] == best_epoch), history[-1] if history else {})
    metrics = {k: float(v) for k, v in best_row.items() if k.startswith("dice") and isinstance(v, float) and not math.isnan(v)}
    card = {
        "name": config.name,
        "version": config.version,
        "description": config.description or f"trained with napari-medseg {__version__}",
        "task": "segmentation",
        "license": "Apache-2.0",
        "architecture": {"name": architecture, "params": architecture_params},
        "spatial_dims": config.spatial_dims,
        "channels": [c.model_dump() for c in config.channels] if base_model is None else [c.model_dump() for c in base_model.card.channels],
        "labels": {
            int(v): {"name": n, "color": tuple(config.label_colors.get(v, default_label_color(int(v))))} for v, n in labels.items()
        },
        "spacing": config.spacing,
        "orientation": config.orientation,
        "normalization": config.normalization.model_dump(mode="json"),
        "patch_size": tuple(config.patch_size),
        "overlap": config.overlap,
        "dropout": dropout_spec.model_dump(mode="json"),
        "recipe": str(output / "config.yaml"),
        "metrics": {f"validation_{k}": v for k, v in metrics.items()},
    }
    folder = output / "model"
    model = save_model_folder(folder, card=card, state_dict=best, overwrite=True)
    if add_to_registry:
        Registry().add(model.folder, force=True)
    return model.folder
