"""How a model card reads to a person: the one summary every face shows (no torch, no Qt).

``medseg models list`` (table and ``--json``) shows :func:`model_summary`; ``medseg models show``
and the napari Models widget show :func:`card_text` (the whole card as YAML under a header);
the napari Segment widget (as HTML, with label colours) and the Slicer module show
:func:`card_facts` / :func:`card_summary_text`. A card field shown anywhere is written here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from napari_medseg.registry import ModelCard, RegistryModel

__all__ = ["card_facts", "card_summary_text", "card_text", "card_yaml", "model_summary", "spacing_text"]


def spacing_text(card: ModelCard) -> str:
    """The card's expected spacing as ``"1 x 1 x 2"`` (mm, x y z), or ``"any"`` when it takes the input's own."""
    return "any" if card.spacing is None else " x ".join(f"{s:g}" for s in card.spacing)


def card_facts(card: ModelCard) -> list[tuple[str, str]]:
    """The card's facts a user chooses a model by, as ``(title, text)`` rows in reading order.

    Rows: ``model`` (name, version, task), ``description`` (if any), ``channels``, ``labels``
    (``"1 liver, 2 tumour"``; the background 0 is left out), ``spacing``, ``orientation``,
    ``grid`` (dimensions, patch, overlap), ``dropout`` and ``metrics`` (if any).

    """
    facts = [("model", f"{card.name} {card.version} ({card.task})")]
    if card.description:
        facts.append(("description", str(card.description)))
    facts.append(("channels", ", ".join(f"{c.name} ({c.modality})" for c in card.channels)))
    facts.append(("labels", ", ".join(f"{v} {card.labels[v].name}" for v in card.label_values if v != 0) or "none"))
    facts.append(("spacing", "the input's own" if card.spacing is None else f"{spacing_text(card)} mm (x, y, z)"))
    facts.append(("orientation", card.orientation or "the input's own"))
    facts.append(("grid", f"{card.spatial_dims}D, patch {' x '.join(map(str, card.patch_size))}, overlap {card.overlap:g}"))
    placement = ", ".join(str(p) for p in card.dropout.placement)
    facts.append(("dropout", f"{placement}, rate {card.dropout.rate:g}" if placement else f"none, rate {card.dropout.rate:g}"))
    if card.metrics:
        facts.append(("metrics", ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in card.metrics.items())))
    return facts


def card_summary_text(card: ModelCard) -> str:
    """:func:`card_facts` as plain lines ``"title: text"`` (the Slicer module's card box)."""
    return "\n".join(f"{title}: {text}" for title, text in card_facts(card))


def card_yaml(card: ModelCard) -> str:
    """Every field of the card as YAML (integer label keys kept), as written to ``model.yaml``."""
    import yaml

    data = card.model_dump(mode="json", exclude_none=True)
    data["labels"] = {int(k): v for k, v in data["labels"].items()}  # YAML keeps integer keys
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)


def card_text(model: RegistryModel, *, shadows: Sequence[Any] = ()) -> str:
    """The whole card as YAML under comment lines saying where it comes from and what it shadows.

    What ``medseg models show`` prints and the napari Models widget shows; the text stays valid YAML.
    """
    header = f"# {model.name} {model.card.version} ({model.source.value}: {model.folder})\n"
    header += "".join(f"# shadows {folder}\n" for folder in shadows)
    return header + card_yaml(model.card)


def model_summary(model: RegistryModel) -> dict[str, Any]:
    """One registry model as plain data: a row of ``medseg models list`` (and its ``--json``)."""
    card = model.card
    return {
        "name": card.name,
        "version": card.version,
        "task": card.task,
        "description": card.description,
        "architecture": card.architecture.name,
        "spatial_dims": card.spatial_dims,
        "channels": [c.modality for c in card.channels],
        "labels": {str(v): card.labels[v].name for v in card.label_values},
        "license": card.license,
        "sha256": model.sha256,
        "source": model.source.value,
        "folder": str(model.folder),
    }
