"""``simplear-rl demo --task numbers``: GRPO teaches the tiny policy to write numbers that PP-OCR reads.

Stages, each its own recipe under ``recipes/demo_numbers/``: number pictures + palette token cache
+ prompt sets -> pretrain -> SFT -> held-out evaluation -> GRPO with the ``ocr`` reward (CFG
rollouts, guided log-probs) -> held-out evaluation -> ``report.md`` / ``report.png`` /
``filmstrip.png`` / ``report.json``. The judge of every evaluation is PP-OCR's recogniser (bundled
in rapidocr-onnxruntime) with the recipe's ``judge`` options; the ceiling is the same judge on the
ground-truth pictures of the held-out numbers after the palette codec round trip. Every path lives
under ``--out``; finished stages are reused, an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from policies.records import write_json, write_jsonl
from pretrain_sft.train import cpu_threads

from .demo import STAGE_RECIPE_HELP, Pipeline, parse_demo_config, recipe_path
from .demo_folder import prepare_demo_out

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "recipes" / "demo_numbers" / "demo.yaml"
BEFORE, AFTER = "SFT (before GRPO)", "GRPO (after)"
STAGE_PROGRAMS = {
    "data": "python -m pretrain_sft.number_data",
    "pretrain": "simplear-rl pretrain",
    "sft": "simplear-rl sft",
    "grpo": "simplear-rl grpo",
}
#: --quick: a few steps everywhere, to check the pipeline (the test suite runs this).
QUICK = {
    "data": ["--num_images", "64", "--num_train_prompts", "8", "--num_eval_prompts", "4"],
    "pretrain": ["--max_steps", "4", "--logging_steps", "2", "--save_steps", "1000", "--tiny_hidden_size", "32",
                 "--tiny_num_layers", "1", "--per_device_train_batch_size", "8"],
    "sft": ["--max_steps", "2", "--logging_steps", "1", "--save_steps", "1000", "--per_device_train_batch_size", "8"],
    "grpo": ["--max_steps", "2", "--logging_steps", "1", "--save_steps", "1000", "--sample_every", "2",
             "--per_device_train_batch_size", "8", "--num_generations", "4"],
}


@dataclass
class NumbersDemoConfig:
    """``recipes/demo_numbers/demo.yaml``: where the stage recipes are, the judge and the evaluation."""

    out: str = field(default="runs/demo_numbers", metadata={"help": "output folder of every stage and the report"})
    data: str = field(default="recipes/demo_numbers/data.yaml", metadata={"help": STAGE_RECIPE_HELP.format("data")})
    pretrain: str = field(default="recipes/demo_numbers/pretrain.yaml", metadata={"help": STAGE_RECIPE_HELP.format("pretrain")})
    sft: str = field(default="recipes/demo_numbers/sft.yaml", metadata={"help": STAGE_RECIPE_HELP.format("SFT")})
    grpo: str = field(default="recipes/demo_numbers/grpo.yaml", metadata={"help": STAGE_RECIPE_HELP.format("GRPO")})
    judge: dict = field(
        default_factory=lambda: {"use_det": False, "upscale": 2.0, "blur": 1.5},
        metadata={"help": "`ocr` reward options of the evaluation judge (its text_score stays PaddleOCR's 0.5 unless set)"},
    )
    eval_num_images: int = field(default=4, metadata={"help": "images per held-out number"})
    eval_cfg_scale: float = field(default=3.0, metadata={"help": "CFG scale of the held-out evaluations"})
    eval_seed: int = field(default=1234, metadata={"help": "seed of the first held-out image"})
    eval_batch_size: int = field(default=64, metadata={"help": "images sampled together in the evaluations"})
    eval_backend: str = field(default="auto", metadata={"help": "rollout backend of the evaluations: eager | compiled | auto"})
    filmstrip_numbers: int = field(default=8, metadata={"help": "held-out numbers shown in filmstrip.png"})
    num_threads: int | None = field(
        default=1,
        metadata={"help": "torch CPU threads of the GRPO stage and the evaluations (the training recipes set their own); "
                  "1 is fastest for the tiny policy on a shared CPU: with 2 threads on a busy 2-core machine a rollout "
                  "took 20x longer"},
    )
    quick: bool = field(default=False, metadata={"help": "a few steps per stage (a smoke run of the pipeline)"})
    fresh: bool = field(default=False, metadata={"help": "redo every stage: first delete the stage folders and reports an earlier demo run "
                                                          "wrote under `out` (recognised by its demo_run.json; nothing else)"})


class NumbersPipeline(Pipeline):
    programs = STAGE_PROGRAMS


# ----------------------------------------------------------------------------- stages
def train_stages(p: NumbersPipeline) -> None:
    """Data (pictures, token cache, prompts) -> pretrain -> SFT, each from its recipe with paths under ``out``."""
    from pretrain_sft.number_data import main as data_main

    c, out = p.config, p.out
    quick = QUICK if c.quick else {}
    data, cache = out / "data", out / "data" / "cache"
    p.stage("data", data / "eval_prompts.jsonl", data_main,
            ["--config", recipe_path(c.data), "--out", str(data), *quick.get("data", [])])
    p.pretrain_and_sft(cache, quick)


def grpo_stage(p: NumbersPipeline) -> None:
    p.grpo(QUICK["grpo"] if p.config.quick else [])


# ------------------------------------------------------------------------- evaluation
def build_judge(options: dict):
    """The evaluation judge: an ``ocr`` reward with ``options``."""
    from rewards import build_rewards

    return build_rewards([{"name": "ocr", **options}]).rewards["ocr"]


def read_summary(reads: list[str], numbers: list[str]) -> dict:
    """``exact_match`` and ``edit_similarity`` (means over pictures) of what was read against the numbers."""
    from rewards.ocr import edit_similarity, exact_match

    n = max(1, len(numbers))
    return {
        "images": len(numbers),
        "exact_match": sum(exact_match(r, t) for r, t in zip(reads, numbers)) / n,
        "edit_similarity": sum(edit_similarity(r, t) for r, t in zip(reads, numbers)) / n,
    }


def evaluate_policy(p: NumbersPipeline, model: Path, label: str, judge) -> tuple[dict, torch.Tensor, list[str]]:
    """Sample the held-out numbers with ``model`` and read them with ``judge``; writes ``eval/<label>/``."""
    from policies.generate import add_policy_arguments, add_sampling_arguments, build_setup, image_seeds
    from policies.images import captioned_grid, save_png
    from rewards.ocr import to_uint8

    from .data import load_prompt_set

    c, start = p.config, time.perf_counter()
    parser = argparse.ArgumentParser()
    add_policy_arguments(parser, model_required=True)
    add_sampling_arguments(parser)
    args = parser.parse_args(["--model", str(model), "--cfg_scale", str(c.eval_cfg_scale), "--backend", c.eval_backend])
    setup = build_setup(args, log=lambda message: print(f"simplear-rl demo: {message}", file=sys.stderr))
    table = load_prompt_set(p.out / "data" / "eval_prompts.jsonl", "short")
    captions, targets = list(table["prompt"]), list(table["text"])
    jobs = image_seeds(c.eval_seed, len(captions), 1 if c.quick else c.eval_num_images)
    images = setup.render(captions, jobs, c.eval_batch_size)
    reads = judge.read(list(to_uint8(images)))
    numbers = [targets[i] for i, _, _ in jobs]
    summary = {**read_summary(reads, numbers), "prompts": len(captions)}
    folder = p.out / "eval" / label
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "summary.json", summary)
    write_jsonl(folder / "reads.jsonl", [{"prompt": captions[i], "number": numbers[k], "seed": seed, "read": reads[k]}
                                         for k, (i, _, seed) in enumerate(jobs)])
    n = min(32, len(images))
    save_png(captioned_grid(images[:n], [f"{t} -> {r!r}" for t, r in zip(numbers[:n], reads[:n])], ncol=4), folder / "grid.png")
    p.timings[f"eval {label}"] = time.perf_counter() - start
    print(f"[demo] {label}: held-out exact match {100 * summary['exact_match']:.1f}%, "
          f"edit similarity {summary['edit_similarity']:.3f}", flush=True)
    firsts = [k for k, (_, sample, _) in enumerate(jobs) if sample == 0]
    return summary, images[firsts], [reads[k] for k in firsts]


def ground_truth(p: NumbersPipeline, judge) -> tuple[dict, torch.Tensor, list[str]]:
    """The ceiling: the judge on the held-out numbers' pictures after the palette codec round trip."""
    from policies.codecs import build_codec
    from pretrain_sft.number_data import render_number, to_pixels
    from rewards.ocr import to_uint8

    from .data import load_prompt_set

    data = json.loads((p.out / "data" / "cache" / "simplear_cache.json").read_text())
    recipe = _data_recipe(p)
    numbers = list(load_prompt_set(p.out / "data" / "eval_prompts.jsonl", "short")["text"])
    codec = build_codec("palette", **data["codec_kwargs"])
    clean = torch.stack([to_pixels(render_number(n, recipe["width"], recipe["height"], recipe["font_size"])) for n in numbers])
    images = (codec.decode(codec.encode(clean)) + 1) / 2
    reads = judge.read(list(to_uint8(images)))
    return read_summary(reads, numbers), images, reads


