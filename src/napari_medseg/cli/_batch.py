"""``medseg predict FOLDER OUT_FOLDER``: the cohort mode of ``predict`` (parsing and printing only;
the work is :func:`napari_medseg.batch.run_cohort`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COHORT_HELP = """\
Cohorts: IN may be a folder of cases, a .txt/.csv list of cases or a quoted glob ('scans/*.nii.gz');
OUT is then a folder and each case is written as OUT/<case><ext> (the input's extension unless
--output-format) with its sidecar. Channels are grouped by nnU-Net's suffixes (case_0000.nii.gz,
case_0001.nii.gz -> case) or by a CSV header naming the card's channels (plus optional 'case' and
'output' columns); a sub-folder holding DICOM gives one case per series. --probabilities and
--uncertainty then name folders. Cases whose outputs are complete are skipped (--overwrite redoes
them); a failing case is reported and the others go on; exit 2 if a case failed for bad input.
Split a cohort over processes or machines with --num-parts N --part-id K (cases sorted, case i in
part i % N), e.g. a Slurm array: #SBATCH --array=0-7 and --num-parts 8 --part-id $SLURM_ARRAY_TASK_ID.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cohort options of ``medseg predict`` (and ``--strict``, which applies to one case too)."""
    group = parser.add_argument_group("cohorts (IN a folder, a .txt/.csv list or a quoted glob; OUT a folder)")
    group.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist (default: skip them)")
    group.add_argument("--num-parts", type=int, default=1, metavar="N", help="split the sorted cases into N parts (default 1)")
    group.add_argument("--part-id", type=int, default=0, metavar="K", help="run part K of --num-parts: cases i with i %% N == K (default 0)")
    group.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N > 1: N-1 threads read the next cases and write finished ones while the network runs (default 1)")
    group.add_argument("--output-format", metavar="EXT", help="output extension for every case, e.g. nii.gz or nrrd (default: the input's)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse an input that does not look like the model's training inputs (the card's input_fingerprint) instead of warning")


def is_cohort(args: argparse.Namespace) -> bool:
    """Whether ``medseg predict`` was given a cohort (one IN that is a folder of cases, a list or a glob)."""
    from napari_medseg.batch import is_cohort_source

    return len(args.input) == 1 and is_cohort_source(args.input[0])


def run_cohort_command(args: argparse.Namespace, *, cancel=None) -> int:
    """Handler of ``medseg predict`` in cohort mode; returns the exit code (0, 1 or 2)."""
    from napari_medseg.jobs import reporter_from_args, run_reported

    reporter = reporter_from_args(args)
    if reporter is None:
        return _run(args, cancel=cancel, job=None)
    reporter.what = "cases"
    with reporter, run_reported(reporter) as job:
        return _run(args, cancel=job.cancel, job=job)


def _run(args: argparse.Namespace, *, cancel, job) -> int:
    from napari_medseg.batch import PredictOptions, discover_cases, partition, run_cohort
    from napari_medseg.cli import UsageError
    from napari_medseg.cli._predict import _check_numbers, _chain_from_args, _progress_bar
    from napari_medseg.errors import InvalidInputError
    from napari_medseg.inference import resolve_device
    from napari_medseg.registry import load_model

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"OUT={args.output}: for a cohort OUT must be a folder, not a file")
    for option, value in (("--workers", args.workers), ("--num-parts", args.num_parts)):
        if value < 1:
            raise UsageError(f"{option}={value}: expected an integer >= 1")
    if not 0 <= args.part_id < args.num_parts:
        raise UsageError(f"--part-id={args.part_id}: expected 0 .. {args.num_parts - 1} (--num-parts={args.num_parts})")
    _check_numbers(args)  # the same torch-free checks as single-case predict
    folders = {"OUT": out_dir.resolve()}
    for option, value in (("--probabilities", args.probabilities), ("--uncertainty", args.uncertainty)):
        if value:
            if Path(value).exists() and not Path(value).is_dir():
                raise UsageError(f"{option}={value}: for a cohort this names a folder, not a file")
            if Path(value).resolve() in folders.values():
                raise UsageError(f"{option}={value}: must be a different folder from OUT and the other maps'")
            folders[option] = Path(value).resolve()
    chain = _chain_from_args(args)
    resolve_device(args.device)

    models = [load_model(name) for name in args.model]  # once for the whole cohort
    card = models[0].card
    cases = discover_cases(args.input[0], out_dir, channel_names=[c.name for c in card.channels], output_format=args.output_format)
    mine = partition(cases, args.num_parts, args.part_id)
    part = f" (part {args.part_id} of {args.num_parts}: {len(mine)} of {len(cases)} cases)" if args.num_parts > 1 else ""
    print(f"medseg predict: {len(mine)} case(s) from {args.input[0]}{part} -> {out_dir}", file=sys.stderr)
    options = PredictOptions(
        device=args.device, overlap=args.overlap, batch_size=args.batch_size, mc_samples=args.mc_samples,
        dropout_rate=args.dropout, tta_flips=args.tta, seed=args.seed, strict=args.strict,
    )

    def on_case(result, index: int, total: int) -> None:
        name = result.case.name
        if result.status == "done":
            line = f"[{index}/{total}] {name}: done in {result.seconds:.1f} s -> {result.case.output}"
        elif result.status == "skipped":
            line = f"[{index}/{total}] {name}: skipped (outputs exist; --overwrite redoes it)"
        else:
            line = f"[{index}/{total}] {name}: FAILED: {result.reason}"
        print(line, flush=True)
        for message in result.warnings:
            print(f"medseg predict: warning: {name}: {message}", file=sys.stderr)
        if job is not None:
            job.log(line, level="error" if result.status == "failed" else "info")

    show = job is None and not args.no_progress
    with _progress_bar(show) as bar:
        summary = run_cohort(
            mine, models, options=options, probabilities_dir=args.probabilities, uncertainty_dir=args.uncertainty,
            overwrite=args.overwrite, chain=chain, workers=args.workers,
            progress=job.progress if job is not None else None, case_progress=bar, on_case=on_case, cancel=cancel,
        )
    print(f"medseg predict: {summary.describe()}", file=sys.stderr if summary.failed else sys.stdout)
    if job is not None:
        job.outputs.update({"output_dir": str(out_dir.resolve()), "cases": summary.to_json()})
    code = summary.exit_code()
    if code == 2:
        raise InvalidInputError(f"{len(summary.failed)} of {len(mine)} case(s) failed (see above); the others are written")
    if code == 1:
        raise RuntimeError(f"{len(summary.failed)} of {len(mine)} case(s) failed with an internal error (see above)")
    return 0
