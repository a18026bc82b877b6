"""``simplear-rl demo`` (``make demo``): the whole toolkit on the embedded tiny default, no weights.

Stages, each its own recipe under ``recipes/demo/``: synthetic data -> palette token cache ->
pretrain -> SFT -> held-out evaluation -> GRPO with verifiable rewards (CFG on, guided log-probs) ->
held-out evaluation -> ``report.md`` / ``report.png``. Every path lives under ``--out``; finished
stages are reused, an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from policies.commands import command
from policies.recipes import RecipeParser
from policies.records import write_json
from pretrain_sft.checkpoints import continue_flags

from .demo_folder import prepare_demo_out
from .evaluate import evaluate_prompt_lengths
from .report import accuracy_table, report_figure, reward_means_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "recipes" / "demo" / "demo.yaml"
PROMPT_LENGTHS = ["short", "long"]
BEFORE, AFTER = "SFT (before GRPO)", "GRPO (after)"
#: How each stage is run by hand (shown in the report).
STAGE_PROGRAMS = {
    "data": "python -m pretrain_sft.demo_data",
    "extract": "simplear-rl extract-tokens",
    "pretrain": "simplear-rl pretrain",
    "sft": "simplear-rl sft",
    "grpo": "simplear-rl grpo",
}

#: --quick: a few steps everywhere, to check the pipeline (CI runs this).
QUICK = {
    "data": ["--num_images", "320", "--num_train_prompts", "24", "--num_eval_prompts", "8"],
    "pretrain": ["--max_steps", "20", "--logging_steps", "5", "--save_steps", "1000"],
    "sft": ["--max_steps", "4", "--logging_steps", "2", "--save_steps", "1000"],
    "grpo": ["--max_steps", "3", "--logging_steps", "1", "--save_steps", "1000", "--sample_every", "2"],
}


STAGE_RECIPE_HELP = "recipe of the {} stage (a path from here, else from the repository)"


@dataclass
class DemoConfig:
    """``recipes/demo/demo.yaml``: where the stage recipes are and how to evaluate."""

    out: str = field(default="runs/demo", metadata={"help": "output folder of every stage and the report"})
    data: str = field(default="recipes/demo/data.yaml", metadata={"help": STAGE_RECIPE_HELP.format("synthetic data")})
    extract: str = field(default="recipes/demo/extract.yaml", metadata={"help": STAGE_RECIPE_HELP.format("token cache")})
    pretrain: str = field(default="recipes/demo/pretrain.yaml", metadata={"help": STAGE_RECIPE_HELP.format("pretrain")})
    sft: str = field(default="recipes/demo/sft.yaml", metadata={"help": STAGE_RECIPE_HELP.format("SFT")})
    grpo: str = field(default="recipes/demo/grpo.yaml", metadata={"help": STAGE_RECIPE_HELP.format("GRPO")})
    eval_rewards: list[str] = field(default_factory=lambda: ["color_region", "object_count"],
                                    metadata={"help": "rewards of the held-out evaluations (their mean is the accuracy)"})
    eval_num_images: int = field(default=4, metadata={"help": "images per held-out prompt"})
    eval_cfg_scale: float = field(default=3.0, metadata={"help": "CFG scale of the held-out evaluations"})
    eval_seed: int = field(default=1234, metadata={"help": "seed of the first held-out image"})
    eval_batch_size: int = field(default=64, metadata={"help": "images sampled together in the evaluations"})
    eval_backend: str = field(default="auto", metadata={"help": "rollout backend of the evaluations: eager | compiled | auto"})
    quick: bool = field(default=False, metadata={"help": "a few steps per stage (a smoke run of the pipeline)"})
    fresh: bool = field(default=False, metadata={"help": "redo every stage: first delete the stage folders and reports an earlier demo run "
                                                          "wrote under `out` (recognised by its demo_run.json; nothing else)"})


def recipe_path(path: str) -> str:
    """A recipe path as given, or relative to the repository when it does not exist from here."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    if (REPO / p).exists():
        return str(REPO / p)
    raise FileNotFoundError(f"demo recipe {path!r} does not exist (looked in . and {REPO})")


