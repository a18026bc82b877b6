"""The real-size GRPO recipes parse, and a user's missing paths are named before anything loads."""

from pathlib import Path

import pytest
import torch
import yaml
from rewards_helpers import TINY_ARCH, tiny_weights  # noqa: F401  (fixture)

from policies.tiny import build_tiny_policy
from rewards import build_rewards
from rl.grpo import build_parser
from rl.grpo import main as grpo_main

REPO = Path(__file__).resolve().parents[1]
REAL = sorted((REPO / "recipes" / "simplear_0.5b").glob("grpo_*.yaml"))


@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.stem)
def test_real_recipes_reward_suites_build_and_score_a_group(recipe, tiny_weights):
    """What a recipe's `rewards:` configures builds and scores, aggregated as the recipe says (tiny open_clip weights
    stand in for the ViT-H-14 checkpoints the recipe names)."""
    _, args, _ = build_parser().parse_args_and_config(["--config", str(recipe), "--bf16", "false"])
    weights = {"clip": tiny_weights.bin, "hpsv2": tiny_weights.hps, "hpsv2.1": tiny_weights.hps}
    specs = [{**spec, "checkpoint": str(weights[spec["name"]]), "arch": TINY_ARCH} for spec in args.rewards]
    suite = build_rewards(specs, aggregation=args.reward_aggregation)
    assert suite.names == [spec["name"] for spec in args.rewards] and suite.aggregation == args.reward_aggregation
    images = torch.rand(args.num_generations, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    total = suite.total(images, ["a red apple on a table"] * args.num_generations, group_size=args.num_generations)
    assert total.shape == (args.num_generations,) and bool(torch.isfinite(total).all())


@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.stem)
def test_real_recipes_carry_simplear_settings_with_explicit_cfg_and_logprob_mode(recipe):
    script, args, model = build_parser().parse_args_and_config(["--config", str(recipe), "--bf16", "false"])
    assert (args.learning_rate, args.num_generations, args.beta) == (1e-6, 4, 0.04)
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert args.warmup_steps == 0.1 and script.resolution == 1024 and script.codec == "cosmos"
    assert {"cfg_scale", "logprob_mode"} <= yaml.safe_load(recipe.read_text()).keys()  # set, not left to defaults
    assert args.cfg_scale == 6.0 and args.logprob_mode == "guided"
    assert all("checkpoint" in spec for spec in args.rewards)


@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.stem)
def test_placeholder_model_path_is_named_before_anything_loads(recipe, capsys):
    assert grpo_main(["--config", str(recipe), "--bf16", "false"]) == 2
    assert "'/path/to/SimpleAR-0.5B-SFT' does not exist" in capsys.readouterr().err


def test_missing_reward_checkpoint_is_named_after_the_policy_and_codec_paths_pass(tmp_path, capsys):
    policy_dir, codec_dir, prompts = tmp_path / "policy", tmp_path / "cosmos", tmp_path / "p.jsonl"
    build_tiny_policy(hidden_size=16, num_hidden_layers=1).save(policy_dir)
    codec_dir.mkdir()
    prompts.write_text('{"prompt": "a cat"}\n')
    argv = ["--config", str(REPO / "recipes" / "simplear_0.5b" / "grpo_clip.yaml"), "--bf16", "false",
            "--model_name_or_path", str(policy_dir), "--codec_path", str(codec_dir), "--train_prompts", str(prompts),
            "--output_dir", str(tmp_path / "run")]
    assert grpo_main(argv) == 2
    err = capsys.readouterr().err
    assert "open_clip_pytorch_model.bin" in err and "does not exist" in err


FAMILIES = {
    "janus_pro_1b": dict(cfg_scale=5.0, temperature=1.0, num_generations=8, beta=0.01, lr=1e-6, resolution=384),
    "emu3": dict(cfg_scale=3.0, temperature=1.0, num_generations=8, beta=0.01, lr=1e-6, resolution=720),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_recipes_carry_their_published_settings_and_name_the_placeholder_path(family, capsys):
    recipe = REPO / "recipes" / family / "grpo_clip.yaml"
    want = FAMILIES[family]
    script, args, model = build_parser().parse_args_and_config(["--config", str(recipe), "--bf16", "false"])
    assert (args.cfg_scale, args.temperature, args.logprob_mode) == (want["cfg_scale"], want["temperature"], "guided")
    assert (args.num_generations, args.beta, args.learning_rate) == (want["num_generations"], want["beta"], want["lr"])
    assert script.codec == "vqvae" and script.resolution == want["resolution"]
    assert grpo_main(["--config", str(recipe), "--bf16", "false"]) == 2
    assert f"'{model.model_name_or_path}' does not exist" in capsys.readouterr().err