def _data_recipe(p: NumbersPipeline) -> dict:
    """The data recipe's picture settings (width, height, font size)."""
    import yaml

    from pretrain_sft.number_data import NumberDataArguments

    recipe = yaml.safe_load(Path(recipe_path(p.config.data)).read_text()) or {}
    defaults = NumberDataArguments(out="")
    return {k: recipe.get(k, getattr(defaults, k)) for k in ("width", "height", "font_size")}


# ----------------------------------------------------------------------------- report
def filmstrip(strips: list[tuple[str, torch.Tensor, list[str]]], numbers: list[str], out: Path) -> Path:
    """One row per source (ground truth, before, after), one column per held-out number, captioned with the read."""
    from policies.images import captioned_grid, save_png

    images, captions = [], []
    for label, pictures, reads in strips:
        for k, number in enumerate(numbers):
            images.append(pictures[k])
            mark = "ok" if reads[k] == number else "x"
            captions.append(f"{label}: {number} read {reads[k]!r} {mark}")
    return save_png(captioned_grid(images, captions, ncol=len(numbers), min_cell=192), out)


def report_figure(results: dict[str, dict], ceiling: dict, grpo_dir: Path, out: Path) -> Path:
    """Left: held-out exact match and edit similarity before/after (dashed: ceiling). Right: GRPO reward curve."""
    import matplotlib.pyplot as plt

    from .curves import plot_smoothed, read_metrics, save_figure, series

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    metrics = ("exact_match", "edit_similarity")
    width = 0.8 / len(results)
    for m, (model, summary) in enumerate(results.items()):
        xs = [i + (m - (len(results) - 1) / 2) * width for i in range(len(metrics))]
        bars = left.bar(xs, [100 * summary[k] for k in metrics], width, label=model)
        left.bar_label(bars, fmt="%.0f", fontsize=8)
    for i, k in enumerate(metrics):
        left.hlines(100 * ceiling[k], i - 0.45, i + 0.45, colors="k", linestyles="dashed",
                    label="ground truth (ceiling)" if i == 0 else None)
    left.set_xticks(range(len(metrics)), ["exact match (%)", "edit similarity (x100)"])
    left.set(ylim=(0, 125), title="held-out numbers, as read by PP-OCR")
    left.legend(loc="upper center", fontsize=8, ncol=3)
    steps, values = series(read_metrics(grpo_dir), "reward")
    if steps:
        plot_smoothed(right, steps, values, "GRPO", 0.8)
        right.legend(loc="lower right")
    right.set(xlabel="GRPO step", ylabel="ocr reward (train prompts)", title="GRPO reward")
    right.grid(alpha=0.3)
    return save_figure(fig, out)


