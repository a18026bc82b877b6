"""Recipe parsing and the refusals of configs that cannot work for fixed-size image grids."""

import pytest
import yaml
from trl import ModelConfig

from rl.config import ImageGRPOConfig, ScriptArguments, normalise_reward_specs
from rl.grpo import build_parser


def make(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, report_to=[], bf16=False)
    base.update(kw)
    return ImageGRPOConfig(**base)


def test_mask_truncated_completions_is_refused_because_every_grid_looks_truncated(tmp_path):
    with pytest.raises(ValueError, match="mask_truncated_completions"):
        make(tmp_path, mask_truncated_completions=True)


def test_generation_batch_not_divisible_by_num_generations_is_refused(tmp_path):
    with pytest.raises(ValueError, match="divisible by num_generations"):
        make(tmp_path, per_device_train_batch_size=3, num_generations=2)


def test_vllm_repetition_penalty_and_min_p_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="use_vllm"):
        make(tmp_path, use_vllm=True)
    with pytest.raises(ValueError, match="repetition_penalty"):
        make(tmp_path, repetition_penalty=1.1)
    with pytest.raises(ValueError, match="min_p"):
        make(tmp_path, min_p=0.05)


def test_reward_weights_outside_the_rewards_list_are_refused(tmp_path):
    with pytest.raises(ValueError, match="inside the `rewards` list"):
        make(tmp_path, rewards=[{"name": "a"}], reward_weights=[1.0])


def test_logprob_mode_auto_is_guided_with_cfg_and_conditional_without(tmp_path):
    assert make(tmp_path, cfg_scale=4.0).logprob_mode == "guided"
    assert make(tmp_path, cfg_scale=1.0).logprob_mode == "conditional"
    assert make(tmp_path, cfg_scale=4.0, logprob_mode="conditional").logprob_mode == "conditional"
    with pytest.raises(ValueError, match="logprob_mode"):
        make(tmp_path, logprob_mode="exact")


def test_rollout_backend_is_auto_by_default_and_an_unknown_one_is_refused_naming_the_choices(tmp_path):
    assert make(tmp_path).rollout_backend == "auto"
    assert make(tmp_path, rollout_backend="compiled").rollout_backend == "compiled"
    with pytest.raises(ValueError, match="rollout_backend must be one of eager, compiled, auto, got 'fast'"):
        make(tmp_path, rollout_backend="fast")


def test_dropout_is_disabled_by_default_so_rollout_and_training_score_one_policy(tmp_path):
    assert make(tmp_path).disable_dropout is True


def test_reward_specs_accept_mappings_name_weight_strings_and_yaml_strings():
    specs = normalise_reward_specs([{"name": "clip", "weight": 0.5, "checkpoint": "/x"}, "hpsv2:2", "color_region",
                                    "{name: gate_me, weight: 3}"])
    assert specs == [
        {"name": "clip", "weight": 0.5, "checkpoint": "/x"},
        {"name": "hpsv2", "weight": 2.0},
        {"name": "color_region"},
        {"name": "gate_me", "weight": 3},
    ]
    with pytest.raises(ValueError, match="not a number"):
        normalise_reward_specs(["clip:heavy"])
    with pytest.raises(ValueError, match="no `name`"):
        normalise_reward_specs([{"weight": 1.0}])


