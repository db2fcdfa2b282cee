"""Cohort throughput: cases per hour for a folder of scans with ``--workers 1`` and ``--workers 2``
against a shell loop of single ``medseg predict`` calls (the baseline, measured in the same run),
peak RSS of each run, and the size of an uncertainty file stored as float32 (before) and compact
(after, napari_medseg.compact).

Usage: python benchmarks/batch.py [--cases 3] [--slices 48] [--full] [--mc-samples 0]
The default is quick: 3 cases of 48 slices cropped from the demo volume (MNI152 T1, 1 mm) with
small per-case changes. --full uses whole demo-sized volumes (197 x 233 x 189). Every run is a real
``medseg`` process with OMP_NUM_THREADS=2; the machine may be shared, so the CPU seconds of the
children are printed too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from napari_medseg.sample_data import mni152_t1
from napari_medseg.volume import Volume, write_volume


def _run(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS (bytes, sampled every 50 ms) of one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    proc = psutil.Popen([sys.executable, "-m", "napari_medseg.cli", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, cpu = 0, 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
            times = proc.cpu_times()
            cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"medseg {' '.join(argv)} failed: {proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start, cpu, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--mc-samples", type=int, default=0)
    parser.add_argument("--model", default="brain-tissue-t1-demo")
    args = parser.parse_args()
    t1 = mni152_t1()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cases = root / "cases"
        cases.mkdir()
        mid = t1.shape[0] // 2
        window = slice(None) if args.full else slice(mid - args.slices // 2, mid + args.slices // 2)
        for i in range(args.cases):
            a = t1.array[window].astype(np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 2, t1.array[window].shape)
            write_volume(Volume(np.clip(a, 0, None).astype(np.float32), t1.geometry), cases / f"case{i:02d}.nii.gz")
        common = ["--model", args.model, "--device", "cpu", "--no-progress", "--mc-samples", str(args.mc_samples)]
        files = sorted(cases.glob("*.nii.gz"))
        shape = t1.array[window].shape
        print(f"{len(files)} cases of {shape[0]} x {shape[1]} x {shape[2]} voxels, mc-samples {args.mc_samples}, 2 threads")

        # baseline: a shell loop of single predict calls
        wall = cpu = 0.0
        peak = 0
        for f in files:
            w, c, p = _run(["predict", str(f), str(root / "loop" / f.name), *common])
            wall, cpu, peak = wall + w, cpu + c, max(peak, p)
        rows = [("shell loop of single predicts (baseline)", wall, cpu, peak)]
        for workers in (1, 2):
            w, c, p = _run(["predict", str(cases), str(root / f"w{workers}"), *common, "--workers", str(workers)])
            rows.append((f"medseg predict FOLDER --workers {workers}", w, c, p))
        base = rows[0][1]
        print(f"{'run':42s} {'wall s':>8s} {'cpu s':>8s} {'cases/h':>8s} {'vs loop':>8s} {'peak RSS':>9s}")
        for name, w, c, p in rows:
            print(f"{name:42s} {w:8.1f} {c:8.1f} {3600 * len(files) / w:8.0f} {base / w:7.2f}x {p / 2**20:7.0f} MB")

        # uncertainty file size: float32 (before) vs compact (after), the same maps of one case
        import torch

        from napari_medseg.batch import _uncertainty_volume
        from napari_medseg.compact import compact_map
        from napari_medseg.inference import predict
        from napari_medseg.registry import load_model
        from napari_medseg.volume import read_volume

        torch.set_num_threads(2)
        model = load_model(args.model)
        prediction = predict(read_volume(files[0]), model, device="cpu", mc_samples=2)
        names = [model.card.labels[v].name for v in model.card.label_values]
        maps, _ = _uncertainty_volume(prediction, names)
        write_volume(maps, root / "unc_float32.nii.gz")
        compact = compact_map(maps)
        write_volume(compact, root / "unc_compact.nii.gz")
        before, after = (root / "unc_float32.nii.gz").stat().st_size, (root / "unc_compact.nii.gz").stat().st_size
        print(f"uncertainty file ({maps.n_components} components, {' x '.join(map(str, maps.shape))}, mc-samples 2): "
              f"float32 {before / 2**20:.1f} MB, compact {after / 2**20:.1f} MB ({before / after:.1f}x smaller; "
              f"{compact.metadata['medseg_precision']})")


if __name__ == "__main__":
    main()
