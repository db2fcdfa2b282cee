"""``medseg register`` (deformable registration with the UDT-SSD metric) and ``medseg register apply``."""

from __future__ import annotations

import argparse
import json
import sys

from napari_medseg.cli._inputs import add_input_options, read_input

_METRICS = ("udt", "dt", "intensity", "reference")
_REGULARIZERS = ("elastic", "gaussian", "diffusive")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    reg = subparsers.add_parser(
        "register",
        help="deformably register a moving image onto a fixed one (UDT-SSD metric, MALDI-MS / MRI)",
        description="Register MOVING onto FIXED with the variational method of Grélard et al. (MIUA 2023): the "
        "updated distance transform (UDT) of the object masks drives an elastic deformation. Masks default to an "
        "Otsu threshold with holes filled. 2D images (and imzML ion images) are registered in 2D. Writes the warped "
        "moving image with the fixed image's geometry. 'medseg register apply' applies a saved field to other "
        "images. Exit codes: 0 ok, 2 bad input, 130 cancelled.",
    )
    add_input_options(reg)
    reg.add_argument("--fixed", metavar="F", help="reference image (any format medseg reads, or .imzML with --mz)")
    reg.add_argument("--moving", metavar="M", help="target image to deform (any format, or .imzML with --mz)")
    reg.add_argument("--out", metavar="WARPED", help="output: the warped moving image on the fixed grid")
    reg.add_argument("--fixed-mask", metavar="FM", help="object mask of the fixed image (default: Otsu + fill holes)")
    reg.add_argument("--moving-mask", metavar="MM", help="object mask of the moving image (default: Otsu + fill holes)")
    reg.add_argument("--metric", default="udt", help=f"similarity metric: {' | '.join(_METRICS)} (default udt)")
    reg.add_argument("--regularizer", default="elastic", help=f"{' | '.join(_REGULARIZERS)} (default elastic)")
    reg.add_argument("--levels", type=int, default=3, help="multi-resolution levels (default 3)")
    reg.add_argument("--iterations", type=int, default=400, help="maximum iterations per level (default 400)")
    reg.add_argument("--tau", type=float, default=1.0, help="time step (default 1.0)")
    reg.add_argument("--mu", type=float, default=0.5, help="elastic mu (default 0.5)")
    reg.add_argument("--lambda", dest="lambda_", type=float, default=0.5, help="elastic lambda (default 0.5)")
    reg.add_argument("--scale-invariant", action="store_true", help="DT normalised by the local object scale")
    reg.add_argument("--resample", action="store_true", help="resample moving onto the fixed grid if the grids differ")
    reg.add_argument("--field", metavar="FIELD_OUT", help="also write the displacement field (vector image, LPS mm)")
    reg.add_argument("--warped-mask", metavar="MASK_OUT", help="also write the warped moving mask")
    reg.add_argument("--mz", type=float, help="imzML input: m/z of the ion image to register")
    tol = reg.add_mutually_exclusive_group()
    tol.add_argument("--tolerance-ppm", type=float, help="imzML: m/z window half-width in ppm")
    tol.add_argument("--tolerance-da", type=float, help="imzML: m/z window half-width in Da")
    reg.add_argument("--tic", action="store_true", help="imzML: normalise ion images by total ion current")
    reg.add_argument("--json", action="store_true", help="print one JSON object with the evaluation")
    from napari_medseg.jobs import add_job_dir_argument

    add_job_dir_argument(reg)  # 'medseg register' can run as a background job (kind "register")
    reg.set_defaults(func=run_register)

    sub = reg.add_subparsers(dest="register_command", metavar="apply")
    apply = sub.add_parser(
        "apply",
        help="apply a saved displacement field to another image, label map or imzML file",
        description="Warp IN with the field written by 'medseg register --field' onto the fixed grid and write "
        "OUT. Label maps: --nearest. imzML: --mz (comma-separated values, with --tolerance-ppm/--tolerance-da) "
        "gives one component per ion; --all-mz warps every channel of a continuous-mode file.",
    )
    apply.add_argument("--field", required=True, metavar="F", help="displacement field from 'medseg register --field'")
    apply.add_argument("input", metavar="IN", help="image, label map or .imzML file in the moving space")
    apply.add_argument("output", metavar="OUT", help="output file")
    add_input_options(apply)
    apply.add_argument("--nearest", action="store_true", help="nearest-neighbour interpolation (label maps)")
    apply.add_argument("--mz", help="imzML: comma-separated m/z values")
    atol = apply.add_mutually_exclusive_group()
    atol.add_argument("--tolerance-ppm", type=float, help="imzML: window half-width in ppm")
    atol.add_argument("--tolerance-da", type=float, help="imzML: window half-width in Da")
    apply.add_argument("--all-mz", action="store_true", help="imzML (continuous mode): warp every m/z channel")
    apply.add_argument("--tic", action="store_true", help="imzML: TIC normalisation")
    apply.set_defaults(func=run_apply)


