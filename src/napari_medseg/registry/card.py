"""The model card schema: the pydantic specs, :class:`ModelCard`, and :func:`card_warnings`.

Every field is documented in ``docs/model-card.md``. Torch-free (the Slicer interface process
imports it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:  # pragma: no cover
    from napari_medseg.volume import Volume

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
        from napari_medseg._validate import check_spacing_mm  # the one spacing check

        return None if value is None else check_spacing_mm(value, 3, name="spacing", order="x y z order")

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


# ------------------------------------------------------------------------------------- card checks
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
