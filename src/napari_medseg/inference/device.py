"""Where the network runs: the device names and :func:`resolve_device`."""

from __future__ import annotations

import torch

from napari_medseg.choices import Device, parse_device  # Device lives in the torch-free choices; old import path kept
from napari_medseg.errors import InvalidInputError

__all__ = ["Device", "resolve_device"]


def resolve_device(device: str | Device | torch.device = "auto") -> torch.device:
    """The torch device for ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Raises
    ------
    InvalidInputError
        If the name is unknown or that device is not available on this machine.
    """
    if isinstance(device, torch.device):
        return device
    kind, index = parse_device(device)
    cuda_ok = torch.cuda.is_available()
    mps_ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if kind == Device.AUTO:
        return torch.device("cuda" if cuda_ok else "mps" if mps_ok else "cpu")
    if kind == Device.CUDA and not cuda_ok:
        raise InvalidInputError(f"device={device!r}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    if kind == Device.MPS and not mps_ok:
        raise InvalidInputError(f"device={device!r}: MPS is not available on this machine (use 'auto' or 'cpu')")
    if kind == Device.CUDA and index is not None and index >= torch.cuda.device_count():
        raise InvalidInputError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(kind.value if index is None else f"{kind.value}:{index}")
