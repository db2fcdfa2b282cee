"""Which DICOM attributes may reach an output: an explicit allow-list, in one place.

A DICOM file carries the patient's name, ID, birth date and sex, the institution, physicians,
dates and times, and UIDs that link back to the patient's record. None of these may reach an
output of this project (an image header, a JSON sidecar, a job record, a log, a napari layer's
metadata saved back) unless the user asks for them (``medseg convert --keep-dicom-tags``; the
``keep_dicom_tags`` argument of :func:`napari_medseg.volume.read_volume` and
:func:`~napari_medseg.volume.write_volume`).

The rule is an allow-list, not a block-list: a DICOM attribute is kept only when it is listed in
:data:`ALLOWED_TAGS` below. Everything else is dropped, private tags included (vendors put names
and free text in them). The list holds what describes the acquisition and that this project or a
user reading a converted header needs; none of it names or dates a person or a place. The
geometry itself (position, orientation, spacing) is not a header key: it lives in
:class:`~napari_medseg.volume.Geometry` and in the output format's own geometry fields.

Left out on purpose, with the reason:

- Series Description (0008,103E), Protocol Name (0018,1030), Study Description (0008,1030),
  Image Comments, Derivation Description: free text that sites fill with names, accession numbers
  or dates (DICOM PS3.15's Basic Application Level Confidentiality Profile removes them unless
  its "Clean Descriptors" option is applied).
- Every date and time (Study/Series/Acquisition/Content Date and Time): with the age they
  identify; rescaled values would also be misleading.
- Study/Series/SOP Instance UIDs and Frame of Reference UID: they link an output back to the
  patient's record in the archive (PS3.15 replaces them).
- Institution, station, device serial number, operators', referring and performing physicians'
  names: they name people and places.
- Rescale Slope/Intercept and Window Center/Width: the voxel values are already rescaled when a
  volume is read, so carrying them into another header would invite applying them twice.

Header keys come in two spellings: SimpleITK's ``"gggg|eeee"`` (lower-case hex, what a single
DICOM file read through SimpleITK gives) and this project's ``dicom_<name>`` keys (what the
DICOM series reader sets, see :data:`ALLOWED_METADATA_KEYS`). :func:`filter_metadata` handles
both; :func:`dicom_metadata` builds the kept header from a pydicom dataset or a tag mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = [
    "ALLOWED_TAGS",
    "ALLOWED_METADATA_KEYS",
    "is_dicom_key",
    "is_allowed_key",
    "filter_metadata",
    "dicom_metadata",
]

#: The DICOM attributes that may reach an output: ``"gggg|eeee"`` -> (keyword, why it is kept).
ALLOWED_TAGS: dict[str, tuple[str, str]] = {
    "0008|0060": ("Modality", "which model inputs fit (CT, MR, ...); checked against the model card"),
    "0008|0008": ("ImageType", "ORIGINAL/DERIVED, MOSAIC: how the pixels were made"),
    "0008|0070": ("Manufacturer", "vendor-specific reading (Siemens mosaic, Philips scaling)"),
    "0008|1090": ("ManufacturerModelName", "scanner model: explains intensity differences between sites"),
    "0018|0015": ("BodyPartExamined", "which models apply"),
    "0018|0020": ("ScanningSequence", "MR sequence family (SE, GR, IR, EP)"),
    "0018|0021": ("SequenceVariant", "MR sequence variant"),
    "0018|0023": ("MRAcquisitionType", "2D or 3D acquisition"),
    "0018|0050": ("SliceThickness", "acquired thickness, which may differ from the slice spacing"),
    "0018|0080": ("RepetitionTime", "MR contrast (ms)"),
    "0018|0081": ("EchoTime", "MR contrast (ms)"),
    "0018|0082": ("InversionTime", "MR contrast (ms)"),
    "0018|0086": ("EchoNumbers", "which echo of a multi-echo series"),
    "0018|0087": ("MagneticFieldStrength", "field strength (T): intensity and distortion"),
    "0018|0088": ("SpacingBetweenSlices", "acquisition spacing (the volume's own spacing is in its geometry)"),
    "0018|0060": ("KVP", "CT tube voltage: Hounsfield calibration"),
    "0018|1210": ("ConvolutionKernel", "CT reconstruction kernel: noise and sharpness"),
    "0018|1314": ("FlipAngle", "MR contrast (degrees)"),
    "0018|9087": ("DiffusionBValue", "which diffusion weighting"),
    "0020|0011": ("SeriesNumber", "which series of the study, as shown on the scanner (not an identifier)"),
    "0020|0012": ("AcquisitionNumber", "which acquisition of the series"),
}

#: This project's own ``dicom_*`` header keys that may reach an output (how the series was stored
#: and which volume of it: nothing about the patient).
ALLOWED_METADATA_KEYS = frozenset(
    {"dicom_modality", "dicom_n_files", "dicom_series_number", "dicom_kind", "dicom_n_volumes", "dicom_volume"}
)

_TAG_KEY = re.compile(r"^[0-9a-fA-F]{4}\|[0-9a-fA-F]{4}$")


def is_dicom_key(key: str) -> bool:
    """Whether a header key names a DICOM attribute (``"gggg|eeee"`` or a ``dicom_*`` key)."""
    return bool(_TAG_KEY.match(key)) or key.lower().startswith("dicom_")


def is_allowed_key(key: str) -> bool:
    """Whether a header key may reach an output by default (non-DICOM keys always may)."""
    if _TAG_KEY.match(key):
        return key.lower() in ALLOWED_TAGS
    if key.lower().startswith("dicom_"):
        return key in ALLOWED_METADATA_KEYS
    return True


def filter_metadata(metadata: Mapping[str, object], *, keep_dicom_tags: bool = False) -> dict[str, str]:
    """The header ``metadata`` without the DICOM attributes that are not on the allow-list.

    Parameters
    ----------
    metadata : mapping of str to str
        Header keys and values (a :class:`~napari_medseg.volume.Volume`'s ``metadata``).
    keep_dicom_tags : bool, default False
        Keep every DICOM attribute, identifying ones included (the user's explicit choice).

    Returns
    -------
    dict of str to str
        A new dict; keys that are not DICOM attributes are kept unchanged.

    Examples
    --------
    >>> filter_metadata({"0010|0010": "DOE^JANE", "0008|0060": "MR", "medseg_model": "m"})
    {'0008|0060': 'MR', 'medseg_model': 'm'}
    """
    return {str(k): str(v) for k, v in metadata.items() if keep_dicom_tags or is_allowed_key(str(k))}


def dicom_metadata(source, *, keep_dicom_tags: bool = False) -> dict[str, str]:
    """Header keys (``"gggg|eeee"``) for the DICOM attributes of ``source`` that may be kept.

    Parameters
    ----------
    source : pydicom.Dataset or mapping of str to str
        A dataset (its top-level data elements are used; sequences and binary values never are)
        or a mapping from ``"gggg|eeee"`` keys to values (what SimpleITK reports).
    keep_dicom_tags : bool, default False
        Keep every attribute (identifying ones included), not only :data:`ALLOWED_TAGS`.

    Returns
    -------
    dict of str to str
        ``"gggg|eeee"`` (lower-case) -> value text, stripped.
    """
    items: dict[str, str] = {}
    if isinstance(source, Mapping):
        for key, value in source.items():
            if _TAG_KEY.match(str(key)):
                items[str(key).lower()] = str(value).strip().rstrip("\x00")
    else:  # a pydicom Dataset
        for element in source:
            if element.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or element.tag.group == 0x7FE0:
                continue
            value = element.value
            if value is None:
                continue
            multi = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
            text = "\\".join(str(v) for v in value) if multi else str(value)
            items[f"{element.tag.group:04x}|{element.tag.element:04x}"] = text.strip().rstrip("\x00")
    if keep_dicom_tags:
        return items
    return {k: v for k, v in items.items() if k in ALLOWED_TAGS}
