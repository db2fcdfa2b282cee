"""nnU-Net v2 result folders: import into the registry and predict exactly as ``nnUNetv2_predict``.

An nnU-Net v2 result folder (``<trainer>__<plans>__<configuration>/`` holding ``dataset.json``,
``plans.json`` and ``fold_K/checkpoint_final.pth``) is converted by :func:`import_nnunet` into a
registry model folder: the network weights of every fold in one ``model.safetensors`` (keys
``fold_K.<parameter>``), the original ``plans.json`` and ``dataset.json`` under ``nnunet/`` with
their sha256, and a card generated from them (labels or regions, channels, target spacing,
normalisation per channel, patch size, network, axis transpose, mirroring axes) whose ``nnunet``
field drives :func:`predict_nnunet`.

Prediction drives nnU-Net's own code in-process (``nnunetv2`` is an optional dependency, needed
only for these models): its preprocessor (crop to non-zero, normalisation, resampling with
separate z for anisotropic data, transpose), its ``nnUNetPredictor`` sliding window (Gaussian,
step 0.5, mirroring on the allowed axes), the fold ensemble (mean of logits, as nnU-Net does) and
its export (resampling back, uncropping, reverse transpose). What differs is only what is safe:
checkpoints are read with ``torch.load(weights_only=True)`` (numpy scalars and dtypes allowed, as
nnU-Net stores some), the network class and its operations come from an allow-list (nothing named
in ``plans.json`` is imported by name), and the registry checks every sha256. The folds'
disagreement gives the uncertainty maps (entropy, mutual information, variance across folds).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medseg.errors import FileFormatError, InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from napari_medseg.inference.result import Prediction
    from napari_medseg.registry import RegistryModel
    from napari_medseg.volume import Volume

__all__ = [
    "ALLOWED_NETWORKS",
    "ALLOWED_OPS",
    "load_nnunet_checkpoint",
    "import_nnunet",
    "add_nnunet",
    "load_nnunet_network",
    "predict_nnunet",
    "nnunet_default_name",
]

#: Network classes of ``dynamic_network_architectures`` an imported plans.json may name.
ALLOWED_NETWORKS = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "ResidualEncoderUNet",
    "dynamic_network_architectures.architectures.unet.ResidualUNet": "ResidualUNet",
}
#: The torch.nn operations ``arch_kwargs`` may name (``conv_op``, ``norm_op``, ``dropout_op``, ``nonlin``).
ALLOWED_OPS = {
    f"torch.nn.{mod}{cls}": cls
    for cls, mods in {
        "Conv1d": ("", "modules.conv."), "Conv2d": ("", "modules.conv."), "Conv3d": ("", "modules.conv."),
        "InstanceNorm1d": ("", "modules.instancenorm."), "InstanceNorm2d": ("", "modules.instancenorm."),
        "InstanceNorm3d": ("", "modules.instancenorm."), "BatchNorm1d": ("", "modules.batchnorm."),
        "BatchNorm2d": ("", "modules.batchnorm."), "BatchNorm3d": ("", "modules.batchnorm."),
        "GroupNorm": ("", "modules.normalization."), "LayerNorm": ("", "modules.normalization."),
        "Dropout": ("", "modules.dropout."), "Dropout1d": ("", "modules.dropout."),
        "Dropout2d": ("", "modules.dropout."), "Dropout3d": ("", "modules.dropout."),
        "LeakyReLU": ("", "modules.activation."), "ReLU": ("", "modules.activation."),
        "PReLU": ("", "modules.activation."), "GELU": ("", "modules.activation."),
        "ELU": ("", "modules.activation."), "SiLU": ("", "modules.activation."),
    }.items()
    for mod in mods
}
_NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
                   "RGBTo01Normalization")
_RESAMPLING = ("resample_data_or_seg_to_shape", "resample_torch_fornnunet", "no_resampling_hack")
_PREPROCESSORS = ("DefaultPreprocessor",)
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")
_MAX_JSON_BYTES = 64 << 20


# ------------------------------------------------------------------------------------------ reading
def _require_nnunetv2() -> None:
    try:
        import dynamic_network_architectures  # noqa: F401
        import nnunetv2  # noqa: F401
    except ImportError as exc:
        raise InvalidInputError(
            f"nnU-Net models need the optional packages nnunetv2 and dynamic_network_architectures ({exc}); "
            "install them with: pip install nnunetv2"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileFormatError(f"{path}: missing (an nnU-Net v2 result folder holds dataset.json and plans.json)")
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise FileFormatError(f"{path}: larger than {_MAX_JSON_BYTES >> 20} MiB; not an nnU-Net json file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{path}: expected a JSON object at the top level")
    return data


def _safe_globals() -> list:
    """numpy scalars and dtypes: plain data nnU-Net's checkpoints hold (``_best_ema``, log values)."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed: list = [scalar, np.dtype]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType") and n != "StringDType"]
    return allowed