class Pipeline:
    """Runs stages in order, reusing finished ones and timing each."""

    #: How each stage is run by hand (a task with other stages sets its own).
    programs = STAGE_PROGRAMS

    def __init__(self, config: DemoConfig):
        self.config = config
        self.out = Path(config.out)
        self.timings: dict[str, float] = {}
        self.commands: dict[str, str] = {}

    def stage(self, name: str, done: Path, run: Callable[[list[str]], object], argv: list[str], resumable: bool = False):
        """Run one stage unless ``done`` exists; an interrupted trainer stage resumes from its checkpoint."""
        self.commands[name] = " ".join([self.programs[name], *argv])
        if done.exists():
            print(f"[demo] {name}: reusing {done.parent} (pass --fresh to redo)", flush=True)
            self.timings[name] = 0.0
            return
        flags, why = continue_flags(done.parent) if resumable else ([], "")
        if flags:
            argv = [*argv, *flags]
            print(f"[demo] {name}: {why}", flush=True)
        print(f"[demo] {name} ...", flush=True)
        start = time.perf_counter()
        status = run(argv)
        if status:  # entry points report setup errors as a non-zero status instead of raising
            raise RuntimeError(f"demo stage {name!r} failed with status {status}; its error is printed above")
        self.timings[name] = time.perf_counter() - start
        print(f"[demo] {name} done in {self.timings[name]:.0f} s", flush=True)

    def stages_table(self) -> list[str]:
        """The report's ``## Stages`` section: each stage's seconds and the command that runs it by hand."""
        lines = ["## Stages", "", "| stage | seconds | command |", "| --- | ---: | --- |"]
        for name, seconds in self.timings.items():
            command = self.commands.get(name, "")
            lines.append(f"| {name} | {seconds:.0f} | `{command}` |" if command else f"| {name} | {seconds:.0f} | |")
        lines.append(f"| total | {sum(self.timings.values()):.0f} | |")
        return lines

    def pretrain_and_sft(self, cache: Path, quick: dict[str, list[str]]) -> None:
        """Pretrain on ``cache``, then SFT from it, each from the config's recipe into ``out``; resumable."""
        from pretrain_sft.train import main_pretrain, main_sft

        c, out = self.config, self.out
        self.stage("pretrain", out / "pretrain" / "config.json", main_pretrain,
                   ["--config", recipe_path(c.pretrain), "--cache", str(cache), "--output_dir", str(out / "pretrain"),
                    *quick.get("pretrain", [])], resumable=True)
        self.stage("sft", out / "sft" / "config.json", main_sft,
                   ["--config", recipe_path(c.sft), "--cache", str(cache), "--model_name_or_path", str(out / "pretrain"),
                    "--output_dir", str(out / "sft"), *quick.get("sft", [])], resumable=True)

    def grpo(self, extra: list[str]) -> None:
        """GRPO from the SFT policy on the demo's training prompts into ``out/grpo``; resumable."""
        from .grpo import main as grpo_main

        c, out = self.config, self.out
        self.stage("grpo", out / "grpo" / "train_summary.json", grpo_main,
                   ["--config", recipe_path(c.grpo), "--model_name_or_path", str(out / "sft"),
                    "--train_prompts", str(out / "data" / "train_prompts.jsonl"), "--output_dir", str(out / "grpo"),
                    *extra], resumable=True)


def train_stages(p: Pipeline) -> None:
    """Data -> cache -> pretrain -> SFT -> GRPO, each from its recipe with paths under ``out``."""
    from pretrain_sft.demo_data import main as data_main
    from pretrain_sft.extract import main as extract_main

    c, out = p.config, p.out
    quick = QUICK if c.quick else {}
    data, cache = out / "data", out / "cache"
    p.stage("data", data / "eval_prompts.jsonl", data_main,
            ["--config", recipe_path(c.data), "--out", str(data), *quick.get("data", [])])
    p.stage("extract", cache / "simplear_cache.json", extract_main,
            ["--config", recipe_path(c.extract), "--images", str(data / "meta.jsonl"), "--out", str(cache)])
    p.pretrain_and_sft(cache, quick)


def grpo_stage(p: Pipeline) -> None:
    p.grpo(["--monitor_prompts", str(p.out / "data" / "eval_prompts.jsonl"), *(QUICK["grpo"] if p.config.quick else [])])


def evaluate_checkpoint(p: Pipeline, model: Path, label: str) -> dict[str, dict]:
    """Held-out accuracy of ``model`` on the short and the long evaluation captions."""
    c = p.config
    start = time.perf_counter()
    summaries = evaluate_prompt_lengths(
        model, p.out / "data" / "eval_prompts.jsonl", c.eval_rewards, p.out / "eval" / label, PROMPT_LENGTHS,
        cfg_scale=c.eval_cfg_scale, num_images=1 if c.quick else c.eval_num_images, seed=c.eval_seed,
        batch_size=c.eval_batch_size, backend=c.eval_backend,
    )
    p.timings[f"eval {label}"] = time.perf_counter() - start
    print(f"[demo] {label}: held-out accuracy " + ", ".join(
        f"{k} {100 * v.get('accuracy', 0):.1f}%" for k, v in summaries.items()), flush=True)
    return summaries


