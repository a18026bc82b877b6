"""metrics.jsonl writing and resume, reward curve drawing, and the plot command."""

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from rl.callbacks import DISCARDED_FILE, MetricsFileCallback, RewardCurveCallback
from rl.curves import ema, read_metrics
from rl.plot import main as plot_main


def state(step, main=True):
    return SimpleNamespace(global_step=step, is_world_process_zero=main)


def log_steps(cb, steps, main=True):
    for s in steps:
        cb.on_log(None, state(s, main), None, logs={"reward": s / 10, "rewards/a/mean": s / 20, "kl": 0.01 * s})


def test_one_record_per_logging_step_and_none_from_other_ranks(tmp_path):
    cb = MetricsFileCallback(tmp_path)
    log_steps(cb, [1, 2, 3])
    log_steps(cb, [1, 2, 3], main=False)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["reward"] == pytest.approx(0.2)


def test_resume_moves_records_after_the_checkpoint_aside_and_appends(tmp_path):
    cb = MetricsFileCallback(tmp_path)
    log_steps(cb, [1, 2, 3, 4, 5])
    cb.on_train_begin(None, state(3), None)  # resumed from checkpoint-3
    log_steps(cb, [4, 5, 6])
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    discarded = [json.loads(line)["step"] for line in (tmp_path / DISCARDED_FILE).read_text().splitlines()]
    assert discarded == [4, 5]


def test_train_summary_goes_to_its_own_file_not_into_the_curve(tmp_path):
    cb = MetricsFileCallback(tmp_path)
    log_steps(cb, [1])
    cb.on_log(None, state(1), None, logs={"train_runtime": 3.0, "train_samples_per_second": 1.0})
    assert len(read_metrics(tmp_path)) == 1
    assert json.loads((tmp_path / "train_summary.json").read_text())["train_runtime"] == 3.0


def test_reward_curve_png_is_redrawn_from_the_metrics(tmp_path):
    log_steps(MetricsFileCallback(tmp_path), range(1, 8))
    RewardCurveCallback(tmp_path).on_log(None, state(7), None, logs={})
    with Image.open(tmp_path / "reward_curve.png") as im:
        assert im.width > 300


def test_ema_is_debiased_and_follows_a_constant():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([0.0, 10.0], 0.0) == [0.0, 10.0]


def test_plot_command_overlays_runs_and_rejects_a_folder_without_metrics(tmp_path, capsys):
    for name, scale in (("short", 1), ("long", 2)):
        run = tmp_path / name
        run.mkdir()
        cb = MetricsFileCallback(run)
        for s in range(1, 6):
            cb.on_log(None, state(s), None, logs={"reward": scale * s})
    out = tmp_path / "overlay.png"
    assert plot_main([str(tmp_path / "short"), str(tmp_path / "long"), "--out", str(out)]) == 0
    assert out.exists()
    assert plot_main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no metrics file" in capsys.readouterr().err