def load_nnunet_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read an nnU-Net checkpoint without unpickling arbitrary objects.

    ``torch.load(weights_only=True)`` with numpy scalars and dtypes allowed besides tensors and
    plain containers; anything else (a class whose ``__reduce__`` would run code) is refused and
    never called.

    Parameters
    ----------
    path : path
        ``fold_K/checkpoint_final.pth``.

    Returns
    -------
    dict
        ``network_weights`` (str -> tensor), ``trainer_name``, ``configuration``,
        ``mirroring_axes`` (tuple or None).

    Raises
    ------
    FileFormatError
        If the file is missing, holds objects that cannot be loaded safely (the reason is given),
        or lacks ``network_weights``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: checkpoint missing")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "Unsupported global" in line or "GLOBAL" in line), reason[-1] if reason else "")
        raise FileFormatError(
            f"{path}: cannot be loaded safely (weights only; it holds objects other than tensors, plain "
            f"containers and numpy scalars, which are never unpickled): {detail.strip()[:300]}"
        ) from None
    if not isinstance(obj, Mapping) or not isinstance(obj.get("network_weights"), Mapping):
        raise FileFormatError(f"{path}: not an nnU-Net checkpoint (no 'network_weights' state dict)")
    weights = dict(obj["network_weights"])
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FileFormatError(f"{path}: network_weights holds non-tensors: {bad[:5]}")
    # torch.compile'd trainers store keys with a '_orig_mod.' prefix; nnU-Net strips it too
    weights = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in weights.items()}
    init_args = obj.get("init_args") if isinstance(obj.get("init_args"), Mapping) else {}
    axes = obj.get("inference_allowed_mirroring_axes")
    return {
        "network_weights": weights,
        "trainer_name": str(obj.get("trainer_name", "")),
        "configuration": init_args.get("configuration"),
        "mirroring_axes": None if axes is None else tuple(int(a) for a in axes),
    }


# ------------------------------------------------------------------------------------------ network
def _arch(plans: Mapping[str, Any], configuration: str, *, where: str) -> tuple[str, dict[str, Any], list[str]]:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        cm = PlansManager(copy.deepcopy(dict(plans))).get_configuration(configuration)
        arch = cm.configuration["architecture"]
        name, kwargs = arch["network_class_name"], dict(arch["arch_kwargs"])
        req = list(arch.get("_kw_requires_import", ()))
    except (KeyError, TypeError, AssertionError) as exc:
        raise FileFormatError(f"{where}: configuration {configuration!r} has no usable architecture entry ({exc})") from None
    return name, kwargs, req


def _build_network(plans: Mapping[str, Any], dataset: Mapping[str, Any], configuration: str, *, where: str):
    """Build the configuration's network from the allow-lists (never a name looked up dynamically)."""
    import torch.nn as nn
    from dynamic_network_architectures.architectures import unet
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name, kwargs, req = _arch(plans, configuration, where=where)
    if name not in ALLOWED_NETWORKS:
        raise InvalidInputError(
            f"{where}: network_class_name {name!r} is not allowed (only {', '.join(sorted(ALLOWED_NETWORKS))}); "
            "nothing named in plans.json is imported"
        )
    cls = getattr(unet, ALLOWED_NETWORKS[name])
    for key in req:
        value = kwargs.get(key)
        if value is None:
            continue
        if value not in ALLOWED_OPS:
            raise InvalidInputError(f"{where}: arch_kwargs.{key}={value!r} is not an allowed torch.nn operation")
        kwargs[key] = getattr(nn, ALLOWED_OPS[value])
    pm = PlansManager(copy.deepcopy(dict(plans)))
    n_in = len(dataset.get("channel_names", dataset.get("modality", {})))
    n_out = pm.get_label_manager(dataset).num_segmentation_heads
    try:
        return cls(input_channels=n_in, num_classes=n_out, deep_supervision=False, **kwargs)
    except TypeError as exc:
        raise InvalidInputError(f"{where}: arch_kwargs do not fit {name}: {exc}") from None


