"""Time napari-medseg's surface metrics against MONAI's on a 256^3 pair, in the same run.

Usage: ``python benchmarks/metrics.py [--size 256] [--repeats 1]``

The pair: two overlapping ellipsoids (about 2.2 M voxels each) on an anisotropic
``(2.5, 0.9, 0.7)`` mm grid, so most of the image is background, as in a real organ label.
Compared, on the same arrays:

- baseline: MONAI ``compute_hausdorff_distance(percentile=95, spacing=...)`` plus
  ``compute_average_surface_distance(symmetric=True, spacing=...)`` (CPU tensors);
- ours: :func:`napari_medseg.metrics.hausdorff_distance` (percentile 95) plus
  :func:`napari_medseg.metrics.mean_surface_distance`: the same two numbers;
- ours, all metrics: :func:`napari_medseg.metrics.label_metrics` (overlap, HD95, HD, MSD, volumes).

Prints one line per timing, the ratio baseline / ours (> 1: ours is faster), and as its last line a
JSON object with every figure. Timings are the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

SPACING_MM = (2.5, 0.9, 0.7)


def ellipsoid(shape, centre, radii_mm, spacing_mm):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((((g - c) * s) / r) ** 2 for g, c, r, s in zip(grids, centre, radii_mm, spacing_mm)) <= 1.0


def best_of(repeats, fn):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the cubic image in voxels (default 256)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each method; the best counts")
    args = parser.parse_args()

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    from napari_medseg.metrics import hausdorff_distance, label_metrics, mean_surface_distance

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    n = args.size
    scale = n / 256
    shape = (n, n, n)
    ref = ellipsoid(shape, (n / 2, n / 2, n / 2), (150 * scale, 80 * scale, 70 * scale), SPACING_MM)
    pred = ellipsoid(shape, (n / 2 + 2, n / 2 + 3, n / 2), (140 * scale, 85 * scale, 68 * scale), SPACING_MM)
    print(f"pair: {shape}, spacing {SPACING_MM} mm, {int(ref.sum())} and {int(pred.sum())} foreground voxels")

    def monai_run():
        tp = torch.as_tensor(pred[None, None])
        tr = torch.as_tensor(ref[None, None])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd95 = compute_hausdorff_distance(tp, tr, include_background=True, percentile=95, spacing=list(SPACING_MM))
            msd = compute_average_surface_distance(
                tp, tr, include_background=True, symmetric=True, spacing=list(SPACING_MM)
            )
        return float(hd95.item()), float(msd.item())

    def ours_run():
        return (
            hausdorff_distance(pred, ref, spacing_mm=SPACING_MM, percentile=95),
            mean_surface_distance(pred, ref, spacing_mm=SPACING_MM),
        )

    labels_pred, labels_ref = pred.astype(np.uint8), ref.astype(np.uint8)

    def ours_all_run():
        return label_metrics(labels_pred, labels_ref, spacing_mm=SPACING_MM)[1]

    t_monai, (monai_hd95, monai_msd) = best_of(args.repeats, monai_run)
    t_ours, (hd95, msd) = best_of(args.repeats, ours_run)
    t_all, table = best_of(args.repeats, ours_all_run)
    ratio = t_monai / t_ours
    print(f"MONAI HD95 + MSD:             {t_monai:7.2f} s  (HD95 {monai_hd95:.4f} mm, MSD {monai_msd:.4f} mm)")
    print(f"napari-medseg HD95 + MSD:     {t_ours:7.2f} s  (HD95 {hd95:.4f} mm, MSD {msd:.4f} mm)")
    print(f"napari-medseg label_metrics:  {t_all:7.2f} s  (all 11 metrics, Dice {table['dice']:.4f})")
    print(f"ratio MONAI / ours (HD95 + MSD): {ratio:.2f}x")
    print(
        json.dumps(
            {
                "benchmark": "metrics",
                "shape": list(shape),
                "spacing_mm": list(SPACING_MM),
                "repeats": args.repeats,
                "monai_s": round(t_monai, 4),
                "ours_s": round(t_ours, 4),
                "ours_label_metrics_s": round(t_all, 4),
                "ratio_monai_over_ours": round(ratio, 3),
                "hd95_mm": {"ours": hd95, "monai": monai_hd95},
                "msd_mm": {"ours": msd, "monai": monai_msd},
                "max_relative_difference": max(
                    abs(hd95 - monai_hd95) / monai_hd95, abs(msd - monai_msd) / monai_msd
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
