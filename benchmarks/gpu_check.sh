#!/usr/bin/env bash
# The GPU check (issue 16): one prepared script, under 8 minutes on one GPU. Run it whenever a GPU
# machine is available and record what it prints in the README (Scale):
#   bash benchmarks/gpu_check.sh [OUT_DIR] [PEAK_TFLOPS]     # PEAK_TFLOPS: the GPU's dense bf16 peak (H200/H100: 989)
# 1. the default experiment (RTD) on the GPU in bf16-mixed, at a larger batch;
# 2. the same on FSDP with one device (the sharded-evaluation path: full state dict gathered first);
# 3. the exported student loaded with plain transformers and run;
# then tokens/s and model-FLOPs utilisation of each run (summary.json).
set -euo pipefail
OUT=${1:-gpu_check}
PEAK=${2:-989}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export RTD_LAB_CACHE=${RTD_LAB_CACHE:-$OUT/cache}
COMMON="trainer.accelerator=gpu trainer.precision=bf16-mixed logger=csv trainer.enable_progress_bar=false data.eval_batch_size=1000"

# The teacher and the student base are trained (cached) by the first run; cap their training so the
# whole check fits its budget on a cold cache.
CAPS="teacher.train.max_steps=3000 student.base.train.max_steps=3000"
timeout 330 $PY -m rtd_lab $COMMON $CAPS data.batch_size=256 hydra.run.dir="$OUT/bf16" 2>&1 | tail -12
timeout 120 $PY -m rtd_lab $COMMON $CAPS trainer=fsdp trainer.devices=1 trainer.max_steps=300 \
    data.batch_size=256 hydra.run.dir="$OUT/fsdp" 2>&1 | tail -12

$PY "$(dirname "$0")/gpu_check_summary.py" "$OUT" "$PEAK" bf16 fsdp
