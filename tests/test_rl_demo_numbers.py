"""``simplear-rl demo --task numbers`` at reduced size: every stage, the report, the task switch."""

import json

import pytest

from rl.demo import main as demo_main
from rl.demo import split_task


def test_quick_numbers_demo_runs_every_stage_and_writes_the_report(tmp_path):
    out = tmp_path / "numbers"
    assert demo_main(["--task", "numbers", "--out", str(out), "--quick", "true"]) == 0
    for done in ("data/eval_prompts.jsonl", "data/cache/simplear_cache.json", "pretrain/config.json", "sft/config.json",
                 "grpo/train_summary.json", "grpo/reward_curve.png", "report.md", "report.png", "filmstrip.png",
                 "eval/sft/reads.jsonl", "eval/grpo/reads.jsonl"):
        assert (out / done).exists(), done
    report = json.loads((out / "report.json").read_text())
    for metric in ("exact_match", "edit_similarity"):
        assert set(report["heldout"][metric]) == {"before", "after"}
        assert all(0.0 <= v <= 1.0 for v in report["heldout"][metric].values())
    # The ground-truth pictures of the held-out numbers, through the codec, are what the judge reads best.
    assert report["ceiling"]["exact_match"] >= 0.75
    assert report["judge"]["name"] == "ocr" and report["judge"]["use_det"] is False
    reads = [json.loads(line) for line in (out / "eval" / "grpo" / "reads.jsonl").read_text().splitlines()]
    held_out = {json.loads(line)["text"] for line in (out / "data" / "eval_prompts.jsonl").read_text().splitlines()}
    assert {r["number"] for r in reads} == held_out
    assert "as read by PP-OCR" in (out / "report.md").read_text()

    # A second run reuses every finished stage instead of retraining.
    assert demo_main(["--task", "numbers", "--out", str(out), "--quick", "true"]) == 0
    assert json.loads((out / "report.json").read_text())["seconds"]["grpo"] == 0.0


def test_task_defaults_to_the_shapes_demo_and_an_unknown_task_is_one_line_exit_2(capsys):
    assert split_task(["--out", "x"]) == ("shapes", ["--out", "x"])
    assert split_task(["--task", "numbers", "--quick", "true"]) == ("numbers", ["--quick", "true"])
    assert split_task(["--task=numbers"]) == ("numbers", [])
    with pytest.raises(ValueError, match="unknown --task 'letters'"):
        split_task(["--task", "letters"])
    assert demo_main(["--task", "letters"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["simplear-rl demo: error: unknown --task 'letters'; choose one of: shapes, numbers"]
