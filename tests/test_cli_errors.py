"""One error style across every command: bad input -> one line and exit 2, runtime failure -> exit 1,
tracebacks only behind --debug; the bad values issue 9 lists get named errors."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest

from policies.commands import DEBUG_ENV
from policies.tiny import build_tiny_policy
from rl.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
TINY_GRPO = REPO / "recipes" / "tiny" / "grpo.yaml"
TINY_PRETRAIN = REPO / "recipes" / "tiny" / "pretrain.yaml"
PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, command: str) -> str:
    """Exactly one `simplear-rl <command>: error:` line and no traceback; returns that line."""
    lines = [line for line in err.splitlines() if line.startswith(f"simplear-rl {command}: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def files(tmp_path):
    """Small bad inputs shared by the cases below."""
    (tmp_path / "broken.yaml").write_text("out: runs/x\nquick: [true\n")
    (tmp_path / "spec_unknown.yaml").write_text("recipe: r.yaml\nout: o\nvariants: {a: {}}\neval: {prompts: p, rewards: [x]}\nbogus: 1\n")
    (tmp_path / "spec_broken.yaml").write_text("recipe: r.yaml\nvariants:\n  a: {prompt_length: short\n")
    run = tmp_path / "run_without_rewards"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, "learning_rate": 1e-3}) + "\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    return tmp_path


#: (command, argv builder, text the error line must contain)
BAD_INPUTS = [
    ("demo", lambda t: ["--config", t / "broken.yaml"], "line 3"),
    ("demo", lambda t: ["--outt", t / "x"], "did you mean `out`"),
    ("generate", lambda t: ["--cfg_scale", "-1", "--out", t / "g"], "cfg_scale must be"),
    ("generate", lambda t: ["--model", t / "missing", "--prompts", "a", "--out", t / "g"], "missing"),
    ("generate", lambda t: ["--num_imagez", "2", "--out", t / "g"], "unrecognized arguments"),
    ("generate", lambda t: ["--num_image", "2", "--out", t / "g"], "unrecognized arguments: --num_image"),
    ("extract-tokens", lambda t: ["--images", t / "missing.jsonl", "--out", t / "c", "--resolution", "64"], "missing.jsonl"),
    ("pretrain", lambda t: ["--config", TINY_PRETRAIN, "--cache", t / "no_cache", "--output_dir", t / "p"], "no_cache"),
    ("pretrain", lambda t: ["--config", TINY_PRETRAIN, "--learnin_rate", "1e-3"], "did you mean `learning_rate`"),
    ("sft", lambda t: ["--config", TINY_PRETRAIN, "--output_dir", t / "s"], "stage: pretrain"),
    ("grpo", lambda t: ["--config", TINY_GRPO, "--learnin_rate", "1e-6", "--output_dir", t / "g"], "did you mean `learning_rate`"),
    ("grpo", lambda t: ["--config", TINY_GRPO, "--learning_rat", "1e-6", "--output_dir", t / "g"], "unknown key `learning_rat`"),
    ("grpo", lambda t: ["--config", TINY_GRPO, "--cfg_scale", "-0.5", "--output_dir", t / "g"], "cfg_scale must be"),
    ("grpo", lambda t: ["--config", t / "broken.yaml"], "line 3"),
    ("rewards", lambda t: ["score", "--rewards", "no_such_reward", "--images", t, "--prompts", PROMPTS], "needs string fields 'image'"),
    ("rewards", lambda t: ["score", "--rewards", t / "missing_spec.yaml", "--images", t, "--prompts", PROMPTS], "missing_spec"),
    ("eval", lambda t: ["rewards", "--model", t / "missing", "--prompts", PROMPTS, "--rewards", "color_region",
                        "--out", t / "e"], "missing"),
    ("ablate", lambda t: [t / "spec_broken.yaml"], "line 4"),
    ("ablate", lambda t: [t / "spec_unknown.yaml"], "bogus"),
    ("plot", lambda t: [t / "run_without_rewards", "--out", t / "c.png"], "columns: learning_rate, loss"),
]


@pytest.mark.parametrize("command,argv,needle", BAD_INPUTS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_INPUTS)])
def test_every_command_reports_bad_input_in_one_line_with_exit_2(command, argv, needle, files, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.chdir(files)
    code, err = run_cli(capsys, command, *argv(files))
    line = assert_one_line_error(err, command)
    assert code == 2, err
    assert needle in line, line


def test_a_yaml_syntax_error_names_the_recipe_file_and_line(files, capsys):
    code, err = run_cli(capsys, "grpo", "--config", files / "broken.yaml")
    line = assert_one_line_error(err, "grpo")
    assert code == 2 and str(files / "broken.yaml") in line and "line 3, column 1" in line


def test_debug_flag_and_environment_variable_show_the_traceback(files, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    code, err = run_cli(capsys, "plot", files / "run_without_rewards", "--debug")
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("simplear-rl plot: error:")
    monkeypatch.setenv(DEBUG_ENV, "1")
    code, err = run_cli(capsys, "plot", files / "run_without_rewards")
    assert code == 2 and "Traceback" in err


def test_plot_draws_a_metric_that_exists_when_asked_for_it(files, capsys):
    code, _ = run_cli(capsys, "plot", files / "run_without_rewards", "--metric", "loss", "--out", files / "loss.png")
    assert code == 0 and (files / "loss.png").stat().st_size > 0


def test_cfg_scale_below_one_is_legal_with_a_one_line_warning(tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="policies.guidance"):
        code, _ = run_cli(capsys, "generate", "--cfg_scale", "0.25", "--prompts", "a red square", "--out", tmp_path)
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if "cfg_scale=0.25" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]


def test_grpo_config_refuses_negative_cfg_scale_when_the_recipe_is_parsed():
    from rl.grpo import build_parser

    with pytest.raises(ValueError, match="cfg_scale must be a finite number >= 0"):
        build_parser().parse_args_and_config(["--config", str(TINY_GRPO), "--cfg_scale", "-1"])


@pytest.fixture(scope="module")
def palette40_checkpoint(tmp_path_factory):
    """A tiny policy trained with a 40-level palette codec (64,000 codes), as a checkpoint folder."""
    folder = tmp_path_factory.mktemp("palette40")
    policy = build_tiny_policy(codebook_size=40**3, grid=(4, 4), hidden_size=16, intermediate_size=32)
    policy.vocab = policy.vocab.with_codec({"name": "palette", "levels": 40, "patch": 4})
    policy.save(folder)
    return folder


@pytest.mark.parametrize("codec_flags", [[], ["--codec", "palette"]], ids=["recorded", "named"])
def test_generate_uses_the_palette_settings_the_checkpoint_records(palette40_checkpoint, codec_flags, tmp_path, capsys):
    out = tmp_path / "g"
    code, err = run_cli(capsys, "generate", "--model", palette40_checkpoint, *codec_flags, "--prompts", "a red square",
                        "--out", out)
    assert code == 0, err
    record = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    assert record["codec"] == {"name": "palette", "levels": 40, "patch": 4}
    assert record["resolution"] == [16, 16]


def test_palette_flags_override_the_recorded_patch_and_are_checked_against_the_policy(palette40_checkpoint, tmp_path, capsys):
    code, err = run_cli(capsys, "generate", "--model", palette40_checkpoint, "--codec", "palette", "--codec_patch", "8",
                        "--prompts", "a", "--out", tmp_path / "g")
    assert code == 0, err
    assert json.loads((tmp_path / "g" / "metadata.jsonl").read_text().splitlines()[0])["resolution"] == [32, 32]
    code, err = run_cli(capsys, "generate", "--model", palette40_checkpoint, "--codec_levels", "4",
                        "--prompts", "a", "--out", tmp_path / "h")
    assert code == 2 and "codebook_size 64" in assert_one_line_error(err, "generate")


def test_eval_uses_the_palette_settings_the_checkpoint_records(palette40_checkpoint, tmp_path, capsys):
    code, err = run_cli(capsys, "eval", "rewards", "--model", palette40_checkpoint, "--codec", "palette",
                        "--prompts", PROMPTS, "--rewards", "color_region", "--num_images", "1", "--out", tmp_path / "e")
    assert code == 0, err
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["images"] > 0


FAILING_REWARD = textwrap.dedent('''
    import torch

    CALLS = {"n": 0}

    def flaky_scorer(images, prompts):
        """Scores the first rollout, then crashes."""
        CALLS["n"] += 1
        if CALLS["n"] > 1:
            raise RuntimeError("the scoring server went away")
        return images.mean(dim=(1, 2, 3))
''')


def test_a_reward_failing_during_training_stops_with_one_line_naming_reward_prompt_and_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "flaky_reward_module.py").write_text(FAILING_REWARD)
    out = tmp_path / "run"
    code, err = run_cli(
        capsys, "grpo", "--config", TINY_GRPO, "--train_prompts", PROMPTS, "--output_dir", out,
        "--rewards", '{"name": "flaky_reward_module:flaky_scorer"}', "--save_steps", "1", "--max_steps", "3",
        "--sample_every", "0",
    )
    line = assert_one_line_error(err, "grpo")
    assert code == 1
    assert "'flaky_scorer'" in line and "prompt '" in line and "the scoring server went away" in line
    assert str(out / "checkpoint-1") in line and "--resume_from_checkpoint last" in line


@pytest.mark.parametrize("targets", [["q_proj", "lm_head"], ["model.lm_head"]])
def test_lora_on_the_lm_head_is_refused_before_anything_loads(targets, tmp_path, capsys, monkeypatch):
    """Image tokens are scored on the head's visual rows, where an adapter would be ignored: refused with exit 2
    before the policy is built (it used to fail at the first rollout with a TypeError, exit 1)."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    out = tmp_path / "run"
    code, err = run_cli(capsys, "grpo", "--config", TINY_GRPO, "--train_prompts", PROMPTS, "--output_dir", out,
                        "--use_peft", "true", "--lora_r", "4", "--lora_target_modules", *targets)
    line = assert_one_line_error(err, "grpo")
    assert code == 2 and "lm_head" in line and "lora_target_modules" in line
    assert not (out / "init-policy").exists()  # refused before the policy was built
