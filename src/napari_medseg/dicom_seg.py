"""DICOM Segmentation objects (SEG) out and in, with highdicom.

Writing (:func:`write_dicom_seg`): a label map on the grid of a DICOM series becomes one DICOM
Segmentation file of type ``BINARY`` (the type every SEG reader supports: 3D Slicer's
QuantitativeReporting, OHIF, highdicom, dcmqi; ``LABELMAP`` is too new for most viewers). It
references the source series and, frame by frame, the source instance at the same position; it
carries the patient and study of the source (highdicom copies them, so that an archive files the
SEG with its images: this is the one output that holds patient data, see ``docs/dicom.md``), one
segment per label value with the card's name, colour (CIELab) and coded terminology (else the
generic category "Anatomical Structure" and type "Tissue", SNOMED CT), and, for a prediction, the
algorithm (model names, versions, weights sha256) in each segment's Algorithm Identification.

Label value ``v`` is segment number ``v``, so the labels read back are the labels written; a gap
in the values (labels 1 and 3) is kept as an empty segment named ``label 2``. Every slice of every
segment is stored, empty ones included: a SEG read on its own then spans the whole source grid,
which is what comparing it with a reference or with a NIfTI output needs (1 bit per voxel and
segment).

Reading (:func:`read_dicom_seg`, called by :func:`napari_medseg.volume.read_volume` for any file
whose SOP Class is Segmentation Storage): ``BINARY`` and ``LABELMAP`` SEGs become a label map
(value = segment number) on the grid the frames describe, with Slicer-style ``Segment<i>_*``
metadata (name, colour, value) so every reader of segment names (napari, ``.seg.nrrd`` output)
keeps them. No patient attribute enters the Volume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_medseg.errors import FileFormatError, GeometryMismatchError, InvalidInputError
from napari_medseg.volume import Geometry, Volume, as_label_array, reorient, segments_from_metadata

__all__ = [
    "SEGMENTATION_STORAGE",
    "Segment",
    "Algorithm",
    "SourceSeries",
    "is_dicom_seg",
    "find_source_series",
    "segments_from_card",
    "segments_for_labels",
    "algorithm_from_provenance",
    "write_dicom_seg",
    "build_dicom_seg",
    "dicom_seg_file",
    "read_dicom_seg",
]

#: SOP Class UID of Segmentation Storage.
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: (scheme, value, meaning) used when a label has no coded terminology.
GENERIC_CATEGORY = ("SCT", "91723000", "Anatomical Structure")
GENERIC_TYPE = ("SCT", "85756007", "Tissue")
# how far (mm) a label slice may sit from its source instance's ImagePositionPatient
_POSITION_TOLERANCE_MM = 1e-2


@dataclass(frozen=True)
class Segment:
    """One segment: label value, name, RGB colour (0-1) and optional codes (scheme, value, meaning)."""

    value: int
    name: str
    color: tuple[float, float, float] | None = None
    category: tuple[str, str, str] | None = None
    type: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class Algorithm:
    """The model(s) that made a segmentation: names, versions and weight sha256s (ensembles join them)."""

    name: str
    version: str
    sha256: str
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass
class SourceSeries:
    """A single-frame DICOM series sorted along its slice normal (headers only, no pixels)."""

    folder: Path
    series_uid: str
    datasets: list
    geometry: Geometry
    shape: tuple[int, int, int]

    @property
    def positions(self) -> np.ndarray:
        return np.array([[float(v) for v in ds.ImagePositionPatient] for ds in self.datasets])


# ------------------------------------------------------------------------------------- detection
def is_dicom_seg(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file whose SOP Class is Segmentation Storage (reads its header only)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            if fh.read(4) != b"DICM":
                return False
    except OSError:
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # noqa: BLE001 - not a readable DICOM file: not a SEG
        return False
    media = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return str(getattr(ds, "SOPClassUID", media or "")) == SEGMENTATION_STORAGE


# ---------------------------------------------------------------------------------------- source
def _read_headers(folder: Path) -> dict[str, list]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    by_series: dict[str, list] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError):
            continue
        if str(getattr(ds, "SOPClassUID", "")) == SEGMENTATION_STORAGE or "SeriesInstanceUID" not in ds:
            continue
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return by_series


def _series_grid(uid: str, datasets: list, folder: Path) -> SourceSeries:
    for ds in datasets:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InvalidInputError(
                f"{folder}: series {uid} is an enhanced multi-frame object; DICOM SEG output needs a "
                "classic single-frame series"
            )
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            raise InvalidInputError(f"{folder}: series {uid} has instances without position, orientation or pixel spacing")
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    for ds in datasets:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise InvalidInputError(f"{folder}: series {uid} mixes slice orientations ({Path(ds.filename).name}); DICOM SEG output needs one volume")
    datasets = sorted(datasets, key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    distinct = len({tuple(np.round(p, 3)) for p in positions})
    if distinct != len(datasets):
        raise InvalidInputError(
            f"{folder}: series {uid} has {len(datasets)} instances at {distinct} positions (several volumes or "
            "duplicates); DICOM SEG output needs a single-volume series"
        )
    pixel = [float(v) for v in datasets[0].PixelSpacing]
    dz = float(np.linalg.norm(positions[1] - positions[0])) if len(datasets) > 1 else float(
        getattr(datasets[0], "SpacingBetweenSlices", 0) or getattr(datasets[0], "SliceThickness", 1) or 1
    )
    geometry = Geometry(
        (pixel[1], pixel[0], dz),
        tuple(positions[0]),
        tuple(np.column_stack([row, col, normal]).ravel()),
    )
    shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    return SourceSeries(folder, uid, datasets, geometry, shape)


def find_source_series(
    folder: str | os.PathLike,
    *,
    geometry: Geometry | None = None,
    shape: tuple[int, int, int] | None = None,
    series_uid: str | None = None,
) -> SourceSeries:
    """The DICOM series in ``folder`` that a label map on ``geometry``/``shape`` was made from.

    Parameters
    ----------
    folder : path-like
        A folder of DICOM files (not searched recursively, as the series reader does).
    geometry, shape : optional
        The label map's grid; the series whose slices sit on it (up to axis permutation or flip)
        is chosen. Without them, the series with the most files.
    series_uid : str, optional
        Choose this series (still checked against the grid).

    Raises
    ------
    FileFormatError
        No DICOM series in the folder, or no series with ``series_uid``.
    GeometryMismatchError
        No series is on the label map's grid (the message names the closest difference), or
        several are (give ``series_uid``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileFormatError(f"{root}: the DICOM reference must be a folder holding the source series")
    by_series = _read_headers(root)
    if not by_series:
        raise FileFormatError(f"{root}: no DICOM image series found in this folder")
    if series_uid is not None:
        if series_uid not in by_series:
            raise FileFormatError(f"{root}: no series with SeriesInstanceUID {series_uid!r}; found {', '.join(by_series)}")
        by_series = {series_uid: by_series[series_uid]}
    if geometry is None or shape is None:
        uid = max(by_series, key=lambda u: len(by_series[u]))
        return _series_grid(uid, by_series[uid], root)
    matches, problems = [], []
    for uid, datasets in by_series.items():
        try:
            series = _series_grid(uid, datasets, root)
            _on_source_grid(Volume(np.zeros(shape, np.uint8), geometry), series)
        except (GeometryMismatchError, InvalidInputError) as exc:
            problems.append(f"series {uid}: {exc}")
            continue
        matches.append(series)
    if not matches:
        raise GeometryMismatchError(f"{root}: no DICOM series lies on the label map's grid ({'; '.join(problems)})")
    if len(matches) > 1:
        listed = ", ".join(f"{s.series_uid} ({len(s.datasets)} files)" for s in matches)
        raise GeometryMismatchError(f"{root}: several series lie on the label map's grid: {listed}; choose one with --series-uid")
    return matches[0]


def _slice_order(series: SourceSeries, geometry: Geometry, shape: tuple[int, int, int]) -> None:
    """Raise unless label slice ``k`` of a grid sits exactly on source instance ``k``."""
    problems = []
    if tuple(shape) != series.shape:
        problems.append(f"shape {tuple(shape)} vs {series.shape} (z, y, x)")
    if not np.allclose(geometry.spacing, series.geometry.spacing, rtol=1e-4, atol=1e-4):
        problems.append(f"spacing {tuple(round(s, 5) for s in geometry.spacing)} vs {tuple(round(s, 5) for s in series.geometry.spacing)} mm")
    if not np.allclose(geometry.direction, series.geometry.direction, atol=1e-4):
        problems.append(f"direction {geometry.orientation} vs {series.geometry.orientation}")
    if not problems:
        d = geometry.direction_matrix
        k = np.arange(shape[0])[:, None]
        centres = np.asarray(geometry.origin) + k * geometry.spacing[2] * d[:, 2]
        offsets = np.linalg.norm(centres - series.positions, axis=1)
        if offsets.max() > _POSITION_TOLERANCE_MM:
            worst = int(np.argmax(offsets))
            problems.append(f"slice {worst} is {offsets[worst]:.3g} mm from the source instance at that position")
    if problems:
        raise GeometryMismatchError("; ".join(problems))


def _on_source_grid(labels: Volume, series: SourceSeries) -> Volume:
    """``labels`` with slice ``k`` on source instance ``k`` (axis permutations and flips are undone)."""
    try:
        _slice_order(series, labels.geometry, labels.shape)
        return labels
    except GeometryMismatchError as first:
        oriented = reorient(labels, series.geometry.orientation)
        try:
            _slice_order(series, oriented.geometry, oriented.shape)
        except GeometryMismatchError:
            raise GeometryMismatchError(
                f"{first} (a DICOM SEG must lie on its source series' grid: predict on that series, or resample the "
                "labels onto it)"
            ) from None
        return oriented


# -------------------------------------------------------------------------------------- segments
def segments_from_card(card) -> list[Segment]:
    """The segments of a model card's labels (background 0 left out), with its codes where it has them."""
    out = []
    for value in card.label_values:
        if value == 0:
            continue
        spec = card.labels[value]
        code = lambda c: None if c is None else (c.scheme, c.value, c.meaning)  # noqa: E731
        out.append(Segment(int(value), spec.name, tuple(spec.color), code(getattr(spec, "category", None)), code(getattr(spec, "type", None))))
    return out


def segments_for_labels(
    labels: Volume,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[float, float, float]] | None = None,
) -> list[Segment]:
    """Segments for the values of a label map: names and colours given, else from its ``Segment*`` metadata."""
    known = segments_from_metadata(labels.metadata)
    names = dict(names or {v: n for v, (n, _) in known.items()})
    colors = dict(colors or {v: c for v, (_, c) in known.items() if c})
    values = {int(v) for v in np.unique(labels.array) if v != 0} | {int(v) for v in names if int(v) != 0}
    return [Segment(v, names.get(v, f"label {v}"), colors.get(v)) for v in sorted(values)]


