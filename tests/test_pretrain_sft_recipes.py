"""Every shipped recipe parses (no unknown key) and the SimpleAR recipes carry the published settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from pretrain_sft.train import main, parse_args

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
#: Every shipped recipe that names a stage (`stage: pretrain | sft`), found by reading the recipes.
STAGE_RECIPES = sorted(
    str(path.relative_to(RECIPES)) for path in RECIPES.glob("*/*.yaml")
    if "stage" in (yaml.safe_load(path.read_text()) or {})
)


def _parse(name: str):
    # bf16 needs a GPU at parse time; every other key is validated as written.
    return parse_args(["--config", str(RECIPES / name), "--bf16", "false"])


def test_stage_recipes_are_found():
    assert {"tiny/pretrain.yaml", "tiny/sft.yaml", "simplear_0.5b/pretrain_512.yaml"} <= set(STAGE_RECIPES)


@pytest.mark.parametrize("name", STAGE_RECIPES)
def test_stage_recipe_parses_and_names_its_stage(name):
    stage_args, _, training_args = _parse(name)
    assert stage_args.stage == Path(name).stem.split("_")[0]
    assert training_args.lr_scheduler_type == "constant"


@pytest.mark.parametrize(
    "name, lr, resolution, max_length",
    [("simplear_0.5b/pretrain_512.yaml", 1e-4, 512, 1536), ("simplear_0.5b/sft_1024.yaml", 2e-5, 1024, 4608)],
)
def test_simplear_recipes_carry_the_published_settings(name, lr, resolution, max_length):
    stage_args, _, training_args = _parse(name)
    assert training_args.learning_rate == lr
    assert stage_args.resolution == resolution and stage_args.model_max_length == max_length
    assert max_length == (resolution // 16) ** 2 + 512  # Cosmos DV8x16x16 grid + 512 prompt tokens
    assert training_args.optim == "adamw_torch" and stage_args.p_drop_cond == 0.1
    global_batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * 8
    assert 256 <= global_batch <= 512
    assert yaml.safe_load((RECIPES / name).read_text())["bf16"] is True  # bf16 compute over fp32 masters


@pytest.mark.parametrize("name", ["simplear_0.5b/pretrain_512.yaml", "simplear_0.5b/sft_1024.yaml"])
def test_simplear_recipes_as_shipped_name_their_placeholder_path_before_anything_loads(name, capsys):
    """Run as shipped, a real-size recipe stops on a path to edit (the token cache or the model; exit 2), naming it."""
    recipe = yaml.safe_load((RECIPES / name).read_text())
    assert main(["--config", str(RECIPES / name), "--bf16", "false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and any(recipe[key] in err for key in ("cache", "model_name_or_path")), err


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "fsdp"])
def test_accelerate_configs_load(name):
    config = load_config_from_file(str(RECIPES / "accelerate" / f"{name}.yaml"))
    assert config.num_processes >= 1 and config.mixed_precision == "bf16"
    if name.startswith("zero"):  # the ZeRO stage the name promises
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
