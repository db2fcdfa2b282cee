"""How well the input guards (napari_medseg.guards) separate inputs that fit the shipped T1 model
from inputs that do not, on the volumes one can make here: the real MNI152 T1 with other contrasts,
bias fields, scales and noise (should pass) vs CT-like volumes in Hounsfield units (air -1000, bone
+1000, from the MNI152 tissue maps), the same CT stored unsigned (HU + 1024), noise volumes and
cropped fields of view (should warn).

Usage: python benchmarks/input_guards.py [--model brain-tissue-t1-demo]
Prints one line per case (expected, warned, the messages) and the counts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from napari_medseg.guards import image_features, input_fit_messages
from napari_medseg.registry import load_model
from napari_medseg.sample_data import mni152_t1, mni152_tissue_probabilities
from napari_medseg.volume import Volume


def _bias(shape, rng, amplitude):
    coarse = rng.normal(0.0, 1.0, size=(4, 4, 4))
    field = ndimage.zoom(coarse, [s / 4 for s in shape], order=3)[: shape[0], : shape[1], : shape[2]]
    field /= np.abs(field).max()
    return np.exp(amplitude * field).astype(np.float32)


def _ct_like(t1: Volume, rng) -> np.ndarray:
    gm, wm = (v.array.astype(np.float32) for v in mni152_tissue_probabilities())
    head = t1.array > 0
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(gm + wm > 0.1, iterations=3))
    csf = brain & (gm + wm < 0.5)
    skull = ndimage.binary_dilation(brain, iterations=7) & ~ndimage.binary_dilation(brain, iterations=2)
    scalp = ndimage.binary_dilation(brain, iterations=12) & ~ndimage.binary_dilation(brain, iterations=7)
    hu = np.full(t1.shape, -1000.0, np.float32)
    hu[scalp | head] = 40.0
    hu[skull] = 1000.0
    hu[brain] = 40.0 * gm[brain] + 28.0 * wm[brain]
    hu[csf] = 8.0
    return hu + rng.normal(0.0, 6.0, size=hu.shape).astype(np.float32)


def cases():
    rng = np.random.default_rng(0)
    t1 = mni152_t1()
    a = t1.array.astype(np.float32)
    g = t1.geometry
    fit = [
        ("MNI152 T1 as shipped", a),
        ("gamma 0.6 (flatter contrast)", 255 * (a / 255) ** 0.6),
        ("gamma 1.6 (steeper contrast)", 255 * (a / 255) ** 1.6),
        ("bias field +-35 %", a * _bias(a.shape, rng, 0.35)),
        ("12-bit scale (x 16)", a * 16),
        ("scale to [0, 1]", a / 255),
        ("Rician-like noise sigma 8", np.hypot(a + rng.normal(0, 8, a.shape), rng.normal(0, 8, a.shape)).astype(np.float32)),
        ("2 mm resampled", None),
    ]
    ct = _ct_like(t1, rng)
    misfit = [
        ("CT in HU (air -1000)", ct),
        ("CT stored unsigned (HU + 1024)", np.clip(ct + 1024, 0, None)),
        ("Gaussian noise", rng.normal(100, 30, a.shape).astype(np.float32)),
        ("uniform noise", rng.uniform(0, 255, a.shape).astype(np.float32)),
        ("cropped FOV: 24 mm axial slab", a[80:104]),
        ("cropped FOV: 60 mm cube", a[70:130, 90:150, 70:130]),
        ("inverted contrast (T2-like: CSF bright)", np.where(a > 0, 300 - a, 0).astype(np.float32)),
    ]
    for name, arr in fit:
        if arr is None:
            from napari_medseg.volume import resample_to_spacing

            yield name, True, resample_to_spacing(t1, (2.0, 2.0, 2.0))
            continue
        yield name, True, Volume(arr.astype(np.float32), g)
    for name, arr in misfit:
        yield name, False, Volume(arr.astype(np.float32), g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brain-tissue-t1-demo")
    args = parser.parse_args()
    card = load_model(args.model).card
    if card.input_fingerprint is None:
        raise SystemExit(f"model {args.model!r} has no input_fingerprint (run training/input_fingerprint.py)")
    counts = {"fit_passed": 0, "fit_total": 0, "misfit_warned": 0, "misfit_total": 0}
    print(f"{'case':42s} {'expected':8s} {'warned':6s} neg   fg    rel-median extent(mm)      ms   first message")
    for name, fits, volume in cases():
        t = time.perf_counter()
        messages = input_fit_messages(volume, card)
        ms = 1000 * (time.perf_counter() - t)
        f = image_features(volume)
        warned = bool(messages)
        counts["fit_total" if fits else "misfit_total"] += 1
        if fits and not warned:
            counts["fit_passed"] += 1
        if not fits and warned:
            counts["misfit_warned"] += 1
        ext = "x".join(f"{e:.0f}" for e in f["foreground_extent_mm"])
        print(f"{name:42s} {'fit' if fits else 'misfit':8s} {'yes' if warned else 'no':6s} {f['negative_fraction']:.2f}  "
              f"{f['foreground_fraction']:.2f}  {f['foreground_relative_percentiles'][1]:.2f}       {ext:15s} {ms:4.0f} "
              f"{messages[0][:90] if messages else ''}")
    print(f"fitting inputs passed: {counts['fit_passed']}/{counts['fit_total']}; "
          f"misfits warned: {counts['misfit_warned']}/{counts['misfit_total']}")


if __name__ == "__main__":
    main()
