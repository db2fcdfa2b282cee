"""Training: losses, mixup and augmentation (the trainer, datasets and configs build on these).

Importing this package loads nothing heavy: the names below load their module (and torch, or
MONAI's transforms for :func:`build_augmentation`) on first use, so torch-free submodules such as
:mod:`napari_medseg.training.data` and :mod:`napari_medseg.training.config` can be used where
torch must not load (the Slicer module's interface process). The function ``mixup`` is imported
from its module, :func:`napari_medseg.training.mixup.mixup` (the package attribute of that name is
the submodule).
"""

from __future__ import annotations

import importlib

__all__ = [
    "LossName",
    "get_loss",
    "loss_parameters",
    "target_to_probabilities",
    "Mixup",
    "build_augmentation",
    "Augmentation",
]

_LAZY = {
    "LossName": "losses",
    "get_loss": "losses",
    "loss_parameters": "losses",
    "target_to_probabilities": "losses",
    "Mixup": "mixup",
    "build_augmentation": "augment",
    "Augmentation": "augment",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"napari_medseg.training.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
