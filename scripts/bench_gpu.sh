#!/usr/bin/env bash
# The GPU measurements in one command, ending within 8 minutes (every step under its own timeout), as at most
# 8 JSON files in OUT_DIR (default $OUT): see scripts/gpu_suite.py for the steps.
#   scripts/bench_gpu.sh OUT_DIR                 # on a GPU
#   scripts/bench_gpu.sh OUT_DIR --cpu-smoke     # every step at tiny settings on the CPU (a check of the script)
set -uo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_suite.py "$@"
