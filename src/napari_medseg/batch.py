"""Cohorts: segment a folder, a list or a glob of cases with one model instance.

The CLI (``medseg predict FOLDER OUT_FOLDER``), background jobs and the napari Segment widget all
call :func:`run_cohort` on the cases :func:`discover_cases` finds; faces only parse and display.

Case discovery
--------------
- a folder: every volume file directly inside it is one channel of a case. Files named with
  nnU-Net's channel suffix (``case_0000.nii.gz``, ``case_0001.nii.gz``) are grouped into case
  ``case`` in channel order; without the suffix each file is its own single-channel case.
  Sub-folders holding DICOM files give one case per DICOM series (:func:`dicom_series_cases`).
- a list: a ``.txt`` file with one path per line (``#`` comments; relative paths are relative
  to the list; grouped like a folder's files), or a ``.csv`` file whose header names the card's
  channels (one column each, in any order) and optionally ``case`` and ``output``.
- a glob pattern (quoted so the shell leaves it alone): its matches, grouped like a folder's files.

Outputs: ``OUT/<case><ext>`` where ``ext`` is the input's extension (``.nii.gz`` for DICOM input)
unless ``output_format`` is given, and the JSON sidecar ``OUT/<case><ext>.json``, written last,
so a case is complete exactly when its sidecar and every requested map exist (:func:`case_is_complete`).
Every write is atomic, so a killed run leaves no partial file and a rerun redoes only the
unfinished cases.

Partitioning follows nnU-Net: cases are sorted by name and case ``i`` goes to part ``i % num_parts``
(:func:`partition`), so ``num_parts`` processes with ``part_id`` 0 .. ``num_parts - 1`` cover every
case exactly once (a Slurm job array: ``--num-parts 8 --part-id $SLURM_ARRAY_TASK_ID``).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_medseg.errors import CancelledError, InvalidInputError, MedsegError
from napari_medseg.progress import CancelEvent, ProgressCallback, check_cancelled, report
from napari_medseg.volume import SUPPORTED_SUFFIXES, Volume, read_volume

if TYPE_CHECKING:
    from napari_medseg.registry import RegistryModel

__all__ = [
    "Case",
    "CaseResult",
    "CohortSummary",
    "PredictOptions",
    "discover_cases",
    "dicom_series_cases",
    "is_cohort_source",
    "partition",
    "case_outputs",
    "case_is_complete",
    "predict_to_files",
    "run_cohort",
    "uncertainty_volume",
]

#: nnU-Net's channel suffix: ``<case>_<4 digits>.<ext>``
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_SIDECAR = ".json"


@dataclass(frozen=True)
class Case:
    """One case of a cohort.

    Attributes
    ----------
    name : str
        The case name (output stem), unique within the cohort.
    inputs : tuple of Path
        One path per model channel, in the card's channel order (a DICOM folder for DICOM cases).
    output : Path
        The label map to write.
    series_uid : str or None
        For DICOM cases: which series of the folder.
    """

    name: str
    inputs: tuple[Path, ...]
    output: Path
    series_uid: str | None = None


@dataclass
class CaseResult:
    """What happened to one case: ``status`` is ``"done"``, ``"skipped"`` or ``"failed"``."""

    case: Case
    status: str
    reason: str = ""
    bad_input: bool = False
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class CohortSummary:
    """The per-case results of :func:`run_cohort`, in run order."""

    results: list[CaseResult] = field(default_factory=list)

    def _of(self, status: str) -> list[CaseResult]:
        return [r for r in self.results if r.status == status]

    @property
    def done(self) -> list[CaseResult]:
        return self._of("done")

    @property
    def skipped(self) -> list[CaseResult]:
        return self._of("skipped")

    @property
    def failed(self) -> list[CaseResult]:
        return self._of("failed")

    def exit_code(self) -> int:
        """0 all fine, 2 a case failed for bad input, 1 only internal errors failed cases."""
        if any(r.bad_input for r in self.failed):
            return 2
        return 1 if self.failed else 0

    def describe(self) -> str:
        """Several lines: counts, then one line per failed case with its reason."""
        lines = [f"{len(self.done)} done, {len(self.skipped)} skipped (outputs exist), {len(self.failed)} failed"]
        lines += [f"  failed: {r.case.name}: {r.reason}" for r in self.failed]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "done": [r.case.name for r in self.done],
            "skipped": [r.case.name for r in self.skipped],
            "failed": {r.case.name: r.reason for r in self.failed},
        }


@dataclass(frozen=True)
class PredictOptions:
    """The parameters of :func:`napari_medseg.inference.predict` a cohort shares, plus ``strict``."""

    device: str = "auto"
    overlap: float | None = None
    batch_size: int | None = None
    mc_samples: int = 0
    dropout_rate: float | None = None
    tta_flips: bool = False
    seed: int = 0
    strict: bool = False


# ------------------------------------------------------------------------------------ discovery
def _volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return path.name[len(path.name) - len(suffix):]
    return None


def _stem(path: Path) -> str:
    suffix = _volume_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _holds_dicom(folder: Path) -> bool:
    """A folder with at least one DICOM file among its first entries (no series scan)."""
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())[:20]
    except OSError:
        return False
    for p in entries:
        if p.name.lower().endswith(".dcm"):
            return True
        try:
            with open(p, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def is_cohort_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a cohort (a folder of cases, a ``.txt``/``.csv`` list or a glob)
    rather than one volume (a file, or a folder that is itself one DICOM series)."""
    p = Path(path)
    if p.is_dir():
        return not _holds_dicom(p)
    if p.is_file():
        return p.suffix.lower() in (".txt", ".csv")
    return bool(_GLOB_CHARS.search(str(path)))


