"""Write the demo model's synthetic training set (Decathlon layout) from nilearn's MNI152 tissue maps.

Usage: python training/demo_brain/synthesize.py OUT_DIR [--cases N] [--seed S]

Only the grey/white matter probability maps are used (see napari_medseg.training.synth); the real
MNI152 T1 image is kept for the honest test in evaluate.py. The maps are cropped to the brain's
bounding box plus a margin to save time; every case keeps the MNI grid's spacing and direction.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from napari_medseg.sample_data import TISSUE_LABELS, mni152_tissue_probabilities
from napari_medseg.training.synth import brain_region, synthesize_case
from napari_medseg.volume import Geometry, Volume, write_volume

MARGIN_VOXELS = 16  # empty slices around the brain, as in real skull-stripped volumes


def _crop():
    gm, wm = mni152_tissue_probabilities()
    brain = brain_region(gm.array, wm.array)
    index = np.argwhere(brain)
    lo = np.maximum(index.min(axis=0) - MARGIN_VOXELS, 0)
    hi = np.minimum(index.max(axis=0) + MARGIN_VOXELS + 1, brain.shape)
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    g = gm.geometry
    origin = g.index_to_physical() @ np.array([lo[2], lo[1], lo[0], 1.0])
    geometry = Geometry(g.spacing, tuple(origin[:3]), g.direction)
    return gm.array[window], wm.array[window], brain[window], geometry


def _one(args):
    index, seed, out = args
    gm, wm, brain, geometry = _crop()
    image, labels = synthesize_case(gm, wm, brain, np.random.default_rng([seed, index]))
    name = f"synth_{index:03d}"
    write_volume(Volume(image, geometry), out / "imagesTr" / f"{name}.nii.gz")
    write_volume(Volume(labels, geometry), out / "labelsTr" / f"{name}.nii.gz")
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        names = list(pool.map(_one, [(i, args.seed, args.output) for i in range(args.cases)]))
    labels = {str(v): name for v, (name, _) in TISSUE_LABELS.items()}
    meta = {
        "name": "synthetic-mni152-tissue",
        "description": "synthetic T1-like images from nilearn's MNI152 grey/white matter maps (napari_medseg.training.synth)",
        "labels": labels,
        "channel_names": {"0": "T1"},
        "numTraining": len(names),
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
    }
    (args.output / "dataset.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {len(names)} cases to {args.output} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
