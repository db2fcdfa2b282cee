"""Compute a model card's ``input_fingerprint`` (napari_medseg.guards) from its training images
and write it into the card, replacing only that field. Re-runnable.

Usage:
    python training/input_fingerprint.py models/brain-tissue-t1-demo            # synthesise the demo's training images
    python training/input_fingerprint.py MODEL_FOLDER --images 'data/imagesTr/*.nii.gz'   # any model's training images

Without ``--images`` it makes ``--cases`` synthetic heads exactly as
``training/demo_brain/synthesize.py`` does (the shipped demo model's training data); the real
MNI152 T1 is left out, so the guard's behaviour on it is an honest check.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import yaml

from napari_medseg.guards import fingerprint_from_volumes
from napari_medseg.registry import find_card_file, read_card
from napari_medseg.volume import Volume, read_volume

HERE = Path(__file__).resolve().parent


def synthetic_volumes(cases: int, seed: int):
    """The demo model's synthetic training images (training/demo_brain/synthesize.py)."""
    spec = importlib.util.spec_from_file_location("demo_synthesize", HERE / "demo_brain" / "synthesize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from napari_medseg.training.synth import synthesize_case

    gm, wm, brain, geometry = module._crop()
    for index in range(cases):
        image, _ = synthesize_case(gm, wm, brain, np.random.default_rng([seed, index]))
        yield Volume(image, geometry)


def replace_field(card_text: str, key: str, value: dict) -> str:
    """``card_text`` with the top-level ``key`` block replaced (or appended); the rest untouched."""
    block = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=None, width=100)
    pattern = re.compile(rf"^{re.escape(key)}:.*?(?=^\S|\Z)", re.S | re.M)
    if pattern.search(card_text):
        return pattern.sub(lambda _: block, card_text, count=1)
    return card_text.rstrip("\n") + "\n" + block


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the model folder whose card gets the field")
    parser.add_argument("--images", help="glob of training images (default: synthesise the demo's)")
    parser.add_argument("--cases", type=int, default=16, help="synthetic cases (default 16)")
    parser.add_argument("--seed", type=int, default=2026, help="the demo training set's seed (default 2026)")
    args = parser.parse_args(argv)
    card_path = find_card_file(args.model)
    if card_path is None:
        print(f"{args.model}: no model card", file=sys.stderr)
        return 2
    card = read_card(card_path)
    if args.images:
        volumes = (read_volume(p) for p in sorted(glob.glob(args.images)))
    else:
        volumes = synthetic_volumes(args.cases, args.seed)
    fingerprint = fingerprint_from_volumes(volumes, modality=card.channels[0].modality)
    text = replace_field(card_path.read_text(encoding="utf-8"), "input_fingerprint", fingerprint)
    card_path.write_text(text, encoding="utf-8")
    read_card(card_path)  # still a valid card
    print(yaml.safe_dump({"input_fingerprint": fingerprint}, sort_keys=False, default_flow_style=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
