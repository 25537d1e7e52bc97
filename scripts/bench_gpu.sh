#!/usr/bin/env bash
# The GPU benchmark in one command, built to end within 8 minutes on an H100 (not yet run on one):
#   scripts/bench_gpu.sh OUT_DIR
# 1. fp32 (the default): the seed's settings at 224 px on 32 images, forward batches probed from free memory, each
#    method's Max-Sensitivity on 4 images, raw throughput paired into every measurement, the seed-style loop on
#    2 images (its sensitivity on 1), quickshift against the GPU's LIME demand      → OUT_DIR/fp32/bench.{json,md}
# 2. bf16 autocast: the same engine run (no seed loop) and its parity against fp32  → OUT_DIR/bf16/bench.{json,md}
# Each step has a soft budget (no new measurement starts after it) and a hard timeout.
set -euo pipefail

out="${1:?usage: scripts/bench_gpu.sh OUT_DIR}"
cd "$(dirname "$0")/.."
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>/dev/null || true

common=(--res 224 --device cuda --forward-batch auto --images 32 --pieces 2)

timeout -k 10 330 python scripts/bench "${common[@]}" --sens-images 4 \
    --seed-images 2 --seed-sens-images 1 --seed-memory-share 0.4 --budget-s 240 --out "$out/fp32" 2>&1 \
    | tee "$out/fp32.log" || echo "fp32 step ended with status $? (124: hard timeout); going on"

timeout -k 10 130 python scripts/bench "${common[@]}" --precision bf16 --sens-images 2 --seed-images 0 \
    --parity-images 4 --segmentation-res 0 --budget-s 90 --out "$out/bf16" 2>&1 | tee "$out/bf16.log" \
    || echo "bf16 step ended with status $? (124: hard timeout)"

echo "wrote $out/fp32/bench.json, $out/bf16/bench.json"
