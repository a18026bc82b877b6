"""Before/after reports: a Markdown summary and one PNG (accuracy bars and the reward curve)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from .curves import plot_smoothed, read_metrics, save_figure, series


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def accuracy_table(results: dict[str, dict[str, dict]], columns: list[str], key: str = "accuracy") -> str:
    """A Markdown table: one row per model (``results[model][column] = summary``), one column per prompt kind."""
    lines = ["| model | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for model, by_column in results.items():
        lines.append(f"| {model} | " + " | ".join(_pct(by_column.get(c, {}).get(key)) for c in columns) + " |")
    return "\n".join(lines)


def reward_means_table(results: dict[str, dict[str, dict]], column: str) -> str:
    """Per-reward means of each model on one prompt kind."""
    keys = sorted({k for by in results.values() for k in by.get(column, {}) if k.startswith("rewards/") and k.endswith("/mean")})
    lines = ["| model | " + " | ".join(k.split("/")[1] for k in keys) + " |", "| --- |" + " ---: |" * len(keys)]
    for model, by_column in results.items():
        summary = by_column.get(column, {})
        lines.append(f"| {model} | " + " | ".join(f"{summary.get(k, float('nan')):.3f}" for k in keys) + " |")
    return "\n".join(lines)


def report_figure(results: dict[str, dict[str, dict]], columns: list[str], run_dirs: dict[str, str | Path],
                  out: str | Path, smoothing: float = 0.8) -> Path:
    """Left: held-out accuracy per model and prompt kind. Right: training reward of each run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    models = list(results)
    width = 0.8 / max(1, len(models))
    for m, model in enumerate(models):
        values = [100 * (results[model].get(c, {}).get("accuracy") or 0.0) for c in columns]
        xs = [i + (m - (len(models) - 1) / 2) * width for i in range(len(columns))]
        bars = left.bar(xs, values, width, label=model)
        left.bar_label(bars, fmt="%.0f%%", fontsize=8)
    left.set_xticks(range(len(columns)), [f"{c} prompts" for c in columns])
    left.set(ylabel="held-out accuracy (%)", ylim=(0, 105), title="held-out accuracy")
    left.legend(loc="upper left")
    for label, run in run_dirs.items():
        steps, values = series(read_metrics(run), "reward")
        if steps:
            plot_smoothed(right, steps, values, label, smoothing)
    right.set(xlabel="GRPO step", ylabel="reward (train prompts)", title="GRPO reward")
    right.grid(alpha=0.3)
    if run_dirs:
        right.legend(loc="lower right")
    return save_figure(fig, out)
