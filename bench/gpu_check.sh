#!/usr/bin/env bash
# One-shot GPU check (under 8 minutes on an H100/H200-class GPU): rollout speed of the eager and compiled
# backends and generate() at real size, then one GRPO step; writes results.json and results.md to --out.
#   bench/gpu_check.sh                                      # CUDA, Qwen2.5-0.5B dims, 64x64 -> bench/gpu_check/
#   bench/gpu_check.sh --device cpu --size tiny --out DIR   # the same path on the tiny demo policy (tested)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" bench/gpu_check.py "$@"
