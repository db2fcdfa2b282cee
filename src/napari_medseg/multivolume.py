"""Several 3D volumes on one grid (DWI, fMRI, multi-echo): a ``(t, z, y, x)`` array with one Geometry.

3D operations take one volume (:meth:`MultiVolume.volume`); ``info``, ``convert`` (4D NIfTI,
NRRD, MetaImage) and the napari reader (a 4D layer) take the whole series.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_medseg.errors import InvalidInputError
from napari_medseg.volume import Geometry, Volume

__all__ = ["MultiVolume", "write_multivolume", "MULTIVOLUME_SUFFIXES"]

#: Output formats that hold a 4D series.
MULTIVOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass(frozen=True, eq=False)
class MultiVolume:
    """Volumes sharing one grid, stacked along a first (volume) axis.

    Parameters
    ----------
    array : numpy.ndarray
        ``(t, z, y, x)``; ``t`` volumes (at least 1).
    geometry : Geometry
        The spatial grid (SimpleITK order, mm, LPS) shared by every volume.
    metadata : mapping of str to str
        Header fields that travel with the series.
    """

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 4 or array.shape[0] < 1:
            raise InvalidInputError(f"a multi-volume array must be (t, z, y, x); got shape {array.shape}")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def n_volumes(self) -> int:
        """Number of volumes ``t``."""
        return int(self.array.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(z, y, x)`` of one volume."""
        return tuple(self.array.shape[1:])  # type: ignore[return-value]

    @property
    def n_components(self) -> int:
        """1: each voxel of each volume is a scalar."""
        return 1

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in mm in array axis order."""
        return self.geometry.spacing_zyx

    def volume(self, index: int) -> Volume:
        """Volume ``index`` (0-based) as a 3D :class:`Volume`.

        Raises
        ------
        InvalidInputError
            If ``index`` is not in ``0..n_volumes-1``.
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < self.n_volumes:
            raise InvalidInputError(
                f"volume={index!r}: this series has {self.n_volumes} volumes (0-based: 0..{self.n_volumes - 1})"
            )
        return Volume(self.array[int(index)], self.geometry, {**self.metadata, "dicom_volume": str(int(index))})


def write_multivolume(series: MultiVolume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a 4D series as one 4D NIfTI, NRRD or MetaImage file, exactly at ``path``, verified and atomically.

    The spatial axes keep the geometry exactly (NIfTI ``dim[4]`` is the number of volumes; the
    4th spacing is 1).

    Raises
    ------
    InvalidInputError
        If the extension is not one of :data:`MULTIVOLUME_SUFFIXES` (DICOM and 2D formats hold
        one volume: choose it with ``--volume``), or the name would not be written as given.
    FileAccessError
        If the system refuses or cuts the write (no space, quota, file size limit, read-only,
        permission); an existing file at ``path`` is then byte-identical and no temporary is left.
    """
    from napari_medseg.volume import quiet_itk_warnings

    with quiet_itk_warnings():  # as write_volume: ITK's header warnings off for this write only
        return _write_multivolume(series, path, compress=compress)


def _write_multivolume(series: MultiVolume, path: str | os.PathLike, *, compress: bool) -> Path:
    import SimpleITK as sitk

    from napari_medseg.outputs import check_output_name, write_file
    from napari_medseg.volume import _quiet_c_stderr, _verify_staged, _write_failure, volume_format

    target = Path(path)
    name = target.name.lower()
    if not name.endswith(MULTIVOLUME_SUFFIXES):
        raise InvalidInputError(
            f"{target}: a {series.n_volumes}-volume series can be written as {', '.join(MULTIVOLUME_SUFFIXES)}; "
            "for other formats choose one volume with --volume K"
        )
    check_output_name(target, option="path")  # lower-case extension, not an existing folder
    array = series.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.JoinSeries([sitk.GetImageFromArray(np.ascontiguousarray(a)) for a in array])
    g = series.geometry
    direction = np.eye(4)
    direction[:3, :3] = g.direction_matrix
    image.SetSpacing((*g.spacing, 1.0))
    image.SetOrigin((*g.origin, 0.0))
    image.SetDirection(tuple(direction.ravel()))
    for key, value in series.metadata.items():
        if not name.endswith((".nii", ".nii.gz")):
            image.SetMetaData(str(key), str(value))
    use_compression = compress and not name.endswith(".nii")
    fmt = volume_format(target)
    suffix = next(s for s in MULTIVOLUME_SUFFIXES if name.endswith(s))

    def write(staged: Path) -> None:
        try:
            with _quiet_c_stderr():
                sitk.WriteImage(image, str(staged), use_compression)
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[-1]
            failure = _write_failure(target, staged.parent, detail, array.nbytes, known_only=True)
            raise (failure or InvalidInputError(f"{target}: cannot write this series ({detail})")) from None

    def verify(staged: Path) -> None:
        # SimpleITK does not report a short NIfTI write: the data is checked against the header
        problem = _verify_staged(fmt, [staged], Volume(array.reshape(-1, *array.shape[2:])), use_compression)
        if problem is None:  # the header read back names every volume
            size = sitk.ImageFileReader()
            size.SetFileName(str(staged))
            size.ReadImageInformation()
            if tuple(size.GetSize()) != tuple(image.GetSize()):
                problem = f"the written header holds {size.GetSize()} voxels, not {image.GetSize()}"
        if problem:
            raise _write_failure(target, staged.parent, problem, array.nbytes)

    # a plain staged name: SimpleITK rewrites names such as x.nii.gz.nii.gz
    return write_file(target, write, verify, staged_name="image" + suffix)