def dicom_series_cases(folder: Path) -> list[tuple[str, Path, str]]:
    """One ``(name, folder, series_uid)`` per DICOM image series in ``folder`` and its subfolders.

    The name is the folder's name, followed by ``_<n>`` (1-based, in SeriesInstanceUID order)
    when the folder holds several series. Series are found by :func:`napari_medseg.dicom.list_series`
    (headers only, bounded), the one place that enumerates DICOM series.
    """
    from napari_medseg.dicom import list_series

    uids = sorted(s.uid for s in list_series(folder))
    if len(uids) == 1:
        return [(folder.name, folder, uids[0])]
    return [(f"{folder.name}_{i}", folder, uid) for i, uid in enumerate(uids, start=1)]


def _group_files(files: Iterable[Path], n_channels: int, *, source: str) -> list[tuple[str, tuple[Path, ...]]]:
    """Group volume files into cases by nnU-Net's ``_0000`` suffix (or one file per case)."""
    grouped: dict[str, dict[int, Path]] = {}
    plain: list[Path] = []
    for f in files:
        m = _CHANNEL_RE.match(_stem(f))
        if m:
            channels = grouped.setdefault(m["case"], {})
            index = int(m["channel"])
            if index in channels:
                raise InvalidInputError(f"{source}: case {m['case']!r} has channel {index:04d} twice ({channels[index]}, {f})")
            channels[index] = f
        else:
            plain.append(f)
    if plain and n_channels > 1:
        raise InvalidInputError(
            f"{source}: {plain[0].name} has no channel suffix, but the model takes {n_channels} channels; name "
            f"them <case>_0000{_volume_suffix(plain[0])} ... <case>_{n_channels - 1:04d}{_volume_suffix(plain[0])} "
            "(nnU-Net's convention) or list them in a CSV with one column per channel"
        )
    cases = [(_stem(f), (f,)) for f in plain]
    for name, channels in grouped.items():
        expected = list(range(n_channels))
        if sorted(channels) != expected:
            found = ", ".join(f"{c:04d}" for c in sorted(channels))
            raise InvalidInputError(
                f"{source}: case {name!r} has channel files {found}; the model takes {n_channels} channel(s): "
                + ", ".join(f"{c:04d}" for c in expected)
            )
        cases.append((name, tuple(channels[c] for c in expected)))
    return cases


def _read_list(path: Path, channel_names: Sequence[str]) -> tuple[list[tuple[str, tuple[Path, ...], str | None]], bool]:
    """Cases of a ``.txt`` or ``.csv`` list: ``(name, inputs, output_name)``; and whether grouped."""
    base = path.parent

    def resolve(text: str) -> Path:
        p = Path(text.strip()).expanduser()
        return p if p.is_absolute() else base / p

    if path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        return [("", (resolve(ln),), None) for ln in lines if ln and not ln.startswith("#")], False
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    header = list(rows[0].keys()) if rows else []
    lowered = {h.strip().lower(): h for h in header if h is not None}
    missing = [c for c in channel_names if c.lower() not in lowered]
    if missing and len(channel_names) == 1 and "image" in lowered:
        lowered[channel_names[0].lower()] = lowered["image"]  # a single-channel list may say "image"
        missing = []
    if missing:
        raise InvalidInputError(
            f"{path}: the header {header} lacks column(s) {missing}; expected one column per model channel "
            f"({', '.join(channel_names)}) and optionally 'case' and 'output'"
        )
    cases = []
    for i, row in enumerate(rows, start=2):
        inputs = []
        for c in channel_names:
            value = (row.get(lowered[c.lower()]) or "").strip()
            if not value:
                raise InvalidInputError(f"{path}, line {i}: column {c!r} is empty")
            inputs.append(resolve(value))
        name = (row.get(lowered.get("case", ""), "") or "").strip() if "case" in lowered else ""
        output = (row.get(lowered.get("output", ""), "") or "").strip() if "output" in lowered else ""
        cases.append((name, tuple(inputs), output or None))
    return cases, True


