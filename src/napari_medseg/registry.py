"""The model registry: validated model cards, a search path, sha256 checks and safe weight loading.

A model is a folder holding a card (``model.yaml``, ``model.yml`` or ``model.json``) and the files
the card names: the weights (``.safetensors`` preferred; ``.pt``/``.pth`` state dicts are read with
``torch.load(weights_only=True)``) and optional extra files, each with its sha256. The card schema
is :class:`ModelCard`; ``docs/model-card.md`` documents every field and the mapping to and from a
MONAI bundle's ``configs/metadata.json``.

Search path
-----------
:class:`Registry` looks for model folders in these places, **first match wins** when two folders
hold a model of the same name (the later one is *shadowed* and ``medseg models list`` says so):

1. every folder in ``MEDSEG_MODELS`` (``os.pathsep``-separated), in the order given (source ``env``);
2. the user folder, ``platformdirs.user_data_dir("napari-medseg") / "models"``, or
   ``MEDSEG_USER_MODELS`` when set (source ``user``; ``medseg models add`` copies here);
3. the shipped models (source ``shipped``): ``<checkout>/models`` when running from a source
   checkout (``src/napari_medseg/../../models`` beside a ``pyproject.toml``), then the installed
   copy ``napari_medseg/data/models`` when a wheel ships one.

So an explicit setting beats a personal one, which beats the defaults, as with ``PATH``. Each
search folder holds one model folder per model (a folder that itself holds a card is also
accepted); folders whose names start with ``.`` are skipped (they are the temporary folders of
atomic copies). The folders are scanned on every call, so a changed environment takes effect.

Security
--------
- Cards are parsed with ``yaml.safe_load`` (YAML aliases are refused, so no "billion laughs") or
  :func:`json.loads`; nothing in a card is evaluated.
- Every path a card names must stay inside the model folder: absolute paths, ``..`` components and
  symlinks that resolve outside are refused with :class:`~napari_medseg.errors.IntegrityError`.
- Weights are read once into memory, their sha256 is checked against the card, and the *same bytes*
  are deserialised (no window between check and use). A mismatch raises ``IntegrityError`` naming
  the file, the expected and the actual sha256.
- Nothing is ever unpickled: safetensors, or ``torch.load(weights_only=True)``, which refuses any
  object other than tensors and plain containers (a malicious ``__reduce__`` is never called).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from napari_medseg._atomic import atomic_directory
from napari_medseg._options import close_matches_message
from napari_medseg.errors import FileFormatError, IntegrityError, InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from napari_medseg.volume import Volume

__all__ = [
    "card_warnings",
    "CARD_FILENAMES",
    "WEIGHTS_SUFFIXES",
    "MODELS_ENV",
    "USER_MODELS_ENV",
    "NormalizationKind",
    "DropoutPlacement",
    "ModelSource",
    "ArchitectureSpec",
    "ChannelSpec",
    "LabelSpec",
    "NormalizationSpec",
    "DropoutSpec",
    "FileSpec",
    "WeightsSpec",
    "ModelCard",
    "RegistryModel",
    "RegistryScan",
    "Registry",
    "read_card",
    "write_card",
    "find_card_file",
    "load_model_folder",
    "load_model",
    "save_model_folder",
    "import_monai_bundle",
    "OutputSpec",
    "BundleSpec",
    "sha256_file",
    "user_models_dir",
    "env_models_dirs",
    "shipped_models_dirs",
    "default_label_color",
]

#: Card file names, in the order they are looked for in a model folder.
CARD_FILENAMES = ("model.yaml", "model.yml", "model.json")
#: Weight file suffixes the registry loads (safetensors preferred).
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth")
#: Environment variable: extra search folders, ``os.pathsep``-separated; they win over the others.
MODELS_ENV = "MEDSEG_MODELS"
#: Environment variable: overrides the user folder (``medseg models add`` copies there).
USER_MODELS_ENV = "MEDSEG_USER_MODELS"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_CARD_BYTES = 1 << 20  # a card is text; a bigger file is not a card
# keys the card's own fields decide; they may not appear in architecture.params
_RESERVED_PARAMS = ("spatial_dims", "in_channels", "out_channels", "dropout_rate", "dropout_placement")
# a palette for labels without a colour (tab10 without grey), background black
_PALETTE = (
    (0.122, 0.467, 0.706),
    (1.0, 0.498, 0.055),
    (0.173, 0.627, 0.173),
    (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741),
    (0.549, 0.337, 0.294),
    (0.890, 0.467, 0.761),
    (0.737, 0.741, 0.133),
    (0.090, 0.745, 0.812),
)


def default_label_color(value: int) -> tuple[float, float, float]:
    """The colour given to label ``value`` when a card is generated: black for 0, then tab10."""
    if value == 0:
        return (0.0, 0.0, 0.0)
    return _PALETTE[(value - 1) % len(_PALETTE)]


# ------------------------------------------------------------------------------------------ choices
class NormalizationKind(StrEnum):
    """How input intensities are normalised before the network (see ``docs/model-card.md``)."""

    ZSCORE = "zscore"  # (x - mean) / std
    PERCENTILE = "percentile"  # [p_lower, p_upper] -> [0, 1]
    CT_WINDOW = "ct_window"  # [center - width/2, center + width/2] -> [0, 1]
    MINMAX = "minmax"  # [min, max] -> [0, 1]
    NONE = "none"


class DropoutPlacement(StrEnum):
    """Where a network's dropout layers sit."""

    ENCODER = "encoder"
    BOTTLENECK = "bottleneck"
    DECODER = "decoder"
    HEAD = "head"  # before the final 1x1 convolution


class ModelSource(StrEnum):
    """Where a model folder was found."""

    SHIPPED = "shipped"
    USER = "user"
    ENV = "env"
    PATH = "path"


# --------------------------------------------------------------------------------------- card schema
_Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class _Spec(BaseModel):
    # NaN or inf in a card (a window centre, a spacing, a metric) is refused at load, naming the field:
    # computed with, it would give an empty segmentation rather than an error
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# bounds a card must stay within (docs/model-card.md); a card beyond them would make predict and
# training allocate until the machine runs out of memory
MAX_PATCH_SIDE = 4096
MAX_PATCH_VOXELS = 1 << 27  # 512^3
MAX_CHANNELS = 64
MAX_LABELS = 1024
MAX_LABEL_VALUE = 65535  # label maps are written as up to 16-bit integers
MAX_PATCH_VALUES = 1 << 30  # (channels or labels) x patch voxels: 4 GiB of float32 per patch