def results_table(results: dict[str, dict], ceiling: dict) -> str:
    lines = ["| model | exact match | edit similarity |", "| --- | ---: | ---: |"]
    for model, s in {**results, "ground truth (ceiling)": ceiling}.items():
        lines.append(f"| {model} | {100 * s['exact_match']:.1f}% | {s['edit_similarity']:.3f} |")
    return "\n".join(lines)


def write_report(p: NumbersPipeline, results: dict[str, dict], ceiling: dict, strips) -> Path:
    """``report.md``, ``report.png``, ``filmstrip.png`` and ``report.json`` in ``out``."""
    c, out = p.config, p.out
    numbers = list(_eval_numbers(p))[: c.filmstrip_numbers]
    filmstrip([(label, images[: len(numbers)], reads[: len(numbers)]) for label, images, reads in strips], numbers,
              out / "filmstrip.png")
    report_figure(results, ceiling, out / "grpo", out / "report.png")
    before, after = results[BEFORE], results[AFTER]
    gain = 100 * (after["exact_match"] - before["exact_match"])
    lines = [
        "# simplear-rl numbers demo report",
        "",
        "A tiny Qwen2 policy (random init, word-level tokenizer) was pretrained and fine-tuned on pictures of "
        "4-digit numbers (palette codec, 8x24 token grid), then aligned with GRPO on the `ocr` reward: PP-OCR's "
        "recogniser (bundled in rapidocr-onnxruntime) reads each rollout. Evaluation: held-out numbers (never in "
        f"any training caption or GRPO prompt), {1 if c.quick else c.eval_num_images} images each, CFG "
        f"{c.eval_cfg_scale}, seed {c.eval_seed}, read by the judge `ocr` {json.dumps(c.judge)}. Ceiling: the same "
        "judge on the ground-truth pictures of those numbers after the codec round trip.",
        "",
        "## Held-out numbers, as read by PP-OCR",
        "",
        results_table(results, ceiling),
        "",
        f"Change: exact match {gain:+.1f} points, edit similarity "
        f"{after['edit_similarity'] - before['edit_similarity']:+.3f}.",
        "",
        "![report](report.png)",
        "",
        "Held-out numbers (rows: ground truth, before GRPO, after GRPO; captions: what PP-OCR read):",
        "",
        "![filmstrip](filmstrip.png)",
        "",
        "Training curves: `grpo/reward_curve.png`, `grpo/metrics.jsonl`; every read: `eval/<sft|grpo>/reads.jsonl`.",
        "",
        *p.stages_table(),
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    metric = lambda key: {"before": before[key], "after": after[key]}  # noqa: E731
    write_json(out / "report.json", {
        "heldout": {"exact_match": metric("exact_match"), "edit_similarity": metric("edit_similarity"),
                    "images": after["images"], "prompts": after["prompts"]},
        "ceiling": {"exact_match": ceiling["exact_match"], "edit_similarity": ceiling["edit_similarity"]},
        "gain_points": {"exact_match": gain},
        "judge": {"name": "ocr", **c.judge},
        "seconds": p.timings,
    })
    return path


def _eval_numbers(p: NumbersPipeline) -> list[str]:
    from .data import load_prompt_set

    return list(load_prompt_set(p.out / "data" / "eval_prompts.jsonl", "short")["text"])


def run(config: NumbersDemoConfig) -> dict:
    """Run every stage and write the report; returns the contents of ``report.json``."""
    out = Path(config.out)
    prepare_demo_out(out, "numbers", config.fresh)
    with cpu_threads(config.num_threads):
        return _run(config, out)


def _run(config: NumbersDemoConfig, out: Path) -> dict:
    p = NumbersPipeline(config)
    start = time.perf_counter()
    judge = build_judge(config.judge)  # before any training: a missing OCR package or a bad option stops here
    train_stages(p)
    ceiling, truth_images, truth_reads = ground_truth(p, judge)
    before, before_images, before_reads = evaluate_policy(p, out / "sft", "sft", judge)
    grpo_stage(p)
    after, after_images, after_reads = evaluate_policy(p, out / "grpo", "grpo", judge)
    results = {BEFORE: before, AFTER: after}
    strips = [("truth", truth_images, truth_reads), ("SFT", before_images, before_reads), ("GRPO", after_images, after_reads)]
    report = write_report(p, results, ceiling, strips)
    print(f"[demo] finished in {time.perf_counter() - start:.0f} s; report: {report}")
    print(results_table(results, ceiling))
    return json.loads((out / "report.json").read_text())


def main(argv: list[str]) -> int:
    """``simplear-rl demo --task numbers [--config recipes/demo_numbers/demo.yaml] [--out DIR] [--quick] [--fresh]``."""
    run(parse_demo_config(NumbersDemoConfig, "demo --task numbers", DEFAULT_CONFIG, argv))
    return 0
