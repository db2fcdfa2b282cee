"""``medseg info`` and ``medseg convert``."""

from __future__ import annotations

import argparse
import json

from napari_medseg.cli._inputs import add_input_options, read_input


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser(
        "info",
        help="print shape, dtype, spacing, origin, direction and orientation of a volume",
        description="Print the shape, dtype, spacing, origin, direction and orientation code of an image "
        "file or DICOM folder. Spacing, origin and direction are in SimpleITK's (x, y, z) order, mm, LPS.",
    )
    info.add_argument("input", metavar="IN", help="image file or DICOM folder (a folder of several series lists them)")
    add_input_options(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)

    convert = subparsers.add_parser(
        "convert",
        help="convert between NIfTI, NRRD, MetaImage, DICOM and 2D image formats",
        description="Convert IN to OUT keeping the voxel values and geometry exactly; formats are chosen by "
        "extension (.nii, .nii.gz, .nrrd, .seg.nrrd, .mha, .mhd, .png, .tif) and a path without extension "
        "is a DICOM series folder; OUT.dcm with --reference is a DICOM Segmentation (SEG).",
    )
    convert.add_argument("input", metavar="IN", help="image file or DICOM folder")
    convert.add_argument("output", metavar="OUT", help="output file (or folder, for DICOM)")
    add_input_options(convert)
    convert.add_argument("--labels", action="store_true", help="treat the input as a label map (checks integer values)")
    convert.add_argument(
        "--reference", metavar="DICOM_FOLDER",
        help="write a DICOM Segmentation: OUT must end in .dcm and IN be a label map on the grid of a series in "
        "DICOM_FOLDER (the SEG references that series; segment names and colours from IN's segment fields)",
    )
    convert.add_argument(
        "--keep-dicom-tags", action="store_true",
        help="copy every DICOM attribute of IN into OUT's header, patient name, ID and dates included "
        "(default: only the allow-list of napari_medseg.dicom_tags, see docs/dicom.md)",
    )
    convert.set_defaults(func=run_convert)

    sample = subparsers.add_parser(
        "sample-data",
        help="write the demo volume (MNI152 T1) and its tissue labels into a folder",
        description="Write nilearn's MNI152 T1 template (the demo volume) and grey/white matter labels derived "
        "from its tissue maps into OUT_DIR. Nothing is downloaded: the files ship inside nilearn.",
    )
    sample.add_argument("output", metavar="OUT_DIR", nargs="?", default="medseg-demo", help="folder (default: ./medseg-demo)")
    sample.set_defaults(func=run_sample_data)


def volume_info(volume, path: str) -> dict:
    """The facts ``medseg info`` prints, as a JSON-ready dict."""
    import numpy as np

    array = volume.array
    info = {
        "path": str(path),
        "shape": list(volume.shape),
        "components": volume.n_components,
        "dtype": str(array.dtype),
        **volume.geometry.to_dict(),
        "oblique": volume.geometry.is_oblique,
        "min": float(np.min(array)) if array.size else None,
        "max": float(np.max(array)) if array.size else None,
        "volumes": getattr(volume, "n_volumes", 1),
    }
    if volume.metadata:
        info["metadata"] = dict(volume.metadata)
    return info


def run_info(args: argparse.Namespace) -> None:
    from pathlib import Path

    if Path(args.input).is_dir() and args.series_uid is None and args.series_number is None:
        from napari_medseg.dicom import list_series

        found = list_series(args.input)
        if len(found) > 1:
            _print_series(args, found)
            return
    volume = read_input(args, args.input, allow_4d=True)
    info = volume_info(volume, args.input)
    if args.json:
        print(json.dumps(info))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(args.input), show_header=False)
    fmt = {
        "shape": "shape (z, y, x)",
        "spacing": "spacing (x, y, z) mm",
        "origin": "origin (x, y, z) mm",
        "direction": "direction (row-major)",
    }
    for key in ("shape", "volumes", "components", "dtype", "spacing", "origin", "direction", "orientation", "oblique", "min", "max"):
        value = info[key]
        if isinstance(value, list):
            value = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value)
        table.add_row(fmt.get(key, key), str(value))
    Console().print(table)


def _print_series(args: argparse.Namespace, found) -> None:
    """``medseg info`` on a folder of several DICOM series: one row per series."""
    if args.json:
        print(json.dumps({"path": str(args.input), "series": [s.to_dict() for s in found]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.input}: {len(found)} series (choose one with --series-uid or --series-number)")
    for column in ("number", "description", "modality", "size (z, y, x)", "volumes", "files", "uid", "problem"):
        table.add_column(column)
    for s in found:
        table.add_row(
            str(s.number), s.description, s.modality, " x ".join(map(str, s.shape)) if s.shape else "-",
            str(s.n_volumes or "-"), str(len(s.files)), s.uid, s.problem or "",
        )
    Console(width=200).print(table)


def run_convert(args: argparse.Namespace) -> None:
    from napari_medseg.multivolume import MultiVolume, write_multivolume
    from napari_medseg.outputs import check_outputs
    from napari_medseg.volume import write_volume

    if args.reference is not None or str(args.output).lower().endswith(".dcm"):
        from napari_medseg.cli._dicom_seg import convert_to_dicom_seg, dicom_seg_output

        if dicom_seg_output(args.input, args.output, reference=args.reference, labels=args.labels):
            convert_to_dicom_seg(args)
            return
    check_outputs({"OUT": args.output}, {"IN": args.input})
    volume = read_input(args, args.input, labels=args.labels, allow_4d=True)
    if isinstance(volume, MultiVolume):
        out = write_multivolume(volume, args.output)
        shape = f"{volume.n_volumes} volumes of {' x '.join(map(str, volume.shape))}"
    else:
        out = write_volume(volume, args.output, keep_dicom_tags=args.keep_dicom_tags)
        shape = " x ".join(map(str, volume.shape))
    print(f"wrote {out} ({shape}, {volume.array.dtype}, {volume.geometry.describe()})")


def run_sample_data(args: argparse.Namespace) -> None:
    from napari_medseg.sample_data import write_demo_data

    for kind, path in write_demo_data(args.output).items():
        print(f"{kind}: {path}")
