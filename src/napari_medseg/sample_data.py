"""Demo data that ships inside installed packages: nilearn's MNI152 2009 template.

Nothing is downloaded: the T1 template and the grey/white matter probability maps are files inside
the nilearn package. The tissue labels (0 background, 1 grey matter, 2 white matter) are derived
from the maps: a voxel takes the tissue with the highest probability if that probability is at
least 0.5, else background. They are a reference for the demo, not a manual segmentation.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from napari_medseg.errors import MedsegError
from napari_medseg.volume import Volume, read_volume

__all__ = [
    "TISSUE_LABELS",
    "mni152_file",
    "mni152_t1",
    "mni152_tissue_probabilities",
    "mni152_tissue_labels",
    "write_demo_data",
]

#: label value -> (name, RGB colour 0-1) of the demo tissue labels
TISSUE_LABELS = {
    0: ("background", (0.0, 0.0, 0.0)),
    1: ("grey matter", (0.85, 0.45, 0.35)),
    2: ("white matter", (0.95, 0.95, 0.8)),
}
_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def mni152_file(kind: str) -> Path:
    """Path of one of nilearn's shipped MNI152 files: ``"t1"``, ``"gm"`` or ``"wm"``.

    Raises
    ------
    MedsegError
        If nilearn is not installed (``pip install nilearn``) or the file is missing.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise MedsegError("the demo data comes from the nilearn package: install it with 'pip install nilearn'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / _FILES[kind]
    if not path.exists():
        raise MedsegError(f"{path}: nilearn's MNI152 file is missing; reinstall nilearn")
    return path


def mni152_t1() -> Volume:
    """The 1 mm MNI152 2009c T1 template (197 x 233 x 189) with its geometry."""
    return read_volume(mni152_file("t1"))


def _probability(volume: Volume) -> Volume:
    # the maps ship as uint8 scaled to 0-255 (nilearn rescales them the same way when loading)
    array = volume.array.astype(np.float32)
    if np.issubdtype(volume.array.dtype, np.integer):
        array /= float(np.iinfo(volume.array.dtype).max)
    return volume.derive(array)


def mni152_tissue_probabilities() -> tuple[Volume, Volume]:
    """Grey and white matter probability maps (float32, 0-1) on the T1's grid."""
    return _probability(read_volume(mni152_file("gm"))), _probability(read_volume(mni152_file("wm")))


def mni152_tissue_labels(*, threshold: float = 0.5) -> Volume:
    """Grey/white matter labels derived from nilearn's probability maps (see the module docstring).

    Parameters
    ----------
    threshold : float, default 0.5
        Minimum tissue probability for a voxel to leave the background.
    """
    gm, wm = mni152_tissue_probabilities()
    probs = np.stack([gm.array, wm.array])
    labels = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
    labels[probs.max(axis=0) < threshold] = 0
    return gm.derive(labels)


def write_demo_data(folder: str | os.PathLike) -> dict[str, Path]:
    """Write the demo T1 volume and its tissue labels into ``folder`` and return their paths."""
    from napari_medseg.outputs import check_outputs, write_outputs

    folder = Path(folder)
    paths = {
        "t1": folder / "mni152_t1.nii.gz",
        "labels": folder / "mni152_tissue_labels.nii.gz",
        "segmentation": folder / "mni152_tissue_labels.seg.nrrd",
    }
    check_outputs(paths)
    names = {v: n for v, (n, _) in TISSUE_LABELS.items()}
    colours = {v: c for v, (_, c) in TISSUE_LABELS.items()}
    labels_volume = mni152_tissue_labels()
    write_outputs([
        (mni152_t1(), paths["t1"], {}),
        (labels_volume, paths["labels"], {}),
        (labels_volume, paths["segmentation"], {"label_names": names, "label_colors": colours}),
    ])
    return paths
