"""Sliding-window inference speed: napari-medseg vs MONAI, Monte-Carlo dropout cost, memory.

Same model for every variant: the 3D ``unet`` of napari_medseg.networks with channels
16-32-64-128-256, 1 input and 4 output channels, random weights (seed 0), dropout before the head
(the only stochastic layer during Monte-Carlo sampling). Same input: 1x160x192x160 float32
(normal noise, seed 0), patch 96^3, overlap 0.25, Gaussian blending, fp32, the same torch thread
count. Every variant runs in its own subprocess (so each one's peak RSS is its own), is warmed up
once and timed ``--repeats`` times; the median is reported.

Variants
--------
ours                 napari_medseg.inference.sliding_window_moments (channels-last, fused norms,
                     inference_mode, --batch-size patches per call)
monai_bs{1,2,4,8}    monai.inferers.sliding_window_inference(sw_batch_size=B, mode="gaussian")
                     with predictor softmax(net(x)), under torch.inference_mode
ours_mc16            ours with 16 Monte-Carlo dropout samples (prefix reused across samples)
naive_mc16           16 full MONAI sliding-window passes (sw_batch_size=1) with dropout enabled;
                     timed ``--naive-repeats`` times (default 1: it costs 16 passes)

Output: a table, then as the LAST line one JSON object with speedup_vs_monai_default,
speedup_vs_monai_best, outputs_agree (max |p difference| <= 1e-4 and >= 99.9 % equal labels vs
monai_bs1), mc16_cost_vs_single_pass, naive_mc16_cost_vs_single_pass, fraction_of_matmul_gflops,
peak_rss_mb (per variant) and the raw figures.

``--quick`` runs a smaller input (1x96x168x96, 2 patches), 2 repeats and MONAI batch sizes {1, 2}.
``--memory`` instead runs ``predict`` on a 512x512x300 int16 volume with a 2-class model (no
resampling) in a subprocess and reports its peak RSS (target: <= 4 GB).

Usage::

    python benchmarks/inference.py [--quick] [--threads N] [--repeats 5] [--batch-size 1]
    python benchmarks/inference.py --memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATCH = (96, 96, 96)
OVERLAP = 0.25
CHANNELS = (16, 32, 64, 128, 256)
OUT_CHANNELS = 4
MC_SAMPLES = 16
MC_RATE = 0.1


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _network():
    import torch

    from napari_medseg.networks import build_network

    torch.manual_seed(0)
    net = build_network(
        "unet", spatial_dims=3, in_channels=1, out_channels=OUT_CHANNELS, channels=CHANNELS,
        dropout_rate=MC_RATE, dropout_placement=["head"],
    )
    return net.eval()


def _image(shape):
    import numpy as np

    return np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)


def _timed(fn, repeats: int, warmup: bool = True) -> tuple[list[float], object]:
    result = fn() if warmup else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


# --------------------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> dict:
    """Run one variant in this process and return its figures."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    net = _network()
    image = _image(shape)
    variant = args.worker
    out: dict = {"variant": variant, "threads": torch.get_num_threads()}
    save = None
    if variant == "ours":
        from napari_medseg.inference import sliding_window_moments

        times, res = _timed(
            lambda: sliding_window_moments(image, net, patch_size=PATCH, overlap=OVERLAP, batch_size=args.batch_size),
            args.repeats,
        )
        save = res.mean_p
    elif variant == "ours_mc16":
        from napari_medseg.inference import sliding_window_moments

        times, _ = _timed(
            lambda: sliding_window_moments(
                image, net, patch_size=PATCH, overlap=OVERLAP, batch_size=args.batch_size,
                mc_samples=MC_SAMPLES, dropout_rate=MC_RATE, seed=0,
            ),
            args.repeats,
        )
    elif variant.startswith("monai_bs"):
        from monai.inferers import sliding_window_inference

        bs = int(variant[len("monai_bs"):])
        x = torch.from_numpy(image)[None]

        def run():
            with torch.inference_mode():
                return sliding_window_inference(
                    x, PATCH, bs, lambda t: torch.softmax(net(t), 1), overlap=OVERLAP, mode="gaussian"
                )

        times, res = _timed(run, args.repeats)
        if bs == 1:
            save = res[0].permute(1, 2, 3, 0).numpy()
    elif variant == "naive_mc16":
        from monai.inferers import sliding_window_inference

        from napari_medseg.uncertainty import mc_dropout

        x = torch.from_numpy(image)[None]

        def run():
            torch.manual_seed(0)
            total = None
            with torch.inference_mode(), mc_dropout(net, rate=MC_RATE):
                for _ in range(MC_SAMPLES):
                    p = sliding_window_inference(
                        x, PATCH, 1, lambda t: torch.softmax(net(t), 1), overlap=OVERLAP, mode="gaussian"
                    )
                    total = p if total is None else total + p
            return total / MC_SAMPLES

        # the deterministic variants already warmed up this network in other processes; one
        # single-pass warm-up here instead of a whole 16-pass loop
        with torch.inference_mode():
            sliding_window_inference(x, PATCH, 1, lambda t: torch.softmax(net(t), 1), overlap=OVERLAP, mode="gaussian")
        times, _ = _timed(run, args.naive_repeats, warmup=False)
    elif variant == "flops":
        from torch.utils.flop_counter import FlopCounterMode

        from napari_medseg.inference import patch_grid

        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 1, *PATCH))
        out["flops_per_patch"] = counter.get_total_flops()
        out["patches"] = len(patch_grid(shape, PATCH, OVERLAP))
        a = torch.randn(2048, 2048)
        mm_times, _ = _timed(lambda: a @ a, 7)
        out["matmul_gflops"] = 2 * 2048**3 / statistics.median(mm_times) / 1e9
        times = []
    else:
        raise SystemExit(f"unknown variant {variant}")
    out["times_s"] = times
    out["median_s"] = statistics.median(times) if times else None
    out["peak_rss_mb"] = _peak_rss_mb()
    if save is not None and args.save:
        np.save(args.save, np.ascontiguousarray(save, dtype=np.float32))
        out["saved"] = args.save
    return out


