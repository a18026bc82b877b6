"""GRPO run folders: resuming after a kill during a checkpoint save, a second run never overwriting
the first, and the demo/ablation steering both (issue 9)."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from run_folder_helpers import cut_off, tree_hashes

from rl.ablate import AblationSpec, run_variants
from rl.curves import read_metrics
from rl.demo import DemoConfig, Pipeline
from rl.grpo import main as grpo_main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny" / "grpo.yaml"
PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"


def grpo_args(out: Path, *extra: str) -> list[str]:
    return ["--config", str(RECIPE), "--output_dir", str(out), "--train_prompts", str(PROMPTS), "--sample_every", "0",
            *extra]


def error_lines(err: str, command: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"simplear-rl {command}: error:")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """Two GRPO steps with a checkpoint after each, logging every step."""
    out = tmp_path_factory.mktemp("grpo") / "run"
    assert grpo_main(grpo_args(out, "--max_steps", "2", "--save_steps", "1")) == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    return out


@pytest.mark.parametrize("partial", ["empty", "all_but_trainer_state"])
def test_grpo_resume_last_skips_a_checkpoint_cut_off_mid_save_logs_it_and_logs_every_step_once(
    first_run, tmp_path, caplog, partial
):
    run = shutil.copytree(first_run, tmp_path / "run")
    cut_off(run / "checkpoint-2", partial)  # killed while saving checkpoint-2, after step 2 was logged
    with caplog.at_level(logging.WARNING):
        status = grpo_main(grpo_args(run, "--max_steps", "2", "--save_steps", "1", "--resume_from_checkpoint", "last"))
    assert status == 0
    skips = [r.getMessage() for r in caplog.records if "skipping incomplete checkpoint" in r.getMessage()]
    assert len(skips) == 1 and str(run / "checkpoint-2") in skips[0] and str(run / "checkpoint-1") in skips[0]
    assert [r["step"] for r in read_metrics(run)] == [1, 2]  # step 2 redone from checkpoint-1, recorded once
    assert [json.loads(line)["step"] for line in (run / "metrics.discarded.jsonl").read_text().splitlines()] == [2]
    # Never deleted: the resumed run redid step 2 and saved checkpoint-2 into it again, complete this time.
    assert json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2


def test_grpo_resume_last_with_only_incomplete_checkpoints_fails_up_front_naming_them(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True)
    assert grpo_main(grpo_args(run, "--resume_from_checkpoint", "last")) == 2
    (line,) = error_lines(capsys.readouterr().err, "grpo")
    assert "checkpoint-3" in line and "incomplete" in line and "--overwrite_output_dir true" in line
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3"]  # refused before anything was written


def test_a_second_grpo_run_into_the_same_output_dir_is_refused_and_changes_no_file(first_run, tmp_path, capsys):
    run = shutil.copytree(first_run, tmp_path / "run")
    before = tree_hashes(run)
    assert grpo_main(grpo_args(run, "--max_steps", "1")) == 2
    err = capsys.readouterr().err
    (line,) = error_lines(err, "grpo")
    assert str(run) in line and "--resume_from_checkpoint last" in line and "--overwrite_output_dir true" in line
    assert "Traceback" not in err
    assert tree_hashes(run) == before


def test_grpo_overwrite_output_dir_moves_the_earlier_run_aside_and_starts_afresh(first_run, tmp_path, caplog):
    run = shutil.copytree(first_run, tmp_path / "run")
    before = tree_hashes(run)
    with caplog.at_level(logging.WARNING):
        assert grpo_main(grpo_args(run, "--max_steps", "1", "--save_steps", "1", "--overwrite_output_dir", "true")) == 0
    (aside,) = tmp_path.glob("run.overwritten-*")
    assert tree_hashes(aside) == before  # nothing of the first run lost ...
    assert [r["step"] for r in read_metrics(run)] == [1]  # ... and nothing of it merged into the new run
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (run / "metrics.discarded.jsonl").exists()
    assert any("moved the earlier run" in r.getMessage() and str(aside) in r.getMessage() for r in caplog.records)


def test_a_grpo_output_dir_holding_only_the_tiny_init_policy_is_not_an_earlier_run(first_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(first_run / "init-policy", run / "init-policy")
    assert grpo_main(grpo_args(run, "--max_steps", "1", "--save_strategy", "no")) == 0
    assert [r["step"] for r in read_metrics(run)] == [1]


def test_demo_restarts_a_stage_with_only_incomplete_checkpoints_without_deleting_it(tmp_path):
    stage = tmp_path / "grpo"
    (stage / "checkpoint-3").mkdir(parents=True)
    (stage / "metrics.jsonl").write_text('{"step": 1}\n')
    calls = []
    Pipeline(DemoConfig(out=str(tmp_path))).stage("grpo", stage / "done", lambda argv: calls.append(argv) or 0,
                                                  ["--config", "x.yaml"], resumable=True)
    assert calls == [["--config", "x.yaml", "--overwrite_output_dir", "true"]]  # the stage moves it aside itself
    assert (stage / "checkpoint-3").is_dir() and (stage / "metrics.jsonl").exists()

    (stage / "checkpoint-2").mkdir()
    (stage / "checkpoint-2" / "trainer_state.json").write_text("{}")
    calls.clear()
    Pipeline(DemoConfig(out=str(tmp_path))).stage("grpo", stage / "done", lambda argv: calls.append(argv) or 0,
                                                  ["--config", "x.yaml"], resumable=True)
    assert calls == [["--config", "x.yaml", "--resume_from_checkpoint", "last"]]


def test_ablate_resumes_a_variant_from_a_complete_checkpoint_and_restarts_one_without(tmp_path, monkeypatch):
    out = tmp_path / "ablation"
    (out / "resumable" / "checkpoint-2").mkdir(parents=True)
    (out / "resumable" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "resumable" / "checkpoint-3").mkdir()  # cut off mid-save: `last` skips it
    (out / "unfinished" / "checkpoint-1").mkdir(parents=True)  # only an incomplete checkpoint
    (out / "unfinished" / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "fresh").mkdir()
    spec = AblationSpec(recipe=str(RECIPE), out=str(out), eval=None,
                        variants={"resumable": {}, "unfinished": {}, "fresh": {}})
    commands = {}
    monkeypatch.setattr("rl.ablate.run_logged", lambda command, log: commands.setdefault(log.stem, command) and 0)
    run_variants(spec)
    assert commands["resumable"][-2:] == ["--resume_from_checkpoint", "last"]
    assert commands["unfinished"][-2:] == ["--overwrite_output_dir", "true"]
    assert commands["fresh"][-2] == "--output_dir"
    assert (out / "unfinished" / "checkpoint-1").is_dir() and (out / "resumable" / "checkpoint-3").is_dir()


def test_a_failed_ablation_variant_names_the_log_that_holds_its_error(tmp_path, capsys):
    out = tmp_path / "ablation"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({
        "recipe": str(RECIPE),
        "out": str(out),
        "overrides": {"train_prompts": str(PROMPTS), "max_steps": 1},
        "variants": {"typo": {"learning_rte": 0.1}},
        "eval": {"prompts": str(PROMPTS), "rewards": ["color_region"]},
    }))
    with pytest.raises(RuntimeError) as failed:
        run_variants(AblationSpec.load(spec_file))
    log = out / "logs" / "typo.log"
    assert str(log) in str(failed.value) and "'typo' failed" in str(failed.value)
    text = log.read_text()
    assert "learning_rte" in text and "simplear-rl grpo: error:" in text  # the child's own one-line error
    assert "learning_rte" in capsys.readouterr().out  # streamed to the console as well
