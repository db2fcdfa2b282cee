"""The model grid: the voxel grid a model's network sees, and the way there and back.

A model card (or a training config) fixes an orientation, a spacing and a normalisation. A
:class:`ModelGrid` built from the card and an input's geometry holds the one answer to "what does
the network see": the grid's geometry and shape (one size formula), the forward mapping of images
(linear, nearest-edge extrapolation at the rim) and labels (nearest), the normalisation, and the
inverse mapping of every output back onto the input's grid (probabilities and uncertainty linear,
labels nearest). :func:`napari_medseg.inference.predict`, the trainer, the progress pre-count and
:func:`napari_medseg.registry.card_warnings` all use it, so training sees exactly what inference
sees. Torch-free (the Slicer interface process and the faces import it).

A spacing within :data:`SPACING_RTOL` of the card's is not resampled (and not warned about): the
network sees the input's own voxels. MONAI's model is the same: one preprocessing chain, inverted
on the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from napari_medseg.normalization import normalize_intensities
from napari_medseg.volume import Geometry, Volume, reorient, resample, resampled_size, to_sitk

__all__ = ["SPACING_RTOL", "CardMismatchWarning", "ModelGrid", "spacing_matches"]

#: relative spacing difference below which an input is taken on its own grid (no resampling, no warning)
SPACING_RTOL = 0.01
#: absolute part of the spacing tolerance (mm), for spacings near 0
SPACING_ATOL_MM = 1e-6


class CardMismatchWarning(UserWarning):
    """The input differs from what the model card expects (spacing, orientation); it is adapted."""


def spacing_matches(spacing: Sequence[float], card_spacing: Sequence[float]) -> bool:
    """Whether ``spacing`` is the card's within :data:`SPACING_RTOL` (both ``(x, y, z)`` mm)."""
    return bool(np.allclose(spacing, card_spacing, rtol=SPACING_RTOL, atol=SPACING_ATOL_MM))


