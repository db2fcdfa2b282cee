"""Volume-level registration: geometry in, geometry out.

:func:`register_volumes` takes :class:`~napari_medseg.volume.Volume` objects; a 2D image (read as a
single-slice volume of shape ``(1, y, x)``) is registered as a 2D array. The moving volume must be
on the fixed grid (same shape, spacing, origin and direction); with ``resample_moving=True`` it is
first resampled onto the fixed grid in physical space (linear for the image, nearest for its
mask). The displacement field is stored as a 3-component vector volume in physical LPS
millimetres, ``(x, y, z)`` components, on the fixed grid: the ITK/SimpleITK displacement-field
convention (``DisplacementFieldTransform``), so other tools can apply it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_medseg.errors import GeometryMismatchError, InvalidInputError
from napari_medseg.registration.register import RegistrationResult, register, warp
from napari_medseg.volume import Geometry, Interpolation, Volume, check_same_grid, resample_like, to_sitk

__all__ = ["VolumeRegistration", "register_volumes", "displacement_to_volume", "volume_to_displacement", "apply_field"]

FIELD_METADATA_KEY = "medseg_displacement"
FIELD_METADATA_VALUE = "LPS mm (x, y, z) components; phi(x) = x + u(x)"


@dataclass(frozen=True)
class VolumeRegistration:
    """What :func:`register_volumes` returns: the array-level result and Volumes on the fixed grid."""

    result: RegistrationResult
    warped: Volume
    warped_mask: Volume
    field: Volume
    fixed_mask: np.ndarray
    moving_on_fixed: np.ndarray


def _as_array(volume: Volume, name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    if volume.n_components != 1:
        raise InvalidInputError(f"{name}: expected a scalar image, got {volume.n_components} components per voxel")
    if volume.shape[0] == 1:
        return volume.array[0], volume.spacing_zyx[1:]
    return volume.array, volume.spacing_zyx


def displacement_to_volume(displacement: np.ndarray, geometry: Geometry) -> Volume:
    """Store ``u`` (``(ndim, *shape)``, mm along the array axes) as a ``(z, y, x, 3)`` Volume of
    physical LPS displacements, components ``(x, y, z)``.

    Raises
    ------
    InvalidInputError
        If the field is not ``(2, y, x)`` or ``(3, z, y, x)``.
    """
    u = np.asarray(displacement, np.float64)
    if u.ndim == 3 and u.shape[0] == 2:
        index_xyz = np.stack([u[1], u[0], np.zeros_like(u[0])])[:, None]
    elif u.ndim == 4 and u.shape[0] == 3:
        index_xyz = u[::-1]
    else:
        raise InvalidInputError(f"displacement has shape {u.shape}; expected (2, y, x) or (3, z, y, x)")
    phys = np.einsum("ij,j...->...i", geometry.direction_matrix, index_xyz)
    return Volume(phys.astype(np.float32), geometry, {FIELD_METADATA_KEY: FIELD_METADATA_VALUE})


def volume_to_displacement(field: Volume) -> np.ndarray:
    """Inverse of :func:`displacement_to_volume`: ``(3, z, y, x)`` (or ``(2, y, x)`` for a single
    slice) in mm along the array axes.

    Raises
    ------
    InvalidInputError
        If the volume does not have 3 components.
    """
    if field.n_components != 3:
        raise InvalidInputError(
            f"a displacement field needs 3 components (x, y, z in mm) per voxel; got {field.n_components}"
        )
    phys = np.asarray(field.array, np.float64)
    index_xyz = np.einsum("ji,...j->i...", field.geometry.direction_matrix, phys)
    if field.shape[0] == 1:
        return np.stack([index_xyz[1, 0], index_xyz[0, 0]]).astype(np.float32)
    return index_xyz[::-1].astype(np.float32)


def register_volumes(
    fixed: Volume,
    moving: Volume,
    *,
    fixed_mask: Volume | None = None,
    moving_mask: Volume | None = None,
    resample_moving: bool = False,
    **kwargs,
) -> VolumeRegistration:
    """Register ``moving`` onto ``fixed`` (Volumes); see :func:`~.register.register` for ``kwargs``
    (``metric``, ``regularizer``, ``mu``, ``lambda_``, ``tau``, ``levels``, ``max_iterations``,
    ``progress``, ``cancel``, ...). ``spacing_mm`` comes from the fixed geometry.

    Parameters
    ----------
    fixed, moving : Volume
        Scalar images. Single-slice volumes are registered in 2D.
    fixed_mask, moving_mask : Volume, optional
        Masks on the fixed / moving grid (default: Otsu threshold, holes filled).
    resample_moving : bool, default False
        Resample ``moving`` (and its mask) onto the fixed grid in physical space when the grids
        differ; otherwise differing grids are an error.

    Returns
    -------
    VolumeRegistration
        ``warped`` (float32) and ``warped_mask`` (uint8) on the fixed geometry, the ``field`` as
        a 3-component LPS volume, and the array-level result.

    Raises
    ------
    GeometryMismatchError
        If the grids differ and ``resample_moving`` is False, or a mask is not on its image's grid.
    InvalidInputError
        As :func:`~.register.register`, and for multi-component images.
    """
    if "spacing_mm" in kwargs:
        raise InvalidInputError("spacing_mm comes from the fixed volume's geometry; do not pass it to register_volumes")
    if fixed_mask is not None:
        check_same_grid(fixed, fixed_mask, names=("fixed", "fixed_mask"))
    if moving_mask is not None:
        check_same_grid(moving, moving_mask, names=("moving", "moving_mask"))
    try:
        check_same_grid(fixed, moving, names=("fixed", "moving"))
    except GeometryMismatchError as exc:
        if not resample_moving:
            raise GeometryMismatchError(
                f"{exc}. Registration needs both images on one grid: resample moving onto fixed "
                "(resample_moving=True, or 'medseg register --resample')"
            ) from None
        moving = resample_like(moving, fixed, interpolation=Interpolation.LINEAR)
        if moving_mask is not None:
            moving_mask = resample_like(moving_mask, fixed, interpolation=Interpolation.NEAREST)
    f_arr, spacing_mm = _as_array(fixed, "fixed")
    m_arr, _ = _as_array(moving, "moving")
    fm = _as_array(fixed_mask, "fixed_mask")[0] if fixed_mask is not None else None
    mm = _as_array(moving_mask, "moving_mask")[0] if moving_mask is not None else None
    result = register(f_arr, m_arr, fixed_mask=fm, moving_mask=mm, spacing_mm=spacing_mm, **kwargs)
    expand = (lambda a: a[None]) if fixed.shape[0] == 1 else (lambda a: a)
    warped = Volume(expand(result.warped), fixed.geometry, {"medseg_registration": str(result.parameters)})
    warped_mask = Volume(expand(result.warped_mask.astype(np.uint8)), fixed.geometry)
    field = displacement_to_volume(result.displacement, fixed.geometry)
    fixed_mask_arr = fm.astype(bool) if fm is not None else None
    if fixed_mask_arr is None:
        from napari_medseg.registration.register import auto_mask

        fixed_mask_arr = auto_mask(f_arr)
    return VolumeRegistration(result, warped, warped_mask, field, fixed_mask_arr, m_arr)


def apply_field(image: Volume, field: Volume, *, nearest: bool = False) -> Volume:
    """Warp ``image`` with a saved displacement field onto the field's grid.

    An image on the field's grid (same shape, spacing, origin, direction) is warped exactly as
    during registration (index space, linear or nearest); any other image is resampled in
    physical space through SimpleITK's ``DisplacementFieldTransform``. Multi-component images
    (e.g. a stack of ion images) are warped component by component.

    Parameters
    ----------
    image : Volume
        The moving-space image (or label map) to warp.
    field : Volume
        A field written by :func:`displacement_to_volume` / ``medseg register --field``.
    nearest : bool, default False
        Nearest-neighbour interpolation (label maps keep their values and dtype).

    Returns
    -------
    Volume
        On the field's geometry; the input dtype for ``nearest``, float32 otherwise.

    Raises
    ------
    InvalidInputError
        If ``field`` is not a 3-component volume.
    """
    u = volume_to_displacement(field)
    grid_volume = Volume(np.zeros(field.shape, np.uint8), field.geometry)
    same = image.shape == field.shape and image.geometry.isclose(field.geometry, atol=1e-4)
    comps = [image.array] if image.n_components == 1 else [image.array[..., c] for c in range(image.n_components)]
    out = []
    if same:
        spacing_mm = field.spacing_zyx[1:] if field.shape[0] == 1 else field.spacing_zyx
        for comp in comps:
            arr = comp[0] if field.shape[0] == 1 else comp
            warped = warp(arr, u, spacing_mm=spacing_mm, order=0 if nearest else 1)
            out.append(warped[None] if field.shape[0] == 1 else warped)
    else:
        import SimpleITK as sitk

        disp = to_sitk(Volume(np.asarray(field.array, np.float64), field.geometry))
        transform = sitk.DisplacementFieldTransform(sitk.Cast(disp, sitk.sitkVectorFloat64))
        reference = to_sitk(grid_volume)
        for comp in comps:
            src = to_sitk(Volume(comp if nearest else comp.astype(np.float32), image.geometry))
            interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
            res = sitk.Resample(src, reference, transform, interp, 0.0)
            out.append(sitk.GetArrayFromImage(res))
    array = out[0] if len(out) == 1 else np.stack(out, axis=-1)
    if not nearest:
        array = array.astype(np.float32, copy=False)
    return Volume(array, field.geometry, image.metadata)
