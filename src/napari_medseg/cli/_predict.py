"""``medseg predict``: segment a volume with registry models, on the input's own grid."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from napari_medseg.cli._inputs import add_input_options, read_input

_DESCRIPTION = """\
Segment IN with one model (or an ensemble: repeat --model) and write the label map OUT with exactly
IN's geometry (shape, spacing, origin, direction). The input is reoriented, resampled and
normalised as the model card says, run through a Gaussian-blended sliding window, and brought back
to IN's grid; a warning says when IN's spacing or orientation differs from the card's.

Uncertainty: --mc-samples N draws N Monte-Carlo dropout samples (at --dropout P, default the
card's rate), --tta adds every axis flip, several --model average in probability space. The
--uncertainty file holds the components entropy, mutual_information and one variance per label
(entropy only for a single deterministic pass), in nats; their order is in its header key
medseg_components and in the JSON sidecar.

Provenance (models, sha256, parameters, version) is written into the header of NRRD/MHA outputs
and always into the JSON sidecar OUT.json. Nothing is written before the whole prediction has
succeeded, and each file is written atomically, so a failure or Ctrl-C leaves no partial file.

Maps are stored compactly: 8-bit integers with the scale in the header (NIfTI scl_slope, read by
every NIfTI reader; NRRD/MHA field medseg_scale, applied by medseg's readers) and compressed; the
rounding error is stated in the sidecar (outputs.*.precision) and header (medseg_precision).

Input guards: a warning says when IN does not look like the model's training inputs (a CT into an
MR model, mostly background, a much smaller or larger field of view); --strict refuses it (exit 2).

Exit codes: 0 success, 1 internal error, 2 bad input, 130 cancelled.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from napari_medseg.cli import DEVICE_METAVAR, device_argument
    from napari_medseg.cli._batch import COHORT_HELP

    parser = subparsers.add_parser(
        "predict",
        help="segment a volume with registry models (labels, probabilities, uncertainty)",
        description=_DESCRIPTION + "\n" + COHORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN", nargs="+", help="input volume file or DICOM folder; several for multi-channel models, in the card's channel order; or one folder / .txt / .csv list / quoted glob of cases (see Cohorts)")
    parser.add_argument("output", metavar="OUT", help="output label map; the extension picks the format (a folder for a cohort; .dcm from a DICOM folder: a DICOM SEG)")
    add_input_options(parser)
    parser.add_argument("--model", action="append", required=True, metavar="NAME", help="registry name or model folder; repeat for an ensemble")
    parser.add_argument("--device", default="auto", type=device_argument, metavar=DEVICE_METAVAR, help="where the network runs (default auto: CUDA, then MPS, then the CPU; or cuda:N)")
    parser.add_argument("--overlap", type=float, metavar="F", help="patch overlap in [0, 1) (default: the card's, usually 0.25)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="patches per network call (default 1 for 3D, 16 slices for 2D)")
    parser.add_argument("--mc-samples", type=int, default=0, metavar="N", help="Monte-Carlo dropout samples (default 0: deterministic)")
    parser.add_argument("--dropout", type=float, metavar="P", help="dropout rate in [0, 1) for Monte-Carlo sampling (default: the card's)")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: average over every axis flip")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the dropout masks (default 0)")
    parser.add_argument("--probabilities", metavar="FILE", help="also write the mean probabilities (one component per label)")
    parser.add_argument("--uncertainty", metavar="FILE", help="also write the uncertainty maps (components: see above)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    post = parser.add_argument_group("post-processing of the label map (after prediction, in mm)")
    post.add_argument("--labels", metavar="L1,L2", help="apply the post-processing to these labels only (default all)")
    post.add_argument("--opening-mm", type=float, metavar="R", help="opening radius in mm")
    post.add_argument("--closing-mm", type=float, metavar="R", help="closing radius in mm")
    fill = post.add_mutually_exclusive_group()
    fill.add_argument("--fill-holes", action="store_true", help="fill holes enclosed in 3D")
    fill.add_argument("--fill-holes-2d", action="store_true", help="fill holes slice by slice along z")
    post.add_argument("--min-size-mm3", type=float, metavar="V", help="remove components smaller than V mm^3")
    post.add_argument("--keep-largest", type=int, nargs="?", const=1, metavar="N", help="keep the N largest components per label (default 1)")
    from napari_medseg.cli._batch import add_arguments as add_cohort_arguments
    from napari_medseg.jobs import add_job_dir_argument

    add_cohort_arguments(parser)
    add_job_dir_argument(parser)
    parser.set_defaults(func=run_predict)


def _postprocess_requested(args: argparse.Namespace) -> bool:
    return any(
        v not in (None, False)
        for v in (args.opening_mm, args.closing_mm, args.fill_holes, args.fill_holes_2d, args.min_size_mm3, args.keep_largest)
    )


def _chain_from_args(args: argparse.Namespace):
    """The post-processing chain the options ask for, or None (shared by single-case and cohort predict)."""
    from napari_medseg.cli import UsageError, parse_labels

    if _postprocess_requested(args):
        from napari_medseg.postprocess import chain_from_options

        return chain_from_options(
            opening_mm=args.opening_mm, closing_mm=args.closing_mm, fill_holes=args.fill_holes,
            fill_holes_2d=args.fill_holes_2d, min_size_mm3=args.min_size_mm3,
            keep_largest=args.keep_largest if args.keep_largest is not None else False,
            labels=parse_labels(args.labels),
        )
    if args.labels is not None:
        raise UsageError("--labels selects labels for post-processing; give a post-processing flag too")
    return None


def run_predict(args: argparse.Namespace, *, cancel=None) -> None:
    """Handler of ``medseg predict`` (``cancel``: an event, for callers that run it in-process).

    Run as a background job (the hidden ``--job-dir`` that :func:`napari_medseg.jobs.start_job`
    passes), it reports ``progress`` events from the prediction's progress callback, stops at the
    job's cancel flag, and reports the written files in ``done``'s ``outputs`` (``labels``,
    ``sidecar`` and, when asked for, ``probabilities`` and ``uncertainty``, as absolute paths).
    """
    from napari_medseg.cli._batch import is_cohort, run_cohort_command

    if is_cohort(args):  # a folder, list or glob of cases: napari_medseg.batch
        return run_cohort_command(args, cancel=cancel) or None
    from napari_medseg.jobs import reporter_from_args, run_reported

    reporter = reporter_from_args(args)
    if reporter is None:
        _predict(args, cancel=cancel, progress=None, show_progress=not args.no_progress)
        return
    reporter.what = "patches"
    with reporter, run_reported(reporter) as job:
        job.outputs.update(_predict(args, cancel=job.cancel, progress=job.progress, show_progress=False))


def _predict(args: argparse.Namespace, *, cancel, progress, show_progress: bool) -> dict:
    """The work of ``medseg predict``; returns the written files (absolute paths) by role."""
    # the outputs first (names, folders, no output on an input or on another output), before torch
    # is imported or anything is read: a typo fails at once and nothing the user has is touched
    output, sidecar = _check_predict_outputs(args)
    _check_numbers(args)  # --overlap, --dropout, --batch-size, --mc-samples: torch-free checks
    from napari_medseg.cli._dicom_seg import check_predict_seg, predict_seg_reference, predicted_seg_file

    seg_reference = predict_seg_reference(args.input, output)  # OUT.dcm from a DICOM folder: a DICOM SEG
    chain = _chain_from_args(args)

    # model names (the cards, no weights) and the channel count before torch is imported
    from napari_medseg.registry import load_model

    models = [load_model(name) for name in args.model]
    _check_channel_count(models[0], args.input)

    from napari_medseg.inference import resolve_device

    resolve_device(args.device)
    from napari_medseg.inference import CardMismatchWarning, predict

    volumes = [read_input(args, path) for path in args.input]
    _check_output_shape(output, volumes[0])
    seg_source = check_predict_seg(
        seg_reference, volumes[0], series_uid=getattr(args, "series_uid", None), series_number=getattr(args, "series_number", None)
    )
    card = models[0].card
    if getattr(args, "strict", False):
        from napari_medseg.guards import InputMismatchError, input_fit_messages

        misfit = input_fit_messages(volumes[0], card)
        if misfit:
            raise InputMismatchError(f"{args.input[0]}: " + "; ".join(misfit) + " (--strict)")
    label_values = card.label_values
    label_names = [card.labels[v].name for v in label_values]

    with warnings.catch_warnings(record=True) as caught, _progress_bar(show_progress) as bar:
        warnings.simplefilter("always", CardMismatchWarning)
        progress = bar or progress
        prediction = predict(
            volumes if len(volumes) > 1 else volumes[0], models, device=args.device, overlap=args.overlap,
            batch_size=args.batch_size, mc_samples=args.mc_samples, dropout_rate=args.dropout, tta_flips=args.tta,
            seed=args.seed, progress=progress, cancel=cancel,
        )
    for w in caught:
        if issubclass(w.category, CardMismatchWarning):
            print(f"medseg predict: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)

    labels = prediction.labels
    if chain is not None and len(chain):
        from napari_medseg.postprocess import postprocess

        labels = postprocess(labels, chain, cancel=cancel)

    provenance = dict(prediction.provenance)
    provenance["inputs"] = [str(p) for p in args.input]
    provenance["geometry"] = volumes[0].geometry.to_dict()
    provenance["shape"] = list(volumes[0].shape)
    provenance["postprocess"] = chain.to_json() if chain is not None and hasattr(chain, "to_json") else (
        None if chain is None else chain.describe()
    )
    provenance["outputs"] = {"labels": str(output)}

    from napari_medseg.compact import compact_map

    names = {v: label_names[i] for i, v in enumerate(label_values)}
    colors = {v: tuple(card.labels[v].color) for v in label_values}
    to_write = [(labels, output, {"label_names": names, "label_colors": colors})]
    if args.probabilities:
        prob = prediction.probabilities
        prob = compact_map(prob.derive(prob.array, metadata={"medseg_components": ",".join(label_names)}), kind="probability")
        to_write.append((prob, Path(args.probabilities), {}))
        provenance["outputs"]["probabilities"] = {
            "file": args.probabilities, "components": label_names, "precision": prob.metadata["medseg_precision"],
        }
    if args.uncertainty:
        from napari_medseg.batch import uncertainty_volume

        unc, components = uncertainty_volume(prediction, label_names)
        unc = compact_map(unc, kind="uncertainty")
        to_write.append((unc, Path(args.uncertainty), {}))
        provenance["outputs"]["uncertainty"] = {
            "file": args.uncertainty, "components": components, "precision": unc.metadata["medseg_precision"],
        }

    from napari_medseg.inference import provenance_metadata
    from napari_medseg.outputs import write_outputs

    header = provenance_metadata(provenance)
    if cancel is not None and cancel.is_set():
        from napari_medseg.errors import CancelledError

        raise CancelledError("prediction was cancelled before its outputs were written")
    items, files = [], []
    for volume, path, kwargs in to_write:
        meta = {**volume.metadata, **header}
        if seg_source is not None and path == output:
            files.append(predicted_seg_file(volume, seg_source, output, card, provenance))
            continue
        extra = {} if not str(path).lower().endswith(".seg.nrrd") else kwargs
        items.append((volume.derive(volume.array, metadata=meta), path, extra))
    # labels, probabilities, uncertainty and the sidecar change together or not at all
    write_outputs(items, [(sidecar, json.dumps(provenance, indent=2, sort_keys=True) + "\n")], files=files)
    counts = _label_counts(labels.array, label_values, names)
    print(f"wrote {output} ({' x '.join(map(str, labels.shape))}, {labels.array.dtype}; {counts})")
    written = {"labels": output, "sidecar": sidecar}
    if args.probabilities:
        written["probabilities"] = Path(args.probabilities)
    if args.uncertainty:
        written["uncertainty"] = Path(args.uncertainty)
    return {role: str(path.resolve()) for role, path in written.items()}


def _check_numbers(args: argparse.Namespace) -> None:
    """--mc-samples, --dropout, --overlap, --batch-size, with the torch-free checks (a typo fails
    before torch is imported or a model is read)."""
    from napari_medseg._validate import check_dropout_rate, check_mc_samples, check_overlap, check_positive_int

    check_mc_samples(args.mc_samples, name="--mc-samples")
    if args.dropout is not None:
        check_dropout_rate(args.dropout, name="--dropout")
    if args.overlap is not None:
        check_overlap(args.overlap, name="--overlap")
    if args.batch_size is not None:
        check_positive_int(args.batch_size, "--batch-size")


def _check_predict_outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """Check OUT, its sidecar OUT.json, --probabilities and --uncertainty before any work."""
    from napari_medseg.outputs import check_prediction_outputs

    output = Path(args.output)
    sidecar = check_prediction_outputs(output, args.input, probabilities=args.probabilities, uncertainty=args.uncertainty)
    return output, sidecar


def _check_channel_count(model, inputs) -> None:
    """One input per channel of the (first) model's card, checked before torch is imported (a
    single IN may hold every channel as components: that is checked once it is read)."""
    from napari_medseg.cli import UsageError

    expected = int(model.card.in_channels)
    if len(inputs) > 1 and len(inputs) != expected:
        names = ", ".join(c.name for c in model.card.channels)
        raise UsageError(
            f"model {model.card.name!r} expects {expected} input channel(s) [{names}], "
            f"got {len(inputs)} IN file(s); give one per channel, in that order"
        )


def _check_output_shape(output: Path, volume) -> None:
    """A 2D image format holds one slice (TIFF holds a stack): refuse before predicting."""
    from napari_medseg.cli import UsageError
    from napari_medseg.volume import VolumeFormat, volume_format

    if volume_format(output) == VolumeFormat.IMAGE_2D and volume.shape[0] != 1 and output.suffix.lower() not in (".tif", ".tiff"):
        raise UsageError(f"OUT={output}: a {volume.shape[0]}-slice volume cannot be written as a 2D image; use .nii.gz, .nrrd or .mha")


def _label_counts(array, values, names) -> str:
    from napari_medseg.label_measures import label_voxel_counts  # the one count per label

    counts = label_voxel_counts(array)
    return ", ".join(f"{names[v]}: {counts.get(v, 0)} voxels" for v in values if v != 0) or "no labels"


class _progress_bar:  # noqa: N801 - a context manager used like a function
    """A rich progress bar on stderr, yielding a ``progress(done, total)`` callback (or None)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._progress.start()
        task = self._progress.add_task("predict", total=None)

        def update(done: int, total: int) -> None:
            self._progress.update(task, completed=done, total=total)

        return update

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