def _tolerances(args) -> dict:
    if args.tolerance_ppm is None and args.tolerance_da is None:
        from napari_medseg.cli import UsageError

        raise UsageError("an imzML input needs --tolerance-ppm or --tolerance-da with --mz")
    return {"tolerance_ppm": args.tolerance_ppm, "tolerance_da": args.tolerance_da}


def _read_image(path: str, args, option: str):
    from napari_medseg.registration.imzml import ion_image, is_imzml

    if is_imzml(path):
        if args.mz is None:
            from napari_medseg.cli import UsageError

            raise UsageError(f"{option} {path} is an imzML file: give --mz VALUE and --tolerance-ppm P")
        return ion_image(path, args.mz, tic_normalize=args.tic, **_tolerances(args))
    return read_input(args, path)


def run_register(args: argparse.Namespace) -> None:
    """Handler of ``medseg register``.

    Run as a background job (hidden ``--job-dir``), it reports ``progress`` events from the
    registration's progress callback (iterations), stops at the job's cancel flag (checked every
    iteration), and reports the written files
    (``warped``, and ``field`` / ``warped_mask`` when asked for, absolute paths) and the evaluation
    (``report``) in ``done``'s ``outputs``.
    """
    from napari_medseg.cli import UsageError
    from napari_medseg.jobs import reporter_from_args, run_reported

    missing = [o for o, v in (("--fixed", args.fixed), ("--moving", args.moving), ("--out", args.out)) if not v]
    if missing:
        raise UsageError(f"medseg register needs {', '.join(missing)} (or use 'medseg register apply')")
    reporter = reporter_from_args(args)
    if reporter is None:
        _register(args, progress=None, cancel=None)
        return
    reporter.what = "iterations"
    with reporter, run_reported(reporter) as job:
        job.outputs.update(_register(args, progress=job.progress, cancel=job.cancel))