def algorithm_from_provenance(provenance: Mapping | None) -> Algorithm | None:
    """The models of a prediction's provenance record (``Prediction.provenance``, the JSON sidecar)."""
    models = list((provenance or {}).get("models") or [])
    if not models:
        return None
    parameters = {"medseg_version": str(provenance.get("version", ""))}
    for i, m in enumerate(models):
        parameters[f"weights_sha256_{i}" if len(models) > 1 else "weights_sha256"] = str(m.get("sha256", ""))
    return Algorithm(
        name="+".join(str(m.get("name", "")) for m in models)[:64],
        version="+".join(str(m.get("version", "")) for m in models)[:64],
        sha256=",".join(str(m.get("sha256", "")) for m in models),
        parameters=parameters,
    )


def _code(triple):
    from pydicom.sr.coding import Code

    scheme, value, meaning = triple
    return Code(value=str(value), scheme_designator=str(scheme), meaning=str(meaning))


def _descriptions(segments: Sequence[Segment], algorithm: Algorithm | None) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from napari_medseg import __version__

    by_value = {s.value: s for s in segments}
    top = max(by_value) if by_value else 0
    if top > 65535:
        raise InvalidInputError(f"label value {top}: DICOM segment numbers stop at 65535")
    identification = None
    if algorithm is not None:
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm.name or "napari-medseg",
            family=codes.cid7162.ArtificialIntelligence,
            version=algorithm.version or "unknown",
            source=f"napari-medseg {__version__}",
            parameters=dict(algorithm.parameters) or None,
        )
    out = []
    for number in range(1, top + 1):
        seg = by_value.get(number, Segment(number, f"label {number}"))
        color = None
        if seg.color is not None:
            r, g, b = (min(255.0, max(0.0, 255.0 * float(c))) for c in seg.color[:3])
            color = hd.color.CIELabColor.from_rgb(r, g, b)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(seg.name)[:64],
                segmented_property_category=_code(seg.category or GENERIC_CATEGORY),
                segmented_property_type=_code(seg.type or GENERIC_TYPE),
                algorithm_type="AUTOMATIC" if identification is not None else "MANUAL",
                algorithm_identification=identification,
                tracking_id=str(seg.name)[:64],
                tracking_uid=hd.UID(),
                display_color=color,
            )
        )
    return out


