"""Reading ``metrics.jsonl`` and drawing reward curves (one run, or several overlaid)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from policies.records import METRICS_FILE  # noqa: E402 - one name for every trainer's metrics file

CURVE_FILE = "reward_curve.png"


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a run folder or the file itself); bad lines are skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {str(path)!r}; is this a simplear-rl run folder?")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash; everything before it is intact
    return records


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one metric, skipping records without it or with a non-finite value."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            steps.append(int(r.get("step", len(steps))))
            values.append(float(v))
    return steps, values


def require_series(records: list[dict], key: str, where: str) -> tuple[list[int], list[float]]:
    """:func:`series` of ``key``, or a ``ValueError`` naming the columns ``where`` does hold."""
    steps, values = series(records, key)
    if not steps:
        columns = sorted({k for r in records for k in r if k != "step"})
        found = ", ".join(columns[:12]) + (f" and {len(columns) - 12} more" if len(columns) > 12 else "")
        raise ValueError(
            f"{where} has no {key!r} values to plot ({len(records)} records; columns: {found or 'none'}); "
            "pass --metric with one of those columns"
        )
    return steps, values


def ema(values: list[float], smoothing: float) -> list[float]:
    """Exponential moving average with debiasing (as TensorBoard's smoothing slider)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = smoothing * avg + (1 - smoothing) * v
        out.append(avg / (1 - smoothing**i) if smoothing < 1 else v)
    return out


def reward_keys(records: list[dict]) -> list[str]:
    """Per-reward mean keys (``rewards/<name>/mean``) present in the records, in first-seen order."""
    keys: list[str] = []
    for r in records:
        for k in r:
            if k.startswith("rewards/") and k.endswith("/mean") and k not in keys:
                keys.append(k)
    return keys


def plot_smoothed(ax, steps, values, label, smoothing, color=None):
    """One metric on ``ax``: the raw values faint, their EMA bold, in one colour."""
    raw = ax.plot(steps, values, alpha=0.25, color=color, linewidth=1)[0]
    ax.plot(steps, ema(values, smoothing), color=raw.get_color(), linewidth=2, label=label)


def plot_reward_curve(records: list[dict], out: str | Path, smoothing: float = 0.8, title: str | None = None) -> Path:
    """Total reward and each component's mean against step, raw (faint) and smoothed."""
    components = reward_keys(records)
    fig, axes = plt.subplots(1, 1 + bool(components), figsize=(6 + 5 * bool(components), 4), squeeze=False)
    ax = axes[0, 0]
    steps, values = series(records, "reward")
    if steps:
        plot_smoothed(ax, steps, values, "reward (total)", smoothing)
    steps, values = series(records, "reward_weighted_sum")  # normalize_then_sum: `reward` is the normalised one
    if steps:
        plot_smoothed(ax, steps, values, "weighted sum of raw rewards", smoothing)
    ax.set(xlabel="step", ylabel="reward", title=title or "total reward")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    if components:
        ax = axes[0, 1]
        for key in components:
            s, v = series(records, key)
            if s:
                plot_smoothed(ax, s, v, key.split("/")[1], smoothing)
        ax.set(xlabel="step", ylabel="mean", title="per-reward means")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    return save_figure(fig, out)


def overlay_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    metric: str = "reward",
    labels: list[str] | None = None,
    smoothing: float = 0.8,
) -> Path:
    """One plot with ``metric`` of several runs (used by ablations)."""
    labels = labels or [Path(d).name for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    fig, ax = plt.subplots(figsize=(7, 4))
    for run, label in zip(run_dirs, labels):
        steps, values = require_series(read_metrics(run), metric, f"the metrics.jsonl of run {str(run)!r}")
        plot_smoothed(ax, steps, values, label, smoothing)
    ax.set(xlabel="step", ylabel=metric, title=f"{metric} by run")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """Save and close ``fig`` atomically (temp file, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out
