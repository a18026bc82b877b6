"""One-shot GPU check: correctness and speed of the rollout engine and one GRPO step, under a time budget.

Built for one short loan of a GPU machine with a fixed Python image and no registry (run it through
``bench/gpu_check.sh --kit DIR``, which installs the wheels the image lacks). It writes
``results.json`` and ``results.md`` to ``--out`` after EVERY measurement, and keeps an internal time
budget (``--budget_s``, default 480 s): a measurement starts only if the time it needs is left, and
what did not run is listed as skipped with the reason. A failing measurement is recorded and the
next one runs.

First the version guards (:mod:`policies.versions`): transformers/trl in their tested bounds and a
KV-cache self-check; if they fail, nothing is measured (exit 2). Then, in order of value:

a. **compiled = eager**: both backends sample the same prompts and seeds at the size's dims; the
   codes must be identical and the log-probs within the tolerance of the dtype
   (:data:`TOLERANCE`: 1e-4 nats in fp32; 0.05 nats in bf16, where the two backends round
   differently). bf16 (what rollouts run in) first, then fp32.
b. **rollout speed** at a 64x64 grid (a 1024² image), CFG 6: ms per decode step and images/s for the
   compiled backend (whole grids), the eager backend and ``generate()`` (first ``baseline_steps``
   tokens, extrapolated to the grid, marked so), batch 1 and 64 first (the goals: <= 1 ms/step at
   batch 1, >= 10 images/s at batch 64), then batch 8 and 32 after the GRPO step.
c. **one GRPO step** of ``recipes/simplear_0.5b/grpo_clip.yaml`` at 1024², G=4, random weights:
   rollout, reward, scoring and backward seconds, peak memory, and the rollout weights it used. A
   64,000-colour palette codec stands in for Cosmos and ``color_region`` for CLIP (nothing is
   downloaded), so reward seconds are not CLIP's.
d. **sharded engines**: the same step under FSDP2 and DeepSpeed ZeRO-3 on one GPU (``accelerate
   launch``; ZeRO-3 only where deepspeed is installed).

    bench/gpu_check.sh --kit .whl/gpu-kit --out DIR                  # on the GPU image (CUDA, 0.5B dims)
    bench/gpu_check.sh --device cpu --size tiny --out DIR            # the same path on the tiny policy
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "bench"))

# Only what the version guards need is imported before they run: the rest may not import under a refused version.
from policies.commands import one_line  # noqa: E402
from policies.versions import UnsupportedVersion, ensure_supported, installed_version  # noqa: E402

#: Per size: the rollout grid, batches in the order measured (those after the GRPO step apart), tokens eager and
#: generate() sample, dtype of the speed runs, the equality grid/batch/dtypes, and the GRPO recipe.
PRESETS = {
    "0.5b": dict(grid=64, first_batches=(1, 64), later_batches=(8, 32), baseline_steps=512, dtype=torch.bfloat16,
                 equality_grid=16, equality_batch=2, equality_dtypes=(torch.bfloat16, torch.float32),
                 recipe="recipes/simplear_0.5b/grpo_clip.yaml"),
    "tiny": dict(grid=4, first_batches=(1,), later_batches=(2,), baseline_steps=16, dtype=torch.float32,
                 equality_grid=4, equality_batch=2, equality_dtypes=(torch.float32, torch.bfloat16),
                 recipe="recipes/tiny/grpo.yaml"),
}
CFG_SCALE = 6.0
GOAL_MS_PER_STEP, GOAL_IMAGES_PER_S = 1.0, 10.0
#: Largest |log-prob difference| (nats) between the backends on the same codes, per dtype. fp32: the tests' 1e-5
#: with room for CUDA's reduction orders. bf16: ~10x the 2e-3..1.5e-2 measured between the backends on CPU, and
#: below the 0.15-0.31 nats the sampler-trainer gap reaches in bf16 (docs/performance.md, Numerics).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}
#: Seconds a measurement needs at least (compilation included) to be started, per device type; a guess for CUDA.
NEEDS = {
    "cuda": {"equality": 90, "rollouts": 60, "grpo_step": 120, "sharded": 90},
    "cpu": {"equality": 20, "rollouts": 20, "grpo_step": 30, "sharded": 60},
}


def _import_measurements() -> None:
    """The modules the measurements use, imported once the version guards passed."""
    global bench_batch, build_model, layout_vocab, make_prompts, special_ids, SamplingConfig, sample_images
    global COMPILE_STATS, BASIC_WORDS, build_tiny_policy
    from common import build_model, layout_vocab, make_prompts, special_ids
    from rollout import bench_batch

    from policies.guidance import SamplingConfig
    from policies.sampler import sample_images
    from policies.rollout import COMPILE_STATS
    from policies.tiny import BASIC_WORDS, build_tiny_policy


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class Budget:
    """Seconds left of the check's budget; a measurement starts only when what it needs is left."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, needs: float) -> bool:
        return self.left() >= needs