def _non_finite_path(value: Any, path: str = "") -> str | None:
    """The path of the first NaN/inf float in a nested structure of dicts and lists, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "(value)"
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite_path(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


class ArchitectureSpec(_Spec):
    """The network: a name :func:`napari_medseg.networks.build_network` knows and its parameters."""

    name: str = Field(min_length=1, description="e.g. 'unet', 'isaksson_unet', 'monai.UNet'")
    params: dict[str, Any] = Field(default_factory=dict, description="passed as **params to build_network")

    @field_validator("params")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = [k for k in value if k in _RESERVED_PARAMS]
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} must not be given here: the card's spatial_dims, channels, labels "
                "and dropout fields decide them"
            )
        bad = _non_finite_path(value)
        if bad is not None:
            raise ValueError(f"{bad} must be a finite number (NaN and inf are refused)")
        return value


class ChannelSpec(_Spec):
    """One input channel."""

    name: str = Field(min_length=1, description="e.g. 'image', 'FLAIR'")
    modality: str = Field(min_length=1, description="e.g. 'CT', 'MR', 'T1', 'FLAIR'")


class CodeSpec(_Spec):
    """A coded concept as DICOM writes it, e.g. ``{scheme: SCT, value: "389081007", meaning: Gray Matter}``."""

    scheme: str = Field(min_length=1, description="coding scheme designator: SCT, DCM, FMA, ...")
    value: str = Field(min_length=1)
    meaning: str = Field(min_length=1)


class LabelSpec(_Spec):
    """One output label; ``category`` and ``type`` are the DICOM SEG segmented property codes."""

    name: str = Field(min_length=1)
    color: tuple[_Unit, _Unit, _Unit] = Field(description="RGB, each in [0, 1]")
    category: CodeSpec | None = Field(None, description="segmented property category, e.g. SCT 91723000 Anatomical Structure")
    type: CodeSpec | None = Field(None, description="segmented property type, e.g. SCT 389081007 Gray Matter")


class NormalizationSpec(_Spec):
    """Intensity normalisation, applied per channel.

    ``zscore``: ``(x - mean) / std``; ``percentile``: the ``[lower_percentile, upper_percentile]``
    percentiles map to ``[0, 1]``; ``ct_window``: ``[window_center - window_width / 2,
    window_center + window_width / 2]`` maps to ``[0, 1]``; ``minmax``: ``[min, max]`` maps to
    ``[0, 1]``; ``none``: unchanged. ``nonzero_only`` computes the statistics on non-zero voxels
    only (and leaves zero voxels at zero for ``zscore``); ``clip`` clips the result to ``[0, 1]``
    for ``percentile``, ``ct_window`` and ``minmax``.
    """

    kind: NormalizationKind
    lower_percentile: float = Field(0.5, ge=0.0, le=100.0)
    upper_percentile: float = Field(99.5, ge=0.0, le=100.0)
    window_center: float | None = None
    window_width: float | None = Field(None, gt=0.0)
    nonzero_only: bool = False
    clip: bool = True

    @model_validator(mode="after")
    def _check_kind(self) -> NormalizationSpec:
        if self.kind is NormalizationKind.PERCENTILE and not self.lower_percentile < self.upper_percentile:
            raise ValueError(
                f"lower_percentile={self.lower_percentile} must be below upper_percentile={self.upper_percentile}"
            )
        if self.kind is NormalizationKind.CT_WINDOW and (self.window_center is None or self.window_width is None):
            raise ValueError("kind 'ct_window' needs window_center and window_width (HU)")
        return self


class DropoutSpec(_Spec):
    """Where the dropout layers sit and their default rate (Monte-Carlo dropout may change the rate)."""

    placement: list[DropoutPlacement] = Field(default_factory=list)
    rate: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("placement")
    @classmethod
    def _unique(cls, value: list[DropoutPlacement]) -> list[DropoutPlacement]:
        if len(set(value)) != len(value):
            raise ValueError(f"placement lists a place twice: {[str(v) for v in value]}")
        return value



class InputFingerprint(_Spec):
    """What the training inputs looked like (first channel); :mod:`napari_medseg.guards` computes
    it (``fingerprint_from_volumes``) and warns when an input does not fit. Each feature is the
    ``[min, max]`` over the training cases (list features: one pair per entry)."""

    modality: str = Field(min_length=1)
    n_cases: int = Field(ge=1)
    percentiles: tuple[float, float, float] = (0.5, 50.0, 99.5)
    negative_fraction: tuple[float, float]
    foreground_fraction: tuple[float, float]
    foreground_percentiles: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    foreground_relative_percentiles: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    foreground_extent_mm: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


class FileSpec(_Spec):
    """A file of the model folder and its sha256."""

    file: str = Field(min_length=1, description="path relative to the card's folder, '/' separated")
    sha256: str = Field(description="64 lowercase hex digits")

    @field_validator("sha256", mode="before")
    @classmethod
    def _hex(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if not _SHA256_RE.match(value):
                raise ValueError(f"{value!r} is not a sha256 (64 hex digits)")
        return value


class WeightsSpec(FileSpec):
    """The weights file: ``.safetensors`` (preferred), ``.pt`` or ``.pth`` (a state dict)."""

    @field_validator("file")
    @classmethod
    def _suffix(cls, value: str) -> str:
        if not value.lower().endswith(WEIGHTS_SUFFIXES):
            raise ValueError(f"{value!r}: expected a file ending in {', '.join(WEIGHTS_SUFFIXES)}")
        return value


class OutputSpec(_Spec):
    """What the network's output channels mean (cards of imported MONAI bundles)."""

    activation: Literal["softmax", "sigmoid"] = "softmax"
    channels: list[str] = Field(min_length=1, description="the network's output channels, in order")


class BundleSpec(_Spec):
    """An imported MONAI bundle: its stored inference config, run by ``napari_medseg.bundles``."""

    config: str = Field(min_length=1, description="one of `files`: the bundle's configs/inference.json")


