"""``medseg postprocess``: clean a label map with morphology in millimetres."""

from __future__ import annotations

import argparse
import json

from napari_medseg.cli._inputs import add_input_options, read_input

_DESCRIPTION = """\
Post-process a label map (per label, radii and sizes in mm on the image's own voxel grid) and write
it to OUT with IN's geometry. Labels never leak into each other: a voxel can only join a label if
it was background, and a voxel claimed by several labels goes to the nearest one.

Give either flags, applied in this fixed order:
  1. --opening-mm R     opening by a ball of radius R mm (removes parts thinner than the ball)
  2. --closing-mm R     closing by a ball of radius R mm (bridges gaps narrower than the ball)
  3. --fill-holes       fill holes enclosed in 3D (or --fill-holes-2d: slice by slice along z)
  4. --min-size-mm3 V   remove connected components smaller than V mm^3
  5. --keep-largest [N] keep the N largest components of each label (default N=1)
(each restricted to --labels when given), or a --chain JSON file listing steps in any order, e.g.
  [{"op": "remove_small", "min_size_mm3": 50}, {"op": "closing", "radius_mm": 2.0},
   {"op": "fill_holes"}, {"op": "keep_largest", "n": 1, "labels": [1]}]
ops: opening, closing, erosion, dilation (radius_mm), fill_holes (slice_wise, axis),
remove_small (min_size_mm3, connectivity), keep_largest (n, connectivity); every step takes an
optional "labels" list.

A per-label summary (voxels and mL before and after) is printed. Exit codes: 0 done, 2 bad input
(nothing written), 130 cancelled."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "postprocess",
        help="clean a label map: opening, closing, fill holes, remove small / keep largest components (mm)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN", help="label map (integer values): file or DICOM folder")
    parser.add_argument("output", metavar="OUT", help="output label map; the extension picks the format")
    add_input_options(parser)
    parser.add_argument("--labels", metavar="L1,L2", help="apply the flag steps to these labels only (default all)")
    parser.add_argument("--opening-mm", type=float, metavar="R", help="opening radius in mm")
    parser.add_argument("--closing-mm", type=float, metavar="R", help="closing radius in mm")
    fill = parser.add_mutually_exclusive_group()
    fill.add_argument("--fill-holes", action="store_true", help="fill holes enclosed in 3D")
    fill.add_argument(
        "--fill-holes-2d", action="store_true", help="fill holes slice by slice along z (also fills cavities open in z)"
    )
    parser.add_argument("--min-size-mm3", type=float, metavar="V", help="remove components smaller than V mm^3")
    parser.add_argument(
        "--keep-largest", type=int, nargs="?", const=1, metavar="N", help="keep the N largest components per label (default 1)"
    )
    parser.add_argument("--chain", metavar="CHAIN.json", help="JSON list of steps, instead of the flags above")
    parser.add_argument("--json", action="store_true", help="print one JSON object (chain and per-label summary)")
    parser.set_defaults(func=run_postprocess)


def _summary(before: dict[int, int], after: dict[int, int], voxel_ml: float) -> dict[str, dict[str, float]]:
    rows = {}
    for value in sorted(set(before) | set(after)):
        n_before, n_after = before.get(value, 0), after.get(value, 0)
        rows[str(value)] = {
            "voxels_before": n_before,
            "ml_before": n_before * voxel_ml,
            "voxels_after": n_after,
            "ml_after": n_after * voxel_ml,
        }
    return rows


def run_postprocess(args: argparse.Namespace) -> None:
    from napari_medseg.cli import UsageError, parse_labels
    from napari_medseg.label_measures import label_voxel_counts, voxel_volume_ml
    from napari_medseg.postprocess import PostprocessChain, chain_from_options, postprocess
    from napari_medseg.volume import write_volume

    flags = {
        "--opening-mm": args.opening_mm,
        "--closing-mm": args.closing_mm,
        "--fill-holes": args.fill_holes or None,
        "--fill-holes-2d": args.fill_holes_2d or None,
        "--min-size-mm3": args.min_size_mm3,
        "--keep-largest": args.keep_largest,
    }
    given = [name for name, value in flags.items() if value is not None]
    if args.chain is not None:
        if given or args.labels is not None:
            extra = given + (["--labels"] if args.labels is not None else [])
            raise UsageError(f"--chain cannot be combined with {', '.join(extra)}; put those steps (and labels) in the chain file")
        chain = PostprocessChain.from_file(args.chain)
    else:
        if not given:
            raise UsageError(
                "nothing to do: give at least one of --opening-mm, --closing-mm, --fill-holes, --fill-holes-2d, "
                "--min-size-mm3, --keep-largest, or --chain"
            )
        if args.keep_largest is not None and args.keep_largest < 1:
            raise UsageError(f"--keep-largest {args.keep_largest}: expected a number of components >= 1")
        chain = chain_from_options(
            opening_mm=args.opening_mm,
            closing_mm=args.closing_mm,
            fill_holes=args.fill_holes,
            fill_holes_2d=args.fill_holes_2d,
            min_size_mm3=args.min_size_mm3,
            keep_largest=args.keep_largest or False,
            labels=parse_labels(args.labels),
        )
    if not len(chain):
        raise UsageError(f"{args.chain}: the chain has no steps")

    from napari_medseg.outputs import check_outputs

    check_outputs({"OUT": args.output}, {"IN": args.input, "--chain": args.chain})
    volume = read_input(args, args.input, labels=True)
    before = label_voxel_counts(volume.array)
    result = postprocess(volume, chain)
    after = label_voxel_counts(result.array)
    out = write_volume(result, args.output)

    summary = _summary(before, after, voxel_volume_ml(volume.spacing_zyx))
    if args.json:
        print(json.dumps({"input": str(args.input), "output": str(out), "chain": chain.to_list(), "labels": summary}))
        return
    print(f"chain: {chain.describe()}")
    header = f"{'label':>6} {'voxels before':>14} {'mL before':>11} {'voxels after':>14} {'mL after':>11}"
    print(header)
    for value, row in summary.items():
        print(
            f"{value:>6} {row['voxels_before']:>14d} {row['ml_before']:>11.4f} "
            f"{row['voxels_after']:>14d} {row['ml_after']:>11.4f}"
        )
    if not summary:
        print(f"{'(no labels)':>6}")
    print(f"wrote {out} ({' x '.join(map(str, result.shape))}, {result.array.dtype}, {result.geometry.describe()})")
