"""``simplear-rl eval``: benchmark folder layouts (GenEval, DPG-Bench) and reward evaluation.

- ``eval geneval``: N images per prompt in the layout GenEval's scorer reads
  (``<i>/metadata.jsonl``, ``<i>/samples/<k>.png``), with seeds in ``<i>/generation.json``.
- ``eval dpg``: one 2x2 grid per prompt file (``<name>.png``), the layout DPG-Bench's scorer reads.
- ``eval rewards``: mean and per-prompt reward scores (and pass rates) of a checkpoint on a
  prompt set, to compare e.g. SFT and GRPO checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from policies.generate import (
    Setup,
    add_policy_arguments,
    add_sampling_arguments,
    build_setup,
    image_seeds,
)
from policies.commands import CommandParser, command
from policies.images import captioned_grid, save_png, to_pil
from policies.output_folder import claim_output_folder
from policies.records import read_records, write_json, write_jsonl

from .data import load_prompt_set


# ----------------------------------------------------------------------------- GenEval
def write_geneval(setup: Setup, metadata_file: str | Path, out: str | Path, num_images: int, seed: int,
                  batch_size: int) -> Path:
    """GenEval layout: ``out/<00000>/{metadata.jsonl, samples/<0000>.png, generation.json, grid.png}``."""
    rows = read_records(metadata_file, what="GenEval metadata file")
    missing = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("prompt"), str)]
    if missing:
        raise ValueError(f"GenEval metadata rows {missing[:5]} have no 'prompt'; pass evaluation_metadata.jsonl")
    captions = [r["prompt"] for r in rows]
    jobs = image_seeds(seed, len(captions), num_images)
    images = setup.render(captions, jobs, batch_size)
    out = Path(out)
    for i, row in enumerate(rows):
        folder = out / f"{i:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        write_jsonl(folder / "metadata.jsonl", [row])
        mine = [(k, job) for k, job in enumerate(jobs) if job[0] == i]
        for k, (_, sample, _) in mine:
            to_pil(images[k]).save(folder / "samples" / f"{sample:04d}.png")
        save_png(captioned_grid(images[[k for k, _ in mine]], ncol=min(num_images, 4)), folder / "grid.png")
        record = {"prompt": row["prompt"], "seeds": [job[2] for _, job in mine], **setup.settings()}
        write_json(folder / "generation.json", record)
    return out


# --------------------------------------------------------------------------- DPG-Bench
def write_dpg(setup: Setup, prompts_dir: str | Path, out: str | Path, seed: int, batch_size: int) -> Path:
    """DPG-Bench layout: for each ``<name>.txt`` prompt, ``out/<name>.png`` is a 2x2 grid of 4 samples."""
    prompts_dir = Path(prompts_dir)
    if not prompts_dir.is_dir():
        raise FileNotFoundError(f"DPG prompts folder {str(prompts_dir)!r} does not exist (it holds one <name>.txt per prompt)")
    files = sorted(prompts_dir.glob("*.txt"))
    if not files:
        raise ValueError(f"DPG prompts folder {str(prompts_dir)!r} has no .txt prompt files")
    captions = [f.read_text(encoding="utf-8").strip() for f in files]
    jobs = image_seeds(seed, len(captions), 4)
    images = setup.render(captions, jobs, batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = []
    for i, f in enumerate(files):
        quad = images[4 * i : 4 * i + 4]
        top, bottom = torch.cat([quad[0], quad[1]], dim=2), torch.cat([quad[2], quad[3]], dim=2)
        to_pil(torch.cat([top, bottom], dim=1)).save(out / f"{f.stem}.png")
        log.append({"name": f.stem, "prompt": captions[i], "seeds": [s for _, _, s in jobs[4 * i : 4 * i + 4]]})
    write_jsonl(out / "generation.jsonl", [{**r, **setup.settings()} for r in log])
    return out


# ----------------------------------------------------------------------------- rewards
@dataclass
class RewardEval:
    """Scores of one checkpoint on one prompt set."""

    summary: dict = field(default_factory=dict)
    per_prompt: list[dict] = field(default_factory=list)
    images: torch.Tensor | None = None
    captions: list[str] = field(default_factory=list)


def passed_all(suite, scores: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Rows passing every reward that has a pass mark (None when no reward has one)."""
    verdicts = [suite.rewards[n].passed(scores[n]) for n in suite.names if suite.rewards[n].threshold is not None]
    return torch.stack(verdicts).all(dim=0) if verdicts else None


def evaluate_rewards(setup: Setup, table, suite, num_images: int, seed: int, batch_size: int) -> RewardEval:
    """Sample ``num_images`` per prompt row of ``table`` and score them with ``suite``."""
    captions = list(table["prompt"])
    jobs = image_seeds(seed, len(captions), num_images)
    images = setup.render(captions, jobs, batch_size)
    rows = [table[i] for i, _, _ in jobs]
    metadata = {c: [r[c] for r in rows] for c in table.column_names if c != "prompt"}
    scores = suite.score(images, [captions[i] for i, _, _ in jobs], **metadata)
    ok = passed_all(suite, scores)
    summary: dict = {"images": len(jobs), "prompts": len(captions)}
    for name in suite.names:
        summary[f"rewards/{name}/mean"] = float(torch.nanmean(scores[name]))
        if suite.rewards[name].threshold is not None:
            summary[f"rewards/{name}/pass_rate"] = float(suite.rewards[name].passed(scores[name]).float().mean())
    if ok is not None:
        summary["accuracy"] = float(ok.float().mean())
    per_prompt = []
    for i, caption in enumerate(captions):
        idx = [k for k, job in enumerate(jobs) if job[0] == i]
        entry = {"prompt": caption, "seeds": [jobs[k][2] for k in idx]}
        entry.update({name: [float(scores[name][k]) for k in idx] for name in suite.names})
        if ok is not None:
            entry["passed"] = [bool(ok[k]) for k in idx]
        per_prompt.append(entry)
    grid_captions = [f"{captions[i]} | " + ("ok" if ok is not None and ok[k] else "x" if ok is not None else "")
                     for k, (i, _, _) in enumerate(jobs)]
    return RewardEval(summary, per_prompt, images, grid_captions)


