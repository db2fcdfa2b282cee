# ruff: noqa: N999 - Slicer's naming convention for a scripted module's library package
"""MedSegLib: the MedSeg module's logic over MRML, without the Slicer application.

``nodes`` converts between MRML nodes and napari-medseg Volumes (exact geometry), ``logic`` runs
``medseg`` background jobs from nodes and loads their results, ``dicom_export`` writes a Segmentation node as a
DICOM SEG of its source series, ``model_import`` imports MONAI bundles and nnU-Net folders in a child
process, ``dependencies`` decides what the first-use install puts into Slicer's Python. Importing this package imports neither Qt nor torch.
"""

__all__ = ["dependencies", "dicom_export", "logic", "model_import", "nodes"]
