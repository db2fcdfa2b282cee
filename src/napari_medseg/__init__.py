"""napari-medseg: medical image segmentation with honest uncertainty.

One core (this package, free of Qt, napari and Slicer) and three faces over it: the napari plugin
(:mod:`napari_medseg.plugin`), the 3D Slicer module (``slicer_extension/``) and the ``medseg`` CLI
(:mod:`napari_medseg.cli`).
"""

__version__ = "0.1.0"

from napari_medseg.errors import (  # noqa: E402
    CancelledError,
    FileFormatError,
    GeometryMismatchError,
    InvalidInputError,
    MedsegError,
)
from napari_medseg.volume import Geometry, Volume, read_labels, read_volume, write_volume  # noqa: E402

__all__ = [
    "__version__",
    "CancelledError",
    "FileFormatError",
    "Geometry",
    "GeometryMismatchError",
    "InvalidInputError",
    "MedsegError",
    "Volume",
    "read_labels",
    "read_volume",
    "write_volume",
]
