"""MedSegLib.dicom_export on real MRML (slicer-core): a Segmentation node -> DICOM SEG of its source series."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_dicom.py
from _dicom import oblique_direction, phantom, write_patient_series  # noqa: E402
from MedSegLib import dicom_export, nodes  # noqa: E402

from napari_medseg.errors import InvalidInputError  # noqa: E402
from napari_medseg.volume import Volume, read_labels, read_volume, segments_from_metadata  # noqa: E402

pytest.importorskip("highdicom")


def test_segmentation_node_exports_as_dicom_seg_of_its_source(scene, tmp_path):
    image, labels = phantom()
    folder = write_patient_series(tmp_path / "dicom", image, direction=oblique_direction())
    source = read_volume(folder)
    volume_node = nodes.volume_to_node(source, scene, name="ct")
    # what Slicer's DICOM plugin records on a loaded volume, and its database's uid -> file lookup
    files = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: str(f) for f in folder.iterdir()}
    volume_node.SetAttribute(dicom_export.INSTANCE_UIDS_ATTRIBUTE, " ".join(sorted(files)))
    found_folder, series_uid = dicom_export.dicom_source_of_node(volume_node, files.get)
    assert found_folder == folder
    segmentation = nodes.labels_to_segmentation(
        Volume(labels, source.geometry), scene,
        label_specs={1: ("shell", (1.0, 0.0, 0.0)), 2: ("core", (0.0, 0.0, 1.0))}, reference_volume_node=volume_node,
    )
    out = dicom_export.export_dicom_seg(segmentation, found_folder, tmp_path / "seg.dcm", series_uid=series_uid,
                                        provenance={"version": "0", "models": [{"name": "m", "version": "2", "sha256": "ab" * 32}]})
    back = read_labels(out)
    np.testing.assert_array_equal(back.array, labels)
    assert back.geometry.isclose(source.geometry, atol=1e-4)
    assert {v: n for v, (n, _) in segments_from_metadata(back.metadata).items()} == {1: "shell", 2: "core"}
    ds = pydicom.dcmread(out)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "m"


def test_a_volume_not_from_dicom_is_refused(scene, tmp_path):
    node = nodes.volume_to_node(Volume(np.zeros((2, 3, 4), np.int16)), scene, name="plain")
    with pytest.raises(InvalidInputError, match="not loaded from DICOM"):
        dicom_export.dicom_source_of_node(node, {}.get)
