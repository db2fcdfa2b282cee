"""Synthetic training images from tissue probability maps, in the spirit of SynthSeg.

Given tissue probability maps (e.g. nilearn's MNI152 grey and white matter maps), each call makes
a new training case: the maps are deformed (random affine + smooth elastic field), every tissue
gets a random mean intensity and noise level, partial volume comes from the soft maps, and the
image is blurred, multiplied by a smooth bias field, degraded in resolution along a random axis
and given noise. The label map is the deformed maps' argmax (a tissue needs probability >= 0.5,
else background), the same rule as :func:`napari_medseg.sample_data.mni152_tissue_labels`.

Intensity prior: unlike SynthSeg's fully random contrasts, tissue means are drawn so that
``outside < CSF < grey matter < white matter`` (a T1-like ordering with wide random ranges).
That keeps the demo model trainable on two CPU cores in the time budget; the real T1 image is
never used, so evaluating on it is an honest test of transfer from synthetic data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_medseg.errors import InvalidInputError

__all__ = ["HEAD_CLASSES", "brain_region", "head_layers", "synthesize_case", "synthesize_head_case"]


def brain_region(gm: np.ndarray, wm: np.ndarray, *, threshold: float = 0.1, closing_voxels: int = 3) -> np.ndarray:
    """Where the brain (tissue plus enclosed CSF) is, derived from the tissue maps only.

    ``gm + wm >= threshold``, closed with a ball of ``closing_voxels`` and hole-filled, so the
    ventricles and sulci between tissue count as brain (CSF) and nothing comes from a T1 image.
    """
    tissue = (gm + wm) >= threshold
    ball = ndimage.generate_binary_structure(3, 1)
    closed = ndimage.binary_closing(tissue, structure=ball, iterations=closing_voxels, border_value=0)
    return ndimage.binary_fill_holes(closed | tissue)


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, *, control_points: int, amplitude: float, order: int = 3) -> np.ndarray:
    coarse = rng.standard_normal([control_points] * len(shape)) * amplitude
    zoom = [n / control_points for n in shape]
    return ndimage.zoom(coarse, zoom, order=order, mode="nearest")[tuple(slice(0, n) for n in shape)]


def _deformation_coordinates(shape: tuple[int, int, int], rng: np.random.Generator, *, max_rotation_deg: float, scale_range: tuple[float, float], elastic_voxels: float) -> np.ndarray:
    centre = (np.array(shape) - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    cz, cy, cx = np.cos(angles)
    sz, sy, sx = np.sin(angles)
    rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    matrix = rz @ ry @ rx @ np.diag(1.0 / rng.uniform(*scale_range, 3))
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    coords = (matrix @ grid).reshape(3, *shape) + centre[:, None, None, None]
    for axis in range(3):
        coords[axis] += _smooth_field(shape, rng, control_points=5, amplitude=elastic_voxels)
    return coords.astype(np.float32)


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner effects on a clean synthetic image: blur, thick slices, bias field, gamma, noise."""
    shape = image.shape
    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.0, 1.0, 3))
    if rng.random() < 0.3:  # thick slices along one axis, then back to the grid
        axis, factor = int(rng.integers(3)), rng.uniform(1.5, 3.0)
        zoom = [1.0, 1.0, 1.0]
        zoom[axis] = 1.0 / factor
        small = ndimage.zoom(image, zoom, order=1)
        image = ndimage.zoom(small, [n / m for n, m in zip(shape, small.shape)], order=1)[: shape[0], : shape[1], : shape[2]]
        image = np.pad(image, [(0, n - m) for n, m in zip(shape, image.shape)], mode="edge")
    bias = np.exp(_smooth_field(shape, rng, control_points=4, amplitude=rng.uniform(0.0, 0.25))).astype(np.float32)
    image = image * bias
    gamma = float(np.exp(rng.normal(0.0, 0.2)))
    top = float(np.percentile(image, 99.9)) or 1.0
    image = np.clip(image / top, 0.0, None) ** gamma * top
    image = image + rng.uniform(0.0, 4.0) * rng.standard_normal(shape, dtype=np.float32)
    image = np.clip(image, 0.0, None).astype(np.float32)
    return image


