"""Rollout weights: bf16 autocast over fp32 masters vs a bf16 snapshot refreshed once per optimizer step.

Same run, same model (random fp32 masters at the size's dims, the real 215,672-row vocabulary), same
prompts and seeds, the compiled backend (or ``--backend``), CFG 6, the visual head in fp32 (GRPO's
default), both under bf16 autocast as GRPO rollouts run. Reported: seconds per rollout and ms per
decode step (best of ``--repeats`` interleaved repeats after a compiling warm-up), the speed ratio,
the snapshot's refresh seconds (once per optimizer step), the bytes the snapshot holds, the peak
memory above the start of each rollout (RSS on CPU, the allocator on CUDA), and the largest log-prob
difference between the two (expected 0: the snapshot holds exactly autocast's casts).

    python bench/rollout_weights.py                         # CPU, Qwen2.5-0.5B dims, 8x8 grid, batch 1
    python bench/rollout_weights.py --device cuda --grid 64 --batch 1,8
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch

# bench/common.py, beside this script; importing it puts the checkout on sys.path for `policies`.
from common import PeakMemory, build_model, layout_vocab, make_prompts, special_ids, write_rows  # isort: skip
from policies.guidance import SamplingConfig
from policies.rollout import COMPILE_STATS
from policies.rollout_weights import RolloutSnapshot
from policies.sampler import sample_images


def cpu_name() -> str:
    """The CPU model name (lscpu), for figures that depend on it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def rollout(model, vocab, prompts, uncond, seeds, backend, device):
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16), PeakMemory(device) as mem:
        start = time.perf_counter()
        out = sample_images(model, vocab, prompts, uncond, SamplingConfig(cfg_scale=6.0), seeds,
                            pad_id=special_ids(vocab)[2], fp32_head=True, backend=backend)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return out, seconds, mem.peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="0.5b", choices=["tiny", "cpu", "0.5b"])
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--backend", default="compiled")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.size, device, torch.float32)
    vocab = layout_vocab(args.size, (args.grid, args.grid))
    start = time.perf_counter()
    snapshot = RolloutSnapshot(model)
    snapshot.refresh()
    first_refresh = time.perf_counter() - start
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
           "threads": torch.get_num_threads(), "size": args.size, "grid": [args.grid, args.grid],
           "backend": args.backend, "torch": torch.__version__, "snapshot_gib": snapshot.nbytes / 2**30,
           "master_gib": sum(t.numel() * t.element_size() for t in model.parameters()) / 2**30}
    print(f"# rollout weights: {json.dumps(env)}", flush=True)
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        prompts, uncond = make_prompts(batch, vocab)
        seeds = list(range(batch))
        compile_s = {}
        for name, m in (("autocast", model), ("snapshot", snapshot.model)):  # warm-up compiles each graph
            before = COMPILE_STATS.seconds
            rollout(m, vocab, prompts, uncond, seeds, args.backend, device)
            compile_s[name] = COMPILE_STATS.seconds - before
        times, peaks, refresh = {"autocast": [], "snapshot": []}, {"autocast": 0, "snapshot": 0}, []
        outs = {}
        for _ in range(args.repeats):
            for name in ("autocast", "snapshot"):
                if name == "snapshot":  # what one optimizer step costs the snapshot: an update, then a refresh
                    with torch.no_grad():
                        for param in model.parameters():
                            param.mul_(1.0)  # an in-place edit with no numeric change bumps every version
                    start = time.perf_counter()
                    assert snapshot.refresh()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    refresh.append(time.perf_counter() - start)
                m = model if name == "autocast" else snapshot.model
                outs[name], seconds, peak = rollout(m, vocab, prompts, uncond, seeds, args.backend, device)
                times[name].append(seconds)
                peaks[name] = max(peaks[name], peak)
        gap = (outs["autocast"].logprobs - outs["snapshot"].logprobs).abs().max().item()
        same_codes = torch.equal(outs["autocast"].codes, outs["snapshot"].codes)
        steps = vocab.num_image_tokens
        row = {"batch": batch, "steps": steps, "same_codes": same_codes, "max_logprob_diff": gap,
               "refresh_s": min(refresh), "first_refresh_s": first_refresh}
        for name in times:
            row[f"{name}_s"] = min(times[name])
            row[f"{name}_ms_per_step"] = 1000 * min(times[name]) / steps
            row[f"{name}_peak_mib"] = peaks[name] / 2**20
            row[f"{name}_compile_s"] = compile_s[name]
        row["snapshot_speedup"] = row["autocast_s"] / row["snapshot_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| batch | autocast ms/step | snapshot ms/step | snapshot × faster | refresh s | same codes | max Δ log-prob |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        print(f"| {r['batch']} | {r['autocast_ms_per_step']:.1f} | {r['snapshot_ms_per_step']:.1f} | "
              f"{r['snapshot_speedup']:.2f} | {r['refresh_s']:.2f} | {r['same_codes']} | {r['max_logprob_diff']:.2g} |")
    write_rows(args.json, env, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
