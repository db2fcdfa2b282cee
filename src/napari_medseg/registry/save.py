"""Writing model folders: :func:`save_model_folder`, atomic and verified before anything is replaced."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_medseg._atomic import atomic_directory
from napari_medseg.errors import InvalidInputError
from napari_medseg.registry.card import CARD_FILENAMES, ModelCard
from napari_medseg.registry.card_io import _validate_card, find_card_file, write_card
from napari_medseg.registry.model import RegistryModel, load_model_folder
from napari_medseg.registry.weights import _encode_weights, _inside

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _write_model(
    folder: Path, card: ModelCard, weights: bytes, extra: Mapping[str, bytes], *, card_name: str = "model.yaml"
) -> RegistryModel:
    clash = [k for k in extra if k.lower() in CARD_FILENAMES or k == card.weights.file]
    if clash:
        raise InvalidInputError(f"extra file names {clash} clash with the card or the weights file")
    _refuse_foreign_folder(folder)
    with atomic_directory(folder) as tmp:
        for relative, data in {card.weights.file: weights, **extra}.items():
            _inside(tmp.resolve(), relative, what="file", card_path=folder / card_name)
            destination = tmp / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
        write_card(card, tmp / card_name)
        # the new folder is verified (card re-read, every sha256) before it replaces an old one
        load_model_folder(tmp).verify()
    return load_model_folder(folder)


def _refuse_foreign_folder(folder: Path) -> None:
    """Refuse to replace an existing folder that is not a model folder (no card in it), even when
    asked to overwrite: only a model this program wrote is ever replaced (issue 11, class 3)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InvalidInputError(f"{folder}: exists and is not a folder; a model is written only into a new folder or over a model folder")
    if folder.is_dir() and any(folder.iterdir()) and find_card_file(folder) is None:
        raise InvalidInputError(
            f"{folder}: is a folder with other files and no model card; a model replaces only a model folder, "
            "so nothing in it is deleted (choose another folder)"
        )


def save_model_folder(
    folder: str | os.PathLike,
    *,
    card: ModelCard | Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
) -> RegistryModel:
    """Write a model folder: ``model.safetensors`` and ``model.yaml`` with the computed sha256s.

    The folder is written atomically (it appears complete or not at all).

    Parameters
    ----------
    folder : path
        The model folder to create.
    card : ModelCard or mapping
        The card; ``weights`` may be omitted from a mapping. ``weights`` is set to
        ``{file: "model.safetensors", sha256: <computed>}`` and ``files`` to ``extra_files``.
    state_dict : mapping of str to torch.Tensor
        ``network.state_dict()``; tensors are copied to the CPU.
    extra_files : mapping of str to bytes, optional
        Other files to store (relative path -> content); they are listed in ``files`` with their
        sha256.
    overwrite : bool, default False
        Replace ``folder`` if it exists and is not empty.

    Returns
    -------
    RegistryModel
        The written model (source ``path``).

    Raises
    ------
    InvalidInputError
        If the card is invalid (fields named), ``state_dict`` holds anything but tensors, or
        ``folder`` exists, is not empty and ``overwrite`` is false.
    IntegrityError
        If an ``extra_files`` path leaves the folder.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise InvalidInputError(f"{folder} exists and is not an empty folder; pass overwrite=True to replace it")
    data = card.model_dump(mode="python") if isinstance(card, ModelCard) else dict(card)
    name = data.get("name")
    weights = _encode_weights(state_dict, metadata={"napari_medseg.model": str(name)})
    extra = dict(extra_files or {})
    data["weights"] = {"file": "model.safetensors", "sha256": hashlib.sha256(weights).hexdigest()}
    data["files"] = [{"file": k, "sha256": hashlib.sha256(v).hexdigest()} for k, v in extra.items()]
    validated = _validate_card(data, source=f"card for {folder}")
    return _write_model(folder, validated, weights, extra)
