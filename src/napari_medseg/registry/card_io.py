"""Reading and writing card files: safe YAML or JSON in, validated :class:`ModelCard` out."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from napari_medseg._options import close_matches_message
from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.registry.card import _MAX_CARD_BYTES, CARD_FILENAMES, ModelCard


def _validation_message(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(card)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            msg += close_matches_message(str(err["loc"][0]), list(ModelCard.model_fields))
        parts.append(f"{loc}: {msg}")
    return f"{source}: invalid model card: " + "; ".join(parts)


def _validate_card(data: Any, *, source: str) -> ModelCard:
    if isinstance(data, ModelCard):
        return data
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"{source}: a model card must be a mapping of fields, got {type(data).__name__}")
    try:
        return ModelCard.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidInputError(_validation_message(exc, source)) from None


def _safe_yaml(text: str, *, source: str) -> Any:
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise FileFormatError(f"{source}: YAML aliases ('*name') are not allowed in a model card")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FileFormatError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise FileFormatError(f"{source}: not a model card: nested too deeply") from None


def read_card(path: str | os.PathLike) -> ModelCard:
    """Read and validate a card file (``.yaml``/``.yml`` or ``.json``).

    Parameters
    ----------
    path : str or PathLike
        The card file.

    Returns
    -------
    ModelCard

    Raises
    ------
    FileFormatError
        If the file is missing, larger than 1 MiB, or not valid YAML/JSON (or uses YAML aliases).
    InvalidInputError
        If a field is missing or invalid; the message names every offending field
        (e.g. ``labels.1.color.0: Input should be less than or equal to 1``).
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise FileFormatError(f"model card {path} does not exist or is not a file")
        if path.stat().st_size > _MAX_CARD_BYTES:
            raise FileFormatError(f"model card {path} is larger than {_MAX_CARD_BYTES} bytes; that is not a card")
        with open(path, "rb") as fh:  # bounded: the file may have grown since the stat
            raw = fh.read(_MAX_CARD_BYTES + 1)
    except OSError as exc:  # unreadable (permissions, I/O error): the user's situation, not a bug
        raise FileFormatError(f"model card {path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > _MAX_CARD_BYTES:
        raise FileFormatError(f"model card {path} is larger than {_MAX_CARD_BYTES} bytes; that is not a card")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FileFormatError(f"model card {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{path}: not valid JSON: {exc}") from None
        except RecursionError:
            raise FileFormatError(f"{path}: not a model card: nested too deeply") from None
    else:
        data = _safe_yaml(text, source=str(path))
    return _validate_card(data, source=str(path))


def _card_to_yaml(card: ModelCard) -> str:
    from napari_medseg.card_summary import card_yaml  # the one card-to-YAML, shown by every face

    return card_yaml(card)


def write_card(card: ModelCard, path: str | os.PathLike) -> Path:
    """Write ``card`` to ``path`` atomically, as YAML (``.yaml``/``.yml``) or JSON (``.json``)."""
    from napari_medseg._atomic import write_text_atomic

    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(card.model_dump(mode="json", exclude_none=True), indent=2) + "\n"
    else:
        text = _card_to_yaml(card)
    return write_text_atomic(path, text)


def find_card_file(folder: str | os.PathLike) -> Path | None:
    """The card file of a model folder (first of :data:`CARD_FILENAMES` present), or ``None``."""
    folder = Path(folder)
    for name in CARD_FILENAMES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None
