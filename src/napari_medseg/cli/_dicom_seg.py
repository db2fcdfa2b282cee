"""When an output ending in ``.dcm`` is a DICOM Segmentation, and writing it from ``convert``.

The rule (``docs/dicom.md``): OUT ending in ``.dcm`` is a DICOM SEG file when the output is a
label map *and* a DICOM reference is at hand: ``convert LABELS OUT.dcm --reference DICOM_FOLDER``,
or ``predict DICOM_FOLDER OUT.dcm`` (the input series is the reference). Otherwise a ``.dcm`` or
extension-less OUT stays what it was: a folder holding a DICOM image series. The cases that could
mean either are refused (exit 2) with the fix in the message.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_medseg.cli import UsageError


def _is_seg_output(output) -> bool:
    return str(output).lower().endswith(".dcm")


def dicom_seg_output(input_path, output, *, reference, labels: bool) -> bool:
    """Whether ``medseg convert IN OUT`` writes a DICOM SEG (raises UsageError when ambiguous)."""
    from napari_medseg.dicom_seg import is_dicom_seg

    if reference is not None:
        if not _is_seg_output(output):
            raise UsageError(f"--reference is for DICOM SEG output; OUT={output!r} must end in .dcm")
        if Path(output).is_dir():
            raise UsageError(f"OUT={output!r} is a folder; a DICOM SEG is one file ending in .dcm")
        return True
    if labels or (Path(input_path).is_file() and is_dicom_seg(input_path)):
        raise UsageError(
            f"OUT={output!r}: a label map to .dcm is a DICOM SEG and needs --reference DICOM_FOLDER (its source "
            "series); for a DICOM image series folder give OUT without the .dcm extension"
        )
    return False


def predict_seg_reference(inputs, output) -> Path | None:
    """The DICOM folder a ``predict`` SEG output references, or None for a non-SEG output."""
    if not _is_seg_output(output):
        return None
    first = Path(inputs[0])
    if first.is_dir():
        return first
    raise UsageError(
        f"OUT={output!r}: a .dcm prediction is a DICOM SEG and needs a DICOM series folder as the (first) input; "
        f"{first} is a file. Give its folder as IN, write another format (.nii.gz, .seg.nrrd), or give OUT "
        "without the .dcm extension for a DICOM image series folder"
    )


def provenance_of(path) -> dict | None:
    """A prediction's provenance from a label file's header (NRRD/MHA) or its JSON sidecar ``PATH.json``."""
    from napari_medseg.volume import read_volume

    sidecar = Path(str(path) + ".json")
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and record.get("models"):
            return record
    try:
        header = read_volume(path).metadata
    except Exception:  # noqa: BLE001 - the labels were read already; no provenance then
        return None
    try:
        record = json.loads(header.get("medseg_provenance", "null"))
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("models") else None


def convert_to_dicom_seg(args: argparse.Namespace) -> None:
    """``medseg convert LABELS OUT.dcm --reference DICOM_FOLDER``."""
    from napari_medseg.outputs import check_outputs

    # OUT's name and folder, and OUT against LABELS and the reference, before anything is read
    check_outputs({"OUT": args.output}, {"IN": args.input, "--reference": args.reference})
    from napari_medseg.dicom_seg import algorithm_from_provenance, segments_for_labels, write_dicom_seg
    from napari_medseg.volume import read_labels, segments_from_metadata

    labels = read_labels(args.input)
    provenance = provenance_of(args.input)
    names = None
    if not segments_from_metadata(labels.metadata) and provenance and isinstance(provenance.get("labels"), dict):
        names = {int(v): str(n) for v, n in provenance["labels"].items() if str(v).isdigit() and int(v) != 0}
    segments = segments_for_labels(labels, names=names)
    out = write_dicom_seg(
        labels, args.reference, args.output, segments=segments,
        algorithm=algorithm_from_provenance(provenance), series_uid=args.series_uid,
    )
    print(f"wrote {out} (DICOM SEG, {len(segments)} segments, on the grid of the series in {args.reference})")


def check_predict_seg(reference: Path | None, volume, *, series_uid: str | None = None, series_number: int | None = None):
    """The source series of a ``predict`` SEG output, checked against the input grid before inference.

    ``series_uid``/``series_number`` (predict's ``--series-uid``/``--series-number``) choose the
    series the input was read from, so a study folder with several series on one grid works.
    """
    if reference is None:
        return None
    from napari_medseg.dicom_seg import find_source_series

    if series_uid is not None or series_number is not None:
        from napari_medseg.dicom import find_series

        chosen = find_series(reference, series_uid=series_uid, series_number=series_number)
        # the chosen series may sit in a subfolder: its own folder is the reference
        return find_source_series(Path(chosen.files[0]).parent, geometry=volume.geometry, shape=volume.shape, series_uid=chosen.uid)
    return find_source_series(reference, geometry=volume.geometry, shape=volume.shape)


def predicted_seg_file(labels, source, output, card, provenance) -> tuple:
    """A prediction as a DICOM SEG, as ``(output, writer, verify)`` for ``write_outputs(files=...)``:
    the card's segments and codes, the models' identification; it changes with the sidecar."""
    from napari_medseg.dicom_seg import algorithm_from_provenance, build_dicom_seg, dicom_seg_file, segments_from_card

    seg = build_dicom_seg(labels, source, output, segments=segments_from_card(card), algorithm=algorithm_from_provenance(provenance))
    return (output, *dicom_seg_file(seg, output))


def write_predicted_seg(labels, source, output, card, provenance) -> None:
    """Write a prediction as a DICOM SEG alone (no sidecar); see :func:`predicted_seg_file`."""
    from napari_medseg.outputs import write_file

    write_file(*predicted_seg_file(labels, source, output, card, provenance))
