"""What a fine-tune inherits from its base model's card: one rule for the CLI, napari and Slicer.

A fine-tune without its own config trains on the base model's grid and inputs: the card's
``spatial_dims``, ``channels``, ``spacing``, ``orientation``, ``normalization``, ``patch_size`` and
``overlap`` are taken over (a user value for these would make the weights meaningless), while the
run's own choices (epochs, loss, device...) stay the user's. The learning rate defaults to 1e-4
(fine-tuning moves pretrained weights a little), and the exported model is named
``<base>-finetuned`` unless named. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FINETUNE_LEARNING_RATE", "INHERITED_CARD_FIELDS", "finetune_name", "finetune_overrides"]

#: Default learning rate of a fine-tune (``medseg finetune --learning-rate``).
FINETUNE_LEARNING_RATE = 1e-4
#: Training-config fields a fine-tune takes from the base model's card (they fix the weights' meaning).
INHERITED_CARD_FIELDS = ("spatial_dims", "channels", "spacing", "orientation", "normalization", "patch_size", "overlap")


def finetune_name(card, case: str | None = None) -> str:
    """The default name of a fine-tuned model: ``<base>-finetuned`` or ``<base>-<case>-finetuned``
    (spaces become ``_``)."""
    parts = [card.name, *([case] if case else []), "finetuned"]
    return "-".join(parts).replace(" ", "_")


def finetune_overrides(card, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Training-config overrides for fine-tuning a model with ``card`` (no config file given).

    Parameters
    ----------
    card : napari_medseg.registry.ModelCard
        The base model's card.
    overrides : mapping
        The run's own overrides (``epochs``, ``learning_rate``, ``name``, ``finetune``...).

    Returns
    -------
    dict
        ``overrides`` with the card's grid and inputs (:data:`INHERITED_CARD_FIELDS`), the default
        name and the default learning rate filled in.
    """
    result = dict(overrides)
    result.setdefault("name", finetune_name(card))
    result.update(
        {
            "spatial_dims": card.spatial_dims,
            "channels": [c.model_dump() for c in card.channels],
            "spacing": card.spacing,
            "orientation": card.orientation,
            "normalization": card.normalization.model_dump(mode="json"),
            "patch_size": list(card.patch_size),
            "overlap": card.overlap,
        }
    )
    if result.get("learning_rate") is None:
        result["learning_rate"] = FINETUNE_LEARNING_RATE
    return result
