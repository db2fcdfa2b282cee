"""Training throughput: our trainer vs a plain MONAI tutorial loop, same model, loss, batch and data.

Usage: python benchmarks/training.py [--steps N] [--threads T] [--quick]

Both sides train the same U-Net (napari_medseg.networks, 3D, channels 16-32-64-128) with the same
loss (combo = CE - Dice), Adam at the same learning rate, batch 2 of 64^3 patches sampled with a
foreground ratio of 0.5 from the same preprocessed cases, no augmentation, no validation. The
baseline is MONAI's tutorial pattern: CacheDataset + RandCropByPosNegLabeld + DataLoader and a
plain loop. Samples/s are measured after one warm-up epoch. The last line is one JSON object with
samples_per_s, monai_loop_samples_per_s and ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_cases(root: Path, n_cases: int, shape: tuple[int, int, int]) -> Path:
    from napari_medseg.volume import Geometry, Volume, write_volume

    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape)
    for i in range(n_cases):
        labels = np.zeros(shape, np.uint8)
        for value in (1, 2):
            c = rng.integers(16, np.array(shape) - 16)
            r = rng.uniform(8, 14)
            labels[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r * r] = value
        image = labels * 1.5 + rng.normal(0, 0.5, shape)
        geometry = Geometry((1.0, 1.0, 1.0))
        write_volume(Volume(image.astype(np.float32), geometry), root / "imagesTr" / f"c{i}.nii.gz")
        write_volume(Volume(labels, geometry), root / "labelsTr" / f"c{i}.nii.gz")
    return root


def ours(data: Path, out: Path, steps: int, batch: int, patch: list[int], channels: list[int]) -> float:
    from napari_medseg.training.config import TrainConfig
    from napari_medseg.training.trainer import train

    config = TrainConfig(
        data=str(data), output=str(out), epochs=2, iterations_per_epoch=steps, batch_size=batch, patch_size=patch,
        architecture_params={"channels": channels, "strides": [2] * (len(channels) - 1)}, augment=False,
        validation_fraction=0.0, lookahead=False, schedule="constant", learning_rate=1e-3, loss="combo",
        foreground_ratio=0.5, grad_clip_norm=None, labels={0: "bg", 1: "a", 2: "b"},
    )
    result = train(config)
    return steps * batch / result.history[1]["seconds"]  # epoch 0 is the warm-up


def monai_loop(data: Path, steps: int, batch: int, patch: list[int], channels: list[int]) -> float:
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, RandCropByPosNegLabeld

    from napari_medseg.networks import build_network
    from napari_medseg.training.losses import get_loss

    files = [{"image": str(p), "label": str(data / "labelsTr" / p.name)} for p in sorted((data / "imagesTr").iterdir())]
    transforms = Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            NormalizeIntensityd(keys="image"),
            RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=patch, pos=1, neg=1, num_samples=1),
        ]
    )
    dataset = CacheDataset(files, transforms, cache_rate=1.0, progress=False)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    network = build_network("unet", spatial_dims=3, in_channels=1, out_channels=3, channels=channels, strides=[2] * (len(channels) - 1))
    loss_fn = get_loss("combo")
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    network.train()

    def run(n: int) -> float:
        done, start = 0, time.perf_counter()
        while done < n:
            for item in loader:
                images, labels = item["image"].as_tensor(), item["label"].as_tensor().long()[:, 0]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(network(images), labels)
                loss.backward()
                optimizer.step()
                done += 1
                if done == n:
                    break
        return time.perf_counter() - start

    run(steps)  # warm-up, like our first epoch
    return steps * batch / run(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smaller patches and network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    patch, channels, shape = ([32, 32, 32], [8, 16, 32], (48, 64, 64)) if args.quick else ([64, 64, 64], [16, 32, 64, 128], (96, 128, 128))
    batch = 2
    with tempfile.TemporaryDirectory() as tmp:
        data = make_cases(Path(tmp) / "data", 6, shape)
        theirs = monai_loop(data, args.steps, batch, patch, channels)
        mine = ours(data, Path(tmp) / "run", args.steps, batch, patch, channels)
    print(f"{'loop':<28}{'samples/s':>12}")
    print(f"{'napari-medseg trainer':<28}{mine:>12.3f}")
    print(f"{'MONAI tutorial loop':<28}{theirs:>12.3f}")
    print(f"ratio (ours / MONAI loop): {mine / theirs:.2f}x (target >= 1.0x); {args.threads} threads, batch {batch}, patch {patch}")
    print(json.dumps({"samples_per_s": mine, "monai_loop_samples_per_s": theirs, "ratio": mine / theirs, "threads": args.threads, "patch": patch}))


if __name__ == "__main__":
    main()
