#!/usr/bin/env bash
# A CPU dry run of the GPU path (`make gpu-dryrun`): PYTHON is a venv holding the GPU image's versions
# (bench/gpu_image.txt), KIT the wheels `make gpu-kit` packs; everything is logged to OUT/dryrun.log.
#   1. without the kit, the image's transformers 5.17 is refused: `simplear-rl generate` and the check exit 2 with
#      the guard's one line, and the KV-cache self-check alone fails on 5.17's real decoder;
#   2. with the kit installed as on the GPU (--no-index --no-deps --target), bench/gpu_check.sh runs its CPU path;
#   3. there, the sampler-exactness, compiled-backend and version tests and a tiny compiled GRPO run pass.
# usage: bench/gpu_dryrun.sh PYTHON KIT OUT
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$1"; KIT="$2"; OUT="$3"
VER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$VER" != 3.12 ]; then KIT="$KIT-py$VER"; fi  # the image is 3.12; another interpreter needs its own wheels
[ -f "$KIT/manifest.json" ] || "$PY" bench/gpu_kit.py --out "$KIT" --python_version "$VER"
rm -rf "$OUT"; mkdir -p "$OUT"
TARGET="$(mktemp -d "${TMPDIR:-/tmp}/simplear-dryrun.XXXXXX")"
trap 'rm -rf "$TARGET"' EXIT
expect_2() {  # run "$@", which must exit 2
  local rc=0; "$@" || rc=$?
  [ "$rc" -eq 2 ] || { echo "dry run: expected exit 2, got $rc from: $*"; exit 1; }
  echo "-> exit 2, as expected"
}
{
  echo "# GPU dry run on $(lscpu | sed -n 's/^Model name: *//p'), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "## the image's versions in $PY (Python $("$PY" -c 'import platform; print(platform.python_version())'))"
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|trl|datasets|accelerate|peft|tokenizers|huggingface.hub|numpy) '
  echo "## 1. without the kit"
  echo "\$ simplear-rl generate --prompts 'a red square' --out OUT/generate-5.17"
  expect_2 env PYTHONPATH="$PWD" "$PY" -m rl.cli generate --prompts "a red square" --out "$OUT/generate-5.17"
  echo "\$ python -c 'from policies.versions import check_kv_cache; check_kv_cache()'   # the functional self-check alone"
  if PYTHONPATH="$PWD" "$PY" -c 'from policies.versions import check_kv_cache; check_kv_cache()' 2> "$OUT/kv-5.17.err"; then
    echo "dry run: the KV-cache self-check passed on transformers 5.17"; exit 1
  fi
  tail -1 "$OUT/kv-5.17.err"
  echo "\$ bench/gpu_check.sh --device cpu --out OUT/no-kit"
  expect_2 env PYTHON="$PY" bench/gpu_check.sh --device cpu --out "$OUT/no-kit"
  echo "## 2. with the kit: bench/gpu_check.sh --kit $KIT --device cpu --engines fsdp --budget_s 1200 --out OUT/check"
  sed -n '3p' "$KIT/MANIFEST.md"
  # A 20-minute budget: the 8-minute default is sized for the GPU; cold CPU compiles on a busy machine take longer.
  PYTHON="$PY" bench/gpu_check.sh --kit "$KIT" --device cpu --engines fsdp --budget_s 1200 --out "$OUT/check"
  cat "$OUT/check/results.md"
  echo "## 3. tests in the image's versions plus the kit"
  "$PY" -m pip install --quiet --no-index --no-deps --target "$TARGET" "$KIT"/*.whl
  PYTHONPATH="$TARGET:$PWD" "$PY" -m pytest -q -p no:cacheprovider -W "ignore::pytest.PytestConfigWarning" \
    tests/test_policies_versions.py tests/test_policies_sampler.py tests/test_policies_static_sampler.py \
    tests/test_policies_rollout_weights.py \
    "tests/test_rl_trainer.py::test_compiled_rollouts_give_the_trainer_the_log_probs_it_computes_from_one_compiled_graph"
  echo "dry run: passed"
} 2>&1 | tee "$OUT/dryrun.log"
