"""Where a deterministic prediction of a 1 mm head spends its time, before and after the 2D
instance-norm change (networks._fast.BLOCKED_SUM_MAX_CHANNELS_2D), in one run.

Usage: python benchmarks/predict_speed.py [--threads 2] [--profile] [--crop]
Runs the shipped demo model on the MNI152 T1 (197 x 233 x 189, 1 mm) with the old path
(strided float64 sums) and the new one (row-blocked matrix products), prints wall and CPU time of
each (the machine may be shared: CPU time is the steadier figure), the ratio, and whether the
labels are identical. --profile prints the top of a cProfile of the new path. --crop uses a
96-slice crop (quick).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
import torch

from napari_medseg.inference import predict
from napari_medseg.networks import _fast
from napari_medseg.registry import load_model
from napari_medseg.sample_data import mni152_t1
from napari_medseg.volume import Volume


def run(volume, model, limit: int):
    _fast.BLOCKED_SUM_MAX_CHANNELS_2D = limit
    t, c = time.perf_counter(), time.process_time()
    labels = predict(volume, model, device="cpu").labels.array
    return time.perf_counter() - t, time.process_time() - c, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--crop", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volume = mni152_t1()
    if args.crop:
        volume = Volume(volume.array[48:144], volume.geometry)
    model = load_model("brain-tissue-t1-demo")
    model.load_network("cpu")
    predict(Volume(volume.array[:8], volume.geometry), model, device="cpu")  # warm-up
    before = run(volume, model, 0)
    after = run(volume, model, 32)
    print(f"volume {volume.shape}, {args.threads} threads")
    print(f"before (strided sums):     wall {before[0]:6.1f} s  cpu {before[1]:6.1f} s")
    print(f"after  (row-blocked sums): wall {after[0]:6.1f} s  cpu {after[1]:6.1f} s")
    print(f"ratio before/after: wall {before[0] / after[0]:.2f}x  cpu {before[1] / after[1]:.2f}x")
    print(f"labels identical: {np.array_equal(before[2], after[2])} "
          f"({int(np.count_nonzero(before[2] != after[2]))} voxels differ)")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        predict(volume, model, device="cpu")
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
