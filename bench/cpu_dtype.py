"""bf16 vs fp32 rollout speed on this CPU, per model size: the measurement behind ``resolve_dtype("auto")``.

For each size, one random-weight model is built in fp32 and copied to bf16; the eager sampler then
samples the same prompts with both, warm-up first, repeats interleaved. Reported: the CPU's bf16
hardware (AMX / AVX512-BF16), and per size the best seconds of each dtype and bf16's speed-up.

    python bench/cpu_dtype.py --threads 1                       # tiny, cpu and 0.5b sizes, 8x8 grid, batch 2
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

# bench/common.py and bench/rollout.py, beside this script; common puts the checkout on sys.path for `policies`.
from common import SIZES, build_model, layout_vocab, make_prompts, write_rows  # isort: skip
from rollout import METHODS, timed  # isort: skip
from policies.dtypes import cpu_has_bf16


def measure(size: str, grid: int, batch: int, repeats: int, cfg_scale: float) -> dict:
    """Best eager-rollout seconds in fp32 and in bf16 for one size."""
    fp32 = build_model(size, torch.device("cpu"), torch.float32)
    models = {"float32": fp32, "bfloat16": copy.deepcopy(fp32).to(torch.bfloat16)}
    vocab = layout_vocab(size, (grid, grid))
    prompts, uncond = make_prompts(batch, vocab)
    run = METHODS["eager"]
    for model in models.values():
        timed(run, model, vocab.with_grid((2, 2)), prompts, uncond, cfg_scale, seed=0)
    times = {name: [] for name in models}
    for r in range(repeats):
        for name, model in models.items():
            times[name].append(timed(run, model, vocab, prompts, uncond, cfg_scale, seed=r)[0])
    best = {name: min(t) for name, t in times.items()}
    return {"size": size, "hidden_size": SIZES[size]["hidden_size"], "params": sum(p.numel() for p in fp32.parameters()),
            "grid": [grid, grid], "batch": batch, "fp32_seconds": best["float32"], "bf16_seconds": best["bfloat16"],
            "bf16_speedup": best["float32"] / best["bfloat16"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,cpu,0.5b", help=f"comma-separated subset of {', '.join(SIZES)}")
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cfg_scale", type=float, default=6.0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {"cpu_has_bf16": cpu_has_bf16(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(f"# cpu dtype benchmark: {json.dumps(env)}", flush=True)
    rows = [measure(s.strip(), args.grid, args.batch, args.repeats, args.cfg_scale) for s in args.sizes.split(",")]
    print("| size | hidden | params | grid | batch | fp32 s | bf16 s | bf16 × faster |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['size']} | {r['hidden_size']} | {r['params'] / 1e6:.1f} M | {r['grid'][0]}×{r['grid'][1]} | "
              f"{r['batch']} | {r['fp32_seconds']:.3f} | {r['bf16_seconds']:.3f} | {r['bf16_speedup']:.2f} |")
    write_rows(args.json, env, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