def synthesize_case(
    gm: np.ndarray,
    wm: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 12.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    elastic_voxels: float = 3.0,
    skull_stripped_probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic (image, labels) pair on the maps' grid.

    Parameters
    ----------
    gm, wm : ndarray, float, shape (z, y, x)
        Grey and white matter probabilities in [0, 1].
    brain : ndarray, bool, shape (z, y, x)
        The brain region (:func:`brain_region`); brain voxels that are not tissue are CSF.
    rng : numpy.random.Generator
    max_rotation_deg : float, default 12
        Random rotation about each axis, uniform in [-max, max] degrees.
    scale_range : (float, float), default (0.9, 1.1)
        Random scale per axis.
    elastic_voxels : float, default 3
        Standard deviation (voxels) of the smooth elastic displacement at its control points.
    skull_stripped_probability : float, default 0.5
        Probability that everything outside the (deformed) brain region is set to exactly 0, as
        in skull-stripped images; otherwise the outside has a low random intensity and noise.

    Returns
    -------
    image : ndarray, float32, shape (z, y, x)
        Intensities roughly in [0, 255].
    labels : ndarray, uint8
        0 background, 1 grey matter, 2 white matter.

    Raises
    ------
    InvalidInputError
        If the maps do not share one 3D shape.
    """
    if gm.shape != wm.shape or gm.shape != brain.shape or gm.ndim != 3:
        raise InvalidInputError(f"gm {gm.shape}, wm {wm.shape} and brain {brain.shape} must be one 3D shape")
    coords = _deformation_coordinates(gm.shape, rng, max_rotation_deg=max_rotation_deg, scale_range=scale_range, elastic_voxels=elastic_voxels)
    p_gm = ndimage.map_coordinates(gm.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    p_wm = ndimage.map_coordinates(wm.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    p_brain = ndimage.map_coordinates(brain.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    p_csf = np.clip(p_brain - p_gm - p_wm, 0.0, 1.0)
    p_out = np.clip(1.0 - p_gm - p_wm - p_csf, 0.0, 1.0)

    # T1-like ordering with wide random ranges (see the module docstring)
    mu_out = rng.uniform(0.0, 15.0)
    mu_csf = rng.uniform(20.0, 90.0)
    mu_gm = rng.uniform(max(mu_csf + 25.0, 100.0), 175.0)
    mu_wm = rng.uniform(mu_gm + 25.0, mu_gm + 90.0)
    image = np.zeros(gm.shape, np.float32)
    for p, mu in ((p_out, mu_out), (p_csf, mu_csf), (p_gm, mu_gm), (p_wm, mu_wm)):
        sigma = rng.uniform(1.0, 12.0)
        image += p * (mu + sigma * rng.standard_normal(gm.shape, dtype=np.float32))

    image = _degrade(image, rng)
    if rng.random() < skull_stripped_probability:
        # skull-stripped images (like the MNI152 template) are exactly 0 outside the brain
        image[p_brain < 0.5] = 0.0

    tissue = np.stack([p_gm, p_wm])
    labels = (np.argmax(tissue, axis=0) + 1).astype(np.uint8)
    labels[tissue.max(axis=0) < 0.5] = 0
    return image, labels


#: class value -> name of the synthetic head layers made by :func:`head_layers`; values from
#: ``FIRST_SOFT_TISSUE_CLASS`` on are random soft-tissue blobs (muscle, fat, glands, bone, air...)
HEAD_CLASSES = {
    0: "air",
    1: "brain",
    2: "extra-cerebral CSF",
    3: "inner table",
    4: "diploe",
    5: "outer table",
    6: "scalp",
    7: "subcutaneous fat",
    8: "eye",
}
FIRST_SOFT_TISSUE_CLASS = 9
#: (low, high) thickness in mm of the shells around the brain, inside out (classes 2-7)
SHELL_THICKNESS_MM = {2: (0.5, 4.0), 3: (1.0, 2.5), 4: (1.0, 5.0), 5: (1.0, 2.5), 6: (1.5, 4.0), 7: (1.0, 6.0)}


def _ellipsoid(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def head_layers(
    brain: np.ndarray,
    rng: np.random.Generator,
    *,
    voxel_mm: float = 1.0,
    soft_tissue_classes: int = 5,
) -> np.ndarray:
    """A procedural head around a brain mask: CSF, skull (tables and diploe), scalp, face and neck.

    SynthStrip-style geometry: shells at random, smoothly varying distances from the brain
    (extra-cerebral CSF, inner table, diploe, outer table, scalp, fat; thicknesses drawn from
    :data:`SHELL_THICKNESS_MM`), then a lower head (face, jaw and neck ellipsoids placed from the
    brain's bounding box, with two eyes) filled with random soft-tissue blobs. Only shape is made
    here; intensities come later (:func:`synthesize_head_case`).

    Parameters
    ----------
    brain : ndarray, bool, shape (z, y, x)
        The brain region on a grid in RAS order: z runs inferior to superior, y posterior to
        anterior, x left to right (napari-medseg's RAS volumes). The grid should leave room
        for the head: about 25 mm around the brain and 40 mm or more below it.
    rng : numpy.random.Generator
    voxel_mm : float, default 1
        Isotropic voxel size, to turn the thicknesses in mm into voxels.
    soft_tissue_classes : int, default 5
        How many random soft-tissue classes fill the face and neck.

    Returns
    -------
    ndarray, uint8, shape (z, y, x)
        Class of every voxel, values as in :data:`HEAD_CLASSES` plus
        ``FIRST_SOFT_TISSUE_CLASS + k`` for the soft-tissue blobs. The brain keeps class 1
        exactly where ``brain`` is true.

    Raises
    ------
    InvalidInputError
        If ``brain`` is not 3D, is empty, or ``voxel_mm`` is not positive.
    """
    brain = np.asarray(brain, dtype=bool)
    if brain.ndim != 3 or not brain.any():
        raise InvalidInputError(f"brain: expected a non-empty 3D mask, got shape {brain.shape}")
    if not voxel_mm > 0:
        raise InvalidInputError(f"voxel_mm: expected a positive size in mm, got {voxel_mm}")
    shape = brain.shape
    distance_mm = ndimage.distance_transform_edt(~brain, sampling=voxel_mm).astype(np.float32)
    classes = np.zeros(shape, np.uint8)

    # lower head: face, jaw and neck ellipsoids placed relative to the brain's bounding box
    index = np.argwhere(brain)
    lo, hi = index.min(axis=0).astype(float), index.max(axis=0).astype(float)
    size = hi - lo  # (height, length, width) in voxels
    centre = (lo + hi) / 2
    jitter = lambda: rng.uniform(0.85, 1.15)  # noqa: E731 - random factor for one radius
    lower = _ellipsoid(
        shape, np.array([lo[0] + 0.2 * size[0], centre[1] + 0.1 * size[1], centre[2]]), np.array([0.45 * size[0] * jitter(), 0.5 * size[1] * jitter(), 0.42 * size[2] * jitter()])
    )
    face = _ellipsoid(
        shape, np.array([lo[0] + 0.15 * size[0], hi[1] - 0.15 * size[1], centre[2]]), np.array([0.3 * size[0] * jitter(), 0.3 * size[1] * jitter(), 0.33 * size[2] * jitter()])
    )
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    neck_centre = (centre[1] - 0.05 * size[1], centre[2])
    neck_radii = (0.3 * size[1] * jitter(), 0.3 * size[2] * jitter())
    neck = (((grids[1] - neck_centre[0]) / neck_radii[0]) ** 2 + ((grids[2] - neck_centre[1]) / neck_radii[1]) ** 2 <= 1.0) & (
        grids[0] <= lo[0] + 0.15 * size[0]
    )
    below_middle = grids[0] <= centre[0] - 0.05 * size[0]
    lower_head = (lower | face | neck) & below_middle
    if lower_head.any():
        # soft tissue: the argmax of smoothed noise fields gives blob-shaped random classes
        # (on a grid 3x coarser, then linearly upsampled: the blobs are smooth anyway)
        sigma = rng.uniform(1.0, 3.0) / voxel_mm
        coarse = tuple(-(-n // 3) for n in shape)
        fields = [ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma) for _ in range(soft_tissue_classes)]
        blobs = np.argmax(np.stack(fields), axis=0).astype(np.uint8) + FIRST_SOFT_TISSUE_CLASS
        blobs = np.repeat(np.repeat(np.repeat(blobs, 3, axis=0), 3, axis=1), 3, axis=2)[: shape[0], : shape[1], : shape[2]]
        classes[lower_head] = blobs[lower_head]
        for side in (-1.0, 1.0):
            eye_centre = np.array(
                [lo[0] + 0.25 * size[0] + rng.uniform(-5, 5) / voxel_mm, hi[1] - 0.1 * size[1] + rng.uniform(-5, 5) / voxel_mm, centre[2] + side * (0.2 * size[2] + rng.uniform(-4, 4) / voxel_mm)]
            )
            classes[_ellipsoid(shape, eye_centre, np.full(3, rng.uniform(10.0, 13.0) / voxel_mm))] = 8

    # shells around the brain; each boundary varies smoothly in space
    outer_mm = np.zeros(shape, np.float32)
    for value, (low, high) in SHELL_THICKNESS_MM.items():
        base = rng.uniform(low, high)
        thickness = base * np.exp(_smooth_field(shape, rng, control_points=6, amplitude=0.25, order=1)).astype(np.float32)
        inner_mm = outer_mm
        outer_mm = inner_mm + thickness
        classes[(distance_mm > inner_mm) & (distance_mm <= outer_mm)] = value
    classes[brain] = 1
    return classes


def synthesize_head_case(
    gm: np.ndarray,
    wm: np.ndarray,
    brain: np.ndarray,
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 12.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    elastic_voxels: float = 3.0,
    skull_stripped_probability: float = 0.25,
    random_contrast_probability: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic T1-like HEAD (brain inside CSF, skull, scalp, face, neck) and its labels.

    The brain is made as in :func:`synthesize_case` (deformed tissue maps, T1-like ordering
    ``CSF < grey < white`` with wide random ranges); the head around it comes from
    :func:`head_layers` on the deformed brain. Each head class gets a random intensity: by
    default a T1-like range (dark bone and air, bright fat and diploe, grey muscle and scalp),
    and with ``random_contrast_probability`` any value in [0, 255], SynthSeg-style, so that the
    model learns to tell brain from head by shape and context, not by brightness. The labels
    are grey and white matter only: everything outside the brain is background (0).

    Parameters
    ----------
    gm, wm, brain, rng, max_rotation_deg, scale_range, elastic_voxels
        As in :func:`synthesize_case`; the grid must leave room for the head (see
        :func:`head_layers`) and be in RAS (z, y, x) order with 1 mm voxels.
    skull_stripped_probability : float, default 0.25
        Probability that the case is skull-stripped instead (0 outside the brain).
    random_contrast_probability : float, default 0.3
        Probability, per head class, of a fully random intensity instead of a T1-like one.

    Returns
    -------
    image : ndarray, float32, shape (z, y, x)
        Intensities roughly in [0, 255].
    labels : ndarray, uint8
        0 background (also every voxel outside the brain), 1 grey matter, 2 white matter.

    Raises
    ------
    InvalidInputError
        If the maps do not share one 3D shape.
    """
    if gm.shape != wm.shape or gm.shape != brain.shape or gm.ndim != 3:
        raise InvalidInputError(f"gm {gm.shape}, wm {wm.shape} and brain {brain.shape} must be one 3D shape")
    shape = gm.shape
    coords = _deformation_coordinates(shape, rng, max_rotation_deg=max_rotation_deg, scale_range=scale_range, elastic_voxels=elastic_voxels)
    p_gm = ndimage.map_coordinates(gm.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    p_wm = ndimage.map_coordinates(wm.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    p_brain = ndimage.map_coordinates(brain.astype(np.float32), coords, order=1, mode="constant", cval=0.0)
    del coords
    p_tissue = np.clip(p_gm + p_wm, 0.0, 1.0)
    p_csf = np.clip(p_brain - p_tissue, 0.0, 1.0)
    p_head = np.clip(1.0 - p_tissue - p_csf, 0.0, 1.0)
    inside = p_brain >= 0.5
    classes = head_layers(inside, rng)

    mu_csf = rng.uniform(20.0, 90.0)
    mu_gm = rng.uniform(max(mu_csf + 25.0, 100.0), 175.0)
    mu_wm = rng.uniform(mu_gm + 25.0, mu_gm + 90.0)
    # T1-like (low, high) means of the head classes; soft-tissue blobs take any value
    t1_like = {0: (0.0, 15.0), 1: (mu_csf, mu_csf), 2: (mu_csf * 0.7, mu_csf * 1.3), 3: (0.0, 40.0), 4: (40.0, 230.0), 5: (0.0, 40.0), 6: (50.0, 170.0), 7: (140.0, 255.0), 8: (0.0, 70.0)}
    n_classes = int(classes.max()) + 1
    means = np.zeros(n_classes, np.float32)
    sigmas = np.zeros(n_classes, np.float32)
    for value in range(n_classes):
        low, high = t1_like.get(value, (0.0, 255.0))
        if value >= 2 and rng.random() < random_contrast_probability:
            low, high = 0.0, 255.0
        means[value] = rng.uniform(low, high)
        sigmas[value] = rng.uniform(1.0, 12.0)
    means[0] = rng.uniform(0.0, 15.0)  # air stays dark: the MR signal of air is noise
    head_image = means[classes] + sigmas[classes] * rng.standard_normal(shape, dtype=np.float32)
    head_image = ndimage.gaussian_filter(head_image, rng.uniform(0.3, 1.0))  # no hard staircase edges between layers
    del classes

    image = p_head * head_image
    del head_image
    for p, mu in ((p_csf, mu_csf), (p_gm, mu_gm), (p_wm, mu_wm)):
        sigma = rng.uniform(1.0, 12.0)
        image += p * (mu + sigma * rng.standard_normal(shape, dtype=np.float32))
    image = _degrade(image.astype(np.float32), rng)
    if rng.random() < skull_stripped_probability:
        image[~inside] = 0.0

    tissue = np.stack([p_gm, p_wm])
    labels = (np.argmax(tissue, axis=0) + 1).astype(np.uint8)
    labels[tissue.max(axis=0) < 0.5] = 0
    labels[~inside] = 0
    return image, labels