class Report:
    """The results so far; :meth:`save` rewrites results.json and results.md (after every measurement)."""

    def __init__(self, out: Path, env: dict):
        self.out = out
        self.data = {"env": env, "versions": None, "equality": [], "rollouts": [], "goals": {}, "grpo_step": None,
                     "sharded_steps": [], "skipped": [], "errors": []}

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.out / "results.json")
        (self.out / "results.md").write_text(markdown(self.data))

    def skip(self, task: str, reason: str) -> None:
        self.data["skipped"].append({"task": task, "reason": reason})
        log(f"skipped {task}: {reason}")
        self.save()

    def run(self, task: str, budget: Budget, needs: float, fn) -> None:
        """Run measurement ``task`` if the budget allows; record an error instead of stopping on one."""
        if not budget.allows(needs):
            self.skip(task, f"time budget: {max(budget.left(), 0):.0f} s left, it needs about {needs:.0f} s")
            return
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - one failing measurement must not lose the others
            self.data["errors"].append({"task": task, "error": f"{type(err).__name__}: {one_line(err)}"[:2000]})
            log(f"{task} failed: {type(err).__name__}: {one_line(err)[:500]}")
        self.save()


# ----------------------------------------------------------------------------- a. compiled = eager
def compare(eager, compiled, tolerance: float, strict: bool) -> dict:
    """Per image: identical codes? the first differing token, and |Δ log-prob| over the tokens before it.

    ``strict`` (fp32): passed = identical codes and every |Δ| within ``tolerance``. Otherwise (bf16) the two
    backends round differently, and once a rounding difference flips one draw the rest of that image
    differs, so: passed = every |Δ| before the first differing code within ``tolerance``, over at least a
    quarter of the tokens.
    """
    n = eager.codes.size(0)
    a, b = eager.codes.view(n, -1), compiled.codes.view(n, -1)
    worst, total, counted, first = 0.0, 0.0, 0, []
    for i in range(n):
        diff = (a[i] != b[i]).nonzero()
        stop = int(diff[0]) if diff.numel() else a.size(1)
        first.append(stop if diff.numel() else None)
        gap = (eager.logprobs[i, :stop] - compiled.logprobs[i, :stop]).abs().float()
        if gap.numel():
            worst, total, counted = max(worst, gap.max().item()), total + gap.sum().item(), counted + gap.numel()
    same = all(f is None for f in first)
    enough = same if strict else counted >= a.numel() / 4
    return {"same_codes": same, "first_difference": first, "compared_tokens": counted, "tokens": a.numel(),
            "max_abs_logprob_diff": worst, "mean_abs_logprob_diff": total / max(counted, 1), "tolerance": tolerance,
            "passed": enough and worst <= tolerance}


def equality(size: str, device: torch.device, dtype: torch.dtype, model=None) -> dict:
    """The compiled backend against the eager loop on the same prompts and seeds, at the size's dims."""
    preset = PRESETS[size]
    model = model if model is not None else build_model(size, device, dtype)
    grid = preset["equality_grid"]
    vocab = layout_vocab(size, (grid, grid))
    prompts, uncond = make_prompts(preset["equality_batch"], vocab)
    seeds = [100 + i for i in range(len(prompts))]
    config = SamplingConfig(cfg_scale=CFG_SCALE)
    out = {}
    for backend in ("eager", "compiled"):
        start = time.perf_counter()
        out[backend] = sample_images(model, vocab, prompts, uncond, config, seeds, pad_id=special_ids(vocab)[2],
                                     backend=backend)
        sync(device)
        out[f"{backend}_seconds"] = time.perf_counter() - start
    row = {"dtype": str(dtype).removeprefix("torch."), "grid": [grid, grid], "images": len(prompts),
           "tokens": len(prompts) * grid * grid, "eager_seconds": out["eager_seconds"],
           "compiled_seconds_with_compile": out["compiled_seconds"]}
    row.update(compare(out["eager"], out["compiled"], TOLERANCE[dtype], strict=dtype == torch.float32))
    log(f"equality {row['dtype']}: {json.dumps({k: row[k] for k in ('same_codes', 'max_abs_logprob_diff', 'passed')})}")
    return row


