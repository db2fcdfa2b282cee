"""Training data: find cases, check them, split by patient, and sample patches.

A dataset is either a folder in the Medical Segmentation Decathlon / nnU-Net layout::

    dataset/
      imagesTr/  case_001.nii.gz            (MSD: one file per case)
                 case_001_0000.nii.gz ...   (nnU-Net: one file per channel, _0000, _0001, ...)
      labelsTr/  case_001.nii.gz
      dataset.json                          (optional: "training" list, "labels", "channel_names")

or a CSV file with columns ``image`` (or ``image_0``, ``image_1``, ... for several channels),
``label`` and optionally ``patient``; relative paths are relative to the CSV's folder.

Cases of one patient always land in the same split (patient-level splitting): the patient is the
CSV's ``patient`` column, else the part of the case id matched by ``patient_pattern``, else the case
id itself.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medseg.errors import FileFormatError, GeometryMismatchError, InvalidInputError
from napari_medseg.volume import SUPPORTED_SUFFIXES, Volume, check_same_grid, read_labels, read_volume

__all__ = [
    "Case",
    "CaseData",
    "discover_cases",
    "split_cases",
    "load_case",
    "sample_patch",
    "pad_to_size",
]

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One training case: its image file(s), one per channel, and its label file."""

    id: str
    images: tuple[Path, ...]
    label: Path | None
    patient: str


@dataclass(frozen=True)
class CaseData:
    """A loaded case: channels-first image array, label array and the grid they share."""

    case: Case
    image: np.ndarray  # (C, *spatial) float32
    label: np.ndarray | None  # (*spatial) uint8/uint16
    volume: Volume  # first channel, for geometry


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _patient_of(case_id: str, pattern: str | None) -> str:
    if pattern:
        match = re.search(pattern, case_id)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return case_id


def _from_csv(path: Path, patient_pattern: str | None) -> list[Case]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InvalidInputError(f"{path}: the CSV has no rows; expected columns image,label[,patient]")
    columns = list(rows[0])
    image_columns = ["image"] if "image" in columns else sorted(c for c in columns if re.fullmatch(r"image_\d+", c))
    if not image_columns or "label" not in columns:
        raise InvalidInputError(f"{path}: expected columns 'image' (or image_0, image_1, ...) and 'label'; got {columns}")
    cases = []
    for i, row in enumerate(rows, start=2):
        images = tuple((path.parent / row[c]).resolve() for c in image_columns if row.get(c))
        if len(images) != len(image_columns):
            raise InvalidInputError(f"{path}, line {i}: an image column is empty")
        label = (path.parent / row["label"]).resolve() if row.get("label") else None
        case_id = _strip_suffix(images[0].name)
        patient = row.get("patient") or _patient_of(case_id, patient_pattern)
        cases.append(Case(case_id, images, label, patient))
    return cases


def _from_folder(folder: Path, patient_pattern: str | None) -> list[Case]:
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not images_dir.is_dir():
        raise FileFormatError(f"{folder}: expected an imagesTr/ folder (Decathlon / nnU-Net layout) or a CSV file")
    by_case: dict[str, dict[int, Path]] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith(".") or not any(path.name.lower().endswith(s) for s in SUPPORTED_SUFFIXES):
            continue
        stem = _strip_suffix(path.name)
        match = _CHANNEL_SUFFIX.match(stem)
        case_id, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        by_case.setdefault(case_id, {})[channel] = path
    if not by_case:
        raise FileFormatError(f"{images_dir}: no images found")
    cases = []
    for case_id, channels in sorted(by_case.items()):
        if sorted(channels) != list(range(len(channels))):
            raise InvalidInputError(f"case {case_id!r}: channel files {sorted(channels)} are not numbered 0..N-1")
        label = None
        if labels_dir.is_dir():
            candidates = [p for p in labels_dir.iterdir() if _strip_suffix(p.name) == case_id]
            label = candidates[0] if candidates else None
        cases.append(Case(case_id, tuple(channels[c] for c in sorted(channels)), label, _patient_of(case_id, patient_pattern)))
    return cases