def write_recipe(tmp_path, **extra):
    recipe = {
        "model_name_or_path": "tiny",
        "train_prompts": "prompts.jsonl",
        "codec": "palette",
        "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "cfg_scale": 3.0,
        "rewards": [{"name": "color_region", "weight": 1.0}, {"name": "clip", "weight": 0.5, "checkpoint": "/c.bin"}],
        "report_to": "none",
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_one_flat_yaml_sets_script_grpo_and_model_keys_and_cli_overrides_win(tmp_path):
    path = write_recipe(tmp_path)
    script, args, model = build_parser().parse_args_and_config(
        ["--config", str(path), "--learning_rate", "1e-6", "--cfg_scale", "5"]
    )
    assert isinstance(script, ScriptArguments) and isinstance(model, ModelConfig)
    assert script.codec == "palette" and model.model_name_or_path == "tiny"
    assert args.learning_rate == 1e-6 and args.cfg_scale == 5.0 and args.logprob_mode == "guided"
    assert args.rewards[1] == {"name": "clip", "weight": 0.5, "checkpoint": "/c.bin"}


def test_rewards_can_be_overridden_on_the_command_line(tmp_path):
    path = write_recipe(tmp_path)
    _, args, _ = build_parser().parse_args_and_config(["--config", str(path), "--rewards", "color_region:2", "clip:0.1"])
    assert args.rewards == [{"name": "color_region", "weight": 2.0}, {"name": "clip", "weight": 0.1}]


def test_unknown_recipe_key_is_rejected_naming_the_key(tmp_path):
    path = write_recipe(tmp_path, cfg_sacle=4.0)
    with pytest.raises(ValueError, match="cfg_sacle"):
        build_parser().parse_args_and_config(["--config", str(path)])


def test_bf16_defaults_to_what_the_machine_supports(tmp_path):
    import torch

    expected = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert make(tmp_path).bf16 is expected


def test_tiny_codebook_size_is_no_key_because_a_tiny_policys_codebook_is_its_codecs(tmp_path):
    """The tiny policy takes its codebook from the codec (palette: levels**3); a key that did nothing is refused."""
    path = write_recipe(tmp_path, tiny_codebook_size=32)
    with pytest.raises(ValueError, match="tiny_codebook_size"):
        build_parser().parse_args_and_config(["--config", str(path)])


@pytest.mark.parametrize("text,expected", [("auto", False), ("true", True), ("false", False)])
def test_importance_sampling_correction_takes_auto_true_false_and_holds_a_bool(tmp_path, text, expected):
    """The recipe spells the switch auto | true | false (YAML and command line); the config holds a bool
    (auto resolved: off for these fp32 rollouts)."""
    _, from_cli, _ = build_parser().parse_args_and_config(
        ["--config", str(write_recipe(tmp_path)), "--importance_sampling_correction", text])
    _, from_yaml, _ = build_parser().parse_args_and_config(
        ["--config", str(write_recipe(tmp_path, importance_sampling_correction=yaml.safe_load(text)))])
    for args in (from_cli, from_yaml, make(tmp_path, cfg_scale=3.0, importance_sampling_correction=text)):
        assert args.importance_sampling_correction is expected
        assert args.vllm_importance_sampling_correction is expected
    with pytest.raises(ValueError, match="true, false or auto"):
        make(tmp_path, importance_sampling_correction="sometimes")


def test_importance_sampling_aliases_set_trls_vllm_keys(tmp_path):
    """Users of a trainer without vLLM set the correction with importance_sampling_* keys."""
    args = make(tmp_path, importance_sampling_mode="token_mask", importance_sampling_clip_max=1.5,
                importance_sampling_clip_min=0.5)
    assert (args.vllm_importance_sampling_mode, args.vllm_importance_sampling_clip_max,
            args.vllm_importance_sampling_clip_min) == ("token_mask", 1.5, 0.5)
    _, parsed, _ = build_parser().parse_args_and_config(
        ["--config", str(write_recipe(tmp_path, importance_sampling_mode="sequence_truncate")),
         "--importance_sampling_clip_max", "3"])
    assert parsed.vllm_importance_sampling_mode == "sequence_truncate" and parsed.vllm_importance_sampling_clip_max == 3
    assert make(tmp_path).vllm_importance_sampling_mode == "token_truncate"  # our default when neither is set
    with pytest.raises(ValueError, match="disagree"):
        make(tmp_path, importance_sampling_clip_max=1.5, vllm_importance_sampling_clip_max=4.0)
    with pytest.raises(ValueError, match="importance_sampling_mode must be one of"):
        make(tmp_path, importance_sampling_mode="token")


def test_reward_specs_are_typed_and_held_as_mappings(tmp_path):
    import typing

    hints = typing.get_type_hints(ImageGRPOConfig)
    assert hints["rewards"] == hints["monitor_rewards"] == (list[dict[str, typing.Any]] | None)
    assert make(tmp_path, rewards=["color_region:2"]).rewards == [{"name": "color_region", "weight": 2.0}]
