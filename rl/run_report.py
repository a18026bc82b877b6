"""``simplear-rl report RUN``: one self-contained ``report.html`` (images embedded, no network) and ``report.md``.

Built from the run folder alone (``metrics.jsonl``, ``alerts.jsonl``, ``monitor/step_<N>.{json,png}``), so it can
be rebuilt at any time, from a finished run or one still training. It holds the curves (trained reward and each
component, monitor rewards, held-out rewards, KL, entropy, diversity, the sampler-trainer gap) with the alerts
marked on them, and the filmstrip: the same held-out prompts and seeds at step 0, every ``monitor_steps`` and at
the end, captioned with their rewards. GRPO writes it at the end of training (``write_report: true``).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image, ImageDraw

from policies.commands import CommandParser, command
from policies.records import write_text_atomic

from .alerts import read_alerts
from .curves import plot_smoothed, read_metrics, save_figure, series
from .monitor import MONITOR_DIR

REPORT_HTML, REPORT_MD = "report.html", "report.md"
FILES_DIR = "report_files"
CURVES_PNG, FILMSTRIP_PNG = "curves.png", "filmstrip.png"


def _keys(records: list[dict], prefix: str, suffix: str = "/mean") -> list[str]:
    return sorted({k for r in records for k in r if k.startswith(prefix) and k.endswith(suffix)})


def panels(records: list[dict]) -> list[tuple[str, list[str]]]:
    """``(title, metric keys)`` of every curve panel that has data, in reading order."""
    candidates = [
        ("trained reward (training rollouts)", ["reward", *_keys(records, "rewards/")]),
        ("monitor rewards (training rollouts, never optimised)", _keys(records, "monitor/")),
        ("held-out rewards (fixed prompts and seeds)", [*_keys(records, "heldout/"), "heldout/reward"]),
        ("KL to the reference", ["kl"]),
        ("entropy", ["entropy", "entropy/visual_sampler"]),
        ("group diversity", ["diversity/codes", "diversity/embedding", "heldout/diversity/codes", "heldout/diversity/embedding"]),
        ("sampler-trainer log-prob gap", ["sampling/logprob_gap/mean", "sampling/logprob_gap/max"]),
    ]
    return [(title, [k for k in keys if series(records, k)[0]]) for title, keys in candidates
            if any(series(records, k)[0] for k in keys)]


def draw_curves(records: list[dict], alerts: list[dict], out: Path) -> Path | None:
    """All panels in one figure, each alert a dashed red line at its step (labelled where its metric is drawn)."""
    found = panels(records)
    if not found:
        return None
    cols = 2 if len(found) > 1 else 1
    rows = math.ceil(len(found) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, found):
        for key in keys:
            steps, values = series(records, key)
            if len(steps) < 10:  # held-out points and short runs: every point shown
                ax.plot(steps, values, marker="o", label=key)
            else:
                plot_smoothed(ax, steps, values, key, 0.6)
        for alert in alerts:
            ax.axvline(alert["step"], color="red", linestyle="--", alpha=0.6, linewidth=1)
            if alert.get("metric") in keys or (alert.get("metric") is None):
                ax.annotate(alert["rule"], (alert["step"], 1.0), xycoords=("data", "axes fraction"), color="red",
                            fontsize=7, rotation=90, va="top", ha="right")
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(found):]:
        ax.axis("off")
    return save_figure(fig, out)


def filmstrip_frames(run: Path) -> list[tuple[int, Path, dict]]:
    """``(step, frame png, frame record)`` of every held-out evaluation, by step."""
    frames = []
    for record_path in (run / MONITOR_DIR).glob("step_*.json"):
        png = record_path.with_suffix(".png")
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            continue  # being written
        if png.exists():
            frames.append((int(record.get("step", record_path.stem.split("_")[1])), png, record))
    return sorted(frames, key=lambda f: f[0])


def draw_filmstrip(frames: list[tuple[int, Path, dict]], out: Path) -> Path | None:
    """The frames stacked top to bottom, each under a ``step N`` band."""
    if not frames:
        return None
    images = [Image.open(png).convert("RGB") for _, png, _ in frames]
    band = 22
    width = max(i.width for i in images)
    strip = Image.new("RGB", (width, sum(i.height + band for i in images)), "white")
    draw, y = ImageDraw.Draw(strip), 0
    for (step, _, _), image in zip(frames, images):
        draw.text((6, y + 5), f"step {step}", fill="black")
        strip.paste(image, (0, y + band))
        y += image.height + band
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    strip.save(tmp, format="PNG")
    tmp.replace(out)
    return out


def change_table(records: list[dict]) -> list[tuple[str, float, float, int, int]]:
    """``(metric, first, last, first step, last step)`` of every reward-like metric."""
    keys = ["reward", *_keys(records, "rewards/"), *_keys(records, "monitor/"), *_keys(records, "heldout/"), "heldout/reward"]
    rows = []
    for key in dict.fromkeys(keys):
        steps, values = series(records, key)
        if steps:
            rows.append((key, values[0], values[-1], steps[0], steps[-1]))
    return rows


def _status(run: Path, records: list[dict]) -> str:
    last = max((int(r.get("step", 0)) for r in records), default=0)
    if (run / "train_summary.json").exists():
        return f"finished (last logged step {last})"
    return f"in progress or stopped early (last logged step {last}); rebuild with `simplear-rl report {run}`"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def build_run_report(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (and ``report_files/``) for the run in ``run_dir``; returns both
    paths. ``out_dir`` defaults to the run folder."""
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run
    records = read_metrics(run)
    alerts = read_alerts(run)
    frames = filmstrip_frames(run)
    curves = draw_curves(records, alerts, out / FILES_DIR / CURVES_PNG)
    strip = draw_filmstrip(frames, out / FILES_DIR / FILMSTRIP_PNG)
    changes = change_table(records)
    status = _status(run, records)
    write_text_atomic(out / REPORT_MD, _markdown(run, status, curves, strip, changes, alerts, frames))
    write_text_atomic(out / REPORT_HTML, _html(run, status, curves, strip, changes, alerts, frames))
    return out / REPORT_HTML, out / REPORT_MD


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _markdown(run, status, curves, strip, changes, alerts, frames) -> str:
    lines = [f"# GRPO run report: {run.name}", "", f"Run folder `{run}`: {status}.", ""]
    lines += ["## Rewards: first and last logged value", "", "| metric | first | last | change | steps |",
              "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {k} | {_fmt(a)} | {_fmt(b)} | {b - a:+.4g} | {s0}-{s1} |" for k, a, b, s0, s1 in changes]
    lines += ["", f"## Alerts ({len(alerts)})", ""]
    if alerts:
        lines += ["| step | rule | message |", "| ---: | --- | --- |"]
        lines += [f"| {a['step']} | {a['rule']} | {a['message'].replace('|', '/')} |" for a in alerts]
    else:
        lines.append("No alert fired.")
    lines += ["", "## Curves", "", f"![curves]({FILES_DIR}/{CURVES_PNG})" if curves else "No metrics logged yet."]
    lines += ["", "## Filmstrip: held-out prompts, fixed seeds", ""]
    if strip:
        lines += [f"Steps {', '.join(str(s) for s, _, _ in frames)}; each picture is captioned with its rewards.", "",
                  f"![filmstrip]({FILES_DIR}/{FILMSTRIP_PNG})"]
    else:
        lines.append("No held-out evaluations (set `monitor_prompts` in the recipe).")
    return "\n".join(lines) + "\n"


