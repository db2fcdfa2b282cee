"""Model files: sha256 checks, paths kept inside the model folder, and weights that never unpickle.

Weights are read once into memory, their sha256 is checked against the card, and the *same bytes*
are deserialised (no window between check and use): safetensors, or
``torch.load(weights_only=True)``, which refuses any object other than tensors and plain containers.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from napari_medseg.errors import FileFormatError, IntegrityError, InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, as 64 lowercase hex digits (read in chunks)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _inside(folder: Path, relative: str, *, what: str, card_path: Path | str) -> Path:
    """``folder / relative`` resolved, refusing anything that leaves ``folder``."""
    if "\\" in relative or PureWindowsPath(relative).drive or PurePosixPath(relative).is_absolute():
        raise IntegrityError(
            f"{card_path}: {what}={relative!r} is an absolute path or uses '\\'; paths in a card must be "
            "relative to the card's folder, '/' separated"
        )
    if ".." in PurePosixPath(relative).parts:
        raise IntegrityError(f"{card_path}: {what}={relative!r} contains '..'; paths in a card must stay in its folder")
    resolved = (folder / relative).resolve()
    if not resolved.is_relative_to(folder):
        raise IntegrityError(
            f"{card_path}: {what}={relative!r} resolves to {resolved}, outside the model folder {folder} "
            "(a symlink pointing out?); refusing it"
        )
    return resolved


def _mismatch(path: Path, card_path: Path, expected: str, actual: str) -> IntegrityError:
    return IntegrityError(
        f"{path}: sha256 mismatch: expected {expected} (from {card_path}), actual {actual}; the file is "
        "corrupt or was modified, refusing to use it"
    )


def _read_checked(path: Path, expected: str, *, card_path: Path) -> bytes:
    if not path.is_file():
        raise FileFormatError(f"{path}: file named by {card_path} is missing")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise _mismatch(path, card_path, expected, actual)
    return data


def _state_dict_from(obj: Any, *, path: Path) -> dict[str, torch.Tensor]:
    import torch

    def is_state_dict(candidate: Any) -> bool:
        return (
            isinstance(candidate, Mapping)
            and len(candidate) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in candidate.items())
        )

    if is_state_dict(obj):
        state = dict(obj)
    else:
        # a training checkpoint: {"model": state_dict, "optimizer": ...} (MONAI's CheckpointSaver)
        keys = ("state_dict", "model", "network", "model_state_dict", "net")
        inner = [obj[k] for k in keys if isinstance(obj, Mapping) and is_state_dict(obj.get(k))]
        if not inner:
            raise FileFormatError(
                f"{path}: holds no state dict (a mapping of parameter names to tensors, directly or under "
                f"one of {', '.join(keys)})"
            )
        state = dict(inner[0])
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _decode_weights(data: bytes, *, path: Path) -> dict[str, torch.Tensor]:
    """Deserialise weight bytes without ever running pickled code."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise FileFormatError(f"{path}: not a valid safetensors file ({exc})") from None
    import pickle

    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileFormatError(
            f"{path}: refused: the file holds Python objects other than tensors, and unpickling them "
            "could run arbitrary code; save model.state_dict() as .safetensors (or with torch.save) "
            f"instead (torch.load weights_only=True: {first})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise FileFormatError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {exc})") from None
    return _state_dict_from(obj, path=path)


def _encode_weights(state_dict: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None) -> bytes:
    import torch
    from safetensors.torch import save

    if not isinstance(state_dict, Mapping) or not state_dict:
        raise InvalidInputError("state_dict must be a non-empty mapping of parameter names to tensors")
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidInputError(
                f"state_dict[{key!r}] is a {type(value).__name__}; expected tensors under string keys "
                "(pass model.state_dict())"
            )
        # clone: safetensors refuses tensors that share memory (tied weights)
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    return save(tensors, metadata=dict(metadata) if metadata else None)
