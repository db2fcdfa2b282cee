"""Build a real nnU-Net v2 result folder with nnunetv2 itself (run as a script, in a subprocess).

``python _nnunet_factory.py ROOT`` writes a tiny synthetic two-channel dataset (CT + T2, two blob
labels) as nnU-Net raw data under ``ROOT/raw``, plans and preprocesses it (3d_fullres) and trains
two folds for a couple of iterations on the CPU. nnU-Net reads ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results`` when it is imported, hence the subprocess: the
caller sets them. The result folder is
``ROOT/results/Dataset901_Blobs/nnUNetTrainer__nnUNetPlans__3d_fullres``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DATASET = "Dataset901_Blobs"
N_CASES = 4


def blob_case(seed: int, size_xyz=(32, 32, 24), spacing=(1.0, 1.0, 3.5)):
    """A two-channel case: label 1 and 2 are two ellipsoids; CT in HU, T2 arbitrary units."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx].astype(np.float32)
    seg = np.zeros((nz, ny, nx), np.uint8)
    c1 = (nz / 2 + rng.uniform(-2, 2), ny * 0.35 + rng.uniform(-2, 2), nx * 0.35 + rng.uniform(-2, 2))
    c2 = (nz / 2 + rng.uniform(-2, 2), ny * 0.68 + rng.uniform(-2, 2), nx * 0.65 + rng.uniform(-2, 2))
    r = rng.uniform(5, 7)
    seg[((z - c1[0]) * 3.5 / r) ** 2 + ((y - c1[1]) / r) ** 2 + ((x - c1[2]) / r) ** 2 < 1] = 1
    seg[((z - c2[0]) * 3.5 / r) ** 2 + ((y - c2[1]) / r) ** 2 + ((x - c2[2]) / r) ** 2 < 1] = 2
    ct = np.where(seg == 1, 60.0, np.where(seg == 2, 300.0, 0.0)) + rng.normal(0, 15, seg.shape)
    ct[:, :, :3] = -1000.0  # air on one side, so CT clipping matters
    t2 = np.where(seg == 1, 400.0, np.where(seg == 2, 150.0, 250.0)) + rng.normal(0, 20, seg.shape)
    out = []
    for arr in (ct.astype(np.float32), t2.astype(np.float32), seg):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        out.append(img)
    return out


def write_raw(raw: Path) -> None:
    base = raw / DATASET
    (base / "imagesTr").mkdir(parents=True, exist_ok=True)
    (base / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(N_CASES):
        ct, t2, seg = blob_case(i)
        sitk.WriteImage(ct, str(base / "imagesTr" / f"blob_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(t2, str(base / "imagesTr" / f"blob_{i:03d}_0001.nii.gz"))
        sitk.WriteImage(seg, str(base / "labelsTr" / f"blob_{i:03d}.nii.gz"))
    dataset = {
        "channel_names": {"0": "CT", "1": "T2"},
        "labels": {"background": 0, "left": 1, "right": 2},
        "numTraining": N_CASES,
        "file_ending": ".nii.gz",
        "name": "Blobs",
        "licence": "CC0-1.0",
    }
    (base / "dataset.json").write_text(json.dumps(dataset, indent=1))


def main(root: Path) -> None:
    write_raw(root / "raw")
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([901], num_processes=1, check_dataset_integrity=True, verbose=False)
    os.environ["nnUNet_n_proc_DA"] = "1"  # planning sets torch's threads from it (0 is refused there)
    plan_experiments([901])
    preprocess([901], configurations=("3d_fullres",), num_processes=(1,), verbose=False)
    pre = root / "preprocessed" / DATASET
    names = [f"blob_{i:03d}" for i in range(N_CASES)]
    splits = [{"train": names[:3], "val": names[3:]}, {"train": names[1:], "val": names[:1]}]
    (pre / "splits_final.json").write_text(json.dumps(splits))

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((pre / "dataset.json").read_text())
    os.environ["nnUNet_n_proc_DA"] = "0"  # augment in-process: no worker processes
    import random

    for fold in (0, 1):
        # Seeded: two iterations leave the network close to its initialisation, so which labels it
        # predicts depends on the draw; a fixed draw keeps every label present on every machine.
        random.seed(fold)
        np.random.seed(fold)
        torch.manual_seed(fold)
        trainer = nnUNetTrainer({**plans, "continue_training": False}, "3d_fullres", fold, dataset_json, device=torch.device("cpu"))
        trainer.num_epochs = 1
        trainer.num_iterations_per_epoch = 2
        trainer.num_val_iterations_per_epoch = 1
        trainer.run_training()


def nnunet_env(root: Path) -> dict[str, str]:
    """The environment for nnU-Net's commands (and ours) on ``root``: its three folders, one thread."""
    return {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(root / "results"), "OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1",
            "nnUNet_n_proc_DA": "0"}


def build_in_subprocess(root: Path) -> Path:
    """Run :func:`main` in a fresh interpreter (nnU-Net reads its folders at import); return ``root``."""
    import subprocess

    proc = subprocess.run([sys.executable, __file__, str(root)], env=nnunet_env(root), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the nnU-Net result folder failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return root


if __name__ == "__main__":
    main(Path(sys.argv[1]))