def _register(args: argparse.Namespace, *, progress, cancel) -> dict:
    """The work of ``medseg register``; returns the written files by role and the report."""
    from pathlib import Path

    from napari_medseg.registration.evaluate import registration_report
    from napari_medseg.registration.regularizers import regularizer_from_options
    from napari_medseg.registration.volumes import register_volumes
    from napari_medseg.volume import read_labels, write_volume

    from napari_medseg.outputs import check_outputs, write_outputs

    check_outputs(
        {"--out": args.out, "--field": args.field, "--warped-mask": args.warped_mask},
        {"--fixed": args.fixed, "--moving": args.moving, "--fixed-mask": args.fixed_mask, "--moving-mask": args.moving_mask},
    )
    # before reading any image: a bad --regularizer/--mu/--lambda is an error naming the option
    regularizer = regularizer_from_options(args.regularizer, mu=args.mu, lambda_=args.lambda_)
    fixed = _read_image(args.fixed, args, "--fixed")
    moving = _read_image(args.moving, args, "--moving")
    fixed_mask = read_labels(args.fixed_mask) if args.fixed_mask else None
    moving_mask = read_labels(args.moving_mask) if args.moving_mask else None
    out = register_volumes(
        fixed,
        moving,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask,
        resample_moving=args.resample,
        metric=args.metric,
        regularizer=regularizer,
        levels=args.levels,
        max_iterations=args.iterations,
        tau=args.tau,
        scale_invariant=args.scale_invariant,
        progress=progress,
        cancel=cancel,
    )
    result = out.result
    # the warped image, the field and the warped mask change together or not at all
    write_outputs([(v, path, {}) for v, path in ((out.warped, args.out), (out.field, args.field), (out.warped_mask, args.warped_mask)) if path])
    # one code path with the napari widget; --json keeps its documented keys (no "_before" values)
    full = registration_report(out, moving_mask=moving_mask)
    report = {key: value for key, value in full.items() if not key.endswith("_before")}
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"registered {args.moving} onto {args.fixed} ({report['metric']}, {report['regularizer']}): "
            f"{result.iterations} iterations in {result.seconds:.2f} s; precision {report['precision']:.4f}, "
            f"recall {report['recall']:.4f}, F {report['f_measure']:.4f}, MI {report['mutual_information_nats']:.4f} nats; "
            f"wrote {args.out}" + (f" and {args.field}" if args.field else ""),
        )
        if result.diverged:
            print("warning: the registration diverged; the best field was kept", file=sys.stderr)
    written = {"warped": args.out, "field": args.field, "warped_mask": args.warped_mask}
    outputs: dict = {role: str(Path(path).resolve()) for role, path in written.items() if path}
    outputs["report"] = report
    return outputs


def run_apply(args: argparse.Namespace) -> None:
    from pathlib import Path

    from napari_medseg.cli import UsageError
    from napari_medseg.registration.imzml import ion_images, is_imzml, open_imzml
    from napari_medseg.registration.volumes import apply_field
    from napari_medseg.volume import Volume, read_volume, write_volume

    from napari_medseg.outputs import check_outputs

    companions = [Path(args.input).with_suffix(s) for s in (".ibd", ".IBD")] if is_imzml(args.input) else []
    check_outputs({"OUT": args.output}, {"IN": [args.input, *companions], "--field": args.field})
    field = read_volume(args.field)
    if is_imzml(args.input):
        data = open_imzml(args.input)
        if args.all_mz:
            image = _continuous_cube(data, tic=args.tic)
        elif args.mz:
            try:
                values = [float(v) for v in args.mz.split(",") if v.strip()]
            except ValueError:
                raise UsageError(f"--mz={args.mz!r}: expected comma-separated numbers") from None
            image = ion_images(data, values, tic_normalize=args.tic, **_tolerances(args))
        else:
            raise UsageError(f"{args.input} is an imzML file: give --mz VALUES (with a tolerance) or --all-mz")
    else:
        if args.mz or args.all_mz:
            raise UsageError("--mz and --all-mz only apply to .imzML inputs")
        image = read_input(args, args.input)
    warped = apply_field(image, field, nearest=args.nearest)
    if not isinstance(warped, Volume):  # pragma: no cover - defensive
        raise UsageError("internal: apply_field did not return a Volume")
    write_volume(warped, args.output)
    print(f"warped {args.input} with {args.field}: wrote {args.output} (shape {warped.array.shape})")


def _continuous_cube(data, *, tic: bool):
    """Every channel of a continuous-mode imzML file as a ``(1, y, x, n_mz)`` Volume."""
    import numpy as np

    from napari_medseg.errors import InvalidInputError
    from napari_medseg.volume import Volume

    mzs0, _ = data.spectrum(0)
    cube = np.zeros((*data.shape, mzs0.size), np.float32)
    for i, (y, x) in enumerate(data.coordinates):
        mzs, ints = data.spectrum(i)
        if mzs.shape != mzs0.shape or not np.array_equal(mzs, mzs0):
            raise InvalidInputError(
                f"{data.path.name}: --all-mz needs a continuous-mode file (one m/z axis for all spectra); use --mz"
            )
        total = float(ints.sum())
        cube[y, x] = ints / total if (tic and total > 0) else (0.0 if tic else ints)
    return Volume(cube[None], data.geometry(), {"mz_count": str(mzs0.size), "source": str(data.path)})