class ModelCard(_Spec):
    """Everything needed to use a model right. Validated; unknown fields are refused.

    Fields shared with a MONAI bundle's ``configs/metadata.json`` keep MONAI's names and meaning
    (``name``, ``version``, ``description``, ``task``, ``authors``, ``license``, ``references``,
    ``intended_use``); :meth:`to_monai_metadata` writes a metadata dict with ``network_data_format``
    and :func:`import_monai_bundle` reads one. See ``docs/model-card.md`` for every field.

    Derived values: ``in_channels = len(channels)``; ``out_channels = len(labels)``; output channel
    ``i`` is the ``i``-th label value in ascending order (:attr:`label_values`).
    """

    schema_version: Literal[1] = 1
    name: str = Field(description="registry name: letters, digits, '.', '_', '-'")
    version: str = Field(min_length=1)
    description: str = ""
    task: str = Field(min_length=1, description="e.g. 'segmentation'")
    license: str = Field(min_length=1, description="SPDX identifier, e.g. 'Apache-2.0'")
    authors: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)
    intended_use: str | None = None
    architecture: ArchitectureSpec
    spatial_dims: Literal[2, 3]
    axis_order: Literal["zyx", "xyz"] = Field("zyx", description="the network's spatial axis order")
    channels: list[ChannelSpec] = Field(min_length=1)
    labels: dict[int, LabelSpec]
    spacing: tuple[float, float, float] | None = Field(None, description="mm, SimpleITK (x, y, z) order")
    orientation: str | None = Field(None, description="e.g. 'RAS'; None keeps the input's own")
    normalization: NormalizationSpec
    patch_size: tuple[int, ...] = Field(description="array order: (z, y, x) for 3D, (y, x) for 2D")
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    dropout: DropoutSpec = Field(default_factory=DropoutSpec)
    weights: WeightsSpec
    files: list[FileSpec] = Field(default_factory=list, description="other files the model needs, with sha256")
    recipe: str | None = None
    nnunet: dict[str, Any] | None = Field(None, description="an imported nnU-Net v2 model: see napari_medseg.nnunet")
    metrics: dict[str, float] = Field(default_factory=dict)
    monai_bundle: dict[str, Any] | None = None
    outputs: OutputSpec | None = None
    bundle: BundleSpec | None = None
    input_fingerprint: InputFingerprint | None = Field(None, description="what the training inputs looked like (guards.py)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r}: expected 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("authors", mode="before")
    @classmethod
    def _authors(cls, value: Any) -> Any:
        # MONAI's metadata.json has a single string ("MONAI team"); accept it
        return [value] if isinstance(value, str) else value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[int, LabelSpec]) -> dict[int, LabelSpec]:
        if len(value) > MAX_LABELS:
            raise ValueError(f"{len(value)} labels; at most {MAX_LABELS} are supported")
        if 0 not in value:
            raise ValueError("must include 0 (background): output channel i is the i-th label value")
        negative = [k for k in value if k < 0]
        if negative:
            raise ValueError(f"label values must be >= 0, got {negative}")
        large = [k for k in value if k > MAX_LABEL_VALUE]
        if large:
            raise ValueError(f"label values must be <= {MAX_LABEL_VALUE}, got {large[:5]}")
        names = [v.name for v in value.values()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"label names must be unique, repeated: {twice}")
        return dict(sorted(value.items()))

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and not all(0 < s < float("inf") for s in value):
            raise ValueError(f"every spacing must be a positive finite number of mm, got {value}")
        return value

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, value: str | None) -> str | None:
        if value is None:
            return None
        code = value.strip().upper()
        axes = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        if len(code) != 3 or any(c not in axes for c in code) or len({axes[c] for c in code}) != 3:
            raise ValueError(f"{value!r}: expected three letters, one each of R/L, A/P and S/I (e.g. 'RAS')")
        return code

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not all(p > 0 for p in value):
            raise ValueError(f"every patch size must be a positive number of voxels, got {value}")
        if any(p > MAX_PATCH_SIDE for p in value) or math.prod(value) > MAX_PATCH_VOXELS:
            raise ValueError(
                f"{list(value)} is larger than supported: at most {MAX_PATCH_SIDE} voxels a side and "
                f"{MAX_PATCH_VOXELS} voxels in all"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if len(self.channels) > MAX_CHANNELS:
            raise ValueError(f"channels: {len(self.channels)} channels; at most {MAX_CHANNELS} are supported")
        widest = max(len(self.channels), len(self.labels))
        if widest * math.prod(self.patch_size) > MAX_PATCH_VALUES:
            raise ValueError(
                f"patch_size {list(self.patch_size)} with {widest} channels/labels needs "
                f"{widest * math.prod(self.patch_size) * 4 / 2**30:.1f} GiB per patch; at most "
                f"{MAX_PATCH_VALUES * 4 / 2**30:.0f} GiB is supported"
            )
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(
                f"patch_size {list(self.patch_size)} has {len(self.patch_size)} entries but spatial_dims is "
                f"{self.spatial_dims}"
            )
        if self.dropout.rate > 0 and not self.dropout.placement and not self.architecture.name.startswith("monai."):
            raise ValueError(
                f"dropout.rate={self.dropout.rate} but dropout.placement is empty: say where the dropout layers sit "
                "(only monai.* networks place their dropout themselves)"
            )
        if self.outputs is None and self.bundle is not None:
            raise ValueError("bundle: an imported bundle's card needs outputs (activation and channels)")
        if self.bundle is not None and self.bundle.config not in [f.file for f in self.files]:
            raise ValueError(f"bundle.config {self.bundle.config!r} must be one of files (so its sha256 is checked)")
        named = [self.weights.file] + [f.file for f in self.files]
        twice = sorted({f for f in named if named.count(f) > 1})
        if twice:
            raise ValueError(f"files named twice in weights/files: {twice}")
        return self

    # ---------------------------------------------------------------------------- derived values
    @property
    def in_channels(self) -> int:
        """Number of input channels, ``len(channels)``."""
        return len(self.channels)

    @property
    def out_channels(self) -> int:
        """Number of network output channels: ``len(outputs.channels)``, else ``len(labels)``."""
        return len(self.outputs.channels) if self.outputs is not None else len(self.labels)

    @property
    def label_values(self) -> list[int]:
        """Label values in output-channel order (ascending)."""
        return sorted(self.labels)

    @property
    def spacing_zyx(self) -> tuple[float, float, float] | None:
        """The expected spacing in array order (what array functions take as ``spacing_mm``)."""
        return None if self.spacing is None else tuple(reversed(self.spacing))

    def file_specs(self) -> list[FileSpec]:
        """The weights then every extra file: everything :meth:`RegistryModel.verify` checks."""
        return [self.weights, *self.files]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (label keys become strings)."""
        return self.model_dump(mode="json")

    def to_monai_metadata(self) -> dict[str, Any]:
        """A MONAI bundle ``configs/metadata.json`` dict for this card.

        Starts from :attr:`monai_bundle` (the imported metadata, if any) and overwrites the shared
        fields and ``network_data_format`` from the card. MONAI's spatial shapes are in the
        array order of a NIfTI loaded by MONAI, ``(x, y, z)``, so ``patch_size`` is reversed.
        """
        meta: dict[str, Any] = dict(self.monai_bundle or {})
        spatial_shape = list(reversed(self.patch_size))
        modality = "+".join(dict.fromkeys(c.modality for c in self.channels))
        meta.update(
            {
                "name": self.name,
                "version": self.version,
                "description": self.description,
                "task": self.task,
                "authors": ", ".join(self.authors),
                "license": self.license,
                "references": list(self.references),
                "eval_metrics": dict(self.metrics),
                "network_data_format": {
                    "inputs": {
                        "image": {
                            "type": "image",
                            "format": "hounsfield" if modality.upper() == "CT" else "magnitude",
                            "modality": modality,
                            "num_channels": self.in_channels,
                            "spatial_shape": spatial_shape,
                            "dtype": "float32",
                            "is_patch_data": True,
                            "channel_def": {str(i): c.name for i, c in enumerate(self.channels)},
                        }
                    },
                    "outputs": {
                        "pred": {
                            "type": "image",
                            "format": "segmentation",
                            "num_channels": self.out_channels,
                            "spatial_shape": spatial_shape,
                            "dtype": "float32",
                            "value_range": [0, 1],
                            "is_patch_data": True,
                            "channel_def": (
                                {str(i): n for i, n in enumerate(self.outputs.channels)} if self.outputs is not None
                                else {str(i): self.labels[v].name for i, v in enumerate(self.label_values)}
                            ),
                        }
                    },
                },
            }
        )
        if self.intended_use is not None:
            meta["intended_use"] = self.intended_use
        return meta


# ------------------------------------------------------------------------------------ card reading
def card_warnings(volume: Volume, card: ModelCard) -> list[str]:
    """Why ``volume`` does not match ``card``: what :func:`~napari_medseg.inference.predict` warns
    with (``CardMismatchWarning``) and what every face shows before a run. Torch-free, so the Slicer
    module's interface process can call it.

    Parameters
    ----------
    volume : Volume
        The input (its first channel, for multi-channel models).
    card : ModelCard
        The model's card.

    Returns
    -------
    list of str
        One message per difference: spacing (beyond ``model_grid.SPACING_RTOL``, 1 %; in the
        model's axis order), orientation, a 3D model on a single
        slice, and an input unlike the training inputs (the card's ``input_fingerprint``, see
        :func:`napari_medseg.guards.input_fit_messages`); empty when the input matches.
    """
    from napari_medseg.model_grid import ModelGrid

    messages = []
    geometry = volume.geometry
    grid = ModelGrid.for_volume(card, volume)  # the spacing tolerance is the one predict resamples with
    if grid.resampled:
        sp = ", ".join(f"{s:g}" for s in grid.input_spacing)
        cs = ", ".join(f"{s:g}" for s in card.spacing)
        messages.append(
            f"the input's spacing ({sp}) mm differs from model {card.name!r}'s ({cs}) mm; resampling to it and back"
        )
    if grid.reoriented:
        messages.append(
            f"the input's orientation {geometry.orientation} differs from model {card.name!r}'s "
            f"{card.orientation.upper()}; reorienting to it and back (no interpolation)"
        )
    if card.spatial_dims == 3 and 1 in volume.shape:
        messages.append(f"model {card.name!r} is 3D but the input is a single slice (shape {volume.shape})")
    if card.input_fingerprint is not None:
        from napari_medseg.guards import input_fit_messages

        messages.extend(input_fit_messages(volume, card))
    return messages


def _validation_message(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(card)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            msg += close_matches_message(str(err["loc"][0]), list(ModelCard.model_fields))
        parts.append(f"{loc}: {msg}")
    return f"{source}: invalid model card: " + "; ".join(parts)


def _validate_card(data: Any, *, source: str) -> ModelCard:
    if isinstance(data, ModelCard):
        return data
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"{source}: a model card must be a mapping of fields, got {type(data).__name__}")
    try:
        return ModelCard.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidInputError(_validation_message(exc, source)) from None


def _safe_yaml(text: str, *, source: str) -> Any:
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise FileFormatError(f"{source}: YAML aliases ('*name') are not allowed in a model card")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FileFormatError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise FileFormatError(f"{source}: not a model card: nested too deeply") from None


def read_card(path: str | os.PathLike) -> ModelCard:
    """Read and validate a card file (``.yaml``/``.yml`` or ``.json``).

    Parameters
    ----------
    path : str or PathLike
        The card file.

    Returns
    -------
    ModelCard

    Raises
    ------
    FileFormatError
        If the file is missing, larger than 1 MiB, or not valid YAML/JSON (or uses YAML aliases).
    InvalidInputError
        If a field is missing or invalid; the message names every offending field
        (e.g. ``labels.1.color.0: Input should be less than or equal to 1``).
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise FileFormatError(f"model card {path} does not exist or is not a file")
        if path.stat().st_size > _MAX_CARD_BYTES:
            raise FileFormatError(f"model card {path} is larger than {_MAX_CARD_BYTES} bytes; that is not a card")
        with open(path, "rb") as fh:  # bounded: the file may have grown since the stat
            raw = fh.read(_MAX_CARD_BYTES + 1)
    except OSError as exc:  # unreadable (permissions, I/O error): the user's situation, not a bug
        raise FileFormatError(f"model card {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > _MAX_CARD_BYTES:
        raise FileFormatError(f"model card {path} is larger than {_MAX_CARD_BYTES} bytes; that is not a card")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FileFormatError(f"model card {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{path}: not valid JSON: {exc}") from None
        except RecursionError:
            raise FileFormatError(f"{path}: not a model card: nested too deeply") from None
    else:
        data = _safe_yaml(text, source=str(path))
    return _validate_card(data, source=str(path))


def _card_to_yaml(card: ModelCard) -> str:
    data = card.model_dump(mode="json", exclude_none=True)
    data["labels"] = {int(k): v for k, v in data["labels"].items()}  # YAML keeps integer keys
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)


def write_card(card: ModelCard, path: str | os.PathLike) -> Path:
    """Write ``card`` to ``path`` atomically, as YAML (``.yaml``/``.yml``) or JSON (``.json``)."""
    from napari_medseg._atomic import write_text_atomic

    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(card.model_dump(mode="json", exclude_none=True), indent=2) + "\n"
    else:
        text = _card_to_yaml(card)
    return write_text_atomic(path, text)


def find_card_file(folder: str | os.PathLike) -> Path | None:
    """The card file of a model folder (first of :data:`CARD_FILENAMES` present), or ``None``."""
    folder = Path(folder)
    for name in CARD_FILENAMES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------------------- file safety
def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, as 64 lowercase hex digits (read in chunks)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _inside(folder: Path, relative: str, *, what: str, card_path: Path | str) -> Path:
    """``folder / relative`` resolved, refusing anything that leaves ``folder``."""
    if "\\" in relative or PureWindowsPath(relative).drive or PurePosixPath(relative).is_absolute():
        raise IntegrityError(
            f"{card_path}: {what}={relative!r} is an absolute path or uses '\\'; paths in a card must be "
            "relative to the card's folder, '/' separated"
        )
    if ".." in PurePosixPath(relative).parts:
        raise IntegrityError(f"{card_path}: {what}={relative!r} contains '..'; paths in a card must stay in its folder")
    resolved = (folder / relative).resolve()
    if not resolved.is_relative_to(folder):
        raise IntegrityError(
            f"{card_path}: {what}={relative!r} resolves to {resolved}, outside the model folder {folder} "
            "(a symlink pointing out?); refusing it"
        )
    return resolved


def _mismatch(path: Path, card_path: Path, expected: str, actual: str) -> IntegrityError:
    return IntegrityError(
        f"{path}: sha256 mismatch: expected {expected} (from {card_path}), actual {actual}; the file is "
        "corrupt or was modified, refusing to use it"
    )


def _read_checked(path: Path, expected: str, *, card_path: Path) -> bytes:
    if not path.is_file():
        raise FileFormatError(f"{path}: file named by {card_path} is missing")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise _mismatch(path, card_path, expected, actual)
    return data


def _state_dict_from(obj: Any, *, path: Path) -> dict[str, torch.Tensor]:
    import torch

    def is_state_dict(candidate: Any) -> bool:
        return (
            isinstance(candidate, Mapping)
            and len(candidate) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in candidate.items())
        )

    if is_state_dict(obj):
        state = dict(obj)
    else:
        # a training checkpoint: {"model": state_dict, "optimizer": ...} (MONAI's CheckpointSaver)
        keys = ("state_dict", "model", "network", "model_state_dict", "net")
        inner = [obj[k] for k in keys if isinstance(obj, Mapping) and is_state_dict(obj.get(k))]
        if not inner:
            raise FileFormatError(
                f"{path}: holds no state dict (a mapping of parameter names to tensors, directly or under "
                f"one of {', '.join(keys)})"
            )
        state = dict(inner[0])
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _decode_weights(data: bytes, *, path: Path) -> dict[str, torch.Tensor]:
    """Deserialise weight bytes without ever running pickled code."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise FileFormatError(f"{path}: not a valid safetensors file ({exc})") from None
    import pickle

    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(
            f"{path}: refused: the file holds Python objects other than tensors, and unpickling them "
            "could run arbitrary code; save model.state_dict() as .safetensors (or with torch.save) "
            f"instead (torch.load weights_only=True: {first})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise FileFormatError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {exc})") from None
    return _state_dict_from(obj, path=path)


def _encode_weights(state_dict: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None) -> bytes:
    import torch
    from safetensors.torch import save

    if not isinstance(state_dict, Mapping) or not state_dict:
        raise InvalidInputError("state_dict must be a non-empty mapping of parameter names to tensors")
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidInputError(
                f"state_dict[{key!r}] is a {type(value).__name__}; expected tensors under string keys "
                "(pass model.state_dict())"
            )
        # clone: safetensors refuses tensors that share memory (tied weights)
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    return save(tensors, metadata=dict(metadata) if metadata else None)


# ------------------------------------------------------------------------------------ one model
class RegistryModel:
    """One model folder: its validated card and the checked paths of its files.

    Parameters
    ----------
    card : ModelCard
        The validated card.
    folder : str or PathLike
        The model folder (resolved; every file the card names must stay inside it).
    source : {"shipped", "user", "env", "path"}, default "path"
        Where the registry found it.
    card_path : path, optional
        The card file (default: ``folder / "model.yaml"``), used in messages.

    Raises
    ------
    IntegrityError
        If a path the card names is absolute, contains ``..``, or resolves outside ``folder``.
    """

    def __init__(
        self,
        card: ModelCard,
        folder: str | os.PathLike,
        *,
        source: str | ModelSource = ModelSource.PATH,
        card_path: str | os.PathLike | None = None,
    ) -> None:
        self.card = card
        self.folder = Path(folder).resolve()
        self.source = ModelSource(source)
        self.card_path = Path(card_path) if card_path is not None else self.folder / CARD_FILENAMES[0]
        fields = ["weights.file", *(f"files[{i}].file" for i in range(len(card.files)))]
        self._paths = {
            spec.file: _inside(self.folder, spec.file, what=what, card_path=self.card_path)
            for spec, what in zip(card.file_specs(), fields)
        }

    def __repr__(self) -> str:
        return (
            f"RegistryModel({self.card.name!r} {self.card.version}, source={self.source.value!r}, "
            f"folder={str(self.folder)!r})"
        )

    @property
    def name(self) -> str:
        """The card's name."""
        return self.card.name

    @property
    def sha256(self) -> str:
        """The weights' sha256 as the card records it (checked by :meth:`verify` and at load)."""
        return self.card.weights.sha256

    def weights_path(self) -> Path:
        """The weights file, resolved and checked to stay inside :attr:`folder`."""
        return self._paths[self.card.weights.file]

    def file_paths(self) -> dict[str, Path]:
        """Every file the card names (weights first) -> its resolved path inside the folder."""
        return dict(self._paths)

    def provenance(self) -> dict[str, str]:
        """What an output records about the model: name, version, weights sha256, source, folder."""
        return {
            "model": self.card.name,
            "model_version": self.card.version,
            "model_sha256": self.sha256,
            "model_source": self.source.value,
            "model_folder": str(self.folder),
        }

    def file_problems(self) -> list[str]:
        """Cheap checks of the files the card names, without reading them (``verify`` hashes them).

        Returns
        -------
        list of str
            One message per problem: a missing file, a folder (or other non-file) where a file
            should be, an empty file. Empty when every file looks usable.
        """
        problems = []
        for spec in self.card.file_specs():
            path = self._paths[spec.file]
            try:
                info = path.stat()
            except FileNotFoundError:
                problems.append(f"{spec.file}: missing")
                continue
            except OSError as exc:
                problems.append(f"{spec.file}: cannot be read ({exc.strerror or exc})")
                continue
            if not stat.S_ISREG(info.st_mode):
                problems.append(f"{spec.file}: not a file ({'a folder' if stat.S_ISDIR(info.st_mode) else 'a special file'})")
            elif info.st_size == 0:
                problems.append(f"{spec.file}: empty (0 bytes)")
        return problems

    def verify(self) -> None:
        """Check the sha256 of every file the card names.

        Raises
        ------
        FileFormatError
            If a named file is missing.
        IntegrityError
            If a file's sha256 differs from the card's; the message names the file, the expected
            and the actual sha256.
        """
        for spec in self.card.file_specs():
            path = self._paths[spec.file]
            if not path.is_file():
                raise FileFormatError(f"{path}: file named by {self.card_path} is missing")
            actual = sha256_file(path)
            if actual != spec.sha256:
                raise _mismatch(path, self.card_path, spec.sha256, actual)

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """Read the weights once, check their sha256, and decode those same bytes (on the CPU).

        Raises
        ------
        FileFormatError
            If the file is missing, not a valid safetensors/PyTorch file, holds pickled objects
            other than tensors (refused, never executed), or holds NaN or inf values.
        IntegrityError
            If the sha256 does not match the card.
        """
        path = self.weights_path()
        data = _read_checked(path, self.card.weights.sha256, card_path=self.card_path)
        state = _decode_weights(data, path=path)
        for key, tensor in state.items():  # NaN/inf weights give NaN outputs: an empty segmentation
            if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                raise FileFormatError(
                    f"{path}: weights of model {self.card.name!r} hold NaN or inf values (tensor {key!r}); "
                    "the model cannot be used"
                )
        return state

    def load_network(self, device: str | torch.device = "cpu", *, dropout_rate: float | None = None) -> torch.nn.Module:
        """Verify every file, build the card's network and load its weights, in eval mode.

        Parameters
        ----------
        device : str or torch.device, default "cpu"
            Where the network's parameters go.
        dropout_rate : float in [0, 1), optional
            Overrides the card's ``dropout.rate`` when building (the placement stays the card's).

        Returns
        -------
        torch.nn.Module
            In eval mode, on ``device``.

        Raises
        ------
        IntegrityError, FileFormatError
            As :meth:`verify` and :meth:`load_state_dict`.
        InvalidInputError
            If the architecture is unknown to :func:`~napari_medseg.networks.build_network`, if
            ``dropout_rate`` is outside [0, 1), or if the weights do not fit the network (the
            message lists missing and unexpected keys or the first shape mismatch).
        """
        import torch

        from napari_medseg.networks import build_network

        card = self.card
        if card.nnunet is not None:  # an imported nnU-Net model: its own allow-listed network, first fold
            from napari_medseg.nnunet import load_nnunet_network

            return load_nnunet_network(self, device=device)
        rate = card.dropout.rate if dropout_rate is None else float(dropout_rate)
        if not 0.0 <= rate < 1.0:
            raise InvalidInputError(f"dropout_rate={dropout_rate!r}: expected a rate in [0, 1)")
        for spec in card.files:  # the weights are checked below, on the bytes that get loaded
            path = self._paths[spec.file]
            data = _read_checked(path, spec.sha256, card_path=self.card_path)
            del data
        state = self.load_state_dict()
        network = build_network(
            card.architecture.name,
            spatial_dims=card.spatial_dims,
            in_channels=card.in_channels,
            out_channels=card.out_channels,
            dropout_rate=rate,
            dropout_placement=[str(p) for p in card.dropout.placement],
            **card.architecture.params,
        )
        try:
            result = network.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a shape mismatch
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
            raise InvalidInputError(
                f"{self.weights_path()}: the weights do not fit architecture {card.architecture.name!r} with the "
                f"card's parameters: {detail or exc}"
            ) from None
        problems = []
        if result.missing_keys:
            problems.append(f"missing {_few(result.missing_keys)}")
        if result.unexpected_keys:
            problems.append(f"unexpected {_few(result.unexpected_keys)}")
        if problems:
            raise InvalidInputError(
                f"{self.weights_path()}: the weights do not fit architecture {card.architecture.name!r} with "
                f"the card's parameters: {'; '.join(problems)}"
            )
        return network.to(torch.device(device) if isinstance(device, str) else device).eval()


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return f"{shown} (+{len(items) - n} more)" if len(items) > n else shown


def load_model_folder(folder: str | os.PathLike, *, source: str | ModelSource = ModelSource.PATH) -> RegistryModel:
    """Read a model folder: find its card, validate it, and check its paths.

    Raises
    ------
    FileFormatError
        If ``folder`` is not a folder or holds no card (``model.yaml``, ``model.yml``, ``model.json``).
    InvalidInputError
        If the card is invalid (the message names the fields).
    IntegrityError
        If the card (or a file it names) is a symlink leading out of the folder, or a path leaves it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileFormatError(f"model folder {folder} does not exist or is not a folder")
    card_path = find_card_file(folder)
    if card_path is None:
        raise FileFormatError(f"model folder {folder} holds no card (one of {', '.join(CARD_FILENAMES)})")
    resolved_folder = folder.resolve()
    if not card_path.resolve().is_relative_to(resolved_folder):
        raise IntegrityError(
            f"{card_path} is a symlink to {card_path.resolve()}, outside the model folder; refusing it"
        )
    card = read_card(card_path)
    return RegistryModel(card, resolved_folder, source=source, card_path=resolved_folder / card_path.name)


# ------------------------------------------------------------------------------------ search path
def user_models_dir() -> Path:
    """The user folder: ``$MEDSEG_USER_MODELS`` or ``platformdirs.user_data_dir("napari-medseg")/models``."""
    env = os.environ.get(USER_MODELS_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-medseg")) / "models"


def env_models_dirs() -> list[Path]:
    """The folders in ``$MEDSEG_MODELS`` (``os.pathsep``-separated; empty entries skipped)."""
    return [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p.strip()]


def shipped_models_dirs() -> list[Path]:
    """The shipped model folders that exist: the checkout's ``models/``, then the package's ``data/models``.

    The checkout folder is ``Path(napari_medseg.__file__).parents[2] / "models"``, used only when
    the package runs from a ``src/`` layout with a ``pyproject.toml`` beside ``models/`` (an editable
    install or a checkout); an installed wheel carries its copy under ``napari_medseg/data/models``.
    """
    import napari_medseg

    package = Path(napari_medseg.__file__).resolve().parent
    candidates = []
    root = package.parents[1]
    if package.parent.name == "src" and (root / "pyproject.toml").is_file():
        candidates.append(root / "models")
    candidates.append(package / "data" / "models")
    return [c for c in candidates if c.is_dir()]


@dataclass(frozen=True)
class RegistryScan:
    """What one scan of the search path found.

    Attributes
    ----------
    models : list of RegistryModel
        One per name, the first found in search order, sorted by name.
    shadowed : list of (RegistryModel, RegistryModel)
        ``(hidden, winner)`` for every model hidden by an earlier one of the same name.
    problems : list of (Path, str)
        Folders that could not be read as models, with the reason (bad card, escaping path, ...).
    search_path : list of (Path, ModelSource)
        The folders scanned, in precedence order.
    """

    models: list[RegistryModel] = field(default_factory=list)
    shadowed: list[tuple[RegistryModel, RegistryModel]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)
    search_path: list[tuple[Path, ModelSource]] = field(default_factory=list)


class Registry:
    """The models found on a search path; the first folder holding a name wins.

    Parameters
    ----------
    paths : sequence of path, optional
        Search folders in precedence order (source ``path``, or ``user`` for the user folder).
        Default: ``$MEDSEG_MODELS`` (``env``), the user folder (``user``), the shipped models
        (``shipped``), in that order.
    user_dir : path, optional
        Where :meth:`add` copies and from where :meth:`remove` deletes. Default:
        :func:`user_models_dir` (``$MEDSEG_USER_MODELS`` or the platformdirs user data folder).

    Examples
    --------
    >>> registry = Registry()  # doctest: +SKIP
    >>> registry.get("demo-brain").load_network()  # doctest: +SKIP
    """

    def __init__(self, paths: Sequence[str | os.PathLike] | None = None, *, user_dir: str | os.PathLike | None = None):
        self.user_dir = Path(user_dir).expanduser() if user_dir is not None else user_models_dir()
        user_resolved = self.user_dir.resolve()
        if paths is None:
            entries = [(p, ModelSource.ENV) for p in env_models_dirs()]
            entries.append((self.user_dir, ModelSource.USER))
            entries += [(p, ModelSource.SHIPPED) for p in shipped_models_dirs()]
        else:
            if isinstance(paths, (str, os.PathLike)):
                raise InvalidInputError(f"paths={paths!r}: expected a sequence of folders, not one path")
            entries = [
                (Path(p), ModelSource.USER if Path(p).resolve() == user_resolved else ModelSource.PATH) for p in paths
            ]
        self.search_path: list[tuple[Path, ModelSource]] = entries

    def __repr__(self) -> str:
        return f"Registry({[str(p) for p, _ in self.search_path]!r}, user_dir={str(self.user_dir)!r})"

    # ------------------------------------------------------------------------------- scanning
    def _candidates(self, folder: Path, problems: list[tuple[Path, str]]) -> Iterable[Path]:
        # an unreadable folder is reported and skipped: one broken entry never breaks the others
        try:
            if find_card_file(folder) is not None:
                yield folder
                return
            children = sorted(folder.iterdir())
        except OSError as exc:
            problems.append((folder, f"cannot be read: {exc.strerror or exc}"))
            return
        for child in children:
            try:
                if child.name.startswith(".") or not child.is_dir():
                    continue
                if find_card_file(child) is not None:
                    yield child
            except OSError as exc:
                problems.append((child, f"cannot be read: {exc.strerror or exc}"))

    def scan(self) -> RegistryScan:
        """Scan the search path now (nothing is cached) and return what was found."""
        result = RegistryScan(search_path=list(self.search_path))
        winners: dict[str, RegistryModel] = {}
        for folder, source in self.search_path:
            if not folder.is_dir():
                if source is not ModelSource.USER and source is not ModelSource.SHIPPED:
                    result.problems.append((folder, "search folder does not exist"))
                continue
            for candidate in self._candidates(folder, result.problems):
                try:
                    model = load_model_folder(candidate, source=source)
                except (InvalidInputError, IntegrityError, OSError) as exc:
                    result.problems.append((candidate, str(exc)))
                    continue
                if model.name in winners:
                    result.shadowed.append((model, winners[model.name]))
                else:
                    winners[model.name] = model
        result.models.extend(sorted(winners.values(), key=lambda m: m.name))
        return result

    def list(self) -> list[RegistryModel]:
        """The models, one per name (the first found in search order), sorted by name."""
        return self.scan().models

    def names(self) -> list[str]:
        """The model names, sorted."""
        return [m.name for m in self.list()]

    def get(self, name: str) -> RegistryModel:
        """The model called ``name`` (the first found in search order).

        Raises
        ------
        InvalidInputError
            If no model has that name; the message lists close matches (or the available names),
            and the reason if a folder of that name holds an invalid card.
        """
        scan = self.scan()
        for model in scan.models:
            if model.name == name:
                return model
        # an imported MONAI bundle is also found by its metadata's display name, when unambiguous
        display = [m for m in scan.models if (m.card.monai_bundle or {}).get("name") == name]
        if len(display) == 1:
            return display[0]
        names = [m.name for m in scan.models]
        message = f"no model named {name!r} in the registry" + close_matches_message(name, names)
        broken = [f"{path}: {why}" for path, why in scan.problems if path.name == name]
        if broken:
            message += "; a folder of that name could not be used: " + "; ".join(broken)
        elif not close_matches_message(name, names):
            available = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
            message += f"; available: {available}"
        searched = ", ".join(f"{p} ({s.value})" for p, s in self.search_path)
        raise InvalidInputError(f"{message} (searched: {searched})")

    def verify(self, name: str | None = None) -> dict[str, str]:
        """Check the sha256 of every file of one model (``name``) or of every model.

        Returns
        -------
        dict of str to str
            Model name -> the verified weights sha256.

        Raises
        ------
        InvalidInputError
            If ``name`` is unknown.
        IntegrityError
            If any file does not match its card (every model is checked first; the message names
            each failing file with the expected and actual sha256).
        """
        models = [self.get(name)] if name is not None else self.list()
        verified, failures = {}, []
        for model in models:
            try:
                model.verify()
            except (IntegrityError, FileFormatError) as exc:
                failures.append(f"model {model.name!r}: {exc}")
            else:
                verified[model.name] = model.sha256
        if failures:
            raise IntegrityError("; ".join(failures))
        return verified

    # -------------------------------------------------------------------------------- editing
    def add(self, folder: str | os.PathLike, *, force: bool = False) -> RegistryModel:
        """Validate and verify a model folder and copy it atomically into the user folder.

        Only the card and the files it names are copied; each file is checked against its sha256
        from the bytes that get written. The copy lands at ``user_dir / card.name``.

        Parameters
        ----------
        folder : path
            The model folder to add.
        force : bool, default False
            Replace a model of the same name in the user folder (or add one that shadows, or is
            shadowed by, a model of that name elsewhere on the search path).

        Returns
        -------
        RegistryModel
            The copy in the user folder.

        Raises
        ------
        FileFormatError, InvalidInputError, IntegrityError
            If the folder is not a valid model (missing card or file, invalid card, escaping path,
            sha256 mismatch), or a model of that name exists and ``force`` is false.
        """
        model = load_model_folder(folder)
        name = model.name
        target = self.user_dir / name
        if target.resolve() == model.folder:
            raise InvalidInputError(f"{folder} is already the user folder's copy of {name!r}")
        scan = self.scan()
        existing = [m for m in scan.models if m.name == name] + [m for m, _ in scan.shadowed if m.name == name]
        if not force:
            if existing:
                where = ", ".join(f"{m.source.value} folder {m.folder}" for m in existing)
                raise InvalidInputError(
                    f"a model named {name!r} already exists ({where}); use force=True (medseg models add --force) "
                    "to replace or shadow it"
                )
            if target.exists():
                raise InvalidInputError(f"{target} already exists; use force=True (--force) to replace it")
        _refuse_foreign_folder(target)
        contents = {model.card_path.name: model.card_path.read_bytes()}
        for spec in model.card.file_specs():
            contents[spec.file] = _read_checked(model.file_paths()[spec.file], spec.sha256, card_path=model.card_path)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        with atomic_directory(target) as tmp:
            for relative, data in contents.items():
                destination = tmp / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(data)
            # check the copy itself (card re-read from the copied bytes) before it replaces anything
            copied = load_model_folder(tmp)
            copied.verify()
            if copied.name != name:
                raise IntegrityError(f"{model.card_path} changed while it was being copied; nothing was added")
        return load_model_folder(target, source=ModelSource.USER)

    def remove(self, name: str) -> Path:
        """Delete the user folder's model called ``name`` and return the folder removed.

        Raises
        ------
        InvalidInputError
            If no model of that name is in the user folder (the message says where it is, if it
            is elsewhere: shipped and ``MEDSEG_MODELS`` models are never deleted).
        """
        user = self.user_dir.resolve()
        scan = self.scan()
        everything = scan.models + [m for m, _ in scan.shadowed]
        mine = [m for m in everything if m.name == name and m.folder.parent == user]
        if not mine:
            elsewhere = [m for m in everything if m.name == name]
            if elsewhere:
                where = ", ".join(f"{m.source.value} folder {m.folder}" for m in elsewhere)
                raise InvalidInputError(
                    f"model {name!r} is not in the user folder {self.user_dir} but in the {where}; only models "
                    "in the user folder can be removed"
                )
            self.get(name)  # raises with close matches
            raise InvalidInputError(f"model {name!r} is not in the user folder {self.user_dir}")  # pragma: no cover
        folder = mine[0].folder
        trash = folder.with_name(f".{folder.name}.removing-{os.getpid()}")
        os.replace(folder, trash)  # atomic: the model disappears at once, then the files go
        shutil.rmtree(trash, ignore_errors=True)
        return folder


def load_model(name_or_folder: str | os.PathLike, *, registry: Registry | None = None) -> RegistryModel:
    """A model by registry name, or by folder.

    A :class:`~pathlib.Path`, or a string that contains a path separator or names an existing
    folder holding a card, is read as a model folder (source ``path``); any other string is
    looked up in ``registry`` (default: :class:`Registry()`).

    Raises
    ------
    InvalidInputError
        If the name is unknown (with close matches) or the card is invalid.
    FileFormatError, IntegrityError
        As :func:`load_model_folder`.
    """
    if isinstance(name_or_folder, os.PathLike):
        return load_model_folder(name_or_folder)
    text = str(name_or_folder)
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in text for s in separators) or (Path(text).is_dir() and find_card_file(text) is not None):
        return load_model_folder(text)
    return (registry or Registry()).get(text)


def _write_model(
    folder: Path, card: ModelCard, weights: bytes, extra: Mapping[str, bytes], *, card_name: str = "model.yaml"
) -> RegistryModel:
    clash = [k for k in extra if k.lower() in CARD_FILENAMES or k == card.weights.file]
    if clash:
        raise InvalidInputError(f"extra file names {clash} clash with the card or the weights file")
    _refuse_foreign_folder(folder)
    with atomic_directory(folder) as tmp:
        for relative, data in {card.weights.file: weights, **extra}.items():
            _inside(tmp.resolve(), relative, what="file", card_path=folder / card_name)
            destination = tmp / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
        write_card(card, tmp / card_name)
        # the new folder is verified (card re-read, every sha256) before it replaces an old one
        load_model_folder(tmp).verify()
    return load_model_folder(folder)


def _refuse_foreign_folder(folder: Path) -> None:
    """Refuse to replace an existing folder that is not a model folder (no card in it), even when
    asked to overwrite: only a model this program wrote is ever replaced (issue 11, class 3)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InvalidInputError(f"{folder}: exists and is not a folder; a model is written only into a new folder or over a model folder")
    if folder.is_dir() and any(folder.iterdir()) and find_card_file(folder) is None:
        raise InvalidInputError(
            f"{folder}: is a folder with other files and no model card; a model replaces only a model folder, "
            "so nothing in it is deleted (choose another folder)"
        )


def save_model_folder(
    folder: str | os.PathLike,
    *,
    card: ModelCard | Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
) -> RegistryModel:
    """Write a model folder: ``model.safetensors`` and ``model.yaml`` with the computed sha256s.

    The folder is written atomically (it appears complete or not at all).

    Parameters
    ----------
    folder : path
        The model folder to create.
    card : ModelCard or mapping
        The card; ``weights`` may be omitted from a mapping. ``weights`` is set to
        ``{file: "model.safetensors", sha256: <computed>}`` and ``files`` to ``extra_files``.
    state_dict : mapping of str to torch.Tensor
        ``network.state_dict()``; tensors are copied to the CPU.
    extra_files : mapping of str to bytes, optional
        Other files to store (relative path -> content); they are listed in ``files`` with their
        sha256.
    overwrite : bool, default False
        Replace ``folder`` if it exists and is not empty.

    Returns
    -------
    RegistryModel
        The written model (source ``path``).

    Raises
    ------
    InvalidInputError
        If the card is invalid (fields named), ``state_dict`` holds anything but tensors, or
        ``folder`` exists, is not empty and ``overwrite`` is false.
    IntegrityError
        If an ``extra_files`` path leaves the folder.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise InvalidInputError(f"{folder} exists and is not an empty folder; pass overwrite=True to replace it")
    data = card.model_dump(mode="python") if isinstance(card, ModelCard) else dict(card)
    name = data.get("name")
    weights = _encode_weights(state_dict, metadata={"napari_medseg.model": str(name)})
    extra = dict(extra_files or {})
    data["weights"] = {"file": "model.safetensors", "sha256": hashlib.sha256(weights).hexdigest()}
    data["files"] = [{"file": k, "sha256": hashlib.sha256(v).hexdigest()} for k, v in extra.items()]
    validated = _validate_card(data, source=f"card for {folder}")
    return _write_model(folder, validated, weights, extra)


# ------------------------------------------------------------------------------------ MONAI bundles
def import_monai_bundle(
    bundle_dir: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    name: str | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> RegistryModel:
    """Convert a MONAI bundle into a registry model folder: see :func:`napari_medseg.bundles.import_monai_bundle`."""
    from napari_medseg.bundles import import_monai_bundle as _import

    return _import(bundle_dir, folder, name=name, overwrite=overwrite, check=check)


def _bundle_name(bundle_dir: str | os.PathLike, *, name: str | None = None, metadata: Mapping | None = None) -> str:
    """The registry name for a bundle: ``name``, else the bundle folder's name, made safe."""
    from napari_medseg.bundles import bundle_name

    return bundle_name(bundle_dir, name=name)
