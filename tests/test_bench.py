"""The benchmark scripts run and write what they promise (timings are never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: bench/gpu_check.sh runs the interpreter running the tests (not a .venv the checkout may not have).
WITH_THIS_PYTHON = {**os.environ, "PYTHON": sys.executable}


def test_rollout_benchmark_writes_one_json_row_per_method_and_batch(tmp_path):
    out = tmp_path / "rows.json"
    command = [sys.executable, str(REPO / "bench" / "rollout.py"), "--size", "tiny", "--grid", "2", "--batch", "1,2",
               "--methods", "eager,hf-generate,plain-loop", "--repeats", "1", "--threads", "1", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["batch"]) for r in rows] == [
        (m, b) for b in (1, 2) for m in ("eager", "hf-generate", "plain-loop")
    ]
    for row in rows:
        assert row["grid"] == [2, 2] and row["tokens_per_s"] > 0 and row["compile_seconds"] == 0.0
    assert "| eager | 1 | 2×2 |" in result.stdout


def test_gpu_check_out_of_budget_skips_every_measurement_and_says_so(tmp_path):
    """A budget too small for anything: the guards still run, results are written, every skip has its reason."""
    command = [str(REPO / "bench" / "gpu_check.sh"), "--device", "cpu", "--budget_s", "1", "--engines", "fsdp",
               "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=WITH_THIS_PYTHON)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["versions"]["ok"] and report["versions"]["found"]["transformers"].startswith("5.24")
    skipped = [s["task"] for s in report["skipped"]]
    assert skipped == ["equality float32", "equality bfloat16", "rollouts batch 1 compiled", "rollouts batch 1 eager",
                       "rollouts batch 1 hf-generate", "grpo_step", "rollouts batch 2 compiled",
                       "rollouts batch 2 eager", "rollouts batch 2 hf-generate", "sharded fsdp"]
    assert all(s["reason"].startswith("time budget:") for s in report["skipped"])
    assert not report["rollouts"] and report["grpo_step"] is None
    assert "## Skipped" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_gpu_check_cpu_path_writes_equality_rollout_rows_and_a_grpo_step(tmp_path):
    command = [str(REPO / "bench" / "gpu_check.sh"), "--device", "cpu", "--size", "tiny", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=WITH_THIS_PYTHON)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert [(r["dtype"], r["passed"]) for r in report["equality"]] == [("float32", True), ("bfloat16", True)]
    methods = {(r["method"], r["batch"]) for r in report["rollouts"]}
    assert methods == {(m, b) for m in ("eager", "compiled", "hf-generate") for b in (1, 2)}
    assert any(r["compile_seconds"] > 0 for r in report["rollouts"] if r["method"] == "compiled")
    step = report["grpo_step"]
    for key in ("rollout_seconds", "reward_seconds", "scoring_seconds", "backward_seconds"):
        assert step[key] > 0, key
    assert step["compiles"] >= 1 and step["num_generations"] == 4
    assert not report["skipped"] and not report["errors"]
    assert "## c. One GRPO step" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_gpu_check_runs_one_grpo_step_under_fsdp2_and_zero3(tmp_path):
    command = [str(REPO / "bench" / "gpu_check.sh"), "--device", "cpu", "--size", "tiny", "--skip",
               "equality,rollouts,grpo", "--engines", "fsdp,zero3", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=WITH_THIS_PYTHON)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads((tmp_path / "results.json").read_text())["sharded_steps"]
    assert [s["engine"] for s in steps] == ["fsdp", "zero3"]
    for step in steps:
        assert step["returncode"] == 0, (tmp_path / f"grpo_{step['engine']}.log").read_text()[-3000:]
        assert step["grad_norm"] > 0 and step["reward"] is not None
    assert "| fsdp | 0 |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_gpu_dryrun_runs_the_check_in_the_gpu_image_versions_with_the_kit():
    """`make gpu-dryrun`: .venv-gpu with bench/gpu_image.txt's versions (built on first use: a large download), the
    kit from `make gpu-kit`, the guard refusing transformers 5.17 without it, the check's CPU path and tests with it."""
    result = subprocess.run(["make", "gpu-dryrun"], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (REPO / "bench" / "gpu_dryrun" / "dryrun.log").read_text()
    assert "simplear-rl generate: error: transformers 5.17.0 is installed but simplear-rl needs" in log
    assert "the prompt filled 0 of 5 cache positions" in log
    assert log.rstrip().endswith("dry run: passed")
    report = json.loads((REPO / "bench" / "gpu_dryrun" / "check" / "results.json").read_text())
    assert report["versions"]["found"]["torch"].startswith("2.11") and report["versions"]["found"]["trl"] == "1.16.0"
    assert report["grpo_step"] is not None and not report["errors"]
