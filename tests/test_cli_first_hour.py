"""A newcomer's first hour: every --help works and describes every flag, one flag style, --version, nothing
deletes or mixes into a folder it did not make, generate's output feeds `rewards score`, recipes run from any
folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from policies.commands import DEBUG_ENV
from policies.recipes import RecipeParser
from rl.cli import main as cli_main
from rl.demo_folder import DEMO_RECORD, prepare_demo_out
from rl.grpo import build_parser as grpo_parser

REPO = Path(__file__).resolve().parents[1]
TINY_GRPO = REPO / "recipes" / "tiny" / "grpo.yaml"

HELP_COMMANDS = [
    "demo", "demo --task numbers", "generate", "extract-tokens", "pretrain", "sft", "grpo", "rewards", "rewards list",
    "rewards score", "rewards serve", "eval", "eval geneval", "eval dpg", "eval rewards", "ablate", "plot", "export",
    "report",
]
TRAINING = ["pretrain", "sft", "grpo"]


def run_help(capsys, command: str) -> tuple[int, str]:
    try:
        code = cli_main([*command.split(), "--help"])
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("command", HELP_COMMANDS)
def test_every_help_exits_0_without_traceback_and_names_its_command(command, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    code, text = run_help(capsys, command)
    assert code == 0, text
    assert "Traceback" not in text and "error:" not in text, text
    name = command.split(" --")[0]
    assert f"simplear-rl {name}" in text.splitlines()[0] or f"simplear-rl {name.split()[0]}" in text.splitlines()[0]


def test_every_flag_of_every_command_has_a_description(capsys, monkeypatch):
    undocumented: dict[str, list[str]] = {}
    original = argparse.ArgumentParser.format_help

    def recording_format_help(parser):
        for action in parser._actions:
            if action.option_strings and not action.help:
                undocumented.setdefault(parser.prog, []).append(action.option_strings[0])
        return original(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "format_help", recording_format_help)
    for command in HELP_COMMANDS:
        assert run_help(capsys, command)[0] == 0
    assert undocumented == {}


@pytest.mark.parametrize("command", TRAINING)
def test_training_help_shows_config_our_debug_resume_last_and_own_keys_first(command, capsys):
    code, text = run_help(capsys, command)
    assert code == 0
    assert text.startswith(f"usage: simplear-rl {command} [--config RECIPE.yaml]")
    assert "--config RECIPE.yaml" in text.split("recipe keys (simplear-rl):")[0]
    debug_lines = [line for line in text.splitlines() if line.strip().startswith("--debug")]
    assert len(debug_lines) == 1 and "underflow" not in text
    resume = text[text.index("\n  --resume_from_checkpoint"):][:400]
    assert "`last`" in resume
    assert text.index("recipe keys (simplear-rl):") < text.index("inherited from")


def test_help_shows_each_default_once_and_no_raw_rst_backticks(capsys):
    _, text = run_help(capsys, "grpo")
    assert "``" not in text
    block = text[text.index("--prompt_length"):text.index("--prompt_column")]
    assert block.count("default") == 1


@pytest.mark.parametrize("argv", [
    ["generate", "--num-images", "0", "--out", "x"], ["generate", "--num_images", "0", "--out", "x"],
    ["eval", "rewards", "--num-images", "0"], ["rewards", "serve", "--max-batch", "0"],
])
def test_both_flag_spellings_are_accepted_everywhere(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(argv)
    assert "unrecognized arguments" not in capsys.readouterr().err


def test_rewards_score_takes_on_error_in_both_spellings():
    from rewards.cli import _parser

    parser = _parser()
    for flag in ("--on_error", "--on-error"):
        args = parser.parse_args(["score", "--rewards", "a", "--images", ".", flag, "drop"])
        assert args.on_error == "drop"


def test_training_commands_take_dashed_keys_too():
    script, config, _ = grpo_parser().parse_args_and_config(["--config", str(TINY_GRPO), "--learning-rate", "0.5",
                                                             "--output_dir", "x"])
    assert config.learning_rate == 0.5


def test_version_prints_the_installed_version(capsys):
    assert cli_main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("simplear-rl ") and out != "simplear-rl unknown"


# ---------------------------------------------------------------- nothing deleted or mixed that we did not make
def test_demo_fresh_refuses_a_folder_no_demo_made_and_deletes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / "data").mkdir()
    assert cli_main(["demo", "--out", str(home), "--fresh", "true", "--quick", "true"]) == 2
    assert "no demo run wrote" in capsys.readouterr().err
    assert (home / "thesis.tex").read_text() == "years of work" and (home / "data").is_dir()
    assert cli_main(["demo", "--task", "numbers", "--out", str(home), "--fresh", "true"]) == 2
    assert (home / "thesis.tex").exists()


def test_demo_fresh_removes_only_the_stage_folders_and_reports_a_demo_wrote(tmp_path):
    out = tmp_path / "run"
    assert prepare_demo_out(out, "shapes", fresh=False) == []
    for stage in ("data", "pretrain", "grpo"):
        (out / stage).mkdir()
        (out / stage / "weights.bin").write_text("x")
    (out / "report.md").write_text("old")
    (out / "my_notes.txt").write_text("keep me")
    removed = prepare_demo_out(out, "shapes", fresh=True)
    assert sorted(p.name for p in removed) == ["data", "grpo", "pretrain", "report.md"]
    assert sorted(p.name for p in out.iterdir()) == [DEMO_RECORD, "my_notes.txt"]
    with pytest.raises(ValueError, match="`shapes` demo folder"):
        prepare_demo_out(out, "numbers", fresh=True)


def _generate(out: Path, *extra: str) -> int:
    return cli_main(["generate", "--prompts", "a red square", "a blue circle", "--num_images", "2", "--out", str(out),
                     "--batch_size", "4", *extra])


def test_generate_refuses_foreign_or_earlier_output_and_appends_with_one_metadata_file(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "old.png").write_bytes(b"")
    assert _generate(foreign) == 2 and sorted(p.name for p in foreign.iterdir()) == ["old.png"]

    out = tmp_path / "samples"
    assert _generate(out) == 0
    assert _generate(out) == 2
    assert "--append" in capsys.readouterr().err
    assert _generate(out, "--append", "--seed", "100") == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    pngs = sorted(p.name for p in out.glob("*.png") if p.name != "grid.png")
    assert sorted(r["image"] for r in rows) == pngs and len(pngs) == 8
    assert [r["run"] for r in rows] == [0] * 4 + [1] * 4
    assert len({r["seed"] for r in rows}) == 8


def test_generate_metadata_with_the_prompts_metadata_is_read_directly_by_rewards_score(tmp_path):
    out = tmp_path / "samples"
    assert cli_main(["generate", "--prompts_file", str(REPO / "recipes/tiny/prompts.jsonl"), "--num_images", "1",
                     "--out", str(out), "--batch_size", "8"]) == 0
    prompts = [json.loads(line) for line in (REPO / "recipes/tiny/prompts.jsonl").read_text().splitlines()]
    scores = tmp_path / "scores.jsonl"
    assert cli_main(["rewards", "score", "--rewards", "color_region", "--images", str(out), "--out", str(scores)]) == 0
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == len(prompts) and all(isinstance(r["color_region"], float) for r in rows)
    metadata = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [m["objects"] for m in metadata] == [p["objects"] for p in prompts]


def test_eval_refuses_an_output_folder_holding_other_files(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "paper.pdf").write_bytes(b"%PDF")
    code = cli_main(["eval", "rewards", "--model", str(tmp_path / "ckpt"), "--prompts", str(REPO / "recipes/tiny/prompts.jsonl"),
                     "--rewards", "color_region", "--out", str(out)])
    assert code == 2 and "writes only into a new or empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["paper.pdf"]


# ---------------------------------------------------------------- recipes run from any folder
def test_recipe_input_paths_resolve_beside_the_recipe_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script, config, _ = grpo_parser().parse_args_and_config(["--config", str(TINY_GRPO), "--output_dir", "run"])
    assert Path(script.train_prompts) == REPO / "recipes" / "tiny" / "prompts.jsonl"
    assert config.output_dir == "run"  # outputs stay relative to where the command runs
    (tmp_path / "mine.jsonl").write_text('{"prompt": "a red square"}\n')
    script, _, _ = grpo_parser().parse_args_and_config(["--config", str(TINY_GRPO), "--train_prompts", "mine.jsonl",
                                                        "--output_dir", "run"])
    assert script.train_prompts == "mine.jsonl"


def test_a_path_found_from_the_current_folder_wins_over_the_recipe_folder(tmp_path, monkeypatch):
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    (recipe_dir / "prompts.jsonl").write_text("{}\n")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "prompts.jsonl").write_text("{}\n")
    recipe = recipe_dir / "r.yaml"
    recipe.write_text("train_prompts: prompts.jsonl\noutput_dir: o\n")
    monkeypatch.chdir(tmp_path / "work")
    script, _, _ = grpo_parser().parse_args_and_config(["--config", str(recipe)])
    assert script.train_prompts == "prompts.jsonl"
    monkeypatch.chdir(tmp_path)
    script, _, _ = grpo_parser().parse_args_and_config(["--config", str(recipe)])
    assert Path(script.train_prompts) == recipe_dir / "prompts.jsonl"


@pytest.mark.timeout(300)
def test_tiny_grpo_recipe_trains_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["grpo", "--config", str(TINY_GRPO), "--max_steps", "1", "--output_dir", "run", "--report_to", "none"]) == 0
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_rewards_score_names_images_whose_metadata_lacks_a_required_field(tmp_path, capsys):
    out = tmp_path / "samples"
    assert cli_main(["generate", "--prompts_file", str(REPO / "recipes/tiny/prompts.jsonl"), "--num_images", "1",
                     "--out", str(out), "--batch_size", "8"]) == 0
    assert _generate(out, "--append") == 0  # plain captions: no `objects`
    capsys.readouterr()
    assert cli_main(["rewards", "score", "--rewards", "color_region", "--images", str(out)]) == 2
    err = capsys.readouterr().err
    assert "4 of" in err and "'objects'" in err and "run1_0_0.png" in err and "Traceback" not in err
