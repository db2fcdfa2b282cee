"""Evaluate the demo model on the real MNI152 T1 (never seen in training) and install it.

Usage: python training/demo_brain/evaluate.py MODEL_FOLDER [--install models/brain-tissue-t1-demo]

Predicts the 1 mm MNI152 T1 template with the model, scores grey and white matter against the
labels derived from nilearn's tissue maps (napari_medseg.sample_data.mni152_tissue_labels), times
the prediction, writes the figures into the card's metrics and, with --install, copies the model
folder (card + weights, sha256-checked) to the shipped registry folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from napari_medseg.inference import predict
from napari_medseg.metrics import label_metrics
from napari_medseg.registry import load_model_folder, write_card
from napari_medseg.sample_data import mni152_t1, mni152_tissue_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--install", type=Path, help="copy the evaluated model folder here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe", default="training/demo_brain/config.yaml", help="recipe recorded in the card")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model_folder(args.model)
    t1, reference = mni152_t1(), mni152_tissue_labels()
    start = time.perf_counter()
    prediction = predict(t1, model, device="cpu")
    seconds = time.perf_counter() - start
    scores = label_metrics(prediction.labels.array, reference.array, spacing_mm=t1.spacing_zyx, labels=[1, 2])
    metrics = dict(model.card.metrics)
    metrics.update(
        {
            "mni152_t1_dice_grey_matter": round(scores[1]["dice"], 4),
            "mni152_t1_dice_white_matter": round(scores[2]["dice"], 4),
            "mni152_t1_hd95_mm_grey_matter": round(scores[1]["hd95_mm"], 3),
            "mni152_t1_hd95_mm_white_matter": round(scores[2]["hd95_mm"], 3),
            "mni152_t1_predict_seconds_2_threads": round(seconds, 1),
        }
    )
    card = model.card.model_copy(update={"metrics": metrics, "recipe": args.recipe})
    write_card(card, model.card_path)
    print(json.dumps({k: v for k, v in metrics.items() if k.startswith("mni152")}))
    if args.install:
        target = args.install
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(model.folder, target)
        installed = load_model_folder(target)
        installed.verify()
        print(f"installed {installed.name} at {target} (sha256 {installed.sha256[:12]}...)")


if __name__ == "__main__":
    main()
