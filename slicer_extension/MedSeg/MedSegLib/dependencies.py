"""What the MedSeg module installs into Slicer's Python on first use, and how it knows it is there.

Pure logic (no Slicer, no network, no napari-medseg import): the module's widget calls
:func:`missing_requirements` (offline: it only reads installed package metadata) and, when
something is missing, installs torch through the PyTorch extension (``PyTorchUtils``) and then
:func:`pip_install_args` with ``slicer.util.pip_install``. Slicer's own SimpleITK and numpy are
never replaced: they are left out of the requirements and pinned by a constraints file, and
napari-medseg is installed without its napari/Qt extras.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "DISTRIBUTION",
    "MINIMUM_VERSION",
    "SLICER_PROVIDED",
    "TORCH_FROM_PYTORCHUTILS",
    "constraints_text",
    "failure_message",
    "installed_version",
    "missing_requirements",
    "pip_install_args",
]

#: the core's distribution name, installed without extras (no napari, no Qt)
DISTRIBUTION = "napari-medseg"
#: the oldest napari-medseg this module works with (it uses ``jobs`` with kind ``register``)
MINIMUM_VERSION = "0.1"
#: packages Slicer ships and that must not be replaced (its VTK/ITK builds are linked against them)
SLICER_PROVIDED = ("SimpleITK", "numpy", "vtk")
#: installed by the PyTorch extension (``PyTorchUtils.PyTorchUtilsLogic().installTorch``)
TORCH_FROM_PYTORCHUTILS = "torch"
#: imports that must work for the module to run its jobs (module -> distribution)
RUNTIME_IMPORTS = {"napari_medseg": DISTRIBUTION, "torch": TORCH_FROM_PYTORCHUTILS}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in re.split(r"[.+-]", text):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def installed_version(distribution: str, *, metadata_version: Callable[[str], str] | None = None) -> str | None:
    """The installed version of a distribution, or None (reads local metadata only: works offline)."""
    lookup = metadata_version or importlib.metadata.version
    try:
        return lookup(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(
    *,
    minimum_version: str = MINIMUM_VERSION,
    metadata_version: Callable[[str], str] | None = None,
) -> list[str]:
    """What still has to be installed: a subset of ``["torch", "napari-medseg"]``, in install order.

    ``torch`` comes first (from PyTorchUtils, so the right CUDA build is chosen), then
    ``napari-medseg`` (missing, or older than ``minimum_version``). An empty list means the module
    can run, also offline.

    Parameters
    ----------
    minimum_version : str, keyword-only
        Default :data:`MINIMUM_VERSION`.
    metadata_version : callable or None, keyword-only
        ``version(distribution) -> str`` raising ``PackageNotFoundError`` (default
        ``importlib.metadata.version``; tests pass a fake environment).
    """
    missing = []
    if installed_version(TORCH_FROM_PYTORCHUTILS, metadata_version=metadata_version) is None:
        missing.append(TORCH_FROM_PYTORCHUTILS)
    version = installed_version(DISTRIBUTION, metadata_version=metadata_version)
    if version is None or _version_tuple(version) < _version_tuple(minimum_version):
        missing.append(DISTRIBUTION)
    return missing


def constraints_text(installed: Mapping[str, str | None] | None = None) -> str:
    """A pip constraints file pinning Slicer's own packages (and torch) to their installed versions.

    Parameters
    ----------
    installed : mapping or None
        Distribution -> installed version (None: not installed, not pinned). Default: read from
        this Python's metadata for :data:`SLICER_PROVIDED` and torch.

    Returns
    -------
    str
        ``name==version`` lines; pip then keeps those packages or fails instead of replacing them.
    """
    if installed is None:
        installed = {name: installed_version(name) for name in (*SLICER_PROVIDED, TORCH_FROM_PYTORCHUTILS)}
    return "".join(f"{name}=={version}\n" for name, version in installed.items() if version)


def pip_install_args(
    constraints_path: str,
    *,
    source: str | None = None,
    upgrade: bool = False,
) -> list[str]:
    """Arguments for ``slicer.util.pip_install`` (a list is passed to pip as is).

    Parameters
    ----------
    constraints_path : str
        The file :func:`constraints_text` was written to.
    source : str or None, keyword-only
        What to install: default ``napari-medseg>=MINIMUM_VERSION`` from the package index; a
        local wheel or source folder for offline / developer installs.
    upgrade : bool, keyword-only
        Upgrade an older napari-medseg. Default False.

    Returns
    -------
    list of str
        Without extras (``[napari]`` would pull Qt and napari into Slicer) and with the
        constraints, e.g. ``["napari-medseg>=0.1", "--constraint", path]``.
    """
    target = source or f"{DISTRIBUTION}>={MINIMUM_VERSION}"
    if "[" in target and not any(sep in target for sep in ("/", "\\")):
        raise ValueError(f"source={target!r}: install the core without extras (no [napari])")
    args = [target, "--constraint", str(constraints_path)]
    if upgrade:
        args.insert(0, "--upgrade")
    return args


def failure_message(step: str, error: BaseException | str, *, missing: Iterable[str] = ()) -> str:
    """The message the widget shows when the install fails (it offers a Retry button with it).

    Parameters
    ----------
    step : str
        What failed, e.g. ``"installing torch with the PyTorch extension"``.
    error : exception or str
        The error, whose first line is quoted.
    missing : iterable of str, keyword-only
        What is still missing (from :func:`missing_requirements`).
    """
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    missing = list(missing)
    lines = [f"MedSeg could not finish {step}: {first}"]
    if missing:
        lines.append(f"Still missing: {', '.join(missing)}.")
    lines.append(
        "Check the internet connection (only needed once), or install offline from a wheel: in Slicer's Python "
        "console run slicer.util.pip_install('<path to the napari_medseg wheel>'). "
        "torch comes from the PyTorch extension (Extensions Manager). Then press Retry."
    )
    return "\n".join(lines)
