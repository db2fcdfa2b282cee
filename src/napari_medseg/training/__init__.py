"""Training: losses, mixup and augmentation (the trainer, datasets and configs build on these).

Importing this package loads only torch; :mod:`napari_medseg.training.augment` (which imports
MONAI's transforms) loads on first use of :func:`build_augmentation`.
"""

from __future__ import annotations

from napari_medseg.training.losses import LossName, get_loss, loss_parameters, target_to_probabilities
from napari_medseg.training.mixup import Mixup, mixup

__all__ = [
    "LossName",
    "get_loss",
    "loss_parameters",
    "target_to_probabilities",
    "Mixup",
    "mixup",
    "build_augmentation",
    "Augmentation",
]


def __getattr__(name: str):
    if name in ("build_augmentation", "Augmentation"):
        from napari_medseg.training import augment

        return getattr(augment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
