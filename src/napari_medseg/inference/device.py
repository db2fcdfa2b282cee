"""Where the network runs: the device names and :func:`resolve_device`."""

from __future__ import annotations

from enum import StrEnum

import torch

from napari_medseg._options import look_up_option
from napari_medseg.errors import InvalidInputError

__all__ = ["Device", "resolve_device"]


class Device(StrEnum):
    """Where the network runs: ``auto`` picks CUDA, then MPS, then the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"



def resolve_device(device: str | Device | torch.device = "auto") -> torch.device:
    """The torch device for ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Raises
    ------
    InvalidInputError
        If the name is unknown or that device is not available on this machine.
    """
    if isinstance(device, torch.device):
        return device
    text = str(device).strip().lower()
    base, _, index = text.partition(":")
    kind = look_up_option(base, Device, name="device")
    cuda_ok = torch.cuda.is_available()
    mps_ok = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if kind == Device.AUTO:
        return torch.device("cuda" if cuda_ok else "mps" if mps_ok else "cpu")
    if kind == Device.CUDA and not cuda_ok:
        raise InvalidInputError(f"device={device!r}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    if kind == Device.MPS and not mps_ok:
        raise InvalidInputError(f"device={device!r}: MPS is not available on this machine (use 'auto' or 'cpu')")
    return torch.device(f"{kind.value}:{index}" if index else kind.value)