# ----------------------------------------------------------------------------------------- write
def write_dicom_seg(
    labels: Volume,
    source: str | os.PathLike | SourceSeries,
    output: str | os.PathLike,
    *,
    segments: Sequence[Segment] | None = None,
    algorithm: Algorithm | None = None,
    series_uid: str | None = None,
    series_description: str | None = None,
) -> Path:
    """Write ``labels`` as a DICOM Segmentation (BINARY) of the source series, atomically.

    The file is built with :func:`build_dicom_seg`, written under a temporary name beside
    ``output``, flushed, read back and checked complete (:func:`dicom_seg_file`), and only then
    renamed onto ``output``: a failure (no space, permission...) raises
    :class:`~napari_medseg.errors.FileAccessError` and leaves an existing ``output``
    byte-identical. Parameters as :func:`build_dicom_seg`.

    Returns
    -------
    pathlib.Path
        ``output``.
    """
    from napari_medseg.outputs import write_file

    seg = build_dicom_seg(
        labels, source, output, segments=segments, algorithm=algorithm,
        series_uid=series_uid, series_description=series_description,
    )
    writer, verify = dicom_seg_file(seg, output)
    return write_file(output, writer, verify)


def dicom_seg_file(seg, output: str | os.PathLike):
    """``(writer, verify)`` callbacks that save ``seg`` to a staged path and check it complete.

    For :func:`napari_medseg.outputs.write_file` and :func:`~napari_medseg.outputs.write_outputs`
    (``files=``), so a SEG changes together with the files written beside it (a sidecar).
    """
    from napari_medseg.errors import FileAccessError

    expected = len(seg.PixelData)

    def writer(staged: Path) -> None:
        seg.save_as(staged, enforce_file_format=True)

    def verify(staged: Path) -> None:
        import pydicom

        try:
            back = pydicom.dcmread(staged)
            complete = back.SOPInstanceUID == seg.SOPInstanceUID and len(back.PixelData) == expected
        except Exception:  # noqa: BLE001 - any failure to read back is an incomplete file
            complete = False
        if not complete:
            raise FileAccessError(f"{output}: cannot write: the DICOM SEG does not read back complete; nothing was changed")

    return writer, verify