def _output_suffix(input_path: Path, output_format: str | None) -> str:
    if output_format:
        fmt = output_format if output_format.startswith(".") else "." + output_format
        return fmt
    suffix = _volume_suffix(input_path)
    if suffix is None or suffix.lower() == ".dcm" or input_path.is_dir():
        return ".nii.gz"
    return suffix


def _safe_name(name: str, *, source: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise InvalidInputError(f"{source}: case name {name!r} is not a plain file name")
    return name


def discover_cases(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    channel_names: Sequence[str] = ("image",),
    output_format: str | None = None,
) -> list[Case]:
    """The cases of a folder, a ``.txt``/``.csv`` list or a glob, sorted by name.

    Parameters
    ----------
    source : str or path-like
        A folder, a list file or a glob pattern (see the module docstring).
    output_dir : str or path-like
        Where the outputs go (``<output_dir>/<case><ext>``).
    channel_names : sequence of str, default ("image",)
        The model's channel names in card order (their count decides the grouping; CSV lists
        match columns by these names, case-insensitively).
    output_format : str, optional
        The output extension (e.g. ``"nii.gz"``, ``".nrrd"``); default: each input's own.

    Returns
    -------
    list of Case
        Sorted by name.

    Raises
    ------
    InvalidInputError
        No cases found, a missing listed file, inconsistent channel files, two cases with the same
        output, or an output that would replace an input.
    """
    src = str(source)
    path = Path(src)
    out_dir = Path(output_dir)
    n_channels = len(channel_names)
    if output_format is not None:
        from napari_medseg.volume import volume_format

        volume_format(Path("x" + _output_suffix(Path("x"), output_format)))  # refuses unknown formats
    entries: list[tuple[str, tuple[Path, ...], str | None, str | None]] = []  # name, inputs, output, uid
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _volume_suffix(p))
        files = [p for p in files if not p.name.lower().endswith(".dcm")]
        entries += [(n, i, None, None) for n, i in _group_files(files, n_channels, source=src)]
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if _holds_dicom(sub):
                if n_channels > 1:
                    raise InvalidInputError(
                        f"{sub}: a DICOM series is one channel, but the model takes {n_channels}; list the "
                        "channels of each case in a CSV"
                    )
                entries += [(n, (f,), None, uid) for n, f, uid in dicom_series_cases(sub)]
    elif path.is_file() and path.suffix.lower() in (".txt", ".csv"):
        listed, explicit = _read_list(path, channel_names)
        for _, inputs, _ in listed:
            for p in inputs:
                if not p.exists():
                    raise InvalidInputError(f"{path}: listed file {p} does not exist")
        if explicit:
            entries += [(name or _stem(inputs[0]), inputs, out, None) for name, inputs, out in listed]
        else:
            groups = _group_files([inputs[0] for _, inputs, _ in listed], n_channels, source=src)
            entries += [(n, i, None, None) for n, i in groups]
    elif _GLOB_CHARS.search(src):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(src)) if Path(m).is_file() and _volume_suffix(Path(m)))
        entries += [(n, i, None, None) for n, i in _group_files(matches, n_channels, source=src)]
    else:
        raise InvalidInputError(f"{src}: not a folder, a .txt/.csv list of cases or a glob pattern")
    if not entries:
        raise InvalidInputError(
            f"{src}: no cases found (expected volume files such as {', '.join(SUPPORTED_SUFFIXES[:4])} or DICOM "
            "sub-folders)"
        )
    cases, seen = [], {}
    inputs_resolved = {p.resolve() for _, inputs, _, _ in entries for p in inputs}
    for name, inputs, output, uid in entries:
        name = _safe_name(name, source=src)
        if output:
            target = Path(output)
            target = target if target.is_absolute() else out_dir / target
        else:
            target = out_dir / (name + _output_suffix(inputs[0], output_format))
        key = str(target.resolve())
        if key in seen:
            raise InvalidInputError(f"{src}: cases {seen[key]!r} and {name!r} would both write {target}; rename one")
        seen[key] = name
        if target.resolve() in inputs_resolved or Path(str(target) + _SIDECAR).resolve() in inputs_resolved:
            raise InvalidInputError(
                f"{target}: the output of case {name!r} would replace an input; choose another output folder or "
                "--output-format"
            )
        cases.append(Case(name, tuple(inputs), target, uid))
    return sorted(cases, key=lambda c: c.name)