def write_report(p: Pipeline, results: dict[str, dict[str, dict]]) -> Path:
    """``report.md`` and ``report.png`` in ``out``, with before/after sample grids."""
    out = p.out
    report_figure(results, PROMPT_LENGTHS, {"GRPO": out / "grpo"}, out / "report.png")
    for label, name in (("sft", "before"), ("grpo", "after")):
        shutil.copyfile(out / "eval" / label / "short" / "grid.png", out / f"samples_{name}.png")
    before, after = (results[k] for k in (BEFORE, AFTER))
    gains = {k: 100 * (after[k]["accuracy"] - before[k]["accuracy"]) for k in PROMPT_LENGTHS}
    c = p.config
    lines = [
        "# simplear-rl demo report",
        "",
        "A tiny Qwen2 policy (random init, word-level tokenizer) was pretrained and fine-tuned on synthetic "
        "coloured-shape pictures (palette codec, 8x8 token grid), then aligned with GRPO on verifiable rewards "
        f"({', '.join(c.eval_rewards)}) with CFG rollouts and guided log-probs. Accuracy is the fraction of "
        f"held-out images (prompts whose colour/shape/region combinations never appear in training; "
        f"{c.eval_num_images if not c.quick else 1} images per prompt, CFG {c.eval_cfg_scale}, seed {c.eval_seed}) "
        "that pass every reward.",
        "",
        "## Held-out accuracy",
        "",
        accuracy_table(results, PROMPT_LENGTHS),
        "",
        "Change: " + ", ".join(f"{k} prompts {v:+.1f} points" for k, v in gains.items()),
        "",
        "## Reward means on held-out short prompts",
        "",
        reward_means_table(results, "short"),
        "",
        "![report](report.png)",
        "",
        "| before GRPO | after GRPO |",
        "| --- | --- |",
        "| ![before](samples_before.png) | ![after](samples_after.png) |",
        "",
        "Training curves: `grpo/reward_curve.png`, `grpo/metrics.jsonl`; samples during GRPO: `grpo/samples/`. "
        "Run report (trained and held-out reward curves, alerts, filmstrip of held-out prompts at fixed seeds): "
        "[grpo/report.html](grpo/report.html), [grpo/report.md](grpo/report.md).",
        "",
        *p.stages_table(),
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(out / "report.json", {"results": results, "gain_points": gains, "seconds": p.timings})
    return path


def run(config: DemoConfig) -> dict:
    """Run every stage and write the report; returns ``{"results": ..., "gain_points": ...}``."""
    out = Path(config.out)
    prepare_demo_out(out, "shapes", config.fresh)
    p = Pipeline(config)
    start = time.perf_counter()
    train_stages(p)
    results = {BEFORE: evaluate_checkpoint(p, out / "sft", "sft")}
    grpo_stage(p)
    results[AFTER] = evaluate_checkpoint(p, out / "grpo", "grpo")
    report = write_report(p, results)
    summary = json.loads((out / "report.json").read_text())
    print(f"[demo] finished in {time.perf_counter() - start:.0f} s; report: {report}")
    print(accuracy_table(results, PROMPT_LENGTHS))
    return summary


TASKS_HELP = ("--task shapes (default): colour and shape prompts judged by verifiable rewards (recipes/demo/). "
              "--task numbers: written numbers judged by PP-OCR (recipes/demo_numbers/, docs/demo-numbers.md).")
def parse_demo_config(config_type: type, command: str, default_config: Path, argv: list[str]):
    """A demo task's config from ``argv`` (``default_config`` unless ``--config`` is given); ``--task`` is
    listed in the help (it is read before parsing)."""
    parser = RecipeParser(config_type, command=command, description=TASKS_HELP)
    parser.add_argument("--task", dest="simplear_task", choices=list(TASKS), default=argparse.SUPPRESS,
                        help="which demo to run (default: shapes)")
    if "--config" not in argv:
        argv = ["--config", str(default_config), *argv]
    (config,) = parser.parse_args_and_config(argv)
    return config


#: ``--task``: the default shapes demo (this module) or another task's module with its own ``main(argv)``.
TASKS = {"shapes": None, "numbers": "rl.demo_numbers"}


def split_task(argv: list[str]) -> tuple[str, list[str]]:
    """``(task, argv without --task)``; the task defaults to ``shapes``."""
    argv = list(argv)
    task = "shapes"
    for i, arg in enumerate(argv):
        if arg == "--task" or arg.startswith("--task="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            del argv[i : i + (1 if "=" in arg else 2)]
            task = value
            break
    if task not in TASKS:
        raise ValueError(f"unknown --task {task!r}; choose one of: {', '.join(TASKS)}")
    return task, argv


@command("demo")
def main(argv: list[str]) -> int:
    """``simplear-rl demo [--task shapes|numbers] [--config recipes/demo/demo.yaml] [--out DIR] [--quick] [--fresh]``."""
    task, argv = split_task(argv)
    if TASKS[task] is not None:
        import importlib

        return importlib.import_module(TASKS[task]).main(argv)
    run(parse_demo_config(DemoConfig, "demo", DEFAULT_CONFIG, argv))
    return 0
