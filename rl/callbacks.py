"""Trainer callbacks: ``metrics.jsonl`` (from :mod:`pretrain_sft.metrics`), ``reward_curve.png`` and a progress
bar with the reward.

Everything is written by the main process only, so multi-process runs write each record once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback

from pretrain_sft.metrics import DISCARDED_FILE, SUMMARY_FILE, MetricsFileCallback  # shared with pretrain/SFT

from .curves import CURVE_FILE, METRICS_FILE, plot_reward_curve, read_metrics

logger = logging.getLogger(__name__)

__all__ = ["DISCARDED_FILE", "SUMMARY_FILE", "MetricsFileCallback", "RewardCurveCallback", "RewardProgressCallback"]


class RewardCurveCallback(TrainerCallback):
    """Redraws ``<output_dir>/reward_curve.png`` from ``metrics.jsonl`` at every log."""

    def __init__(self, output_dir: str | Path, smoothing: float = 0.8, title: str | None = None):
        self.output_dir = Path(output_dir)
        self.smoothing = smoothing
        self.title = title

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not (self.output_dir / METRICS_FILE).exists():
            return
        records = read_metrics(self.output_dir)
        if any("reward" in r for r in records):
            plot_reward_curve(records, self.output_dir / CURVE_FILE, self.smoothing, self.title)


class RewardProgressCallback(ProgressCallback):
    """The Trainer's progress bar (step, ETA) with the latest reward shown on it instead of log dumps."""

    SHOWN = ("reward", "kl", "entropy", "sampling/logprob_gap/mean")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        shown = {k.split("/")[-2] if k.count("/") > 1 else k: f"{logs[k]:.4g}" for k in self.SHOWN
                 if isinstance(logs.get(k), (int, float))}
        if shown:
            self.training_bar.set_postfix(shown, refresh=True)
