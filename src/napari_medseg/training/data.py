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

from napari_medseg.errors import (
    FileFormatError,
    GeometryMismatchError,
    InvalidInputError,
)
from napari_medseg.volume import (
    SUPPORTED_SUFFIXES,
    Volume,
    as_label_array,
    check_same_grid,
    read_labels,
    read_volume,
    write_volume,
)

__all__ = [
    "Case",
    "CaseData",
    "discover_cases",
    "split_cases",
    "load_case",
    "sample_patch",
    "pad_to_size",
    "write_training_case",
    "write_dataset_csv",
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


_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CASE_SUFFIXES = (".nii.gz", ".nrrd", ".mha")


def write_training_case(
    image: Volume | Sequence[Volume],
    label: Volume,
    folder: str | os.PathLike,
    *,
    case_id: str = "case_000",
    patient: str | None = None,
    suffix: str = ".nrrd",
    overwrite: bool = False,
) -> Case:
    """Write one labelled case into ``folder`` in the layout :func:`discover_cases` reads.

    The files are ``folder/imagesTr/<case_id>_0000<suffix>`` (one per channel, nnU-Net naming)
    and ``folder/labelsTr/<case_id><suffix>``, each written atomically with its exact geometry
    (NRRD and MetaImage keep spacing, origin and direction in double precision; NIfTI in single
    precision). This is how a viewer's current image and label layers become a training case.

    Parameters
    ----------
    image : Volume or sequence of Volume
        The image channel(s), scalar ``(z, y, x)`` volumes on one grid. Not modified.
    label : Volume
        The label map on the same grid; integer values (written as the smallest unsigned type).
    folder : str or os.PathLike
        The dataset folder (created if needed).
    case_id : str, keyword-only
        Letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit. Default
        ``"case_000"``.
    patient : str or None, keyword-only
        The patient id of the returned :class:`Case` (default: the case id, which is also what
        :func:`discover_cases` finds for a folder without ``patient_pattern``).
    suffix : {".nrrd", ".nii.gz", ".mha"}, keyword-only
        File format. Default ``".nrrd"``.
    overwrite : bool, keyword-only
        Replace existing files of this case. Default False.

    Returns
    -------
    Case
        The written case (absolute paths).

    Raises
    ------
    InvalidInputError
        If ``case_id`` or ``suffix`` is invalid, there is no image channel, a channel is not
        scalar, the label is not an integer map (e.g. floats, negative values), or the files exist
        and ``overwrite`` is False.
    GeometryMismatchError
        If a channel or the label is not on the first channel's grid.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from napari_medseg.volume import Geometry
    >>> img = Volume(np.zeros((2, 4, 4), np.float32), Geometry((1.0, 1.0, 2.0)))
    >>> lab = Volume(np.ones((2, 4, 4), np.uint8), Geometry((1.0, 1.0, 2.0)))
    >>> case = write_training_case(img, lab, tempfile.mkdtemp(), case_id="c1")
    >>> [p.name for p in case.images], case.label.name
    (['c1_0000.nrrd'], 'c1.nrrd')
    """
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id):
        raise InvalidInputError(
            f"case_id={case_id!r}: expected letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if suffix not in _CASE_SUFFIXES:
        raise InvalidInputError(f"suffix={suffix!r}: expected one of {', '.join(_CASE_SUFFIXES)}")
    channels = [image] if isinstance(image, Volume) else list(image)
    if not channels or not all(isinstance(c, Volume) for c in channels):
        raise InvalidInputError("image: expected a Volume or a non-empty sequence of Volumes (one per channel)")
    if not isinstance(label, Volume):
        raise InvalidInputError(f"label: expected a Volume, got {type(label).__name__}")
    for i, channel in enumerate(channels):
        if channel.n_components != 1:
            raise InvalidInputError(f"image channel {i}: expected a scalar volume, got {channel.n_components} components")
        if i:
            check_same_grid(channels[0], channel, names=("image channel 0", f"image channel {i}"))
    check_same_grid(channels[0], label, names=("image", "label"))
    label_array = as_label_array(label.array, name="label")
    root = Path(folder).resolve()
    image_paths = tuple(root / "imagesTr" / f"{case_id}_{i:04d}{suffix}" for i in range(len(channels)))
    label_path = root / "labelsTr" / f"{case_id}{suffix}"
    existing = [p for p in (*image_paths, label_path) if p.exists()]
    if existing and not overwrite:
        raise InvalidInputError(f"{existing[0]} already exists; choose another case_id or pass overwrite=True")
    for path in (*image_paths, label_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    for channel, path in zip(channels, image_paths):
        write_volume(channel, path)
    write_volume(Volume(label_array, label.geometry, label.metadata), label_path)
    return Case(case_id, image_paths, label_path, patient if patient is not None else case_id)


def write_dataset_csv(cases: Sequence[Case], path: str | os.PathLike) -> Path:
    """Write ``cases`` as a dataset CSV that :func:`discover_cases` reads back to the same cases.

    Columns ``image`` (or ``image_0``, ``image_1``, ... for several channels), ``label`` and
    ``patient``, with absolute paths, so cases from several folders (a dataset folder and a case
    written by :func:`write_training_case`) form one dataset. Written atomically.

    Parameters
    ----------
    cases : sequence of Case
        Labelled cases with the same number of channels.
    path : str or os.PathLike
        The CSV file to write (its folder is created if needed).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    InvalidInputError
        If ``cases`` is empty, a case has no label, or the cases have different numbers of
        channels.
    """
    import io

    from napari_medseg._atomic import write_text_atomic

    cases = list(cases)
    if not cases:
        raise InvalidInputError("cases: expected at least one case")
    n_channels = {len(c.images) for c in cases}
    if len(n_channels) != 1:
        raise InvalidInputError(f"cases have different numbers of channels {sorted(n_channels)}")
    unlabelled = [c.id for c in cases if c.label is None]
    if unlabelled:
        raise InvalidInputError(f"case {unlabelled[0]!r} has no label; a training dataset needs labelled cases")
    n = n_channels.pop()
    image_columns = ["image"] if n == 1 else [f"image_{i}" for i in range(n)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*image_columns, "label", "patient"])
    for case in cases:
        writer.writerow([*(str(Path(p).resolve()) for p in case.images), str(Path(case.label).resolve()), case.patient])
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(target, buffer.getvalue())
