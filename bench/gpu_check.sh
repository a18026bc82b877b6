#!/usr/bin/env bash
# One-shot GPU check: rollout speed of the eager and compiled backends and generate() at real size, one GRPO
# step, and one GRPO step under FSDP2 and under DeepSpeed ZeRO-3 (accelerate launch, one GPU); writes
# results.json and results.md to --out. Not yet run on a GPU by this project (the CPU paths are tested).
#   bench/gpu_check.sh                                      # CUDA, Qwen2.5-0.5B dims, 64x64 -> bench/gpu_check/
#   bench/gpu_check.sh --skip_rollouts --skip_grpo          # only the FSDP2 / ZeRO-3 steps
#   bench/gpu_check.sh --device cpu --size tiny --out DIR   # the same path on the tiny demo policy (tested)
#   bench/gpu_check.sh --device cpu --size tiny --skip_rollouts --engines fsdp,zero3 --out DIR  # 2 CPU processes
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" bench/gpu_check.py "$@"