def _run_worker(variant: str, args: argparse.Namespace, save: str | None = None) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", variant, "--threads", str(args.threads), "--repeats", str(args.repeats),
        "--naive-repeats", str(args.naive_repeats), "--batch-size", str(args.batch_size), "--shape", *map(str, args.shape),
    ]
    if save:
        cmd += ["--save", save]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- memory
def memory_worker(args: argparse.Namespace) -> dict:
    """predict() on a 512x512x300 CT-sized volume with a tiny 2-class model; peak RSS."""
    import numpy as np
    import torch

    from napari_medseg.inference import predict
    from napari_medseg.networks import build_network
    from napari_medseg.registry import save_model_folder
    from napari_medseg.volume import Geometry, Volume

    torch.set_num_threads(args.threads)
    shape = tuple(args.memory_shape)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        params = {"channels": [4, 8]}
        net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, **params)
        card = {
            "name": "memtest", "version": "1", "description": "memory benchmark", "task": "segmentation",
            "license": "Apache-2.0", "architecture": {"name": "unet", "params": params}, "spatial_dims": 3,
            "channels": [{"name": "ct", "modality": "CT"}],
            "labels": {0: {"name": "background", "color": (0, 0, 0)}, 1: {"name": "organ", "color": (1, 0, 0)}},
            "normalization": {"kind": "ct_window", "window_center": 40, "window_width": 400},
            "patch_size": (64, 128, 128),
        }
        model = save_model_folder(Path(tmp) / "memtest", card=card, state_dict=net.state_dict())
        rng = np.random.default_rng(0)
        array = rng.integers(-1000, 1000, size=shape, dtype=np.int16)
        volume = Volume(array, Geometry((0.7, 0.7, 1.5)))
        base = _peak_rss_mb()
        t0 = time.perf_counter()
        pred = predict(volume, model, device="cpu", batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        assert pred.probabilities.array.shape == (*shape, 2)
    return {
        "variant": "memory", "shape": list(shape), "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
        "rss_before_predict_mb": base, "threads": torch.get_num_threads(),
    }


def run_memory(args: argparse.Namespace) -> None:
    cmd = [sys.executable, __file__, "--memory-worker", "--threads", str(args.threads), "--batch-size", str(args.batch_size),
           "--memory-shape", *map(str, args.memory_shape)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory run failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = res["peak_rss_mb"] <= 4096
    print(f"predict on {'x'.join(map(str, res['shape']))} int16, 2-class model, {res['threads']} threads: "
          f"{res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB (target <= 4096 MB: {'OK' if ok else 'FAIL'})")
    res["within_4gb"] = ok
    print(json.dumps(res))


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small input, 2 repeats, MONAI batch sizes {1, 2}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every variant (default: torch's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant after one warm-up (default 5)")
    parser.add_argument("--naive-repeats", type=int, default=1, help="timed runs of the 16-pass naive loop (default 1)")
    parser.add_argument("--batch-size", type=int, default=1, help="our patches per network call (default 1)")
    parser.add_argument("--memory", action="store_true", help="the 512x512x300 peak-RSS check instead")
    parser.add_argument("--memory-shape", type=int, nargs=3, default=(300, 512, 512), help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.shape is None:
        args.shape = (96, 168, 96) if args.quick else (160, 192, 160)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(args)))
        return
    if args.memory:
        run_memory(args)
        return

    import numpy as np

    load = os.getloadavg()[0]
    print(f"input 1x{'x'.join(map(str, args.shape))}, patch {PATCH}, overlap {OVERLAP}, threads {args.threads}, "
          f"repeats {args.repeats} (median), load average at start {load:.1f} on {os.cpu_count()} CPUs")
    batch_sizes = (1, 2) if args.quick else (1, 2, 4, 8)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ours_file, monai_file = os.path.join(tmp, "ours.npy"), os.path.join(tmp, "monai.npy")
        results["flops"] = _run_worker("flops", args)
        results["ours"] = _run_worker("ours", args, save=ours_file)
        for bs in batch_sizes:
            results[f"monai_bs{bs}"] = _run_worker(f"monai_bs{bs}", args, save=monai_file if bs == 1 else None)
        results["ours_mc16"] = _run_worker("ours_mc16", args)
        results["naive_mc16"] = _run_worker("naive_mc16", args)
        ours_p, monai_p = np.load(ours_file), np.load(monai_file)
        max_diff = float(np.abs(ours_p - monai_p).max())
        same_labels = float(np.mean(np.argmax(ours_p, -1) == np.argmax(monai_p, -1)))
    agree = max_diff <= 1e-4 and same_labels >= 0.999

    t_ours = results["ours"]["median_s"]
    monai_times = {bs: results[f"monai_bs{bs}"]["median_s"] for bs in batch_sizes}
    best_bs = min(monai_times, key=monai_times.get)
    flops = results["flops"]["flops_per_patch"] * results["flops"]["patches"]
    gflops = flops / t_ours / 1e9
    matmul = results["flops"]["matmul_gflops"]

    rows = [("ours", results["ours"])] + [(f"monai sw_batch_size={bs}", results[f"monai_bs{bs}"]) for bs in batch_sizes]
    rows += [("ours MC16 (prefix reuse)", results["ours_mc16"]), ("naive MC16 (16 MONAI passes)", results["naive_mc16"])]
    print(f"{'variant':32s} {'median s':>9s} {'runs':>5s} {'vs ours':>8s} {'peak RSS MB':>12s}")
    for name, r in rows:
        print(f"{name:32s} {r['median_s']:9.2f} {len(r['times_s']):5d} {r['median_s'] / t_ours:8.2f} {r['peak_rss_mb']:12.0f}")
    print(f"outputs agree with MONAI sw_batch_size=1: {'PASS' if agree else 'FAIL'} "
          f"(max |p diff| {max_diff:.2e}, equal labels {same_labels * 100:.4f} %)")
    print(f"our pass: {flops / 1e9:.0f} GFLOP in {t_ours:.2f} s = {gflops:.1f} GFLOP/s; "
          f"fp32 matmul {matmul:.1f} GFLOP/s -> {gflops / matmul * 100:.1f} % of it")
    summary = {
        "speedup_vs_monai_default": monai_times[1] / t_ours,
        "speedup_vs_monai_best": monai_times[best_bs] / t_ours,
        "monai_best_sw_batch_size": best_bs,
        "outputs_agree": agree,
        "max_abs_prob_diff": max_diff,
        "label_agreement": same_labels,
        "mc16_cost_vs_single_pass": results["ours_mc16"]["median_s"] / t_ours,
        "naive_mc16_cost_vs_single_pass": results["naive_mc16"]["median_s"] / t_ours,
        "fraction_of_matmul_gflops": gflops / matmul,
        "gflops": gflops,
        "matmul_gflops": matmul,
        "peak_rss_mb": {name: results[name]["peak_rss_mb"] for name in results if name != "flops"},
        "median_s": {name: results[name]["median_s"] for name in results if name != "flops"},
        "threads": args.threads,
        "repeats": args.repeats,
        "naive_repeats": args.naive_repeats,
        "input_shape": [1, *args.shape],
        "load_average_start": load,
        "quick": bool(args.quick),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
