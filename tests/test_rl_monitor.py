"""Watching a GRPO run (issue 20): monitor rewards never change training, held-out frames at fixed seeds, group
diversity from the rewards' own embeddings, stop_on_alert, and the run report built from the folder."""

import json
import shutil
from pathlib import Path

import pytest
from rewards_helpers import TINY_ARCH, tiny_weights  # noqa: F401  (fixture)

from rl.curves import read_metrics
from rl.grpo import main as grpo_main
from rl.run_report import build_run_report
from rl.run_report import main as report_main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny" / "grpo.yaml"
PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"


def timing(key: str) -> bool:
    """Figures that depend on the wall clock, not on what was trained."""
    return "seconds" in key or "time" in key


def grpo(out: Path, *extra: str) -> int:
    return grpo_main(["--config", str(RECIPE), "--output_dir", str(out), "--train_prompts", str(PROMPTS),
                      "--sample_every", "0", "--save_steps", "1000", *extra])


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "run"
    assert grpo(out, "--max_steps", "2") == 0
    return out


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory, tiny_weights) -> Path:  # noqa: F811
    """The plain run plus two monitor rewards (one embedding reward) and held-out prompts every step."""
    out = tmp_path_factory.mktemp("monitored") / "run"
    monitors = json.dumps([{"name": "background"},
                           {"name": "clip", "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH}])
    assert grpo(out, "--max_steps", "2", "--monitor_rewards", monitors, "--monitor_prompts", str(PROMPTS),
                "--monitor_steps", "1", "--monitor_num_prompts", "3") == 0
    return out


def test_monitor_rewards_and_held_out_prompts_never_change_the_loss_or_the_trained_weights(plain_run, monitored_run):
    plain, monitored = read_metrics(plain_run), [r for r in read_metrics(monitored_run) if r["step"] > 0]
    assert [r["step"] for r in plain] == [r["step"] for r in monitored] == [1, 2]
    for a, b in zip(plain, monitored):
        shared = {k for k in set(a) & set(b) if not timing(k)}
        assert {"loss", "reward", "grad_norm"} <= shared
        assert {k: a[k] for k in shared} == {k: b[k] for k in shared}
    assert (plain_run / "model.safetensors").read_bytes() == (monitored_run / "model.safetensors").read_bytes()
    # ...although the monitor rewards vary within groups: weighted in, they would have moved the advantages.
    assert all(r["monitor/background/std"] > 0 and r["monitor/clip/std"] > 0 for r in monitored)


def test_training_rollouts_log_monitor_rewards_and_group_diversity_from_the_clip_embeddings(plain_run, monitored_run):
    for r in read_metrics(monitored_run):
        if r["step"] > 0:
            assert {"monitor/background/mean", "monitor/clip/mean", "monitor/clip/std"} <= set(r)
            assert 0 < r["diversity/codes"] <= 1 and 0 < r["diversity/embedding"] <= 2
    plain = read_metrics(plain_run)
    assert all(0 < r["diversity/codes"] <= 1 and "diversity/embedding" not in r for r in plain)
    assert not any(k.startswith(("monitor/", "heldout/")) for r in plain for k in r)


def test_held_out_prompts_are_scored_at_step_0_every_monitor_steps_with_the_same_prompts_and_seeds(monitored_run):
    records = read_metrics(monitored_run)
    assert [r["step"] for r in records if "heldout/color_region/mean" in r] == [0, 1, 2]
    for r in records:
        if r["step"] == 0:
            assert {"heldout/background/mean", "heldout/clip/mean", "heldout/reward", "heldout/diversity/codes",
                    "heldout/diversity/embedding"} <= set(r)
    frames = [json.loads((monitored_run / "monitor" / f"step_{s}.json").read_text()) for s in (0, 1, 2)]
    jobs = [[(i["prompt"], i["seed"]) for i in f["images"]] for f in frames]
    assert jobs[0] == jobs[1] == jobs[2] and len(jobs[0]) == 3 * 2
    assert set(frames[0]["images"][0]["rewards"]) == {"color_region", "background", "clip"}
    assert all((monitored_run / "monitor" / f"step_{s}.png").stat().st_size > 0 for s in (0, 1, 2))


def test_grpo_writes_the_run_report_at_the_end(monitored_run):
    html = (monitored_run / "report.html").read_text()
    md = (monitored_run / "report.md").read_text()
    assert html.count("data:image/png;base64,") == 1 + 3  # the curves, one filmstrip frame per evaluation
    assert "http://" not in html and "https://" not in html
    assert "finished" in md and "heldout/clip/mean" in md and "report_files/filmstrip.png" in md


def test_report_builds_from_a_run_without_monitors(plain_run, tmp_path):
    assert report_main([str(plain_run), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "No held-out evaluations" in md and "| reward |" in md
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 1


def test_report_rebuilds_from_a_run_still_in_progress(monitored_run, tmp_path):
    run = shutil.copytree(monitored_run, tmp_path / "run")
    (run / "train_summary.json").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # a line being written
    for leftover in ("report.html", "report.md"):
        (run / leftover).unlink()
    html, md = build_run_report(run)
    assert "in progress" in md.read_text() and "last logged step 1" in md.read_text()
    assert html.read_text().count("data:image/png;base64,") == 1 + 3


def test_report_of_a_missing_folder_is_one_error_line_and_exit_2(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("simplear-rl report: error:") and "nope" in line


def test_stop_on_alert_saves_a_resumable_checkpoint_and_exits_0_saying_why(tmp_path, capsys):
    run = tmp_path / "run"
    always = '{diversity_floor: {codes_floor: 1.01}}'  # codes diversity is at most 1: fires at the first log
    assert grpo(run, "--max_steps", "3", "--alerts", always, "--stop_on_alert", "true") == 0
    err = capsys.readouterr().err
    assert "simplear-rl grpo: alert: diversity_floor at step 1: diversity/codes" in err
    assert "stopped at step 1 because alert diversity_floor fired" in err and "--resume_from_checkpoint last" in err
    assert [r["step"] for r in read_metrics(run)] == [1]
    (alert,) = [json.loads(line) for line in (run / "alerts.jsonl").read_text().splitlines()]
    assert alert["rule"] == "diversity_floor" and alert["step"] == 1
    assert json.loads((run / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1
    assert "diversity_floor" in (run / "report.md").read_text()
    # Resumed, the condition still holds but does not fire again: the run goes on to max_steps.
    assert grpo(run, "--max_steps", "3", "--alerts", always, "--stop_on_alert", "true",
                "--resume_from_checkpoint", "last") == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert len((run / "alerts.jsonl").read_text().splitlines()) == 1