# ----------------------------------------------------------------------------- b. rollout speed
def rollouts(size: str, device: torch.device, model, batches, budget: Budget, report: Report) -> None:
    """Compiled on whole grids; eager and generate() on the first ``baseline_steps`` tokens, extrapolated.

    One row per (batch, method), saved as it comes; a method that no longer fits the budget is skipped.
    """
    preset = PRESETS[size]
    full = layout_vocab(size, (preset["grid"], preset["grid"]))
    base = full.with_grid((preset["baseline_steps"] // preset["grid"], preset["grid"]))
    needs = NEEDS[device.type]["rollouts"]
    for batch in batches:
        for vocab, method in ((full, "compiled"), (base, "eager"), (base, "hf-generate")):
            task = f"rollouts batch {batch} {method}"
            if not budget.allows(needs):
                report.skip(task, f"time budget: {max(budget.left(), 0):.0f} s left, it needs about {needs} s")
                continue

            def measure(vocab=vocab, method=method, batch=batch):
                reset_peak(device)
                for row in bench_batch(model, vocab, [method], batch, CFG_SCALE, repeats=1):
                    scale = full.num_image_tokens / vocab.num_image_tokens
                    row.update(
                        steps_timed=vocab.num_image_tokens, extrapolated=scale != 1,
                        ms_per_step=1000 * row["seconds_best"] / vocab.num_image_tokens,
                        seconds_per_image=row["seconds_per_image"] * scale, images_per_s=row["images_per_s"] / scale,
                        peak_gb=peak_gb(device),
                    )
                    report.data["rollouts"].append(row)
                    log(f"batch {batch} {method}: {row['ms_per_step']:.2f} ms/step, {row['images_per_s']:.2f} images/s, "
                        f"compile {row['compile_seconds']:.1f} s")
                report.data["goals"] = goals(report.data["rollouts"])

            report.run(task, budget, 0, measure)


# ----------------------------------------------------------------------------- c. one GRPO step
def random_policy_folder(size: str, out: Path) -> Path:
    """A random policy saved as a checkpoint: the real 151,672-id text vocabulary and 0.5B body, or the tiny one."""
    folder = out / "policy"
    if (folder / "config.json").exists():
        return folder
    if size == "tiny":
        build_tiny_policy(codebook_size=64, grid=(8, 8), hidden_size=64).save(folder)
        return folder
    filler = [f"w{i}" for i in range(151_672 - 3 - 7 - len(BASIC_WORDS))]  # 3 specials first, SimpleAR's 7 last
    build_tiny_policy(
        words=[*BASIC_WORDS, *filler], codebook_size=64_000, grid=(64, 64), hidden_size=896, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864, rope_theta=1_000_000.0,
    ).save(folder)
    return folder


class Timers:
    """Seconds spent in wrapped methods, with the device synchronised around each call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                sync(self.device)
                self.seconds[label] += time.perf_counter() - start

        setattr(owner, name, timed)


def grpo_argv(size: str, folder: Path, output_dir: Path, backend: str) -> list[str]:
    """One GRPO step of the size's recipe on the random policy ``folder`` (palette codec, verifiable reward)."""
    argv = [
        "--config", str(REPO / PRESETS[size]["recipe"]), "--model_name_or_path", str(folder),
        "--train_prompts", str(REPO / "recipes" / "tiny" / "prompts.jsonl"), "--output_dir", str(output_dir),
        "--codec", "palette", "--rewards", "color_region", "--rollout_backend", backend, "--max_steps", "1",
        "--num_generations", "4", "--report_to", "none", "--save_steps", "1000", "--sample_every", "0",
        "--overwrite_output_dir", "true",
    ]
    if size == "0.5b":
        argv += ["--codec_levels", "40", "--codec_patch", "16", "--resolution", "1024"]  # 40³ = 64,000 codes
    return argv


def grpo_step(size: str, device: torch.device, out: Path) -> dict:
    """One optimizer step of the size's GRPO recipe on random weights; seconds per phase and peak memory."""
    from rl.grpo import build_parser, build_trainer

    folder = random_policy_folder(size, out)
    argv = grpo_argv(size, folder, out / "grpo", "compiled")
    if device.type == "cpu":
        argv += ["--use_cpu", "true", "--bf16", "false"]
    script, args, model_args = build_parser().parse_args_and_config(argv)
    trainer = build_trainer(script, args, model_args)
    timers = Timers(device)
    timers.wrap(trainer, "_generate", "rollout")
    timers.wrap(trainer, "_calculate_rewards", "reward")
    timers.wrap(trainer, "_get_per_token_logps_and_entropies", "scoring")
    timers.wrap(trainer.accelerator, "backward", "backward")
    compiles = COMPILE_STATS.compiles
    reset_peak(device)
    start = time.perf_counter()
    trainer.train()
    result = {f"{k}_seconds": v for k, v in timers.seconds.items()}
    snapshot = trainer._rollout_weights.snapshot
    result.update(
        step_seconds=time.perf_counter() - start, rollouts=args.per_device_train_batch_size * args.steps_per_generation,
        num_generations=args.num_generations, grid=list(trainer.vocab.grid), compiles=COMPILE_STATS.compiles - compiles,
        rollout_precision=args.rollout_precision,
        rollout_weights="snapshot" if snapshot is not None else "autocast",
        snapshot_gb=snapshot.nbytes / 2**30 if snapshot is not None else None, peak_gb=peak_gb(device),
    )
    log(f"GRPO step: {json.dumps(result)}")
    return result


# ----------------------------------------------------------------------------- d. sharded engines
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_step(engine: str, size: str, device: torch.device, out: Path, timeout: float) -> dict:
    """The GRPO step of :func:`grpo_step` under ``accelerate launch`` with ``recipes/accelerate/<engine>.yaml``."""
    folder = random_policy_folder(size, out)
    run = out / f"grpo_{engine}"
    argv = grpo_argv(size, folder, run, "auto")  # auto: the eager backend, which is what sharded weights need
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "recipes" / "accelerate" / f"{engine}.yaml"), "--num_machines", "1",
              "--main_process_port", str(_free_port())]
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "DS_ACCELERATOR")}
    if device.type == "cuda":
        launch += ["--num_processes", "1", "-m", "rl.grpo"]
    else:  # the smoke path: 2 CPU processes, as tests/engine_helpers.py starts them
        launch += ["--num_processes", "2", "--mixed_precision", "no",
                   str(REPO / "tests" / "distributed" / "launch_on_cpu.py"), "rl.grpo"]
        argv += ["--bf16", "false"]
        if engine.startswith("zero"):
            env["DS_ACCELERATOR"] = "cpu"
            argv += ["--ddp_backend", "gloo", "--use_cpu", "false"]
        else:
            env["ACCELERATE_USE_CPU"] = "true"
    log(f"GRPO step under {engine} (at most {timeout:.0f} s)")
    start = time.perf_counter()
    result = {"engine": engine}
    with open(out / f"grpo_{engine}.log", "w") as f:
        try:
            result["returncode"] = subprocess.run([*launch, *argv], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            result["returncode"] = None
            result["stopped"] = f"time budget: stopped after {timeout:.0f} s"
    result["seconds"] = time.perf_counter() - start
    metrics = run / "metrics.jsonl"
    if result["returncode"] == 0 and metrics.exists():
        row = json.loads(metrics.read_text().splitlines()[0])
        result.update(reward=row.get("reward"), grad_norm=row.get("grad_norm"), step_time=row.get("step_time"))
    log(f"GRPO step under {engine}: {json.dumps(result)}")
    return result


# ----------------------------------------------------------------------------- report
def goals(rows: list[dict]) -> dict:
    """The compiled backend's figures against the goals (meaningful for ``--size 0.5b`` on an H100/H200)."""
    compiled = {r["batch"]: r for r in rows if r["method"] == "compiled"}
    result = {}
    if 1 in compiled:
        ms = compiled[1]["ms_per_step"]
        result["ms_per_step_batch_1"] = {"value": ms, "goal": f"<= {GOAL_MS_PER_STEP}", "met": ms <= GOAL_MS_PER_STEP}
    if 64 in compiled:
        ips = compiled[64]["images_per_s"]
        result["images_per_s_batch_64"] = {"value": ips, "goal": f">= {GOAL_IMAGES_PER_S}", "met": ips >= GOAL_IMAGES_PER_S}
    return result


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "–" if value is None else str(value)


def markdown(report: dict) -> str:
    """results.md: the same content as results.json, as tables."""
    env = report["env"]
    lines = [f"# GPU check: {env['device']}", "", f"`{json.dumps(env)}`", ""]
    versions = report.get("versions")
    if versions:
        lines += ["## Versions", "", "| package | version |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in versions["found"].items()]
        lines += ["", f"Guards: {'passed' if versions['ok'] else 'FAILED: ' + versions.get('error', '')}", ""]
    if report["equality"]:
        lines += ["## a. compiled = eager", "",
                  "| dtype | grid | images | same codes | tokens compared | max abs Δ log-prob | mean abs Δ | tolerance "
                  "| passed |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in report["equality"]:
            lines.append(f"| {r['dtype']} | {r['grid'][0]}×{r['grid'][1]} | {r['images']} | {r['same_codes']} | "
                         f"{r['compared_tokens']} of {r['tokens']} | "
                         f"{r['max_abs_logprob_diff']:.2g} | {r['mean_abs_logprob_diff']:.2g} | {r['tolerance']:g} | "
                         f"{'yes' if r['passed'] else 'NO'} |")
        lines += ["", "fp32: identical codes required. bf16: the backends round differently and a flipped draw changes "
                  "the rest of an image; the log-probs are compared up to each image's first differing code.", ""]
    if report["rollouts"]:
        lines += ["## b. Rollouts", "",
                  "| method | batch | ms/step | s/image | images/s | compile s | peak GB | timed steps |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in report["rollouts"]:
            timed = f"{r['steps_timed']} (extrapolated)" if r["extrapolated"] else str(r["steps_timed"])
            lines.append(f"| {r['method']} | {r['batch']} | {r['ms_per_step']:.2f} | {r['seconds_per_image']:.2f} | "
                         f"{r['images_per_s']:.2f} | {r['compile_seconds']:.1f} | {_cell(r['peak_gb'])} | {timed} |")
        lines += ["", "Goals (compiled backend):", ""]
        lines += [f"- {k}: {v['value']:.3g} (goal {v['goal']}): {'met' if v['met'] else 'NOT met'}"
                  for k, v in report["goals"].items()] or ["- (no batch 1 / 64 row)"]
        lines.append("")
    if report.get("grpo_step"):
        step = report["grpo_step"]
        lines += ["## c. One GRPO step", "", "| " + " | ".join(step) + " |", "|" + " --- |" * len(step),
                  "| " + " | ".join(_cell(v) for v in step.values()) + " |", ""]
    if report.get("sharded_steps"):
        lines += ["## d. One GRPO step under sharded engines (accelerate launch)", "",
                  "| engine | exit code | seconds (with start-up) | step s | reward | grad norm |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in report["sharded_steps"]:
            cells = [_cell(r.get(k)) for k in ("step_time", "reward", "grad_norm")]
            lines.append(f"| {r['engine']} | {_cell(r['returncode'])} | {r['seconds']:.0f} | " + " | ".join(cells) + " |")
        lines += ["", "A non-zero exit code: see grpo_<engine>.log in this folder.", ""]
    if report["skipped"]:
        lines += ["## Skipped", ""] + [f"- {s['task']}: {s['reason']}" for s in report["skipped"]] + [""]
    if report["errors"]:
        lines += ["## Errors", ""] + [f"- {e['task']}: {e['error']}" for e in report["errors"]] + [""]
    if "total_seconds" in env:
        lines.append(f"Total: {env['total_seconds']:.0f} s of a {env['budget_s']:.0f} s budget.")
    return "\n".join(lines) + "\n"


def environment(device: torch.device, size: str, budget_s: float, kit: str | None) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    if device.type == "cpu":
        try:
            lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
            name = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name"))
        except (OSError, StopIteration):
            pass
    env = {"device": name, "device_type": device.type, "size": size,
           "dtype": str(PRESETS[size]["dtype"]).removeprefix("torch."), "cfg_scale": CFG_SCALE,
           "python": platform.python_version(), "torch": torch.__version__, "budget_s": budget_s,
           "cpu_threads": torch.get_num_threads()}
    if kit:
        manifest = Path(kit) / "manifest.json"
        env["kit"] = [w["wheel"] for w in json.loads(manifest.read_text())["wheels"]] if manifest.exists() else kit
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", choices=sorted(PRESETS), default=None, help="default: 0.5b on CUDA, tiny on CPU")
    p.add_argument("--out", default=str(REPO / "bench" / "gpu_check"), help="folder for results.json and results.md")
    p.add_argument("--budget_s", type=float, default=480.0, help="time budget in seconds (default 8 minutes)")
    p.add_argument("--kit", default=None, help="the kit folder gpu_check.sh installed (recorded in the report)")
    p.add_argument("--skip", default="", help="comma-separated tasks not to run: equality, rollouts, grpo, sharded")
    p.add_argument("--engines", default=None,
                   help="comma-separated accelerate configs to run one GRPO step under (fsdp, zero3, zero2, ddp); "
                        "default fsdp,zero3 on CUDA, none on CPU")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here; for the CPU path pass --device cpu")
    size = args.size or ("0.5b" if device.type == "cuda" else "tiny")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    report = Report(out, environment(device, size, args.budget_s, args.kit))
    found = {name: installed_version(name) for name in ("torch", "transformers", "trl", "accelerate", "datasets", "peft",
                                                           "tokenizers", "huggingface_hub", "numpy", "deepspeed")}
    report.data["versions"] = {"found": found, "ok": True}
    try:
        ensure_supported()
    except UnsupportedVersion as err:
        report.data["versions"].update(ok=False, error=str(err))
        report.save()
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2
    report.save()
    _import_measurements()
    preset, needs = PRESETS[size], NEEDS[device.type]

    speed_model = None
    if "equality" not in skip:
        for dtype in preset["equality_dtypes"]:
            def measure(dtype=dtype):
                nonlocal speed_model
                model = build_model(size, device, dtype)
                report.data["equality"].append(equality(size, device, dtype, model))
                if dtype == preset["dtype"]:
                    speed_model = model  # reused by the speed runs
            report.run(f"equality {str(dtype).removeprefix('torch.')}", budget, needs["equality"], measure)
    if "rollouts" not in skip:
        speed_model = speed_model if speed_model is not None else build_model(size, device, preset["dtype"])
        rollouts(size, device, speed_model, preset["first_batches"], budget, report)
    speed_model = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "grpo" not in skip:
        report.run("grpo_step", budget, needs["grpo_step"],
                   lambda: report.data.__setitem__("grpo_step", grpo_step(size, device, out)))
    gc.collect()  # the GRPO step's trainer, optimizer and caches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "rollouts" not in skip:
        model = build_model(size, device, preset["dtype"]) if budget.allows(needs["rollouts"]) else None
        rollouts(size, device, model, preset["later_batches"], budget, report)
        del model
    engines = args.engines if args.engines is not None else ("fsdp,zero3" if device.type == "cuda" else "")
    for engine in filter(None, engines.split(",") if "sharded" not in skip else []):
        if engine.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
            report.skip(f"sharded {engine}", "deepspeed is not installed (extra [deepspeed]; not in the GPU kit)")
            continue
        report.run(f"sharded {engine}", budget, needs["sharded"], lambda engine=engine: report.data["sharded_steps"].append(
            sharded_step(engine, size, device, out, timeout=max(budget.left(), 1))))
    report.data["env"]["total_seconds"] = budget.seconds - budget.left()
    report.save()
    log(f"wrote {out / 'results.json'} and {out / 'results.md'} in {report.data['env']['total_seconds']:.0f} s; "
        f"{len(report.data['skipped'])} skipped, {len(report.data['errors'])} errors")
    return 1 if report.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