# ------------------------------------------------------------------------------------------ import
def nnunet_default_name(folder: str | os.PathLike) -> str:
    """``<Dataset>__<trainer>__<plans>__<configuration>`` folder names give ``<Dataset>_<configuration>``."""
    folder = Path(folder).resolve()
    parts = folder.name.split("__")
    base = f"{folder.parent.name}_{parts[-1]}" if len(parts) == 3 else folder.name
    return re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip("._-")[:100] or "nnunet"


def _folds(folder: Path, folds: Sequence[int | str] | None, checkpoint: str) -> list[str]:
    if folds is None:
        found = sorted((p.name[5:] for p in folder.iterdir() if p.is_dir() and _FOLD_RE.match(p.name)
                        and (p / checkpoint).is_file()), key=lambda f: (f == "all", int(f) if f.isdigit() else 0))
        if not found:
            raise FileFormatError(f"{folder}: no fold_K/{checkpoint} found")
        return found
    out = []
    for f in folds:
        f = str(f)
        if not (f.isdigit() or f == "all"):
            raise InvalidInputError(f"folds: {f!r} is not a fold number or 'all'")
        if not (folder / f"fold_{f}" / checkpoint).is_file():
            raise FileFormatError(f"{folder / f'fold_{f}' / checkpoint}: missing (folds={list(folds)})")
        out.append(f)
    if len(set(out)) != len(out):
        raise InvalidInputError(f"folds: a fold is given twice: {out}")
    return out


def _norm_entry(scheme: str, channel: str, use_mask: bool, props: Mapping[str, Any] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"channel": channel, "scheme": scheme, "use_mask_for_norm": bool(use_mask)}
    if scheme == "CTNormalization":
        if not props:
            raise FileFormatError(f"plans.json: CTNormalization of channel {channel!r} needs foreground_intensity_properties_per_channel")
        entry.update(clip=[float(props["percentile_00_5"]), float(props["percentile_99_5"])],
                     mean=float(props["mean"]), std=float(props["std"]))
    return entry