def partition(cases: Sequence[Case], num_parts: int = 1, part_id: int = 0) -> list[Case]:
    """The cases of part ``part_id`` of ``num_parts`` (nnU-Net: sorted, case ``i`` -> part ``i % num_parts``).

    Raises
    ------
    InvalidInputError
        If ``num_parts < 1`` or ``part_id`` is not in ``[0, num_parts)``.
    """
    if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
        raise InvalidInputError(f"num_parts={num_parts!r}: expected an integer >= 1")
    if isinstance(part_id, bool) or not isinstance(part_id, int) or not 0 <= part_id < num_parts:
        raise InvalidInputError(f"part_id={part_id!r}: expected an integer in [0, {num_parts - 1}] (num_parts={num_parts})")
    ordered = sorted(cases, key=lambda c: c.name)
    return ordered[part_id::num_parts]


# ------------------------------------------------------------------------------------- outputs
def case_outputs(case: Case, *, probabilities_dir: Path | None = None, uncertainty_dir: Path | None = None) -> dict[str, Path]:
    """The files a case writes, by role: ``labels``, ``sidecar`` and the requested maps."""
    out = {"labels": case.output, "sidecar": Path(str(case.output) + _SIDECAR)}
    ext = _volume_suffix(case.output) or ".nii.gz"
    if probabilities_dir is not None:
        out["probabilities"] = Path(probabilities_dir) / (case.name + ext)
    if uncertainty_dir is not None:
        out["uncertainty"] = Path(uncertainty_dir) / (case.name + ext)
    return out