def discover_cases(source: str | os.PathLike, *, patient_pattern: str | None = None, require_labels: bool = True) -> list[Case]:
    """Find the cases of a dataset folder or CSV file.

    Parameters
    ----------
    source : path
        A folder in the Decathlon / nnU-Net layout, or a CSV file.
    patient_pattern : str, optional
        Regular expression whose first group (or whole match) in a case id is the patient id.
    require_labels : bool, default True
        Raise if a case has no label file.

    Raises
    ------
    FileFormatError
        If the source does not exist or has no images.
    InvalidInputError
        If a case lacks its label (the message names the case) or channels are inconsistent.
    """
    path = Path(source)
    if not path.exists():
        raise FileFormatError(f"{path}: dataset not found")
    cases = _from_csv(path, patient_pattern) if path.is_file() else _from_folder(path, patient_pattern)
    if path.is_dir() and (path / "dataset.json").exists():
        try:
            json.loads((path / "dataset.json").read_text())
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{path / 'dataset.json'}: invalid JSON ({exc})") from None
    n_channels = {len(c.images) for c in cases}
    if len(n_channels) > 1:
        raise InvalidInputError(f"{path}: cases have different numbers of channels {sorted(n_channels)}")
    if require_labels:
        missing = [c.id for c in cases if c.label is None or not c.label.exists()]
        if missing:
            raise InvalidInputError(f"{path}: case {missing[0]!r} has no label file" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return cases


def split_cases(
    cases: Sequence[Case],
    *,
    validation_fraction: float = 0.2,
    seed: int = 0,
    folds: int | None = None,
    fold: int = 0,
) -> tuple[list[Case], list[Case]]:
    """Split cases into training and validation at the patient level.

    Parameters
    ----------
    validation_fraction : float, default 0.2
        Fraction of patients for validation (at least one patient when there are two or more).
    seed : int, default 0
        Seed of the patient shuffle; the same seed gives the same split.
    folds, fold : int, optional
        k-fold cross-validation: patients are dealt into ``folds`` groups and group ``fold`` is
        the validation set (``validation_fraction`` is then ignored).

    Raises
    ------
    InvalidInputError
        If ``fold`` is outside ``[0, folds)`` or the fraction is outside ``[0, 1)``.
    """
    patients = sorted({c.patient for c in cases})
    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    if folds is not None:
        if folds < 2 or not 0 <= fold < folds:
            raise InvalidInputError(f"fold={fold}, folds={folds}: expected folds >= 2 and 0 <= fold < folds")
        if folds > len(patients):
            raise InvalidInputError(f"folds={folds}: only {len(patients)} patients to split")
        val_patients = set(order[fold::folds])
    else:
        if not 0 <= validation_fraction < 1:
            raise InvalidInputError(f"validation_fraction={validation_fraction}: expected a value in [0, 1)")
        n_val = int(round(validation_fraction * len(patients)))
        if validation_fraction > 0 and len(patients) >= 2:
            n_val = min(max(n_val, 1), len(patients) - 1)
        val_patients = set(order[:n_val])
    train = [c for c in cases if c.patient not in val_patients]
    val = [c for c in cases if c.patient in val_patients]
    return train, val


def load_case(case: Case, *, allowed_labels: Sequence[int] | None = None) -> tuple[list[Volume], Volume | None]:
    """Read a case's channel volumes and its label map, checking that they share one grid.

    Raises
    ------
    GeometryMismatchError
        If a channel or the label is on another grid (the message names the case).
    InvalidInputError
        If the label has values outside ``allowed_labels`` or is not an integer map.
    """
    try:
        channels = [read_volume(p) for p in case.images]
        for i, channel in enumerate(channels[1:], start=1):
            check_same_grid(channels[0], channel, names=(f"case {case.id!r} channel 0", f"channel {i}"))
        label = None
        if case.label is not None:
            label = read_labels(case.label)
            check_same_grid(channels[0], label, names=(f"case {case.id!r} image", "its label"))
    except GeometryMismatchError:
        raise
    except (FileFormatError, InvalidInputError) as exc:
        raise type(exc)(f"case {case.id!r}: {exc}") from None
    if label is not None and allowed_labels is not None:
        extra = sorted(set(np.unique(label.array).tolist()) - set(int(v) for v in allowed_labels))
        if extra:
            raise InvalidInputError(
                f"case {case.id!r}: label values {extra} are not among the model's labels {sorted(allowed_labels)}"
            )
    return channels, label


def pad_to_size(array: np.ndarray, size: Sequence[int], *, value: float = 0.0) -> np.ndarray:
    """Pad the trailing ``len(size)`` axes of ``array`` symmetrically up to at least ``size``."""
    spatial = array.shape[-len(size):]
    pads = [(0, 0)] * (array.ndim - len(size))
    for n, target in zip(spatial, size):
        missing = max(0, int(target) - n)
        pads.append((missing // 2, missing - missing // 2))
    if all(p == (0, 0) for p in pads):
        return array
    return np.pad(array, pads, mode="constant", constant_values=value)


def sample_patch(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: Sequence[int],
    *,
    foreground_ratio: float,
    rng: np.random.Generator,
    foreground_index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one random patch from a channels-first image and its label.

    With probability ``foreground_ratio`` the patch is centred on a random foreground voxel (label
    > 0), otherwise its corner is uniform. Volumes smaller than the patch are padded (image with
    its minimum, label with 0).

    Parameters
    ----------
    image : ndarray, shape (C, *spatial)
    label : ndarray, shape (*spatial)
    patch_size : sequence of int
        Patch size in voxels, array order.
    foreground_ratio : float
        Probability in [0, 1] of a foreground-centred patch.
    rng : numpy.random.Generator
    foreground_index : ndarray, optional
        Precomputed ``np.argwhere(label > 0)`` (saves time when sampling many patches).

    Returns
    -------
    (image_patch, label_patch)
    """
    if not 0 <= foreground_ratio <= 1:
        raise InvalidInputError(f"foreground_ratio={foreground_ratio}: expected a value in [0, 1]")
    size = [int(s) for s in patch_size]
    image = pad_to_size(image, size, value=float(image.min()) if image.size else 0.0)
    label = pad_to_size(label, size)
    shape = label.shape
    if foreground_index is None or foreground_index.shape[0] and foreground_index.max(axis=0).tolist() >= list(shape):
        foreground_index = None
    if rng.random() < foreground_ratio:
        fg = foreground_index if foreground_index is not None else np.argwhere(label > 0)
        if len(fg):
            centre = fg[rng.integers(len(fg))]
            start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, size, shape)]
        else:
            start = [int(rng.integers(0, n - s + 1)) for s, n in zip(size, shape)]
    else:
        start = [int(rng.integers(0, n - s + 1)) for s, n in zip(size, shape)]
    window = tuple(slice(a, a + s) for a, s in zip(start, size))
    return image[(slice(None), *window)], label[window]