def import_nnunet(
    result_folder: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    name: str | None = None,
    overwrite: bool = False,
) -> RegistryModel:
    """Convert an nnU-Net v2 result folder into a registry model folder.

    Parameters
    ----------
    result_folder : path
        ``<trainer>__<plans>__<configuration>/`` with ``dataset.json``, ``plans.json`` and
        ``fold_K/<checkpoint>``.
    folder : path
        The model folder to write (atomically).
    folds : sequence of int or 'all', optional
        The folds to ensemble (default: every ``fold_K`` holding ``checkpoint``).
    checkpoint : str, default "checkpoint_final.pth"
        The checkpoint file name inside each fold folder.
    name : str, optional
        Registry name (default: ``<Dataset>_<configuration>``).
    overwrite : bool, default False
        Replace ``folder`` if it exists and is not empty.

    Returns
    -------
    RegistryModel
        The written model.

    Raises
    ------
    FileFormatError
        A missing or unreadable file, or a checkpoint that cannot be loaded weights-only.
    InvalidInputError
        A network class, operation, normalisation, resampling function or preprocessor outside
        the allow-lists, a cascade configuration (needs the previous stage), folds of different
        trainers/configurations, or weights that do not fit the network built from the plans.
    """
    from napari_medseg.registry import default_label_color, save_model_folder

    _require_nnunetv2()
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    src = Path(result_folder)
    if not src.is_dir():
        raise FileFormatError(f"{src}: not a folder (expected an nnU-Net v2 result folder)")
    if Path(checkpoint).name != checkpoint or not checkpoint.endswith(".pth"):
        raise InvalidInputError(f"checkpoint={checkpoint!r}: expected a file name ending in .pth (no folders)")
    dataset_path, plans_path = src / "dataset.json", src / "plans.json"
    dataset, plans = _read_json(dataset_path), _read_json(plans_path)
    fold_names = _folds(src, folds, checkpoint)

    loaded = [load_nnunet_checkpoint(src / f"fold_{f}" / checkpoint) for f in fold_names]
    parts = src.name.split("__")
    configuration = loaded[0]["configuration"] or (parts[-1] if len(parts) == 3 else None)
    trainer = loaded[0]["trainer_name"] or (parts[0] if len(parts) == 3 else "")
    for f, ck in zip(fold_names, loaded):
        if (ck["configuration"], ck["trainer_name"]) != (loaded[0]["configuration"], loaded[0]["trainer_name"]):
            raise InvalidInputError(f"fold_{f}: trained with {ck['trainer_name']}/{ck['configuration']}, "
                                    f"fold_{fold_names[0]} with {trainer}/{configuration}: folds must agree")
    if not configuration or configuration not in plans.get("configurations", {}):
        raise InvalidInputError(f"{plans_path}: configuration {configuration!r} (from the checkpoint) is not in plans.json")
    where = f"{plans_path} [{configuration}]"
    pm = PlansManager(copy.deepcopy(plans))
    cm = pm.get_configuration(configuration)
    if cm.previous_stage_name is not None:
        raise InvalidInputError(f"{where}: a cascade stage (needs the prediction of {cm.previous_stage_name!r}); "
                                "only single-stage configurations are supported")
    if cm.preprocessor_name not in _PREPROCESSORS:
        raise InvalidInputError(f"{where}: preprocessor {cm.preprocessor_name!r} is not supported ({', '.join(_PREPROCESSORS)})")
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        fn = cm.configuration.get(key)
        if fn not in _RESAMPLING:
            raise InvalidInputError(f"{where}: {key}={fn!r} is not supported ({', '.join(_RESAMPLING)})")
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, Mapping) or not channels:
        raise FileFormatError(f"{dataset_path}: channel_names is missing")
    channel_names = [str(channels[k]) for k in sorted(channels, key=int)]
    schemes = list(cm.normalization_schemes)
    if len(schemes) != len(channel_names):
        raise InvalidInputError(f"{where}: {len(schemes)} normalization_schemes for {len(channel_names)} channels")
    unknown = [s for s in schemes if s not in _NORMALIZATIONS]
    if unknown:
        raise InvalidInputError(f"{where}: normalization scheme(s) {unknown} not supported ({', '.join(_NORMALIZATIONS)})")
    fg = plans.get("foreground_intensity_properties_per_channel", {})
    normalization = [_norm_entry(s, c, m, fg.get(str(i))) for i, (s, c, m) in
                     enumerate(zip(schemes, channel_names, cm.use_mask_for_norm))]

    network = _build_network(plans, dataset, configuration, where=where)
    network_class, arch_kwargs, _ = _arch(plans, configuration, where=where)
    import torch

    state: dict[str, torch.Tensor] = {}
    for f, ck in zip(fold_names, loaded):
        try:
            network.load_state_dict(ck["network_weights"], strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[:3]
            raise InvalidInputError(
                f"{src / f'fold_{f}' / checkpoint}: the weights do not fit the network built from {plans_path} "
                f"(trainer {trainer!r} may build another network): {' '.join(first)[:300]}"
            ) from None
        state.update({f"fold_{f}.{k}": v for k, v in ck["network_weights"].items()})

    lm = pm.get_label_manager(dataset)
    label_names = {}
    for key, value in dataset["labels"].items():
        label_names.setdefault(value if isinstance(value, int) else tuple(value), key)
    if lm.has_regions:
        order = [int(v) for v in lm.regions_class_order]
        regions = [sorted(int(x) for x in (r if isinstance(r, (list, tuple)) else [r])) for r in lm.foreground_regions]
        names = {}
        for region, value in zip(regions, order):
            key = next((k for k, v in dataset["labels"].items()
                        if sorted(int(x) for x in (v if isinstance(v, (list, tuple)) else [v])) == region), f"region_{value}")
            names[value] = key
        labels = {0: "background", **names}
    else:
        regions, order = None, None
        labels = {int(v): k for k, v in dataset["labels"].items()}
    tb = [int(a) for a in pm.transpose_backward]
    spacing_array = [float(cm.spacing[i]) for i in tb] if len(cm.spacing) == 3 else None  # original (z, y, x)
    patch = [int(p) for p in cm.patch_size]
    axes = loaded[0]["mirroring_axes"]
    card = {
        "name": name or nnunet_default_name(src),
        "version": str(dataset.get("release", dataset.get("version", "1"))),
        "description": str(dataset.get("description", dataset.get("name", "")))
        + f" (nnU-Net v2 {trainer}__{pm.plans_name}__{configuration}, folds {', '.join(fold_names)})",
        "task": "segmentation",
        "license": str(dataset.get("licence", dataset.get("license", "NOASSERTION"))) or "NOASSERTION",
        "references": ["https://doi.org/10.1038/s41592-020-01008-z"],
        "architecture": {"name": f"nnunet.{ALLOWED_NETWORKS[network_class]}", "params": arch_kwargs},
        "spatial_dims": len(patch),
        "channels": [{"name": c, "modality": c} for c in channel_names],
        "labels": {v: {"name": n, "color": default_label_color(v)} for v, n in labels.items()},
        "spacing": tuple(spacing_array[::-1]) if spacing_array else None,
        "normalization": {"kind": "none"},  # nnU-Net's own per-channel schemes: see nnunet.normalization
        "patch_size": tuple(patch),
        "overlap": 0.5,
        "nnunet": {
            "trainer": trainer,
            "plans_name": pm.plans_name,
            "configuration": configuration,
            "folds": fold_names,
            "checkpoint": checkpoint,
            "plans": "nnunet/plans.json",
            "dataset": "nnunet/dataset.json",
            "network_class": network_class,
            "activation": "sigmoid" if lm.has_regions else "softmax",
            "regions": regions,
            "regions_class_order": order,
            "normalization": normalization,
            "target_spacing": [float(s) for s in cm.spacing],
            "patch_size": patch,
            "transpose_forward": [int(a) for a in pm.transpose_forward],
            "transpose_backward": tb,
            "mirroring_axes": None if axes is None else list(axes),
            "tile_step_size": 0.5,
            "gaussian_sigma_scale": 0.125,
            "resampling": {k: cm.configuration.get(k) for k in
                           ("resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_probabilities",
                            "resampling_fn_probabilities_kwargs")},
        },
    }
    extra = {"nnunet/plans.json": plans_path.read_bytes(), "nnunet/dataset.json": dataset_path.read_bytes()}
    return save_model_folder(folder, card=card, state_dict=state, extra_files=extra, overwrite=overwrite)


def add_nnunet(
    result_folder: str | os.PathLike,
    registry: Any,
    *,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    name: str | None = None,
    force: bool = False,
) -> RegistryModel:
    """Import an nnU-Net v2 result folder (staged in a temporary folder) into ``registry``'s user folder.

    What ``medseg models import-nnunet --add``, the napari Models widget and the Slicer module
    call. Raises as :func:`import_nnunet` and :meth:`~napari_medseg.registry.Registry.add`.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".medseg-import-") as tmp:
        staged = import_nnunet(result_folder, Path(tmp) / "model", folds=folds, checkpoint=checkpoint, name=name)
        return registry.add(staged.folder, force=force)


# ------------------------------------------------------------------------------------------ predict
def _model_json(model: RegistryModel, key: str) -> dict[str, Any]:
    relative = model.card.nnunet[key]
    paths = model.file_paths()
    if relative not in paths:
        raise FileFormatError(f"{model.card_path}: nnunet.{key}={relative!r} is not one of the card's files")
    data = paths[relative].read_bytes()
    expected = next(f.sha256 for f in model.card.files if f.file == relative)
    if hashlib.sha256(data).hexdigest() != expected:
        from napari_medseg.registry.weights import _mismatch

        raise _mismatch(paths[relative], model.card_path, expected, hashlib.sha256(data).hexdigest())
    return json.loads(data.decode("utf-8"))


def _fold_state_dicts(model: RegistryModel) -> list[dict[str, Any]]:
    state = model.load_state_dict()
    return [{k[len(f"fold_{f}."):]: v for k, v in state.items() if k.startswith(f"fold_{f}.")}
            for f in model.card.nnunet["folds"]]


def load_nnunet_network(model: RegistryModel, *, fold: int | str | None = None, device: str | torch.device = "cpu"):
    """The network of an imported nnU-Net model with one fold's weights (default the first), in eval mode.

    Every file's sha256 is checked; the network is built from the allow-lists as at import.
    """
    _require_nnunetv2()
    spec = model.card.nnunet
    folds = [str(f) for f in spec["folds"]]
    which = folds[0] if fold is None else str(fold)
    if which not in folds:
        raise InvalidInputError(f"fold={fold!r}: model {model.name!r} holds folds {', '.join(folds)}")
    network = _build_network(_model_json(model, "plans"), _model_json(model, "dataset"), spec["configuration"],
                             where=str(model.card_path))
    network.load_state_dict(_fold_state_dicts(model)[folds.index(which)], strict=True)
    return network.to(device).eval()


def _sitk_properties(volume: Volume) -> tuple[np.ndarray, dict[str, Any]]:
    """The array and properties nnU-Net's SimpleITKIO would give for this volume (3D only)."""
    g = volume.geometry
    array = volume.array if volume.array.ndim == 4 else volume.array[..., None]
    data = np.ascontiguousarray(np.moveaxis(array, -1, 0)).astype(np.float32)  # (c, z, y, x), as SimpleITKIO
    props = {
        "sitk_stuff": {"spacing": tuple(g.spacing), "origin": tuple(g.origin), "direction": tuple(g.direction)},
        "spacing": [abs(float(s)) for s in list(g.spacing)[::-1]],
    }
    return data, props


def _fold_uncertainty(fold_probs: list[np.ndarray], activation: str) -> dict[str, np.ndarray]:
    """Entropy, mutual information and variance across folds (channels last)."""
    from napari_medseg.uncertainty import summarize_moments

    stack = np.stack(fold_probs)  # (F, z, y, x, C)
    mean_p = stack.mean(0)
    if activation == "softmax":
        from napari_medseg.uncertainty import entropy

        mean_h = np.mean([entropy(p) for p in fold_probs], axis=0) if len(fold_probs) > 1 else None
        return summarize_moments(mean_p, (stack**2).mean(0) if len(fold_probs) > 1 else None, mean_h)

    # sigmoid regions: each region is a binary variable; sum the binary entropies (nats)
    def h2(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return -(p * np.log(p) + (1 - p) * np.log1p(-p))

    regions = mean_p[..., 1:]
    out = {"entropy": h2(regions).sum(-1).astype(np.float32)}
    if len(fold_probs) > 1:
        mean_h = np.mean([h2(p[..., 1:]) for p in fold_probs], axis=0).sum(-1)
        out["mutual_information"] = np.maximum(out["entropy"] - mean_h, 0).astype(np.float32)
        out["variance"] = stack.var(0).astype(np.float32)
    return out


def predict_nnunet(
    volume: Volume,
    model: RegistryModel,
    *,
    device: str | torch.device = "cpu",
    progress=None,
    cancel=None,
) -> Prediction:
    """Segment ``volume`` with an imported nnU-Net model exactly as ``nnUNetv2_predict`` does.

    Parameters
    ----------
    volume : Volume
        ``(z, y, x)`` or ``(z, y, x, C)`` with the card's channels, as read by SimpleITK.
    model : RegistryModel
        A model whose card has an ``nnunet`` field (:func:`import_nnunet`).
    device : str or torch.device, default "cpu"
    progress : callable(done, total), optional
        Called after each fold.
    cancel : object with ``is_set()``, optional
        Checked between folds.

    Returns
    -------
    Prediction
        Labels (nnU-Net's segmentation), probabilities (softmax of the fold-mean logits; for
        region-based models the sigmoid of each region after a background channel
        ``1 - max``), and uncertainty across folds, all on the input's grid.
    """
    import torch

    from napari_medseg import __version__
    from napari_medseg.errors import CancelledError
    from napari_medseg.inference.result import Prediction, provenance_metadata
    from napari_medseg.volume import Volume

    _require_nnunetv2()
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    spec = model.card.nnunet
    if volume.array.ndim == 3 and len(model.card.channels) != 1 or (
        volume.array.ndim == 4 and volume.array.shape[-1] != len(model.card.channels)
    ):
        got = 1 if volume.array.ndim == 3 else volume.array.shape[-1]
        raise InvalidInputError(f"volume: model {model.name!r} expects {len(model.card.channels)} channels "
                                f"({', '.join(c.name for c in model.card.channels)}), got {got}")
    plans, dataset = _model_json(model, "plans"), _model_json(model, "dataset")
    configuration = spec["configuration"]
    network = _build_network(plans, dataset, configuration, where=str(model.card_path))
    folds = _fold_state_dicts(model)
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    torch_device = torch.device(device) if not isinstance(device, torch.device) else device
    predictor = nnUNetPredictor(tile_step_size=float(spec.get("tile_step_size", 0.5)), use_gaussian=True,
                                use_mirroring=True, perform_everything_on_device=torch_device.type != "cpu",
                                device=torch_device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    axes = spec.get("mirroring_axes")
    predictor.manual_initialization(network, pm, cm, folds, dataset, spec["trainer"],
                                    None if axes is None else tuple(axes))

    data, props = _sitk_properties(volume)
    data, _, props = DefaultPreprocessor(verbose=False).run_case_npy(data, None, props, pm, cm, dataset)
    data = torch.from_numpy(data)
    label_manager = pm.get_label_manager(dataset)

    # nnUNetPredictor.predict_logits_from_preprocessed_data, keeping each fold's logits
    n_threads = torch.get_num_threads()
    summed = None
    per_fold = []
    with torch.inference_mode():
        for i, params in enumerate(folds):
            if cancel is not None and cancel.is_set():
                raise CancelledError("prediction cancelled")
            predictor.network.load_state_dict(params)
            logits = predictor.predict_sliding_window_return_logits(data).to("cpu")
            if len(folds) > 1:
                per_fold.append(logits.clone())
            summed = logits if summed is None else summed + logits
            if progress is not None:
                progress(i + 1, len(folds))
        if len(folds) > 1:
            summed /= len(folds)
    torch.set_num_threads(n_threads)

    def to_input(logits):
        seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, pm, cm, label_manager, props, return_probabilities=True, num_threads_torch=n_threads)
        torch.set_num_threads(n_threads)
        probs = np.moveaxis(np.asarray(probs, np.float32), 0, -1)  # (z, y, x, C)
        if label_manager.has_regions:  # channels in card order: background, then the regions' values ascending
            order = np.argsort(spec["regions_class_order"])
            probs = np.concatenate([1 - probs.max(-1, keepdims=True), probs[..., order]], axis=-1)
        return np.asarray(seg), probs

    seg, mean_p = to_input(summed)
    fold_probs = [to_input(lg)[1] for lg in per_fold] if per_fold else [mean_p]
    maps = _fold_uncertainty(fold_probs, spec["activation"])
    del per_fold, fold_probs

    values = model.card.label_values
    dtype = np.uint8 if max(values) < 256 else np.uint16
    provenance = {
        "package": "napari-medseg",
        "version": __version__,
        "models": [{"name": model.card.name, "version": model.card.version, "sha256": model.sha256,
                    "source": str(getattr(model.source, "value", model.source))}],
        "parameters": {"device": str(torch_device), "runner": "nnunetv2", "folds": list(spec["folds"]),
                       "mirroring_axes": axes, "tile_step_size": float(spec.get("tile_step_size", 0.5)),
                       "n_samples": len(folds)},
        "labels": {str(v): model.card.labels[v].name for v in values},
        "warnings": [],
    }
    meta = provenance_metadata(provenance)
    geometry = volume.geometry
    return Prediction(
        labels=Volume(seg.astype(dtype), geometry, meta),
        probabilities=Volume(mean_p, geometry, meta),
        uncertainty={k: Volume(v, geometry, meta) for k, v in maps.items()},
        provenance=provenance,
    )
