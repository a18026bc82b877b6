"""The image GRPO trainer end to end on the tiny CPU recipe: full fine-tuning, LoRA, both log-prob
modes, wandb offline, the guided-mode log-prob consistency, and saved outputs that load again."""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from policies.generate import main as generate_main
from policies.loading import load_policy
from rl.curves import read_metrics
from rl.grpo import main as grpo_main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny" / "grpo.yaml"
PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"


def run_tiny(out: Path, *extra: str) -> list[dict]:
    argv = ["--config", str(RECIPE), "--output_dir", str(out), "--train_prompts", str(PROMPTS), *extra]
    assert grpo_main(argv) == 0
    return read_metrics(out)


@pytest.fixture(scope="module")
def full_ft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, run_tiny(out, "--max_steps", "3", "--beta", "0.04", "--sample_every", "2")


def test_full_finetune_logs_trl_and_image_health_metrics_every_step(full_ft_run):
    _, records = full_ft_run
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("reward", "reward_std", "rewards/color_region/mean", "kl", "entropy", "frac_reward_zero_std",
                "entropy/visual_sampler", "sampling/logprob_gap/mean"):
        assert all(isinstance(r.get(key), float) for r in records), key
    assert records[-1]["kl"] > 0  # the reference model is a separate copy that the policy moves away from


def test_guided_mode_trainer_logprobs_equal_the_sampler_logprobs(full_ft_run):
    _, records = full_ft_run
    assert max(r["sampling/logprob_gap/max"] for r in records) < 1e-4


def test_run_writes_reward_curve_samples_and_a_policy_that_loads_again(full_ft_run):
    out, _ = full_ft_run
    assert (out / "reward_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step_0.png", "step_2.png"]
    policy = load_policy(out)
    assert policy.vocab.grid == (8, 8) and policy.vocab.codebook_size == 64
    assert policy.vocab.codec == {"name": "palette", "levels": 4, "patch": 8}
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.config.vocab_size == policy.vocab.vocab_size
    init = load_policy(out / "init-policy")
    moved = any(not torch.equal(a, b) for a, b in zip(init.model.parameters(), policy.model.parameters()))
    assert moved, "GRPO did not update the policy"


def test_generate_rebuilds_the_recorded_codec_of_a_trained_policy_without_flags(full_ft_run, tmp_path):
    out, _ = full_ft_run
    assert generate_main(["--model", str(out), "--prompts", "a red square on the left", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "metadata.jsonl").read_text().splitlines()[0])
    assert record["codec"] == {"name": "palette", "levels": 4, "patch": 8}


def test_lora_trains_an_adapter_with_the_disabled_adapter_as_reference(tmp_path):
    records = run_tiny(tmp_path, "--max_steps", "2", "--beta", "0.04", "--use_peft", "true", "--lora_r", "4",
                       "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", "1e-2")
    assert (tmp_path / "adapter_config.json").exists()
    assert max(r["sampling/logprob_gap/max"] for r in records) < 1e-4
    assert records[-1]["kl"] > 0


def test_compiled_rollouts_give_the_trainer_the_log_probs_it_computes_from_one_compiled_graph(tmp_path):
    records = run_tiny(tmp_path, "--max_steps", "2", "--rollout_backend", "compiled", "--sample_every", "0",
                       "--save_steps", "1000")
    assert max(r["sampling/logprob_gap/max"] for r in records) < 1e-4
    first, second = records
    assert first["rollout/compiles"] >= 1 and first["rollout/compile_seconds"] > 0
    assert second["rollout/compiles"] == first["rollout/compiles"], "the second GRPO step compiled the decode step again"


@pytest.mark.slow  # a compilation of its own: about a minute on 2 busy CPU cores
def test_lora_grpo_on_the_compiled_backend_scores_what_it_sampled_and_keeps_one_graph(tmp_path):
    """LoRA adapters inside the compiled decode step: the trainer's log-probs equal the sampler's, and the adapter's
    update between steps (new values, same shapes) compiles no new graph."""
    records = run_tiny(tmp_path, "--max_steps", "2", "--rollout_backend", "compiled", "--sample_every", "0",
                       "--save_steps", "1000", "--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj",
                       "v_proj", "--learning_rate", "1e-2")
    assert (tmp_path / "adapter_config.json").exists()
    assert max(r["sampling/logprob_gap/max"] for r in records) < 1e-4
    first, second = records
    assert first["rollout/compiles"] >= 1
    assert second["rollout/compiles"] == first["rollout/compiles"], "the second LoRA step compiled the decode step again"


def test_guided_mode_applies_the_samplers_top_k_and_top_p_truncation_too(tmp_path):
    records = run_tiny(tmp_path, "--max_steps", "1", "--top_k", "16", "--top_p", "0.8", "--sample_every", "0")
    assert records[0]["sampling/logprob_gap/max"] < 1e-4


def test_conditional_mode_runs_trl_scoring_and_reports_its_gap_to_the_guided_sampler(tmp_path):
    records = run_tiny(tmp_path, "--max_steps", "1", "--logprob_mode", "conditional", "--sample_every", "0")
    gap = records[0]["sampling/logprob_gap/mean"]
    assert gap > 1e-3  # CFG rollouts scored by the conditional branch over the full vocabulary differ
    assert not (tmp_path / "samples").exists()


def test_wandb_offline_run_folder_holds_the_metrics_and_sample_grids(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run_tiny(tmp_path, "--max_steps", "2", "--report_to", "wandb", "--sample_every", "1")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    wandb_file = next(runs[0].glob("*.wandb"))
    data = wandb_file.read_bytes()
    assert b"rewards/color_region/mean" in data and b"sampling/logprob_gap/mean" in data
    assert list(runs[0].glob("files/media/images/samples_*.png")), "sample grids were not logged to wandb"
    assert "WANDB_DIR" not in os.environ and "WANDB_PROJECT" not in os.environ  # nothing leaks into later runs


def test_normalize_then_sum_logs_the_reward_trl_trained_on_and_the_raw_weighted_sum_beside_it(tmp_path):
    """``reward`` is what the advantages came from (each reward normalised within its group, then weighted and
    summed); the weighted sum of the raw rewards is ``reward_weighted_sum``, in metrics and in the rollout records."""
    records = run_tiny(tmp_path, "--max_steps", "2", "--reward_aggregation", "normalize_then_sum", "--rewards",
                       "color_region:2", "--log_rollouts", "true", "--sample_every", "1", "--save_steps", "1000")
    rows = [json.loads(line) for line in (tmp_path / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    for record in records:
        step = [r for r in rows if r["step"] == record["step"] - 1]
        raw = torch.tensor([r["rewards"]["color_region"] for r in step]).view(-1, 4)  # groups of num_generations
        z = (raw - raw.mean(dim=1, keepdim=True)) / (raw.std(dim=1, keepdim=True) + 1e-4)
        assert torch.allclose(torch.tensor([r["reward"] for r in step]), 2 * z.flatten(), atol=1e-4)
        assert torch.allclose(torch.tensor([r["reward_weighted_sum"] for r in step]), 2 * raw.flatten(), atol=1e-6)
        assert record["reward"] == pytest.approx(float(2 * z.mean()), abs=1e-5)
        assert record["reward_weighted_sum"] == pytest.approx(2 * record["rewards/color_region/mean"], rel=1e-5)
