"""``simplear-rl ablate SPEC.yaml``: run variants of one GRPO recipe and compare them.

Each variant is the base recipe plus a few keys (e.g. ``prompt_length: short | long | mix``), run
with the same seed and steps as its own process (optionally under a launcher such as
``accelerate launch --config_file recipes/accelerate/ddp.yaml``). Afterwards every variant's final
policy is evaluated on held-out prompts, and one overlaid reward-curve plot and one table of
held-out scores per variant are written. It only launches recipes and collects their outputs, so
the same spec shape works for real recipes on GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from policies.commands import CommandParser, command
from policies.recipes import read_yaml_mapping
from policies.records import write_json
from pretrain_sft.checkpoints import continue_flags

from .curves import overlay_runs
from .evaluate import evaluate_prompt_lengths
from .report import accuracy_table, reward_means_table

DONE_FILE = "train_summary.json"


@dataclass
class EvalSpec:
    prompts: str
    rewards: list[str]
    prompt_lengths: list[str] = field(default_factory=lambda: ["short", "long"])
    num_images: int = 4
    cfg_scale: float = 3.0
    seed: int = 1234
    batch_size: int = 32
    backend: str = "auto"  # rollout backend: eager | compiled | auto
    codec: str | None = None  # default: the codec each checkpoint records
    codec_path: str | None = None


@dataclass
class AblationSpec:
    recipe: str
    out: str
    variants: dict[str, dict]
    eval: EvalSpec
    name: str = "ablation"
    overrides: dict = field(default_factory=dict)
    launcher: list[str] = field(default_factory=list)
    metric: str = "reward"

    @classmethod
    def load(cls, path: str | Path) -> "AblationSpec":
        """Read and check a spec file; errors name the key and the fix."""
        path = Path(path)
        data = read_yaml_mapping(path, what="ablation spec")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"ablation spec {str(path)!r}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        missing = [k for k in ("recipe", "out", "variants", "eval") if k not in data]
        if missing:
            raise ValueError(f"ablation spec {str(path)!r} lacks {missing}")
        if not isinstance(data["variants"], dict) or not data["variants"]:
            raise ValueError("`variants` must map a variant name to the recipe keys it changes, e.g. short: {prompt_length: short}")
        if not isinstance(data["eval"], dict):
            raise ValueError(f"ablation spec {str(path)!r}: `eval` must be a mapping (prompts, rewards, ...)")
        eval_known = set(EvalSpec.__dataclass_fields__)
        bad = set(data["eval"]) - eval_known
        if bad:
            raise ValueError(f"ablation spec `eval` has unknown keys {sorted(bad)}; expected {sorted(eval_known)}")
        data["eval"] = EvalSpec(**data["eval"])
        launcher = data.get("launcher") or []
        data["launcher"] = launcher.split() if isinstance(launcher, str) else list(launcher)
        return cls(**data)


def as_cli(keys: dict) -> list[str]:
    """Recipe keys as ``--key value`` flags (lists expand, mappings become JSON)."""
    argv: list[str] = []
    for key, value in keys.items():
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, (list, tuple)):
            argv.extend(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def variant_command(spec: AblationSpec, name: str) -> list[str]:
    """The command that trains one variant."""
    runner = [*spec.launcher, "-m", "rl.grpo"] if spec.launcher else [sys.executable, "-m", "rl.grpo"]
    keys = {**spec.overrides, **spec.variants[name], "output_dir": str(Path(spec.out) / name)}
    return [*runner, "--config", spec.recipe, *as_cli(keys)]


def run_logged(command: list[str], log_path: Path) -> int:
    """Run ``command``, streaming its output (stdout and stderr, line by line) to the console and
    appending it to ``log_path``; returns its exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        with subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace") as child:
            for line in child.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                log.flush()
        return child.returncode


def run_variants(spec: AblationSpec) -> None:
    """Train every variant that has not finished; a failed variant stops the ablation naming it and its log.

    Each variant's output goes to the console and to ``<out>/logs/<variant>.log`` (appended per attempt).
    """
    for name in spec.variants:
        run_dir = Path(spec.out) / name
        if (run_dir / DONE_FILE).exists():
            print(f"[ablate] {name}: finished earlier, reusing {run_dir}", flush=True)
            continue
        flags, why = continue_flags(run_dir)
        if flags:
            print(f"[ablate] {name}: {why}", flush=True)
        command = [*variant_command(spec, name), *flags]
        log_path = Path(spec.out) / "logs" / f"{name}.log"
        print(f"[ablate] {name}: {' '.join(command)} (log: {log_path})", flush=True)
        status = run_logged(command, log_path)
        if status != 0:
            raise RuntimeError(f"variant {name!r} failed (exit {status}); its output is in {log_path}")


def evaluate_variants(spec: AblationSpec) -> dict[str, dict[str, dict]]:
    """Held-out summaries of every variant on every caption length."""
    e = spec.eval
    results = {}
    for name in spec.variants:
        results[name] = evaluate_prompt_lengths(
            Path(spec.out) / name, e.prompts, e.rewards, Path(spec.out) / "eval" / name, e.prompt_lengths,
            codec=e.codec, codec_path=e.codec_path, cfg_scale=e.cfg_scale, num_images=e.num_images, seed=e.seed,
            batch_size=e.batch_size, backend=e.backend,
        )
    return results


def write_summary(spec: AblationSpec, results: dict[str, dict[str, dict]]) -> Path:
    """``reward_curves.png`` (overlay), ``ablation.md`` and ``ablation.json`` in ``out``."""
    out = Path(spec.out)
    names = list(spec.variants)
    overlay_runs([out / n for n in names], out / "reward_curves.png", metric=spec.metric, labels=names)
    lengths = spec.eval.prompt_lengths
    has_accuracy = any("accuracy" in s for r in results.values() for s in r.values())
    lines = [f"# Ablation: {spec.name}", "", f"Base recipe `{spec.recipe}`; variants:", ""]
    lines += [f"- **{n}**: `{json.dumps(spec.variants[n])}`" for n in names]
    lines += ["", f"Held-out prompts `{spec.eval.prompts}`, {spec.eval.num_images} images per prompt, seed {spec.eval.seed}.", ""]
    if has_accuracy:
        lines += ["## Held-out accuracy (rows) by evaluation caption length (columns)", "", accuracy_table(results, lengths), ""]
    for length in lengths:
        lines += [f"## Reward means on held-out {length} prompts", "", reward_means_table(results, length), ""]
    lines += ["![reward curves](reward_curves.png)", ""]
    path = out / "ablation.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    write_json(out / "ablation.json", results)
    return path


@command("ablate")
def main(argv: list[str] | None = None) -> int:
    """``simplear-rl ablate SPEC.yaml [--eval_only]``; returns the exit status (see :mod:`policies.commands`)."""
    parser = CommandParser(prog="simplear-rl ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="ablation spec YAML (see recipes/demo/ablation_prompt_length.yaml)")
    parser.add_argument("--eval_only", action="store_true", help="skip training; evaluate and summarise finished runs")
    args = parser.parse_args(argv)
    spec = AblationSpec.load(args.spec)
    if not args.eval_only:
        run_variants(spec)
    results = evaluate_variants(spec)
    path = write_summary(spec, results)
    print(f"[ablate] wrote {path} and {Path(spec.out) / 'reward_curves.png'}")
    if any("accuracy" in s for r in results.values() for s in r.values()):
        print(accuracy_table(results, spec.eval.prompt_lengths))
    return 0
