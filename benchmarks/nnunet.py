"""``medseg predict`` vs ``nnUNetv2_predict``: time, peak RSS and agreement on the same nnU-Net model.

The model is an nnU-Net v2 result folder: ``--result-folder`` (any real one, e.g. a downloaded
TotalSegmentator task), or by default the tiny two-fold model that tests/_nnunet_factory.py builds
with nnunetv2 (plan, preprocess, train a few iterations). The input is ``--input`` (one file per
channel, nnU-Net's ``case_XXXX`` naming) or the factory's unseen test case. Both commands run as
subprocesses with the same ``--threads`` (OMP_NUM_THREADS, torch threads, nnU-Net's
``-npp 1 -nps 1``), on the CPU, ``--repeats`` times; the median wall time is reported.

Output: a table, then as the LAST line one JSON object with seconds and peak RSS per tool,
``speedup`` (nnUNetv2_predict time / medseg time), identical-voxel fraction and Dice per label.

Usage::

    python benchmarks/nnunet.py [--result-folder DIR --input CASE_0000.nii.gz ...] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS (MB), measured with a fresh wait4 per child."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stderr.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result-folder", type=Path)
    parser.add_argument("--input", type=Path, nargs="+", help="one file per channel, named <case>_XXXX.nii.gz")
    parser.add_argument("--folds", nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import SimpleITK as sitk
    from _nnunet_factory import DATASET, blob_case, build_in_subprocess, nnunet_env

    work = Path(tempfile.mkdtemp(prefix="medseg-nnunet-bench-"))
    try:
        if args.result_folder is None:
            build_in_subprocess(work)
            args.result_folder = work / "results" / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        env = {**nnunet_env(work), "OMP_NUM_THREADS": str(args.threads), "nnUNet_def_n_proc": str(args.threads)}
        inputs = work / "in"
        inputs.mkdir()
        if args.input:
            for path in args.input:
                shutil.copy(path, inputs / path.name)
        else:
            for i, img in enumerate(blob_case(11, size_xyz=(40, 36, 20), spacing=(0.8, 0.9, 3.0))[:2]):
                sitk.WriteImage(img, str(inputs / f"case_{i:04d}.nii.gz"))
        channels = sorted(inputs.iterdir())
        case = channels[0].name.rsplit("_", 1)[0]
        model = work / "model"
        folds = ["--folds", *args.folds] if args.folds else []
        subprocess.run([sys.executable, "-m", "napari_medseg.cli", "models", "import-nnunet",
                        str(args.result_folder), "--out", str(model), *folds], check=True, env=env)
        bin_dir = Path(sys.executable).parent
        ref_dir, ours = work / "ref", work / "ours.nii.gz"
        fold_args = ["-f", *(args.folds or [p.name[5:] for p in sorted(args.result_folder.glob("fold_*"))])]
        nnunet_argv = [str(bin_dir / "nnUNetv2_predict_from_modelfolder"), "-i", str(inputs), "-o", str(ref_dir),
                       "-m", str(args.result_folder), *fold_args, "-device", "cpu", "-npp", "1", "-nps", "1",
                       "--disable_progress_bar"]
        ours_argv = [sys.executable, "-m", "napari_medseg.cli", "predict", *map(str, channels), str(ours),
                     "--model", str(model), "--device", "cpu", "--no-progress"]
        figures: dict[str, dict[str, float]] = {}
        for tool, argv in (("nnUNetv2_predict", nnunet_argv), ("medseg", ours_argv)):
            runs = [_run(argv, env) for _ in range(args.repeats)]
            figures[tool] = {"seconds": statistics.median(r[0] for r in runs), "peak_rss_mb": max(r[1] for r in runs)}
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / f"{case}.nii.gz")))
        dice = {}
        for v in sorted(set(np.unique(b)) - {0}):
            s = (a == v).sum() + (b == v).sum()
            dice[int(v)] = float(2 * np.logical_and(a == v, b == v).sum() / s) if s else 1.0
        result = {
            **{f"{k}_{m}": round(v, 3) for k, d in figures.items() for m, v in d.items()},
            "speedup": round(figures["nnUNetv2_predict"]["seconds"] / figures["medseg"]["seconds"], 3),
            "identical_fraction": float((a == b).mean()),
            "dice": dice,
            "threads": args.threads,
            "shape": list(a.shape),
        }
        print(f"{'tool':20s} {'seconds':>9s} {'peak RSS MB':>12s}")
        for tool, d in figures.items():
            print(f"{tool:20s} {d['seconds']:9.2f} {d['peak_rss_mb']:12.0f}")
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
