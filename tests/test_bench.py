"""The benchmark scripts run and write what they promise (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
def test_gpu_check_cpu_path_writes_rollout_rows_and_a_grpo_step(tmp_path):
    command = [str(REPO / "bench" / "gpu_check.sh"), "--device", "cpu", "--size", "tiny", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    methods = {(r["method"], r["batch"]) for r in report["rollouts"]}
    assert methods == {(m, b) for m in ("eager", "compiled", "hf-generate") for b in (1, 2)}
    assert all(r["compile_seconds"] > 0 for r in report["rollouts"] if r["method"] == "compiled")
    step = report["grpo_step"]
    for key in ("rollout_seconds", "reward_seconds", "scoring_seconds", "backward_seconds"):
        assert step[key] > 0, key
    assert step["compiles"] >= 1 and step["num_generations"] == 4
    assert "## One GRPO step" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_gpu_check_runs_one_grpo_step_under_fsdp2_and_zero3(tmp_path):
    command = [str(REPO / "bench" / "gpu_check.sh"), "--device", "cpu", "--size", "tiny", "--skip_rollouts",
               "--skip_grpo", "--engines", "fsdp,zero3", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads((tmp_path / "results.json").read_text())["sharded_steps"]
    assert [s["engine"] for s in steps] == ["fsdp", "zero3"]
    for step in steps:
        assert step["returncode"] == 0, (tmp_path / f"grpo_{step['engine']}.log").read_text()[-3000:]
        assert step["grad_norm"] > 0 and step["reward"] is not None
    assert "| fsdp | 0 |" in (tmp_path / "results.md").read_text()