def _html(run, status, curves, strip, changes, alerts, frames) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{_fmt(a)}</td><td>{_fmt(b)}</td><td>{b - a:+.4g}</td><td>{s0}-{s1}</td></tr>"
                   for k, a, b, s0, s1 in changes)
    alert_rows = "".join(f"<tr><td>{a['step']}</td><td>{e(a['rule'])}</td><td>{e(a['message'])}</td></tr>" for a in alerts)
    frame_blocks = "".join(
        f'<figure><figcaption>step {step}: ' + e(", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in record.get("metrics", {}).items()
                                                            if k.endswith("/mean") and isinstance(v, (int, float))))
        + f'</figcaption><img alt="held-out images at step {step}" src="{_data_uri(png)}"></figure>'
        for step, png, record in frames)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>GRPO run report: {e(run.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:0 0 1em 0}.alert{color:#b00}</style></head><body>",
        f"<h1>GRPO run report: {e(run.name)}</h1><p>Run folder <code>{e(str(run))}</code>: {e(status)}.</p>",
        "<h2>Rewards: first and last logged value</h2><table><tr><th>metric</th><th>first</th><th>last</th>"
        f"<th>change</th><th>steps</th></tr>{rows}</table>",
        f"<h2 class='alert'>Alerts ({len(alerts)})</h2>",
        f"<table><tr><th>step</th><th>rule</th><th>message</th></tr>{alert_rows}</table>" if alerts else "<p>No alert fired.</p>",
        "<h2>Curves</h2>",
        f"<img id='curves' alt='curves' src='{_data_uri(curves)}'>" if curves else "<p>No metrics logged yet.</p>",
        "<h2>Filmstrip: held-out prompts, fixed seeds</h2>",
        frame_blocks or "<p>No held-out evaluations (set <code>monitor_prompts</code> in the recipe).</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


@command("report")
def main(argv: list[str] | None = None) -> int:
    """``simplear-rl report RUN [--out DIR]``: (re)build a GRPO run's report.html and report.md."""
    parser = CommandParser(prog="simplear-rl report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a GRPO run folder (its output_dir), finished or still training")
    parser.add_argument("--out", help="folder to write report.html, report.md and report_files/ to (default: RUN)")
    args = parser.parse_args(argv)
    if not Path(args.run).is_dir():
        raise FileNotFoundError(f"run folder {args.run!r} does not exist; give the output_dir of a GRPO run")
    html_path, md_path = build_run_report(args.run, args.out)
    print(f"wrote {html_path} and {md_path}")
    return 0
