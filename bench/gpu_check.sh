#!/usr/bin/env bash
# One-shot GPU check (bench/gpu_check.py): compiled = eager, rollout speed, one GRPO step, sharded steps, under a
# time budget, results.json / results.md rewritten after every measurement.
#   bench/gpu_check.sh --kit .whl/gpu-kit --out DIR          # the GPU image: installs the kit (make gpu-kit) into a
#                                                            # temporary --target folder first on PYTHONPATH
#   bench/gpu_check.sh --device cpu --out DIR                # the CPU path (tiny policy) with this checkout's venv
#   bench/gpu_check.sh --budget_s 300 --skip sharded ...     # any bench/gpu_check.py option
# PYTHON picks the interpreter (default: python3 with --kit, the image's; else .venv/bin/python, else python3).
# A hard stop 45 s after the budget guards against a measurement that hangs; what was measured is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=""
BUDGET=480
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kit) KIT="$2"; shift 2 ;;
    --kit=*) KIT="${1#--kit=}"; shift ;;
    --budget_s) BUDGET="$2"; ARGS+=("$1" "$2"); shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ -n "$KIT" ]; then
  PYTHON="${PYTHON:-python3}"
  ls "$KIT"/*.whl > /dev/null || { echo "gpu_check.sh: error: no wheels in $KIT (run make gpu-kit)" >&2; exit 2; }
  TARGET="$(mktemp -d "${TMPDIR:-/tmp}/simplear-kit.XXXXXX")"
  trap 'rm -rf "$TARGET"' EXIT
  echo "[gpu_check.sh] installing $(ls "$KIT"/*.whl | wc -l) wheels from $KIT into $TARGET" >&2
  "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$TARGET" "$KIT"/*.whl
  export PYTHONPATH="$TARGET:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  ARGS+=(--kit "$KIT")
else
  PYTHON="${PYTHON:-.venv/bin/python}"
  [ -x "$PYTHON" ] || PYTHON=python3
fi
status=0
timeout --signal=TERM --kill-after=10 "$(( ${BUDGET%.*} + 45 ))" "$PYTHON" bench/gpu_check.py "${ARGS[@]}" || status=$?
exit "$status"
