"""``medseg evaluate``: per-label segmentation metrics of a prediction against a reference."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

#: key -> cell format of the printed table (titles with units come from metrics.METRIC_TITLES)
_FORMATS = {
    "dice": "{:.4f}",
    "iou": "{:.4f}",
    "precision": "{:.4f}",
    "recall": "{:.4f}",
    "specificity": "{:.4f}",
    "arvd": "{:.4f}",
    "hd95_mm": "{:.3f}",
    "hausdorff_mm": "{:.3f}",
    "msd_mm": "{:.3f}",
    "volume_pred_ml": "{:.4g}",
    "volume_ref_ml": "{:.4g}",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice, IoU, precision, recall, specificity, aRVD, HD95, Hausdorff, MSD and volumes per label",
        description="Compare a predicted label map with a reference label map on the same grid (same shape, "
        "spacing, origin and direction) and report, per label: Dice, IoU, precision, recall, specificity, "
        "aRVD, HD95, Hausdorff distance and symmetric mean surface distance (mm, spacing-aware) and both "
        "volumes (mL). Surfaces are the voxels a face-connected erosion removes, as MONAI's get_mask_edges. "
        "When exactly one of a label's masks is empty its distances (and aRVD, for an empty reference) are "
        "infinite: null in --json, 'inf' in the table and --csv. Two empty masks score Dice 1 and distance 0. "
        "Exit codes: 0 success, 2 bad input (missing file, non-integer labels, different grids).",
    )
    parser.add_argument("--pred", required=True, metavar="P", help="predicted label map (file or DICOM folder)")
    parser.add_argument("--ref", required=True, metavar="R", help="reference label map (file or DICOM folder)")
    parser.add_argument(
        "--labels",
        metavar="L1,L2",
        help="comma-separated labels to evaluate (default: every non-zero label present in either image)",
    )
    parser.add_argument("--json", action="store_true", help='print one JSON object {"labels": {"1": {...}, ...}}')
    parser.add_argument(
        "--csv", metavar="FILE", help="also write the metrics to FILE as CSV, one row per label (written atomically)"
    )
    parser.set_defaults(func=run_evaluate)


def _cell(value: float | None, fmt: str) -> str:
    return "inf" if value is None else fmt.format(value)


def metrics_csv(result: dict) -> str:
    """The CSV text of an evaluate() result (kept here for callers of the CLI module; see
    :func:`napari_medseg.metrics.metrics_csv`)."""
    from napari_medseg.metrics import metrics_csv as _metrics_csv

    return _metrics_csv(result)


def _print_table(result: dict, pred: str, ref: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    labels = result["labels"]
    if not labels:
        console.print(f"no non-zero label in {pred} or {ref}: nothing to evaluate")
        return
    has_inf = any(v is None for values in labels.values() for v in values.values())
    table = Table(title=f"{pred} vs {ref}", caption="inf: one of the label's two masks is empty" if has_inf else None)
    table.add_column("metric")
    for label in labels:
        table.add_column(f"label {label}", justify="right")
    from napari_medseg.metrics import METRIC_KEYS, METRIC_TITLES

    for key in METRIC_KEYS:
        table.add_row(METRIC_TITLES[key], *(_cell(values[key], _FORMATS[key]) for values in labels.values()))
    console.print(table)


def run_evaluate(args: argparse.Namespace) -> None:
    from napari_medseg.cli import parse_labels
    from napari_medseg.metrics import evaluate, write_metrics_csv
    from napari_medseg.volume import read_labels

    labels = parse_labels(args.labels)
    if args.csv:
        from napari_medseg.outputs import check_outputs

        check_outputs({}, {"--pred": args.pred, "--ref": args.ref}, files={"--csv": args.csv})
    pred = read_labels(args.pred)
    ref = read_labels(args.ref)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = evaluate(pred, ref, labels=labels, names=(str(args.pred), str(args.ref)))
    for warning in caught:
        print(f"medseg evaluate: warning: {warning.message}", file=sys.stderr)
    if args.csv:
        write_metrics_csv(result, args.csv)
    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        _print_table(result, str(args.pred), str(args.ref))
    if args.csv and not args.json:
        print(f"wrote {args.csv}")
