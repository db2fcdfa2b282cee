"""Import entry points: models the field already has, converted into registry model folders.

The conversions live beside their runners (:mod:`napari_medseg.bundles` for MONAI bundles,
:mod:`napari_medseg.nnunet` for nnU-Net v2 result folders); these wrappers import them lazily, so
importing the registry loads neither MONAI nor torch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from napari_medseg.registry.model import RegistryModel

if TYPE_CHECKING:  # pragma: no cover
    from napari_medseg.registry.search import Registry


def import_monai_bundle(
    bundle_dir: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    name: str | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> RegistryModel:
    """Convert a MONAI bundle into a registry model folder: see :func:`napari_medseg.bundles.import_monai_bundle`."""
    from napari_medseg.bundles import import_monai_bundle as _import

    return _import(bundle_dir, folder, name=name, overwrite=overwrite, check=check)


def _bundle_name(bundle_dir: str | os.PathLike, *, name: str | None = None, metadata: Mapping | None = None) -> str:
    """The registry name for a bundle: ``name``, else the bundle folder's name, made safe."""
    from napari_medseg.bundles import bundle_name

    return bundle_name(bundle_dir, name=name)


def add_monai_bundle(
    bundle_dir: str | os.PathLike, registry: Registry, *, name: str | None = None, force: bool = False
) -> RegistryModel:
    """Convert a MONAI bundle (staged in a temporary folder) and add it to ``registry``'s user folder.

    What ``medseg models import-bundle --add``, the napari Models widget and the Slicer module call:
    the bundle is checked (network built, weights loaded strictly, one small forward pass) before
    anything reaches the registry, and :meth:`Registry.add` copies it atomically.

    Raises
    ------
    FileFormatError, InvalidInputError, IntegrityError
        As :func:`import_monai_bundle` and :meth:`Registry.add`; the registry is then unchanged.
    """
    with tempfile.TemporaryDirectory(prefix=".medseg-import-") as tmp:
        staged = import_monai_bundle(bundle_dir, Path(tmp) / "model", name=name)
        return registry.add(staged.folder, force=force)


def import_nnunet(
    result_folder: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    name: str | None = None,
    overwrite: bool = False,
) -> RegistryModel:
    """Convert an nnU-Net v2 result folder into a registry model folder: see :func:`napari_medseg.nnunet.import_nnunet`."""
    from napari_medseg.nnunet import import_nnunet as _import

    return _import(result_folder, folder, folds=folds, checkpoint=checkpoint, name=name, overwrite=overwrite)


def add_nnunet(
    result_folder: str | os.PathLike,
    registry: Registry,
    *,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    name: str | None = None,
    force: bool = False,
) -> RegistryModel:
    """Import an nnU-Net v2 result folder into ``registry``'s user folder: see :func:`napari_medseg.nnunet.add_nnunet`."""
    from napari_medseg.nnunet import add_nnunet as _add

    return _add(result_folder, registry, folds=folds, checkpoint=checkpoint, name=name, force=force)
