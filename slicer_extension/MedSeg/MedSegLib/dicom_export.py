"""Export a Segmentation node as a DICOM Segmentation object (SEG) of its source DICOM series.

The SEG is the core's (:func:`napari_medseg.dicom_seg.write_dicom_seg`): the segments are painted
onto the source series' own grid (nearest neighbour, :func:`.nodes.segmentation_to_labels`), so
the SEG references every source instance frame by frame, with the segment names and colours of
the node and, for a MedSeg prediction, the model's identification from its provenance record.
Imports MRML and the torch-free core only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from napari_medseg.dicom_seg import (
    Segment,
    algorithm_from_provenance,
    find_source_series,
    write_dicom_seg,
)
from napari_medseg.errors import InvalidInputError
from napari_medseg.outputs import check_outputs
from napari_medseg.volume import Volume, segments_from_metadata

from . import nodes

__all__ = ["INSTANCE_UIDS_ATTRIBUTE", "dicom_source_of_node", "export_dicom_seg"]

#: The attribute Slicer's DICOM plugins set on a volume loaded from DICOM (space-separated SOP Instance UIDs).
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def dicom_source_of_node(volume_node, file_for_instance: Callable[[str], str | None]) -> tuple[Path, str]:
    """The folder and SeriesInstanceUID a volume node was loaded from.

    Parameters
    ----------
    volume_node : vtkMRMLScalarVolumeNode
        A volume loaded by Slicer's DICOM module (it carries :data:`INSTANCE_UIDS_ATTRIBUTE`).
    file_for_instance : callable
        SOP Instance UID -> file path; in Slicer ``slicer.dicomDatabase.fileForInstance``.

    Raises
    ------
    InvalidInputError
        If the node was not loaded from DICOM or its files are not known.
    """
    import pydicom

    uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise InvalidInputError(f"volume node {volume_node.GetName()!r} was not loaded from DICOM (no {INSTANCE_UIDS_ATTRIBUTE})")
    path = file_for_instance(uids[0])
    if not path or not Path(path).is_file():
        raise InvalidInputError(f"volume node {volume_node.GetName()!r}: the file of DICOM instance {uids[0]} is not known")
    series_uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
    return Path(path).parent, series_uid


def export_dicom_seg(
    segmentation_node,
    dicom_folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    series_uid: str | None = None,
    provenance: Mapping | None = None,
    label_values: Mapping[str, int] | None = None,
) -> Path:
    """Write ``segmentation_node`` as a DICOM SEG of the series in ``dicom_folder``.

    Parameters
    ----------
    segmentation_node : vtkMRMLSegmentationNode
        The segments to export (names, colours and label values kept).
    dicom_folder : path-like
        The folder of the reference volume's DICOM series (see :func:`dicom_source_of_node`).
    output : path-like
        The ``.dcm`` file to write (verified, then renamed into place: a failed write leaves an
        existing file byte-identical).
    series_uid : str or None, keyword-only
        The reference series, when the folder holds several (default: the largest).
    provenance : mapping or None, keyword-only
        A MedSeg prediction's provenance record (the job's sidecar): the SEG then names the model,
        its version and weights sha256, and its segments are AUTOMATIC.
    label_values : mapping of str to int or None, keyword-only
        Segment name -> label value for segments not made by MedSeg (else their position).

    Returns
    -------
    pathlib.Path
        ``output``.
    """
    if not str(output).lower().endswith(".dcm"):
        raise InvalidInputError(f"output={str(output)!r}: a DICOM SEG file name must end in .dcm")
    # the name, its folder's writability and no source file overwritten, before any work
    check_outputs({"output": output}, {"dicom_folder": dicom_folder})
    series = find_source_series(dicom_folder, series_uid=series_uid)
    grid = Volume(np.zeros(series.shape, np.uint8), series.geometry)
    labels = nodes.segmentation_to_labels(segmentation_node, grid, label_values=label_values)
    known = segments_from_metadata(labels.metadata)
    segments = [Segment(v, name, color) for v, (name, color) in sorted(known.items())]
    return write_dicom_seg(labels, series, output, segments=segments, algorithm=algorithm_from_provenance(provenance))
