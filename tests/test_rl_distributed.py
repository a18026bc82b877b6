"""Killing a single-process GRPO run and resuming it (multi-process runs: tests/test_distributed_engines.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from rl.curves import read_metrics

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny" / "grpo.yaml"
PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"


def recipe_args(out: Path, *extra: str) -> list[str]:
    return ["--config", str(RECIPE), "--output_dir", str(out), "--train_prompts", str(PROMPTS), *extra]


def test_a_killed_run_resumes_from_its_checkpoint_without_losing_or_duplicating_metrics(tmp_path):
    out = tmp_path / "run"
    killer = REPO / "tests" / "distributed" / "kill_at_step.py"
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL_AT_STEP": "3"}  # a hard crash one step after checkpoint-2
    args = recipe_args(out, "--max_steps", "4", "--save_steps", "2", "--sample_every", "0")
    crashed = subprocess.run([sys.executable, str(killer), *args], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert (out / "checkpoint-2" / "trainer_state.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "rl.grpo", *args, "--resume_from_checkpoint", "last"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert [json.loads(line)["step"] for line in (out / "metrics.discarded.jsonl").read_text().splitlines()] == [3]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
