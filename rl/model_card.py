"""The model card (``README.md``) of an exported policy, built only from what the run recorded.

Read: the policy record (``simplear_policy.json``: family, layout, codec, base, recipe and rewards),
``simplear_training.json`` (pretrain/SFT runs), ``metrics.jsonl`` (steps and the last logged reward
means, up to the exported checkpoint's step), ``trainer_state.json`` and the ``summary.json`` files
that ``simplear-rl eval rewards`` and the demo wrote inside the run folder. A value the run did not
record is written as "not recorded"; nothing is claimed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from policies.records import METRICS_FILE
from policies.sources import PolicySource, read_json
from pretrain_sft.train import RUN_INFO_FILE
NOT_RECORDED = "not recorded"


def run_folder(source: PolicySource) -> Path:
    """The run a source belongs to: the folder itself, or the run holding a ``checkpoint-N``."""
    folder = source.folder.resolve()
    if folder.name.startswith("checkpoint-") and (folder.parent / METRICS_FILE).exists():
        return folder.parent
    return folder


def exported_step(source: PolicySource) -> int | None:
    """The training step of the exported weights (a checkpoint's ``trainer_state.json``, else the run's last)."""
    state = read_json(source.folder / "trainer_state.json")
    return state.get("global_step") if state else None


def metric_rows(run: Path, up_to: int | None) -> list[dict]:
    """``metrics.jsonl`` rows with a step (training logs), up to step ``up_to``."""
    rows = []
    path = run / METRICS_FILE
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and (up_to is None or row["step"] <= up_to):
                rows.append(row)
    return rows


def final_rewards(rows: list[dict]) -> dict[str, float]:
    """The last logged value of ``reward`` and every ``rewards/<name>/mean``."""
    last: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if (key == "reward" or (key.startswith("rewards/") and key.endswith("/mean"))) and isinstance(value, (int, float)):
                last[key] = float(value)
    return last


def eval_results(run: Path, exclude: Path | None = None) -> dict[str, dict]:
    """Every eval ``summary.json`` under the run (relative folder -> its numbers)."""
    found = {}
    for path in sorted(run.glob("**/summary.json")):
        if exclude is not None and path.resolve().is_relative_to(exclude.resolve()):
            continue
        data = read_json(path)
        numbers = {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            found[str(path.parent.relative_to(run))] = numbers
    return found


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> list[str]:
    def cell(text) -> str:  # a pipe in a value (SimpleAR's <|t2i|>) would end the cell, even inside backticks
        return str(text).replace("|", "\\|")

    return [f"| {header[0]} | {header[1]} |", "| --- | --- |", *[f"| {cell(a)} | {cell(b)} |" for a, b in rows]]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def model_card(source: PolicySource, exported: dict, out: Path | None = None) -> str:
    """The card's Markdown. ``exported``: what the export wrote (``kind``, ``dtype``, ``merged``)."""
    run = run_folder(source)
    record, info = source.record, read_json(run / RUN_INFO_FILE)
    recipe = record.get("recipe") or {}
    layout = source.layout
    step = exported_step(source)
    rows = metric_rows(run, step)
    if step is None and rows:
        step = rows[-1]["step"]
    base = str(source.model_folder.resolve()) if source.kind == "adapter" else record.get("base_model") or info.get("start")
    stage = recipe.get("stage") or info.get("stage")
    codec = (layout.get("extra") or {}).get("codec")
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- simplear-rl",
        "- text-to-image",
        "- autoregressive",
        *([f"- {stage}"] if stage else []),
        "---",
        "",
        f"# {run.name}",
        "",
        "An autoregressive text-to-image policy exported by `simplear-rl export`. Everything below is read from "
        "the run's own records (no hand-written claims).",
        "",
        *_table(("what", "value"), [
            ("exported from", f"`{source.folder.resolve()}` ({source.kind})"),
            ("family (model_type)", source.model_type or NOT_RECORDED),
            ("base model", f"`{base}`" if base else NOT_RECORDED),
            ("stage", stage or NOT_RECORDED),
            ("training step", str(step) if step is not None else NOT_RECORDED),
            ("weights", f"{exported.get('kind')}, {exported.get('dtype')}"),
            ("grid", "x".join(str(g) for g in layout["grid"]) if layout.get("grid") else NOT_RECORDED),
            ("codebook size", str(layout.get("codebook_size", NOT_RECORDED))),
            ("codec", f"`{json.dumps(codec)}`" if codec else NOT_RECORDED),
            ("cond template", f"`{layout['cond_template']}`" if layout.get("cond_template") else NOT_RECORDED),
            ("uncond template", f"`{layout['uncond_template']}`" if layout.get("uncond_template") else NOT_RECORDED),
        ]),
        "",
        "## Rewards",
        "",
    ]
    rewards = recipe.get("rewards")
    if rewards:
        lines += _table(("reward", "weight"), [(r.get("name", "?"), _fmt(r.get("weight", 1.0))) for r in rewards
                                                if isinstance(r, dict)])
        if recipe.get("reward_aggregation"):
            lines += ["", f"Aggregation: {recipe['reward_aggregation']}."]
    else:
        lines.append(f"Rewards: {NOT_RECORDED} (not a GRPO run, or a run written before runs recorded them).")
    lines += ["", "## Recipe", ""]
    settings = {k: v for k, v in recipe.items() if k not in ("rewards", "stage")} or {
        k: v for k, v in info.items() if k in ("start", "cache", "caption_mode", "p_drop_cond", "model_max_length")}
    lines += _table(("key", "value"), [(k, _fmt(v)) for k, v in settings.items()]) if settings else [NOT_RECORDED]
    lines += ["", "## Final reward means", ""]
    final = final_rewards(rows)
    if final:
        lines.append(f"Last logged values up to step {step} (`metrics.jsonl`, {len(rows)} logged steps):")
        lines += [""] + _table(("metric", "value"), [(k, _fmt(v)) for k, v in final.items()])
    else:
        lines.append(f"Reward means: {NOT_RECORDED} (no reward in metrics.jsonl).")
    lines += ["", "## Evaluation", ""]
    results = eval_results(run, exclude=out)
    if results:
        for where, numbers in results.items():
            lines += [f"`{where}/summary.json`:", ""] + _table(("metric", "value"), [(k, _fmt(v)) for k, v in numbers.items()]) + [""]
    else:
        lines.append("No eval results were found in the run folder (`simplear-rl eval rewards --out RUN/eval/...` "
                     "writes them there).")
    lines += [
        "", "## Use", "",
        "```bash",
        "simplear-rl generate --model THIS_FOLDER --prompts \"a red square\" --out samples",
        "```",
        "",
        "```python",
        "from policies import load_policy",
        "policy = load_policy(\"THIS_FOLDER\")",
        "```",
        "",
    ]
    return "\n".join(lines)
