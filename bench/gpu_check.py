"""One-shot GPU check of the rollout engine and of one GRPO step; JSON + Markdown in one folder.

Real size (the default, CUDA; sized for the device tool's 10-minute call, not yet run on a GPU):
Qwen2.5-0.5B dimensions with the 215,672-row vocabulary, random weights, bf16, a 64x64 grid (a 1024²
image), CFG 6.

1. Rollouts: seconds per image at batch 1 and images/s at batch 8, 32 and 64 for the eager and the
   compiled backends and transformers ``generate()``, with the compiled backend's compile seconds and
   peak memory. The compiled backend samples whole 64x64 grids; to stay within the time budget, eager
   and ``generate()`` sample the first ``baseline_steps`` tokens and their per-image figures are
   extrapolated to 4,096 tokens (marked ``extrapolated``). Goals reported against: ≤ 1 ms per decode
   step at batch 1, ≥ 10 images/s at batch 64.
2. One GRPO step of ``recipes/simplear_0.5b/grpo_clip.yaml`` at 1024² with G=4 on random weights:
   rollout, reward, scoring (log-prob forwards) and backward seconds, and peak memory. Nothing is
   downloaded, so a 64,000-colour palette codec stands in for Cosmos and the verifiable
   ``color_region`` reward for CLIP (their seconds are not the real ones).
3. The same GRPO step launched under FSDP2 and DeepSpeed ZeRO-3 (``--engines``, default both on CUDA):
   ``accelerate launch`` with ``recipes/accelerate/{fsdp,zero3}.yaml`` on one GPU (ZeRO-3 needs the
   ``[deepspeed]`` extra), recording whether it ran, its seconds, reward and gradient norm. On CPU
   (``--engines`` given explicitly) each runs on 2 processes through the tests' CPU launcher
   (``tests/distributed/launch_on_cpu.py``, which is what lets accelerate apply FSDP2 to CPU processes).

    bench/gpu_check.sh                                    # CUDA, real size -> bench/gpu_check/
    bench/gpu_check.sh --device cpu --size tiny --out DIR # the same path on the tiny demo policy (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
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

from rollout import bench_batch, build_model, layout_vocab  # noqa: E402

from policies.static_sampler import COMPILE_STATS  # noqa: E402
from policies.tiny import BASIC_WORDS, build_tiny_policy  # noqa: E402

#: Per size: the rollout grid, batches, tokens eager/generate() sample, dtype, and the GRPO recipe.
PRESETS = {
    "0.5b": dict(grid=64, batches=(1, 8, 32, 64), baseline_steps=512, dtype=torch.bfloat16,
                 recipe="recipes/simplear_0.5b/grpo_clip.yaml"),
    "tiny": dict(grid=4, batches=(1, 2), baseline_steps=16, dtype=torch.float32, recipe="recipes/tiny/grpo.yaml"),
}
CFG_SCALE = 6.0
GOAL_MS_PER_STEP, GOAL_IMAGES_PER_S = 1.0, 10.0


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


# ----------------------------------------------------------------------------- 1. rollouts
def rollouts(size: str, device: torch.device) -> list[dict]:
    """Compiled on whole grids; eager and generate() on the first ``baseline_steps`` tokens, extrapolated."""
    preset = PRESETS[size]
    model = build_model(size, device, preset["dtype"])
    full = layout_vocab(size, (preset["grid"], preset["grid"]))
    base = full.with_grid((preset["baseline_steps"] // preset["grid"], preset["grid"]))
    rows = []
    for batch in preset["batches"]:
        for vocab, methods in ((full, ["compiled"]), (base, ["eager", "hf-generate"])):
            reset_peak(device)
            for row in bench_batch(model, vocab, methods, batch, CFG_SCALE, repeats=1):
                scale = full.num_image_tokens / vocab.num_image_tokens
                row.update(
                    steps_timed=vocab.num_image_tokens, extrapolated=scale != 1,
                    ms_per_step=1000 * row["seconds_best"] / vocab.num_image_tokens,
                    seconds_per_image=row["seconds_per_image"] * scale, images_per_s=row["images_per_s"] / scale,
                    peak_gb=peak_gb(device),
                )
                rows.append(row)
                log(f"batch {batch} {row['method']}: {row['ms_per_step']:.2f} ms/step, "
                    f"{row['seconds_per_image']:.2f} s/image, compile {row['compile_seconds']:.1f} s")
    del model
    return rows


# ----------------------------------------------------------------------------- 2. one GRPO step
def random_policy_folder(size: str, out: Path) -> Path:
    """A random policy saved as a checkpoint: the real 151,672-id text vocabulary and 0.5B body, or the tiny one."""
    folder = out / "policy"
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
    ]
    if size == "0.5b":
        argv += ["--codec_levels", "40", "--codec_patch", "16", "--resolution", "1024"]  # 40³ = 64,000 codes
    return argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_step(engine: str, size: str, device: torch.device, out: Path) -> dict:
    """The GRPO step of :func:`grpo_step` under ``accelerate launch`` with ``recipes/accelerate/<engine>.yaml``."""
    folder = out / "policy" if (out / "policy").exists() else random_policy_folder(size, out)
    run = out / f"grpo_{engine}"
    argv = grpo_argv(size, folder, run, "auto")  # auto: the eager backend, which is what sharded weights need
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
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
    log(f"GRPO step under {engine}")
    start = time.perf_counter()
    with open(out / f"grpo_{engine}.log", "w") as f:
        code = subprocess.run([*launch, *argv], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    result = {"engine": engine, "returncode": code, "seconds": time.perf_counter() - start}
    metrics = run / "metrics.jsonl"
    if code == 0 and metrics.exists():
        row = json.loads(metrics.read_text().splitlines()[0])
        result.update(reward=row.get("reward"), grad_norm=row.get("grad_norm"), step_time=row.get("step_time"))
    log(f"GRPO step under {engine}: {json.dumps(result)}")
    return result


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
    result.update(
        step_seconds=time.perf_counter() - start, rollouts=args.per_device_train_batch_size * args.steps_per_generation,
        num_generations=args.num_generations, grid=list(trainer.vocab.grid), compiles=COMPILE_STATS.compiles - compiles,
        peak_gb=peak_gb(device),
    )
    log(f"GRPO step: {json.dumps(result)}")
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


def markdown(report: dict) -> str:
    env = report["env"]
    lines = [f"# GPU check: {env['device']}", "", f"`{json.dumps(env)}`", "", "## Rollouts", "",
             "| method | batch | ms/step | s/image | images/s | compile s | peak GB | timed steps |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in report["rollouts"]:
        peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "–"
        timed = f"{r['steps_timed']} (extrapolated)" if r["extrapolated"] else str(r["steps_timed"])
        lines.append(f"| {r['method']} | {r['batch']} | {r['ms_per_step']:.2f} | {r['seconds_per_image']:.2f} | "
                     f"{r['images_per_s']:.2f} | {r['compile_seconds']:.1f} | {peak} | {timed} |")
    lines += ["", "## Goals (compiled backend)", ""]
    lines += [f"- {k}: {v['value']:.3g} (goal {v['goal']}): {'met' if v['met'] else 'NOT met'}"
              for k, v in report["goals"].items()] or ["- (no batch 1 / 64 row)"]
    if report.get("grpo_step"):
        lines += ["", "## One GRPO step", "", "| " + " | ".join(report["grpo_step"]) + " |",
                  "|" + " --- |" * len(report["grpo_step"]),
                  "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in report["grpo_step"].values()) + " |"]
    if report.get("sharded_steps"):
        lines += ["", "## One GRPO step under sharded engines (accelerate launch)", "",
                  "| engine | exit code | seconds (with start-up) | step s | reward | grad norm |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in report["sharded_steps"]:
            cells = [f"{r.get(k):.3g}" if isinstance(r.get(k), float) else "–" for k in ("step_time", "reward", "grad_norm")]
            lines.append(f"| {r['engine']} | {r['returncode']} | {r['seconds']:.0f} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("A non-zero exit code: see grpo_<engine>.log in this folder.")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    """Written after each section, so that a run cut short keeps what it measured."""
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", choices=sorted(PRESETS), default="0.5b")
    p.add_argument("--out", default=str(REPO / "bench" / "gpu_check"), help="folder for results.json and results.md")
    p.add_argument("--skip_grpo", action="store_true", help="rollouts only")
    p.add_argument("--skip_rollouts", action="store_true", help="no rollout benchmark (GRPO steps only)")
    p.add_argument("--engines", default=None,
                   help="comma-separated accelerate configs to run one GRPO step under (fsdp, zero3, zero2, ddp); "
                        "default fsdp,zero3 on CUDA, none on CPU")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here; for the CPU smoke path pass --device cpu --size tiny")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "size": args.size,
           "dtype": str(PRESETS[args.size]["dtype"]).removeprefix("torch."), "cfg_scale": CFG_SCALE,
           "torch": torch.__version__}
    engines = args.engines if args.engines is not None else ("fsdp,zero3" if device.type == "cuda" else "")
    report = {"env": env, "rollouts": [], "goals": {}, "grpo_step": None, "sharded_steps": []}
    start = time.perf_counter()
    if not args.skip_rollouts:
        report["rollouts"] = rollouts(args.size, device)
        report["goals"] = goals(report["rollouts"])
        write(report, out)
    if not args.skip_grpo:
        report["grpo_step"] = grpo_step(args.size, device, out)
        write(report, out)
    for engine in filter(None, engines.split(",")):
        report["sharded_steps"].append(sharded_step(engine, args.size, device, out))
    env["total_seconds"] = time.perf_counter() - start
    write(report, out)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'} in {env['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
