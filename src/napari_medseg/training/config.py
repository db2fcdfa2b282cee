"""The training configuration: one validated YAML file, every field documented.

``medseg train --print-config`` prints the defaults as a valid config; command-line options
override the file. Field names follow the model card (:mod:`napari_medseg.registry`) where the
concept is the same (``spatial_dims``, ``channels``, ``labels``, ``spacing``, ``normalization``,
``patch_size``, ``dropout``), so the exported card is filled from the config without translation.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.registry import ChannelSpec, DropoutSpec, NormalizationKind, NormalizationSpec

__all__ = [
    "TrainConfig",
    "FinetuneSpec",
    "FreezeMode",
    "OptimizerName",
    "ScheduleName",
    "load_config",
    "config_to_yaml",
    "default_config_yaml",
]


class OptimizerName(StrEnum):
    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


class ScheduleName(StrEnum):
    CONSTANT = "constant"
    COSINE = "cosine"
    POLY = "poly"  # nnU-Net's (1 - epoch / epochs) ** 0.9
    STEP = "step"


class FreezeMode(StrEnum):
    """What stays fixed when fine-tuning (cross-modality transfer, MIUA 2023 p. 1709)."""

    ENCODER = "encoder"
    ALL_BUT_LAST = "all-but-last"
    NONE = "none"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FinetuneSpec(_Section):
    """Start from a registry model instead of random weights."""

    base_model: str = Field(description="registry name or model folder to start from")
    freeze: FreezeMode = Field(FreezeMode.ENCODER, description="encoder | all-but-last | none")
    pretrained_lr_factor: float = Field(
        0.1, gt=0, le=1, description="learning rate of unfrozen pretrained layers, as a fraction of learning_rate"
    )
    label_map: dict[int, int] | None = Field(
        None,
        description="dataset label value -> model label value, when the dataset's labels are a subset or a "
        "renumbering of the model's; unmapped dataset values are refused",
    )


class TrainConfig(_Section):
    """Everything a training run needs. Paths are relative to the working directory."""

    # --- what to train
    name: str = Field("my-model", description="name of the exported registry model")
    version: str = Field("0.1.0", description="version written into the model card")
    description: str = Field("", description="model card description")
    data: str | None = Field(None, description="dataset folder (imagesTr/labelsTr) or CSV of image,label")
    output: str | None = Field(None, description="run folder: checkpoints, logs and the exported model")
    architecture: str = Field("unet", description="network name known to napari_medseg.networks.build_network")
    architecture_params: dict[str, Any] = Field(
        default_factory=lambda: {"channels": [16, 32, 64, 128], "strides": [2, 2, 2]},
        description="keyword parameters of the network",
    )
    spatial_dims: Literal[2, 3] = Field(3, description="2 for slice-wise models, 3 for volumetric")
    channels: list[ChannelSpec] = Field(
        default_factory=lambda: [ChannelSpec(name="image", modality="MR")], description="input channels in order"
    )
    labels: dict[int, str] | None = Field(
        None, description="label value -> name, background 0 included; default: dataset.json's labels or values found"
    )
    label_colors: dict[int, tuple[float, float, float]] = Field(default_factory=dict, description="RGB 0-1 per label")
    spacing: tuple[float, float, float] | None = Field(
        None, description="mm (x, y, z): cases are resampled to it; None keeps each case's own spacing"
    )
    orientation: str | None = Field(None, description="e.g. RAS: cases are reoriented to it; None keeps their own")
    normalization: NormalizationSpec = Field(
        default_factory=lambda: NormalizationSpec(kind=NormalizationKind.ZSCORE, nonzero_only=False),
        description="intensity normalisation, as on the model card",
    )
    patch_size: list[int] = Field(default_factory=lambda: [64, 64, 64], description="training patch, array order")
    overlap: float = Field(0.25, ge=0, lt=1, description="sliding-window overlap for validation and the card")
    dropout: DropoutSpec = Field(default_factory=DropoutSpec, description="dropout placement and rate")

    # --- optimisation
    epochs: int = Field(100, ge=1, description="number of epochs")
    iterations_per_epoch: int = Field(50, ge=1, description="optimiser steps per epoch (patches are sampled)")
    batch_size: int = Field(2, ge=1, description="patches per step (per process with torchrun)")
    optimizer: OptimizerName = Field(OptimizerName.ADAM, description="adam | adamw | sgd")
    learning_rate: float = Field(5e-4, gt=0, description="mixup paper: Adam, 0.0005")
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1, description="SGD only")
    lookahead: bool = Field(True, description="wrap the optimiser in Lookahead (Zhang et al. 2019)")
    lookahead_sync_period: int = Field(6, ge=1, description="k: fast steps between syncs (mixup paper: 6)")
    lookahead_step_size: float = Field(0.5, gt=0, le=1, description="alpha: slow-weight step (mixup paper: 0.5)")
    schedule: ScheduleName = Field(ScheduleName.COSINE, description="constant | cosine | poly | step")
    warmup_epochs: int = Field(0, ge=0, description="linear learning-rate warm-up")
    grad_clip_norm: float | None = Field(12.0, gt=0, description="clip the gradient norm; null disables")
    amp: bool = Field(True, description="mixed precision on CUDA only (ignored on CPU)")
    loss: str = Field("combo", description="a name of napari_medseg.training.losses.get_loss")
    loss_params: dict[str, Any] = Field(default_factory=dict, description="keyword parameters of the loss")
    mixup_alpha: float = Field(0.0, ge=0, description="mixup Beta(alpha, alpha); 0 disables (mixup paper best: 0.5)")
    augment: bool = Field(True, description="flips, rotation, zoom, elastic and intensity augmentation")
    augmentation_params: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword parameters of napari_medseg.training.augment.build_augmentation (default: the mixup "
        "paper's flips, rotation in [-pi/4, pi/4], scale in [0.5, 1.5], plus elastic and intensity)",
    )
    foreground_ratio: float = Field(0.5, ge=0, le=1, description="fraction of patches centred on foreground")

    # --- data handling
    validation_fraction: float = Field(0.2, ge=0, lt=1, description="fraction of patients held out")
    folds: int | None = Field(None, ge=2, description="k-fold cross-validation: number of folds")
    fold: int = Field(0, ge=0, description="which fold is the validation set")
    patient_pattern: str | None = Field(None, description="regex whose group 1 in a case id is the patient id")
    cache: bool = Field(True, description="keep preprocessed cases in memory")
    seed: int = Field(0, description="seed of every random choice (split, patches, augmentation, init)")
    device: str = Field("auto", description="auto | cpu | cuda | mps (napari_medseg.choices.Device), or cuda:N")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; None: torch's default")

    # --- validation, checkpoints, stopping
    validate_every: int = Field(1, ge=1, description="validate every N epochs")
    early_stopping_patience: int | None = Field(
        20, ge=1, description="validations without improvement before stopping; null disables"
    )
    checkpoint_every: int = Field(1, ge=1, description="write the resumable checkpoint every N epochs")

    finetune: FinetuneSpec | None = Field(None, description="start from a registry model")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from napari_medseg.choices import parse_device  # the one list of devices; torch-free

        parse_device(value)  # a typo fails when the config is read, with a "did you mean"
        return str(value).strip().lower()

    @field_validator("patch_size")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(int(v) < 1 for v in value):
            raise ValueError(f"{value}: every patch size must be >= 1 voxel")
        return [int(v) for v in value]

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(f"patch_size {self.patch_size} has {len(self.patch_size)} values; spatial_dims is {self.spatial_dims}")
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold={self.fold} must be below folds={self.folds}")
        if self.labels is not None and 0 not in self.labels:
            raise ValueError("labels must include the background value 0")
        return self


def _validation_message(exc: ValidationError, source: str) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    return f"{source}: invalid training config: " + "; ".join(parts)


def load_config(path: str | os.PathLike | None = None, *, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a YAML config, then apply ``overrides`` (e.g. from the command line).

    Raises
    ------
    FileFormatError
        If the file is missing or not YAML.
    InvalidInputError
        If a field is unknown or invalid (the message names the field).
    """
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.exists():
            raise FileFormatError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise FileFormatError(f"{p}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidInputError(f"{p}: expected a mapping of field: value at the top level")
        data = loaded or {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(_validation_message(exc, source)) from None


def config_to_yaml(config: TrainConfig) -> str:
    """The config as YAML that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def default_config_yaml() -> str:
    """The defaults as a valid, commented YAML config (what ``medseg train --print-config`` prints)."""
    lines = ["# napari-medseg training config: every field with its default", ""]
    dumped = TrainConfig().model_dump(mode="json")
    for name, field in TrainConfig.model_fields.items():
        if field.description:
            lines.append(f"# {field.description}")
        lines.append(yaml.safe_dump({name: dumped[name]}, sort_keys=False).rstrip())
    return "\n".join(lines) + "\n"
