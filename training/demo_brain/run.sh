#!/usr/bin/env bash
# Rebuild the shipped demo model from scratch: synthesise the training set, train, evaluate on the
# real MNI152 T1 (never seen in training) and write the model folder with its card.
# Usage: bash training/demo_brain/run.sh [WORK_DIR]   (about an hour on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-build/demo_brain}"
mkdir -p "$work"
python training/demo_brain/synthesize.py "$work/data" --cases 24
medseg train --config training/demo_brain/config.yaml --data "$work/data" --output "$work/run"
python training/demo_brain/evaluate.py "$work/run/model" --install models/brain-tissue-t1-demo
