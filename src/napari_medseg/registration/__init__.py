"""Deformable registration of MALDI-MS and MRI images with the UDT-SSD metric.

Array functions (2D ``(y, x)`` or 3D ``(z, y, x)`` arrays and ``spacing_mm`` in mm per array axis):
:func:`register` (with a regulariser object :class:`Elastic`, :class:`Diffusive` or
:class:`Gaussian`), :func:`udt_ssd`, :func:`udt_force`, :func:`warp`; evaluation in
:mod:`.evaluate`; a Fig. 4-like synthetic pair in :mod:`.synthetic`; imzML reading in
:mod:`.imzml`; Volume-level wrappers :func:`register_volumes` and :func:`apply_field`.
"""

from napari_medseg.registration.metric import (
    ForceGradient,
    Metric,
    distance_transform,
    local_scale,
    scale_invariant_distance_transform,
    ssd_force,
    udt_force,
    udt_ssd,
)
from napari_medseg.registration.register import RegistrationResult, RegistrationWarning, auto_mask, register, warp
from napari_medseg.registration.regularizers import Diffusive, Elastic, Gaussian, Regularizer, regularizer_from_options
from napari_medseg.registration.volumes import (
    apply_field,
    displacement_to_volume,
    register_volumes,
    volume_to_displacement,
)

__all__ = [
    "Diffusive",
    "Elastic",
    "ForceGradient",
    "Gaussian",
    "Metric",
    "Regularizer",
    "RegistrationResult",
    "RegistrationWarning",
    "apply_field",
    "auto_mask",
    "displacement_to_volume",
    "distance_transform",
    "local_scale",
    "register",
    "register_volumes",
    "regularizer_from_options",
    "scale_invariant_distance_transform",
    "ssd_force",
    "udt_force",
    "udt_ssd",
    "volume_to_displacement",
    "warp",
]
