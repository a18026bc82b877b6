"""``simplear-rl plot RUN_DIR [RUN_DIR ...] --out curves.png``: overlay reward curves of runs."""

from __future__ import annotations

from policies.commands import CommandParser, command

from .curves import overlay_runs, plot_reward_curve, read_metrics, require_series


@command("plot")
def main(argv: list[str] | None = None) -> int:
    """Overlay ``--metric`` (default the total reward) of several runs, or draw one run's full curve."""
    parser = CommandParser(prog="simplear-rl plot", description=__doc__)
    parser.add_argument("runs", nargs="+", help="run folders (each holding metrics.jsonl)")
    parser.add_argument("--out", default="curves.png", help="output PNG (default: curves.png)")
    parser.add_argument("--metric", default="reward", help="metric key to overlay (default: reward)")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per run (default: folder names)")
    parser.add_argument("--smoothing", type=float, default=0.8, help="EMA smoothing in [0, 1) (default: 0.8)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.smoothing < 1.0:
        parser.error(f"--smoothing must be in [0, 1), got {args.smoothing}")
    if len(args.runs) == 1 and args.metric == "reward" and not args.labels:
        records = read_metrics(args.runs[0])
        require_series(records, "reward", f"the metrics.jsonl of run {args.runs[0]!r}")
        out = plot_reward_curve(records, args.out, args.smoothing)
    else:
        out = overlay_runs(args.runs, args.out, metric=args.metric, labels=args.labels, smoothing=args.smoothing)
    print(f"wrote {out}")
    return 0
