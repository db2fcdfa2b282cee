"""``predict``: one model or an ensemble on a volume, from the input to every output on its grid
(the orchestration; see the package docstring for the steps)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from napari_medseg import __version__
from napari_medseg._validate import check_dropout_rate, check_mc_samples
from napari_medseg._validate import check_overlap as _check_overlap
from napari_medseg._validate import check_positive_int as _check_positive_int
from napari_medseg.errors import InvalidInputError
from napari_medseg.inference.device import resolve_device
from napari_medseg.inference.result import Prediction, provenance_metadata
from napari_medseg.inference.sliding_window import WindowMoments, sliding_window_moments
from napari_medseg.inference.splitter import patch_grid
from napari_medseg.labelmaps import labels_from_probabilities
from napari_medseg.model_grid import CardMismatchWarning, ModelGrid
from napari_medseg.progress import CancelEvent, ProgressCallback, report
from napari_medseg.registry import card_warnings
from napari_medseg.uncertainty import entropy, summarize_moments
from napari_medseg.volume import Volume, check_same_grid

if TYPE_CHECKING:  # pragma: no cover
    from napari_medseg.registry import ModelCard, RegistryModel

__all__ = ["CardMismatchWarning", "model_input", "predict"]



def _as_models(model) -> list[RegistryModel]:
    from napari_medseg.registry import RegistryModel, load_model

    items = list(model) if isinstance(model, (list, tuple)) else [model]
    if not items:
        raise InvalidInputError("model: expected at least one model")
    out = []
    for item in items:
        if isinstance(item, RegistryModel):
            out.append(item)
        elif isinstance(item, str) or hasattr(item, "__fspath__"):
            out.append(load_model(item))
        else:
            raise InvalidInputError(f"model={item!r}: expected a RegistryModel, a registry name or a model folder")
    return out


def _stack_input(volume_or_volumes) -> Volume:
    if isinstance(volume_or_volumes, Volume):
        return volume_or_volumes
    volumes = list(volume_or_volumes)
    if not volumes or not all(isinstance(v, Volume) for v in volumes):
        raise InvalidInputError("volume_or_volumes: expected a Volume or a list of Volumes (one per channel)")
    if len(volumes) == 1:
        return volumes[0]
    for i, v in enumerate(volumes[1:], start=1):
        check_same_grid(volumes[0], v, names=("channel 0", f"channel {i}"))
    parts = [v.array[..., None] if v.array.ndim == 3 else v.array for v in volumes]
    return Volume(np.concatenate([p.astype(np.float32, copy=False) for p in parts], axis=-1), volumes[0].geometry, volumes[0].metadata)


def _preprocessing_key(card: ModelCard) -> str:
    return json.dumps(
        {
            "spacing": card.spacing,
            "orientation": card.orientation,
            "normalization": card.normalization.model_dump(mode="json"),
            "patch_size": list(card.patch_size),
            "spatial_dims": card.spatial_dims,
            "overlap": card.overlap,
        },
        sort_keys=True,
    )


def _check_input(volume: Volume, models: list[RegistryModel]) -> None:
    first = models[0].card
    for m in models[1:]:
        if m.card.label_values != first.label_values:
            raise InvalidInputError(
                f"ensemble: model {m.card.name!r} has labels {m.card.label_values}, model {first.name!r} has "
                f"{first.label_values}; ensemble members must predict the same labels"
            )
        if m.card.in_channels != first.in_channels:
            raise InvalidInputError(
                f"ensemble: model {m.card.name!r} takes {m.card.in_channels} channels, {first.name!r} takes "
                f"{first.in_channels}; ensemble members must take the same channels"
            )
    if volume.n_components != first.in_channels:
        names = ", ".join(f"{c.name} ({c.modality})" for c in first.channels)
        raise InvalidInputError(
            f"model {first.name!r} expects {first.in_channels} input channel(s) [{names}], the input has "
            f"{volume.n_components}; pass one volume per channel in the card's order"
        )
    if not np.issubdtype(volume.array.dtype, np.number) or np.issubdtype(volume.array.dtype, np.complexfloating):
        raise InvalidInputError(f"input dtype {volume.array.dtype}: expected real numbers")
    if np.issubdtype(volume.array.dtype, np.floating):
        finite = np.isfinite(volume.array)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise InvalidInputError(
                f"the input has {bad} NaN or infinite voxel(s); replace them (e.g. with the background value) "
                "before segmenting"
            )
    for m in models:
        if m.card.spatial_dims == 3 and 1 in volume.shape:
            raise InvalidInputError(
                f"model {m.card.name!r} is a 3D model but the input is a single slice (shape {volume.shape}); "
                "use a 2D model, or a volume with several slices"
            )


def model_input(volume: Volume, card: ModelCard) -> tuple[ModelGrid, np.ndarray]:
    """The card's model grid for ``volume`` and what the network sees on it: ``(C, z, y, x)``
    float32, reoriented, resampled and normalised (:meth:`ModelGrid.preprocess`; the trainer
    prepares its cases with the same object)."""
    grid = ModelGrid.for_volume(card, volume)
    return grid, grid.preprocess(volume)


def predict(
    volume_or_volumes: Volume | Sequence[Volume],
    model: RegistryModel | str | Sequence[RegistryModel | str],
    *,
    device: str = "auto",
    overlap: float | None = None,
    batch_size: int | None = None,
    mc_samples: int = 0,
    dropout_rate: float | None = None,
    tta_flips: bool = False,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
    warn: bool = True,
) -> Prediction:
    """Segment a volume with one model or an ensemble; everything comes back on its grid.

    Parameters
    ----------
    volume_or_volumes : Volume or sequence of Volume
        The input: one Volume (``(z, y, x)``, or ``(z, y, x, c)`` with the card's channels), or
        one scalar Volume per channel on the same grid, in the card's channel order. Not modified.
    model : RegistryModel, str, or a sequence of them
        Registry model(s) or registry names / model folders. Several models form an ensemble
        averaged in probability space; they must share labels and channels (each uses its own
        card's spacing, orientation, normalisation and patch size).
    device : {"auto", "cpu", "cuda", "mps"}, default "auto"
    overlap : float in [0, 1), optional
        Patch overlap (default: each card's ``overlap``).
    batch_size : int, optional
        Patches per network call (default: 1 for 3D models on the CPU, 4 on a GPU; 16 slices
        for 2D models).
    mc_samples : int, default 0
        Monte-Carlo dropout samples N; 0 is deterministic. Needs dropout layers in the card.
    dropout_rate : float in [0, 1), optional
        Dropout rate for Monte-Carlo sampling (default: the card's ``dropout.rate``).
    tta_flips : bool, default False
        Test-time augmentation by flipping every combination of spatial axes.
    seed : int, default 0
        The same seed and parameters give the same maps.
    progress : callable(done, total), optional
        Called after each batch of patches; ``total`` covers every model.
    cancel : object with ``is_set()``, optional
        Checked between batches and between samples.
    warn : bool, default True
        Also issue each card mismatch as a ``CardMismatchWarning``. They are always returned as
        data (:attr:`Prediction.warnings`); faces that predict in a worker thread pass False and
        show ``Prediction.warnings`` on their main thread.

    Returns
    -------
    Prediction
        Labels, probabilities, uncertainty and provenance on the input's exact grid.

    Raises
    ------
    InvalidInputError
        Unknown model name (close matches listed), wrong channel count, NaN/Inf voxels, a
        single-slice input to a 3D model, ``mc_samples < 0``, a dropout rate outside [0, 1),
        an overlap outside [0, 1), an unavailable device, or Monte-Carlo dropout on a model
        without dropout layers.
    IntegrityError
        If a model's weights do not match their sha256.
    CancelledError
        If ``cancel`` is set (nothing is written by this function).

    Notes
    -----
    Handling of awkward inputs: a volume smaller than the patch is padded with zeros (after
    normalisation) and cropped back; a 3D volume given to a 2D model is segmented slice by slice
    along the card's ``z`` axis (after reorientation); a single-slice volume given to a 3D model
    is refused, because zero padding would feed the model mostly empty context.
    """
    models = _as_models(model)
    mc_samples = check_mc_samples(mc_samples)
    if dropout_rate is not None:
        dropout_rate = check_dropout_rate(dropout_rate)
    if overlap is not None:
        overlap = _check_overlap(overlap)
    if batch_size is not None:
        batch_size = _check_positive_int(batch_size, "batch_size")
    torch_device = resolve_device(device)
    if any(m.card.nnunet is not None for m in models):
        return _predict_nnunet(_stack_input(volume_or_volumes), models, torch_device, mc_samples=mc_samples,
                               tta_flips=tta_flips, progress=progress, cancel=cancel)
    volume = _stack_input(volume_or_volumes)
    _check_input(volume, models)
    if any(m.card.bundle is not None for m in models):
        return _predict_bundle(volume, models, torch_device, warn=warn, overlap=overlap, batch_size=batch_size,
                               mc_samples=mc_samples, tta_flips=tta_flips, progress=progress, cancel=cancel)

    messages: list[str] = []
    for m in models:
        for msg in card_warnings(volume, m.card):
            if msg not in messages:
                messages.append(msg)
                if warn:
                    warnings.warn(msg, CardMismatchWarning, stacklevel=2)

    groups: dict[str, list[RegistryModel]] = {}
    for m in models:
        groups.setdefault(_preprocessing_key(m.card), []).append(m)
    first = models[0].card

    sums = _InputGridMoments(weighted=len(groups) > 1)
    done_before = 0
    grand_total = _count_batches(volume, groups, overlap, batch_size, torch_device)

    for members in groups.values():
        card = members[0].card
        grid, image = model_input(volume, card)
        networks = [m.load_network("cpu") for m in members]
        bs = batch_size or _default_batch_size(card, torch_device)

        def group_progress(done: int, total: int, _offset=done_before) -> None:
            report(progress, _offset + done, grand_total)

        moments = sliding_window_moments(
            image, networks, patch_size=card.patch_size, spatial_dims=card.spatial_dims,
            overlap=card.overlap if overlap is None else overlap, batch_size=bs, mc_samples=mc_samples,
            dropout_rate=dropout_rate, tta_flips=tta_flips, seed=seed, device=torch_device,
            axis_order=card.axis_order, progress=group_progress if progress is not None else None, cancel=cancel,
        )
        del image
        _check_finite(moments.mean_p, members)
        done_before += _group_batches(grid.shape, card, overlap, bs)
        sums.add(moments, grid)
        del moments

    mean_p, mean_p2, mean_entropy, n_total = sums.means()
    maps = summarize_moments(mean_p, mean_p2 if n_total > 1 else None, mean_entropy if n_total > 1 else None)
    labels = labels_from_probabilities(mean_p, first.label_values)

    provenance = {
        "package": "napari-medseg",
        "version": __version__,
        "models": [
            {"name": m.card.name, "version": m.card.version, "sha256": m.sha256, "source": str(getattr(m.source, "value", m.source))}
            for m in models
        ],
        "parameters": {
            "device": str(torch_device),
            "overlap": overlap,
            "batch_size": batch_size,
            "mc_samples": mc_samples,
            "dropout_rate": dropout_rate,
            "tta_flips": bool(tta_flips),
            "seed": int(seed),
            "n_samples": int(n_total),
        },
        "labels": {str(v): first.labels[v].name for v in first.label_values},
        "warnings": messages,
    }
    meta = provenance_metadata(provenance)
    geometry = volume.geometry
    uncertainty = {name: Volume(arr, geometry, meta) for name, arr in maps.items()}
    return Prediction(
        labels=Volume(labels, geometry, meta),
        probabilities=Volume(mean_p, geometry, meta),
        uncertainty=uncertainty,
        provenance=provenance,
    )


@dataclass
class _InputGridMoments:
    """The blended moments of every preprocessing group, back on the input grid.

    One group is kept as it is; several are averaged weighted by their sample counts, a group
    with a single sample supplying ``p * p`` and its entropy so the mixture's moments stay exact.
    """

    weighted: bool
    p: np.ndarray | None = None
    p2: np.ndarray | None = None
    h: np.ndarray | None = None
    n: int = 0

    def add(self, moments: WindowMoments, grid: ModelGrid) -> None:
        """Bring one group's moments to the input grid (one map at a time) and add them."""
        weight = moments.n_samples
        self.p = self._plus(self.p, grid.to_input(moments.mean_p), weight)
        p2 = moments.mean_p2
        if p2 is None and self.weighted:
            p2 = moments.mean_p * moments.mean_p
        if p2 is not None:
            self.p2 = self._plus(self.p2, grid.to_input(p2), weight)
        del p2
        h = moments.mean_entropy
        if h is None and self.weighted:
            h = entropy(moments.mean_p)
        if h is not None:
            self.h = self._plus(self.h, grid.to_input(h), weight)
        self.n += weight

    def _plus(self, total: np.ndarray | None, back: np.ndarray, weight: int) -> np.ndarray:
        if total is None:
            return back * weight if self.weighted else back
        total += back * weight
        return total

    def means(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]:
        """Mean p, p^2 and entropy (in place) and the total number of samples."""
        if self.weighted:
            for total in (self.p, self.p2, self.h):
                total /= self.n
        return self.p, self.p2, self.h, self.n


def _check_finite(mean_p: np.ndarray, members: Sequence[RegistryModel]) -> None:
    """Refuse NaN/inf network outputs (broken weights or a broken card), which would otherwise
    become an empty label map reported as a result. One pass over the merged probabilities, one
    label plane at a time.

    Raises
    ------
    InvalidInputError
        Naming the model(s).
    """
    if all(np.isfinite(plane).all() for plane in mean_p):
        return
    names = ", ".join(repr(m.card.name) for m in members)
    raise InvalidInputError(
        f"model {names} gave NaN or inf outputs on this input (broken weights or card values); no output was written"
    )


def _predict_bundle(volume: Volume, models: list[RegistryModel], device: torch.device, *, warn: bool, overlap: float | None,
                    batch_size: int | None, mc_samples: int, tta_flips: bool, progress, cancel) -> Prediction:
    """An imported MONAI bundle runs its own chain (:func:`napari_medseg.bundles.predict_bundle`)."""
    from napari_medseg.bundles import predict_bundle

    names = ", ".join(repr(m.card.name) for m in models if m.card.bundle is not None)
    if len(models) > 1:
        raise InvalidInputError(f"model: {names} is an imported MONAI bundle, which runs alone (not in an ensemble)")
    if mc_samples or tta_flips:
        raise InvalidInputError(
            f"mc_samples/tta_flips: model {names} is an imported MONAI bundle, run exactly as MONAI runs it; "
            "Monte-Carlo dropout and test-time flips are not part of that"
        )
    messages = card_warnings(volume, models[0].card)
    if warn:
        for msg in messages:
            warnings.warn(msg, CardMismatchWarning, stacklevel=3)
    prediction = predict_bundle(volume, models[0], device=device, overlap=overlap, batch_size=batch_size,
                                progress=progress, cancel=cancel)
    prediction.provenance["warnings"] = [*prediction.provenance.get("warnings", []), *messages]
    return prediction


def _group_batches(shape: tuple[int, int, int], card: ModelCard, overlap: float | None, batch_size: int) -> int:
    patch3 = tuple(card.patch_size) if card.spatial_dims == 3 else (1, *card.patch_size)
    grid = tuple(max(s, p) for s, p in zip(shape, patch3))
    n = len(patch_grid(grid, patch3, card.overlap if overlap is None else overlap))
    return math.ceil(n / batch_size)


def _default_batch_size(card: ModelCard, device: torch.device) -> int:
    """1 patch on the CPU (no gain from more, measured), 4 on a GPU; 16 slices for 2D models."""
    if card.spatial_dims == 2:
        return 16
    return 1 if device.type == "cpu" else 4


def _count_batches(volume: Volume, groups: dict, overlap: float | None, batch_size: int | None, device: torch.device) -> int:
    total = 0
    for members in groups.values():
        card = members[0].card
        shape = ModelGrid.for_volume(card, volume).shape
        total += _group_batches(shape, card, overlap, batch_size or _default_batch_size(card, device))
    return total


def _predict_nnunet(volume: Volume, models: list[RegistryModel], device: torch.device, *, mc_samples: int,
                    tta_flips: bool, progress, cancel) -> Prediction:
    """An imported nnU-Net model runs nnU-Net's own pipeline (:func:`napari_medseg.nnunet.predict_nnunet`)."""
    from napari_medseg.nnunet import predict_nnunet

    names = ", ".join(repr(m.card.name) for m in models if m.card.nnunet is not None)
    if len(models) > 1:
        raise InvalidInputError(f"model: {names} is an imported nnU-Net model, which runs alone (its folds are its ensemble)")
    if mc_samples or tta_flips:
        raise InvalidInputError(
            f"mc_samples/tta_flips: model {names} is an imported nnU-Net model, run exactly as nnUNetv2_predict "
            "(it mirrors on its own allowed axes; the folds give the uncertainty)"
        )
    return predict_nnunet(volume, models[0], device=device, progress=progress, cancel=cancel)