@dataclass(frozen=True)
class ModelGrid:
    """The grid a model sees for one input grid, and the mappings between the two.

    Parameters
    ----------
    input_geometry : Geometry
        The input's geometry.
    input_shape : tuple of 3 int
        The input's array shape ``(z, y, x)``.
    orientation : str, optional
        The model's orientation code (e.g. ``"RAS"``); None keeps the input's.
    spacing : tuple of 3 float, optional
        The model's spacing in mm ``(x, y, z)``; None keeps the input's.
    normalization : NormalizationSpec, optional
        The model's intensity normalisation (None keeps the values).

    Examples
    --------
    >>> g = Geometry((1.0, 1.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    >>> ModelGrid(g, (10, 20, 20), spacing=(1.0, 1.0, 1.5)).shape
    (33, 20, 20)
    """

    input_geometry: Geometry
    input_shape: tuple[int, int, int]
    orientation: str | None = None
    spacing: tuple[float, float, float] | None = None
    normalization: Any = None

    @classmethod
    def from_card(cls, card: Any, geometry: Geometry, shape: Sequence[int]) -> ModelGrid:
        """The grid of ``card`` (a ModelCard, or anything with ``orientation``, ``spacing`` and
        ``normalization``, such as a TrainConfig) for an input of ``geometry`` and ``shape``
        (``(z, y, x)``; a trailing channel axis is ignored)."""
        orientation = getattr(card, "orientation", None)
        spacing = getattr(card, "spacing", None)
        return cls(
            geometry,
            tuple(int(n) for n in tuple(shape)[:3]),
            orientation.upper() if orientation else None,
            tuple(float(s) for s in spacing) if spacing is not None else None,
            getattr(card, "normalization", None),
        )

    @classmethod
    def for_volume(cls, card: Any, volume: Volume) -> ModelGrid:
        """:meth:`from_card` for ``volume``'s geometry and shape."""
        return cls.from_card(card, volume.geometry, volume.shape)

    # ------------------------------------------------------------------------------- the grid
    @property
    def reoriented(self) -> bool:
        """Whether the input's axes are permuted/flipped to the card's orientation (exact)."""
        return self.orientation is not None and self.input_geometry.orientation != self.orientation

    @cached_property
    def _oriented(self) -> tuple[Geometry, tuple[int, int, int]]:
        """Geometry and shape after reorientation (what :func:`~napari_medseg.volume.reorient`
        gives, computed from the header alone, as ITK's DICOMOrient does: permute, then flip)."""
        g = self.input_geometry
        if not self.reoriented:
            return g, self.input_shape
        probe = reorient(Volume(np.zeros((1, 1, 1), np.uint8), g), self.orientation).geometry
        d_in, d_out = g.direction_matrix, probe.direction_matrix
        perm = [int(i) for i in np.argmax(np.abs(d_out.T @ d_in), axis=1)]  # output axis i <- input axis perm[i]
        size_in = self.input_shape[::-1]
        size = tuple(size_in[i] for i in perm)
        flipped = [float(d_out[:, i] @ d_in[:, perm[i]]) < 0 for i in range(3)]
        corner = [0, 0, 0]
        for i, flip in enumerate(flipped):
            if flip:
                corner[perm[i]] = size_in[perm[i]] - 1
        image = to_sitk(Volume(np.zeros((1, 1, 1), np.uint8), g))
        origin = tuple(float(v) for v in image.TransformIndexToPhysicalPoint(corner))
        geometry = Geometry(tuple(g.spacing[i] for i in perm), origin, probe.direction)
        return geometry, (size[2], size[1], size[0])

    @property
    def resampled(self) -> bool:
        """Whether the (reoriented) input is resampled to the card's spacing (differs by more
        than :data:`SPACING_RTOL`)."""
        return self.spacing is not None and not spacing_matches(self._oriented[0].spacing, self.spacing)

    @property
    def identity(self) -> bool:
        """Whether the model sees the input's own grid (neither reoriented nor resampled)."""
        return not self.reoriented and not self.resampled

    @property
    def input_spacing(self) -> tuple[float, float, float]:
        """The input's spacing in the model's axis order (x, y, z after reorientation), mm."""
        return self._oriented[0].spacing

    @cached_property
    def geometry(self) -> Geometry:
        """The model grid's geometry: reoriented, then the card's spacing with the same first
        voxel centre and direction."""
        oriented = self._oriented[0]
        if not self.resampled:
            return oriented
        return Geometry(self.spacing, oriented.origin, oriented.direction)

    @cached_property
    def shape(self) -> tuple[int, int, int]:
        """The model grid's shape ``(z, y, x)``: ``round(size * input spacing / spacing)`` per axis."""
        oriented_geometry, oriented_shape = self._oriented
        if not self.resampled:
            return oriented_shape
        return resampled_size(oriented_shape, oriented_geometry.spacing, self.spacing)

    # ------------------------------------------------------------------------------- forward
    def image_to_model(self, volume: Volume) -> Volume:
        """An image (``(z, y, x)`` or ``(z, y, x, c)``) on the model grid, before normalisation.

        Reorientation is exact; resampling is linear in float32 and points past the input's last
        voxel centre take the nearest edge value (an upsampled axis repeats its edge slice).
        Without either the volume itself comes back (not copied).
        """
        vol = reorient(volume, self.orientation) if self.reoriented else volume
        if not self.resampled:
            return vol
        as_float = Volume(vol.array.astype(np.float32, copy=False), vol.geometry)
        out = resample(as_float, geometry=self.geometry, shape=self.shape, interpolation="linear", extrapolate_nearest=True)
        return Volume(out.array, self.geometry)

    def labels_to_model(self, labels: Volume) -> Volume:
        """A label map on the model grid (nearest neighbour, the edge repeated like images)."""
        vol = reorient(labels, self.orientation) if self.reoriented else labels
        if not self.resampled:
            return vol
        out = resample(vol, geometry=self.geometry, shape=self.shape, interpolation="nearest", extrapolate_nearest=True)
        return Volume(out.array, self.geometry, labels.metadata)

    def normalize(self, channels_first: np.ndarray) -> np.ndarray:
        """The card's normalisation of a ``(C, z, y, x)`` array (float32 copy)."""
        return normalize_intensities(channels_first, self.normalization)

    def preprocess(self, volume: Volume) -> np.ndarray:
        """What the network sees: ``volume`` on the model grid, channels first, normalised
        (``(C, z, y, x)`` float32)."""
        on_grid = self.image_to_model(volume).array
        channels_first = np.moveaxis(on_grid, -1, 0) if on_grid.ndim == 4 else on_grid[None]
        return self.normalize(channels_first)

    # ------------------------------------------------------------------------------- inverse
    def to_input(self, array: np.ndarray, *, labels: bool = False) -> np.ndarray:
        """An output on the model grid (``(z, y, x[, c])``) back on the input's grid.

        Probabilities and uncertainty maps are interpolated linearly, ``labels=True`` maps with
        nearest neighbour; points outside the model grid take its nearest edge value. A grid
        that was only reoriented is permuted back exactly.
        """
        geometry, shape = self.input_geometry, self.input_shape
        if self.shape == shape and self.geometry.isclose(geometry, atol=1e-5):
            return array
        on_model = Volume(array, self.geometry)
        if not self.resampled:  # only reoriented: undo the permutation exactly
            back = reorient(on_model, geometry.orientation)
            if back.shape == shape and back.geometry.isclose(geometry, atol=1e-4):
                return back.array
        interpolation = "nearest" if labels else "linear"
        return resample(on_model, geometry=geometry, shape=shape, interpolation=interpolation, extrapolate_nearest=True).array