def case_is_complete(outputs: dict[str, Path]) -> bool:
    """Whether every output exists and the sidecar (written last) is readable JSON."""
    if not all(p.is_file() for p in outputs.values()):
        return False
    try:
        json.loads(outputs["sidecar"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def uncertainty_volume(prediction, label_names: list[str]) -> tuple[Volume, list[str]]:
    """Stack the uncertainty maps into one multi-component Volume and name its components."""
    import numpy as np

    parts, names = [], []
    for key in ("entropy", "mutual_information"):
        if key in prediction.uncertainty:
            parts.append(prediction.uncertainty[key].array[..., None])
            names.append(key)
    if "variance" in prediction.uncertainty:
        parts.append(prediction.uncertainty["variance"].array)
        names.extend(f"variance_{n}" for n in label_names)
    array = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    meta = dict(prediction.labels.metadata)
    meta["medseg_components"] = ",".join(names)
    return Volume(array, prediction.labels.geometry, meta), names


def predict_to_files(
    volumes: Sequence[Volume],
    models: Sequence[RegistryModel],
    outputs: dict[str, Path],
    *,
    options: PredictOptions = PredictOptions(),
    chain=None,
    input_names: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
    writer: Callable[[Callable[[], None]], Any] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Predict one case and write its files (labels, maps, then the sidecar last).

    ``writer``, if given, receives a no-argument function that does the writing (e.g. a thread
    pool's ``submit``), so the network can start the next case meanwhile.

    Returns
    -------
    (dict, list of str)
        The files by role (absolute paths), and the warnings the prediction gave.
    """
    from napari_medseg.compact import compact_map
    from napari_medseg.guards import InputMismatchError, input_fit_messages
    from napari_medseg.inference import predict, provenance_metadata

    card = models[0].card
    volume0 = volumes[0]
    if options.strict:
        misfit = input_fit_messages(volume0, card)
        if misfit:
            raise InputMismatchError(f"{input_names[0] if input_names else 'input'}: " + "; ".join(misfit) + " (--strict)")
    prediction = predict(
        list(volumes) if len(volumes) > 1 else volumes[0], list(models), device=options.device,
        overlap=options.overlap, batch_size=options.batch_size, mc_samples=options.mc_samples,
        dropout_rate=options.dropout_rate, tta_flips=options.tta_flips, seed=options.seed,
        progress=progress, cancel=cancel, warn=False,  # cases may run in worker threads: warnings as data
    )
    messages = prediction.warnings
    labels = prediction.labels
    if chain is not None and len(chain):
        from napari_medseg.postprocess import postprocess

        labels = postprocess(labels, chain, cancel=cancel)
    check_cancelled(cancel, "prediction")
    label_values = card.label_values
    label_names = [card.labels[v].name for v in label_values]
    provenance = dict(prediction.provenance)
    provenance["inputs"] = [str(p) for p in input_names]
    provenance["geometry"] = volume0.geometry.to_dict()
    provenance["shape"] = list(volume0.shape)
    provenance["postprocess"] = None if chain is None else (chain.to_json() if hasattr(chain, "to_json") else chain.describe())
    provenance["outputs"] = {"labels": str(outputs["labels"])}
    names = {v: label_names[i] for i, v in enumerate(label_values)}
    colors = {v: tuple(card.labels[v].color) for v in label_values}
    to_write: list[tuple[Volume, Path, dict]] = [(labels, outputs["labels"], {"label_names": names, "label_colors": colors})]
    if "probabilities" in outputs:
        prob = prediction.probabilities
        prob = compact_map(prob.derive(prob.array, metadata={"medseg_components": ",".join(label_names)}), kind="probability")
        to_write.append((prob, outputs["probabilities"], {}))
        provenance["outputs"]["probabilities"] = {
            "file": str(outputs["probabilities"]), "components": label_names, "precision": prob.metadata["medseg_precision"],
        }
    if "uncertainty" in outputs:
        unc, components = uncertainty_volume(prediction, label_names)
        unc = compact_map(unc, kind="uncertainty")
        to_write.append((unc, outputs["uncertainty"], {}))
        provenance["outputs"]["uncertainty"] = {
            "file": str(outputs["uncertainty"]), "components": components, "precision": unc.metadata["medseg_precision"],
        }
    header = provenance_metadata(provenance)
    sidecar = outputs["sidecar"]
    text = json.dumps(provenance, indent=2, sort_keys=True) + "\n"

    def write() -> None:
        from napari_medseg.outputs import write_outputs

        items = []
        for volume, path, kwargs in to_write:
            meta = {**volume.metadata, **header}
            extra = kwargs if str(path).lower().endswith(".seg.nrrd") else {}
            items.append((volume.derive(volume.array, metadata=meta), path, extra))
        # the case's files change together; the sidecar is renamed last, so its presence marks the
        # case complete (the same journaled group write as single-case predict)
        write_outputs(items, [(sidecar, text)])

    if writer is None:
        write()
    else:
        writer(write)
    return {role: str(Path(p).resolve()) for role, p in outputs.items()}, messages


# ------------------------------------------------------------------------------------ the loop
def _read_case(case: Case) -> list[Volume]:
    if case.series_uid is not None:
        return [read_volume(case.inputs[0], series_uid=case.series_uid)]
    return [read_volume(p) for p in case.inputs]


def run_cohort(
    cases: Sequence[Case],
    models: Sequence[RegistryModel],
    *,
    options: PredictOptions = PredictOptions(),
    probabilities_dir: str | os.PathLike | None = None,
    uncertainty_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    chain=None,
    workers: int = 1,
    progress: ProgressCallback | None = None,
    case_progress: ProgressCallback | None = None,
    on_case: Callable[[CaseResult, int, int], None] | None = None,
    cancel: CancelEvent | None = None,
) -> CohortSummary:
    """Segment every case with the same loaded models; a failing case does not stop the others.

    Parameters
    ----------
    cases : sequence of Case
        From :func:`discover_cases` (after :func:`partition`).
    models : sequence of RegistryModel
        Loaded once (an ensemble when several).
    options : PredictOptions
        Passed to :func:`~napari_medseg.inference.predict`; ``strict`` refuses a case whose input
        does not fit the card's ``input_fingerprint`` (:mod:`napari_medseg.guards`).
    probabilities_dir, uncertainty_dir : path, optional
        Folders for the per-case probability / uncertainty maps (``<dir>/<case><ext>``).
    overwrite : bool, default False
        Redo cases whose outputs are complete (default: skip them).
    chain : PostprocessChain, optional
        Post-processing applied to each label map.
    workers : int, default 1
        1: read, predict and write one after the other. N > 1: N - 1 threads read the next
        cases and write finished ones while the network runs (one model instance).
    progress : callable(done, total), optional
        Cases finished (done, skipped or failed) out of all.
    case_progress : callable(done, total), optional
        Patches of the current case.
    on_case : callable(result, index, total), optional
        Called once per case when it is finished (written), skipped or failed.
    cancel : object with ``is_set()``, optional
        Checked between cases and patches; on cancel the running case writes nothing and
        :class:`~napari_medseg.errors.CancelledError` is raised (finished cases stay).

    Returns
    -------
    CohortSummary

    Raises
    ------
    InvalidInputError
        If ``workers < 1`` or an output folder cannot be created.
    CancelledError
        If ``cancel`` is set.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"workers={workers!r}: expected an integer >= 1")
    prob_dir = Path(probabilities_dir) if probabilities_dir is not None else None
    unc_dir = Path(uncertainty_dir) if uncertainty_dir is not None else None
    for folder in {c.output.parent for c in cases} | {d for d in (prob_dir, unc_dir) if d is not None}:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"{folder}: cannot create the output folder: {exc}") from exc
    card = models[0].card
    summary = CohortSummary()
    total = len(cases)
    todo: list[tuple[Case, dict[str, Path]]] = []
    for case in cases:
        outs = case_outputs(case, probabilities_dir=prob_dir, uncertainty_dir=unc_dir)
        if not overwrite and case_is_complete(outs):
            result = CaseResult(case, "skipped", "outputs exist", outputs={k: str(v) for k, v in outs.items()})
            summary.results.append(result)
            if on_case is not None:
                on_case(result, len(summary.results), total)
        else:
            todo.append((case, outs))
    report(progress, len(summary.results), total)

    def finish(result: CaseResult) -> None:
        summary.results.append(result)
        if on_case is not None:
            on_case(result, len(summary.results), total)
        report(progress, len(summary.results), total)

    def failed(case: Case, exc: BaseException, started: float) -> CaseResult:
        bad = isinstance(exc, MedsegError)
        reason = str(exc) if bad else f"internal error: {type(exc).__name__}: {exc}"
        return CaseResult(case, "failed", reason, bad_input=bad, seconds=time.perf_counter() - started)

    pool = ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="medseg-io") if workers > 1 else None
    pending_writes: list[tuple[Future, CaseResult]] = []

    def drain(block: bool) -> None:
        for item in list(pending_writes):
            future, result = item
            if not block and not future.done():
                continue
            pending_writes.remove(item)
            exc = future.exception()
            if exc is not None:
                failure = failed(result.case, exc, time.perf_counter())
                failure.seconds = result.seconds
                finish(failure)
            else:
                finish(result)

    reads: dict[int, Future] = {}

    def prefetch(i: int) -> None:
        if pool is not None and i < len(todo) and i not in reads:
            reads[i] = pool.submit(_read_case, todo[i][0])

    try:
        for i in range(workers - 1):
            prefetch(i)
        for i, (case, outs) in enumerate(todo):
            check_cancelled(cancel, "cohort prediction")
            started = time.perf_counter()
            try:
                volumes = reads.pop(i).result() if i in reads else _read_case(case)
            except Exception as exc:  # noqa: BLE001 - one bad case must not stop the cohort
                finish(failed(case, exc, started))
                prefetch(i + workers - 1)
                continue
            prefetch(i + workers - 1)
            holder: dict[str, Future] = {}
            try:
                written, messages = predict_to_files(
                    volumes, models, outs, options=options, chain=chain,
                    input_names=[str(p) for p in case.inputs], progress=case_progress, cancel=cancel,
                    writer=None if pool is None else (lambda fn, _h=holder: _h.setdefault("f", pool.submit(fn))),
                )
            except CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad case must not stop the cohort
                finish(failed(case, exc, started))
                continue
            finally:
                del volumes
            result = CaseResult(case, "done", seconds=time.perf_counter() - started, warnings=messages, outputs=written)
            if "f" in holder:
                pending_writes.append((holder["f"], result))
                drain(block=False)
                while len(pending_writes) > workers - 1:  # bound the predictions held in memory
                    pending_writes[0][0].exception()
                    drain(block=False)
            else:
                finish(result)
        drain(block=True)
    finally:
        if pool is not None:
            # on cancel or an error: finish the running writes (each is atomic), start nothing new
            for future in reads.values():
                future.cancel()
            pool.shutdown(wait=True)
            drain(block=True)
    return summary