def write_reward_eval(result: RewardEval, out: str | Path, max_grid: int = 32) -> Path:
    """``summary.json``, ``scores.jsonl`` and ``grid.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", result.summary)
    write_jsonl(out / "scores.jsonl", result.per_prompt)
    if result.images is not None:
        n = min(max_grid, len(result.images))
        save_png(captioned_grid(result.images[:n], result.captions[:n], ncol=8), out / "grid.png")
    return out


def evaluate_prompt_lengths(
    model: str | Path,
    prompts: str | Path,
    reward_names: list[str],
    out: str | Path,
    lengths: tuple[str, ...] | list[str] = ("short", "long"),
    codec: str | None = None,
    codec_path: str | None = None,
    cfg_scale: float = 3.0,
    num_images: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    backend: str = "auto",
) -> dict[str, dict]:
    """Reward summaries of a checkpoint on each caption length of a prompt set; each written to ``out/<length>``.

    ``codec`` defaults to the one the checkpoint records; ``backend`` is ``simplear-rl eval``'s ``--backend``.
    """
    from rewards import build_rewards

    parser = argparse.ArgumentParser()
    add_policy_arguments(parser, model_required=True)
    add_sampling_arguments(parser)  # every other flag keeps the command line's default
    args = parser.parse_args(["--model", str(model), "--cfg_scale", str(cfg_scale), "--backend", backend])
    args.codec, args.codec_path = codec, codec_path
    setup = build_setup(args, log=lambda message: print(f"simplear-rl eval: {message}", file=sys.stderr))
    suite = build_rewards([{"name": name} for name in reward_names])
    summaries = {}
    for length in lengths:
        table = load_prompt_set(prompts, length)
        suite.validate_columns(set(table.column_names))
        result = evaluate_rewards(setup, table, suite, num_images, seed, batch_size)
        write_reward_eval(result, Path(out) / length)
        summaries[length] = result.summary
    return summaries


# -------------------------------------------------------------------------------- CLI
OUT_HELP = "output folder: new or empty (a folder holding other files is refused, not mixed into)"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="simplear-rl eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    geneval = sub.add_parser("geneval", help="GenEval folder layout (N images per prompt)")
    add_policy_arguments(geneval, model_required=True)
    geneval.add_argument("--prompts", required=True, help="GenEval evaluation_metadata.jsonl")
    add_sampling_arguments(geneval, num_images=4)
    geneval.add_argument("--out", required=True, help=OUT_HELP)
    dpg = sub.add_parser("dpg", help="DPG-Bench layout (a 2x2 grid per prompt)")
    add_policy_arguments(dpg, model_required=True)
    dpg.add_argument("--prompts", required=True, help="folder of DPG-Bench <name>.txt prompt files")
    add_sampling_arguments(dpg, num_images=4)
    dpg.add_argument("--out", required=True, help=OUT_HELP)
    rewards = sub.add_parser("rewards", help="reward scores of a checkpoint on a prompt set")
    add_policy_arguments(rewards, model_required=True)
    rewards.add_argument("--prompts", required=True, help="prompt set (JSONL/JSON/.txt/datasets folder) with metadata")
    rewards.add_argument("--prompt_length", default="short", choices=["short", "long", "mix"],
                         help="caption column to prompt with: short (`prompt`), long (`long_prompt`) or mix")
    rewards.add_argument("--rewards", required=True, help="recipe/YAML file with a `rewards:` list, or names a,b")
    add_sampling_arguments(rewards, num_images=4)
    rewards.add_argument("--out", required=True, help=OUT_HELP)
    return parser


@command("eval")
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``simplear-rl eval``; returns the exit status (see :mod:`policies.commands`)."""
    args = build_parser().parse_args(argv)

    def log(message: str) -> None:
        print(f"simplear-rl eval: {message}", file=sys.stderr)

    if args.benchmark == "dpg" and args.num_images != 4:
        raise ValueError("DPG-Bench scores a 2x2 grid per prompt: --num_images must be 4")
    if args.benchmark == "rewards":
        from rewards import build_rewards
        from rewards.cli import load_reward_specs

        specs, options = load_reward_specs(args.rewards)
        suite = build_rewards(specs, aggregation=options.get("aggregation", "sum"))
        table = load_prompt_set(args.prompts, args.prompt_length)
        suite.validate_columns(set(table.column_names))
    claim_output_folder(Path(args.out), f"eval {args.benchmark}", record=False)
    setup = build_setup(args, log)
    if args.benchmark == "geneval":
        out = write_geneval(setup, args.prompts, args.out, args.num_images, args.seed, args.batch_size)
    elif args.benchmark == "dpg":
        out = write_dpg(setup, args.prompts, args.out, args.seed, args.batch_size)
    else:
        result = evaluate_rewards(setup, table, suite, args.num_images, args.seed, args.batch_size)
        out = write_reward_eval(result, args.out)
        for key, value in result.summary.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    log(f"wrote {out}")
    return 0