def build_dicom_seg(
    labels: Volume,
    source: str | os.PathLike | SourceSeries,
    output: str | os.PathLike,
    *,
    segments: Sequence[Segment] | None = None,
    algorithm: Algorithm | None = None,
    series_uid: str | None = None,
    series_description: str | None = None,
):
    """``labels`` as a DICOM Segmentation (BINARY) dataset of the source series (nothing written).

    Parameters
    ----------
    labels : Volume
        Non-negative integer labels on the source series' grid (up to axis permutation or flip).
    source : path-like or SourceSeries
        The folder holding the source series, or a series from :func:`find_source_series`.
    output : path-like
        The ``.dcm`` file it is meant for (never one of the source files).
    segments : sequence of Segment, optional
        Name, colour and codes per label value; default :func:`segments_for_labels`.
    algorithm : Algorithm, optional
        The model(s) that made the labels (segments are then AUTOMATIC, else MANUAL).
    series_uid : str, optional
        The source SeriesInstanceUID when the folder holds several series on this grid.
    series_description : str, optional
        The SEG's SeriesDescription (default ``"medseg <model>"`` or ``"medseg segmentation"``).

    Returns
    -------
    highdicom.seg.Segmentation

    Raises
    ------
    InvalidInputError
        Labels not integer or not 3D, a label above 65535, or ``output`` is a source file.
    GeometryMismatchError
        The labels are not on the grid of a series of ``source``.
    """
    import highdicom as hd

    from napari_medseg import __version__

    target = Path(output)
    array = as_label_array(labels.array, name="labels")
    labels = Volume(array, labels.geometry, labels.metadata)
    if isinstance(source, SourceSeries):
        series = source
    else:
        series = find_source_series(source, geometry=labels.geometry, shape=labels.shape, series_uid=series_uid)
    for ds in series.datasets:
        if Path(ds.filename).resolve() == target.resolve():
            raise InvalidInputError(f"{target}: is a file of the source series; write the DICOM SEG elsewhere")
    labels = _on_source_grid(labels, series)
    if segments is None:
        segments = segments_for_labels(labels)
    present = {int(v) for v in np.unique(labels.array) if v != 0}
    missing = sorted(present - {s.value for s in segments})
    if missing:
        segments = [*segments, *(Segment(v, f"label {v}") for v in missing)]
    descriptions = _descriptions(segments, algorithm)
    if not descriptions:
        descriptions = _descriptions([Segment(1, "label 1")], algorithm)  # an empty label map: one empty segment
    pixels = labels.array
    if int(pixels.max(initial=0)) > 255:
        pixels = pixels.astype(np.uint16)
    else:
        pixels = pixels.astype(np.uint8)
    source_number = getattr(series.datasets[0], "SeriesNumber", None)
    seg = hd.seg.Segmentation(
        source_images=series.datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(source_number) + 1000 if source_number not in (None, "") else 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-medseg",
        manufacturer_model_name=(algorithm.name if algorithm else "napari-medseg")[:64],
        software_versions=str(__version__),
        device_serial_number="napari-medseg",
        content_description="napari-medseg segmentation"[:64],
        content_label="MEDSEG",
        omit_empty_frames=False,
        series_description=(series_description or (f"medseg {algorithm.name}" if algorithm else "medseg segmentation"))[:64],
    )
    return seg


