"""Multi-process GRPO (2 CPU processes, gloo, under accelerate) and killing then resuming a run."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from rl.curves import read_metrics

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny" / "grpo.yaml"
PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"
BIN = Path(sys.executable).parent


def recipe_args(out: Path, *extra: str) -> list[str]:
    return ["--config", str(RECIPE), "--output_dir", str(out), "--train_prompts", str(PROMPTS), *extra]


def nanstd_unbiased(x: torch.Tensor) -> torch.Tensor:
    return ((x - x.mean()) ** 2).sum().div(len(x) - 1).sqrt()


def test_two_processes_share_group_advantages_and_write_metrics_once(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29561",
           "-m", "rl.grpo", *recipe_args(out, "--per_device_train_batch_size", "2", "--num_generations", "4",
                                        "--max_steps", "2", "--log_rollouts", "true", "--sample_every", "1")]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    rows = {rank: [json.loads(line) for line in (out / "rollouts" / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}
    for step in (0, 1):
        group = [r for rank in (0, 1) for r in rows[rank] if r["step"] == step]
        assert len(group) == 4 and len({r["prompt"] for r in group}) == 1  # one group split over both ranks
        assert {r["rank"] for r in group} == {0, 1}
        rewards = torch.tensor([r["reward"] for r in group])
        expected = (rewards - rewards.mean()) / (nanstd_unbiased(rewards) + 1e-4)
        assert torch.allclose(torch.tensor([r["advantage"] for r in group]), expected, atol=1e-5)
        assert len({r["seed"] for r in group}) == 4  # ranks never draw the same sample

    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step_0.png", "step_1.png"]


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from rl.grpo import build_parser, build_trainer

    class KillAfter(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # a hard crash after step 3 was logged, one step after checkpoint-2

    script, args, model_args = build_parser().parse_args_and_config(sys.argv[1:])
    build_trainer(script, args, model_args, callbacks=[KillAfter()]).train()
    """
)


def test_a_killed_run_resumes_from_its_checkpoint_without_losing_or_duplicating_metrics(tmp_path):
    out = tmp_path / "run"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
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
