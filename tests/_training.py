"""A tiny labelled training set on disk for the training tests (test_trainer.py, test_cli_train.py)."""

from __future__ import annotations

import numpy as np

from napari_medseg.volume import Geometry, Volume, write_volume


def make_dataset(root, n_cases=4, shape=(12, 24, 24), seed=0):
    """Bright spheres (label 1) and a dim box (label 2) in noise, on an anisotropic grid."""
    rng = np.random.default_rng(seed)
    geometry = Geometry((1.0, 1.0, 2.0), (3.0, -4.0, 5.0))
    z, y, x = np.indices(shape)
    for i in range(n_cases):
        labels = np.zeros(shape, np.uint8)
        c = rng.integers(5, 19, 3)
        labels[((2 * (z - c[0] // 2)) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < 30] = 1
        labels[1:4, 2:8, 2:8] = 2
        image = np.where(labels == 1, 3.0, np.where(labels == 2, 1.5, 0.0)) + rng.normal(0, 0.4, shape)
        write_volume(Volume(image.astype(np.float32), geometry), root / "imagesTr" / f"case{i}.nii.gz")
        write_volume(Volume(labels, geometry), root / "labelsTr" / f"case{i}.nii.gz")
    return root