# ------------------------------------------------------------------------------------------ read
def read_dicom_seg(path: str | os.PathLike) -> Volume:
    """Read a DICOM Segmentation as a label map (value = segment number) with segment names.

    Returns
    -------
    Volume
        The smallest unsigned integer dtype; geometry from the frames' positions (LPS);
        metadata: ``Segment<i>_Name``/``_LabelValue``/``_Color``/``_ID`` per segment and
        ``dicom_modality = SEG`` (no patient attribute).

    Raises
    ------
    FileFormatError
        Unreadable, a FRACTIONAL SEG, overlapping segments, or frames that do not form a
        regularly spaced volume.
    """
    import highdicom as hd

    p = Path(path)
    try:
        seg = hd.seg.segread(p)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a corrupt file for the user
        raise FileFormatError(f"{p}: cannot read this DICOM Segmentation ({exc})") from None
    kind = str(seg.SegmentationType)
    if kind == "FRACTIONAL":
        raise FileFormatError(f"{p}: a FRACTIONAL DICOM Segmentation holds probabilities, not a label map; only BINARY and LABELMAP SEGs are read")
    try:
        volume = seg.get_volume(combine_segments=True, relabel=False)
    except Exception as exc:  # noqa: BLE001 - highdicom raises RuntimeError/ValueError for these
        raise FileFormatError(f"{p}: cannot read this DICOM Segmentation as one label map ({exc})") from None
    if volume.array.ndim != 3:
        raise FileFormatError(f"{p}: expected a 3D label map; got an array of shape {volume.array.shape}")
    affine = np.asarray(volume.affine, dtype=float)
    steps = affine[:3, :3]  # columns: slice, row, column index steps in LPS mm
    spacing_zyx = np.linalg.norm(steps, axis=0)
    dz, dy, dx = (steps[:, i] / spacing_zyx[i] for i in range(3))
    origin = affine[:3, 3]
    array = np.asarray(volume.array)
    if float(np.dot(dz, np.cross(dx, dy))) < 0:
        # slices along the normal of the rows and columns, as a series is read (and dcm2niix does)
        origin = origin + (array.shape[0] - 1) * spacing_zyx[0] * dz
        dz, array = -dz, array[::-1]
    geometry = Geometry(
        (spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]), tuple(origin), tuple(np.column_stack([dx, dy, dz]).ravel())
    )
    metadata = {"dicom_modality": "SEG"}
    for i, number in enumerate(seg.segment_numbers):
        description = seg.get_segment_description(number)
        metadata[f"Segment{i}_ID"] = f"Segment_{number}"
        metadata[f"Segment{i}_Name"] = str(description.segment_label)
        metadata[f"Segment{i}_LabelValue"] = str(number)
        lab = getattr(description, "RecommendedDisplayCIELabValue", None)
        if lab is not None:
            rgb = hd.color.CIELabColor.from_dicom_value([int(v) for v in lab]).to_rgb()
            metadata[f"Segment{i}_Color"] = " ".join(f"{c / 255.0:.6g}" for c in rgb)
    array = as_label_array(np.ascontiguousarray(array), name=str(p))
    return Volume(array, geometry, metadata)
