"""Write the head model's synthetic training set (Decathlon layout): MNI152 brains inside random heads.

Usage: python training/head_t1/synthesize.py OUT_DIR [--cases N] [--seed S] [--workers W]
                                             [--skull-stripped-fraction F]

Only nilearn's MNI152 grey/white matter probability maps are used (see
napari_medseg.training.synth.synthesize_head_case); the real MNI152 T1 image and the real T1 heads
of the evaluation are never seen. The maps' grid is cut to the brain plus room for a head (about
25 mm around the brain, 40 mm below it, padded with zeros where the MNI grid is too small); every
case keeps the MNI grid's spacing and direction.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from napari_medseg.sample_data import TISSUE_LABELS, mni152_tissue_probabilities
from napari_medseg.training.synth import brain_region, synthesize_head_case
from napari_medseg.volume import Geometry, Volume, write_volume

# room for the head around the brain's bounding box, voxels (1 mm) per (z, y, x) side:
# below (neck), above, behind, in front (face), right and left
MARGIN_VOXELS = ((40, 24), (24, 34), (24, 24))


def _grid():
    gm, wm = mni152_tissue_probabilities()
    brain = brain_region(gm.array, wm.array)
    index = np.argwhere(brain)
    lo = index.min(axis=0) - [m[0] for m in MARGIN_VOXELS]
    hi = index.max(axis=0) + 1 + [m[1] for m in MARGIN_VOXELS]
    pad = [(int(max(0, -a)), int(max(0, b - n))) for a, b, n in zip(lo, hi, brain.shape)]
    window = tuple(slice(int(a) + p[0], int(b) + p[0]) for a, b, p in zip(lo, hi, pad))
    arrays = [np.pad(a, pad)[window] for a in (gm.array, wm.array, brain)]
    g = gm.geometry
    origin = g.index_to_physical() @ np.array([lo[2], lo[1], lo[0], 1.0])
    return (*arrays, Geometry(g.spacing, tuple(origin[:3]), g.direction))


def _one(args):
    index, seed, out, stripped_fraction = args
    gm, wm, brain, geometry = _grid()
    # an exact share of skull-stripped cases (not a coin per case): with a dozen heads a coin can
    # leave out almost all of them, and they keep the skull-stripped (MNI152) result
    stripped = round((index + 1) * stripped_fraction) > round(index * stripped_fraction)
    image, labels = synthesize_head_case(
        gm, wm, brain, np.random.default_rng([seed, index]), skull_stripped_probability=float(stripped)
    )
    name = f"head_{index:03d}"
    # float noise does not compress: plain .nii is as small and much faster to write and read
    write_volume(Volume(image, geometry), out / "imagesTr" / f"{name}.nii")
    write_volume(Volume(labels, geometry), out / "labelsTr" / f"{name}.nii.gz")
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skull-stripped-fraction", type=float, default=0.4, help="share of skull-stripped (brain-only) cases")
    args = parser.parse_args()
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        names = list(pool.map(_one, [(i, args.seed, args.output, args.skull_stripped_fraction) for i in range(args.cases)]))
    labels = {str(v): name for v, (name, _) in TISSUE_LABELS.items()}
    meta = {
        "name": "synthetic-mni152-heads",
        "description": "synthetic T1-like heads around nilearn's MNI152 grey/white matter maps (napari_medseg.training.synth.synthesize_head_case)",
        "labels": labels,
        "channel_names": {"0": "T1"},
        "numTraining": len(names),
        "training": [{"image": f"./imagesTr/{n}.nii", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
    }
    (args.output / "dataset.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {len(names)} cases to {args.output} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
