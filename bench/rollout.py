"""Rollout benchmark: our CFG sampler (eager and compiled backends) vs transformers ``generate()`` CFG vs a
plain two-forward loop.

Same model (random weights, built in code), same prompts, same grid, same CFG scale, measured in
one run with warm-up and interleaved repeats. Reported: image tokens per second, seconds per image,
each method's speed relative to the eager backend, the compiled backend's compilation seconds
(separate from its steady-state time) and peak memory above the level at the method's start (peak
RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA).

    python bench/rollout.py                      # CPU: 215,672-row vocab, 4 layers, hidden 256, 16x16, 8 prompts
    python bench/rollout.py --size tiny --grid 8 --batch 4 --threads 1   # the tiny demo policy's size
    python bench/rollout.py --device cuda --size 0.5b --grid 64 --batch 1,16 --methods eager,compiled

Our backends:
  eager        ``policies.sampler.sample_images``: cond and uncond rows in one batched forward per step,
               one growing KV cache, only the visual rows of the head.
  compiled     the same with ``backend="compiled"``: a static KV cache and a ``torch.compile``'d
               fixed-shape decode step (a CUDA graph on GPU). Its warm-up is a full rollout of the
               measured grid, which compiles; the compilation is reported as ``compile_seconds``.

The baselines:
  hf-generate  ``model.generate(guidance_scale=s, negative_prompt_ids=...)``: transformers runs the
               negative prompt as a second forward per step inside UnbatchedClassifierFreeGuidance-
               LogitsProcessor, over the full vocabulary; a logits processor masks the text ids.
  plain-loop   SimpleAR's HF path: cond and uncond as two separate forwards per step, each with its
               own KV cache, full-vocabulary logits, guidance, text ids masked, multinomial sampling.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from transformers import DynamicCache, LogitsProcessor

# bench/common.py, beside this script; importing it puts the checkout on sys.path for `policies`.
from common import SIZES, PeakMemory, build_model, layout_vocab, make_prompts, special_ids, write_rows  # isort: skip
from policies.guidance import SamplingConfig
from policies.heads import position_ids_from_mask
from policies.rollout import COMPILE_STATS, left_pad
from policies.sampler import sample_images

# ----------------------------------------------------------------------------- the four samplers


def run_sampler(backend: str):
    def run(model, vocab, prompts, uncond, cfg_scale, seed):
        seeds = [seed + i for i in range(len(prompts))]
        config = SamplingConfig(cfg_scale=cfg_scale)
        return sample_images(model, vocab, prompts, uncond, config, seeds, pad_id=special_ids(vocab)[2],
                             backend=backend).token_ids

    run.__name__ = f"run_{backend}"
    return run


class VisualOnly(LogitsProcessor):
    """Restricts sampling to the visual ids (applied after transformers' CFG processor)."""

    def __init__(self, offset: int):
        self.offset = offset

    def __call__(self, input_ids, scores):
        scores[:, : self.offset] = -float("inf")
        return scores


def run_hf_generate(model, vocab, prompts, uncond, cfg_scale, seed):
    device, pad = model.device, special_ids(vocab)[2]
    ids, mask = left_pad(prompts, pad, device)
    negative = torch.tensor([uncond] * len(prompts), device=device)
    steps = vocab.num_image_tokens
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=ids, attention_mask=mask, negative_prompt_ids=negative,
        negative_prompt_attention_mask=torch.ones_like(negative), guidance_scale=cfg_scale,
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=steps, min_new_tokens=steps,
        logits_processor=[VisualOnly(vocab.offset)], pad_token_id=pad, eos_token_id=None,
    )
    return out[:, ids.size(1) :]


def run_plain_loop(model, vocab, prompts, uncond, cfg_scale, seed):
    device = model.device
    gen = torch.Generator(device).manual_seed(seed)
    batch, steps = len(prompts), vocab.num_image_tokens
    ids, mask = left_pad(prompts, special_ids(vocab)[2], device)
    pos = position_ids_from_mask(mask)
    u_ids = torch.tensor([uncond] * batch, device=device)
    cond_cache, uncond_cache = DynamicCache(), DynamicCache()
    cond = model(ids, attention_mask=mask, position_ids=pos, cache=cond_cache, logits_to_keep=1)
    unc = model(u_ids, cache=uncond_cache, logits_to_keep=1)
    pos, u_len, tokens = pos[:, -1:], u_ids.size(1), []
    for _ in range(steps):
        c = cond.logits[:, -1].float().log_softmax(-1)
        u = unc.logits[:, -1].float().log_softmax(-1)
        guided = u + cfg_scale * (c - u)
        guided[:, : vocab.offset] = -float("inf")
        token = torch.multinomial(guided.softmax(-1), 1, generator=gen)
        tokens.append(token)
        pos, mask, u_len = pos + 1, torch.cat([mask, mask.new_ones(batch, 1)], 1), u_len + 1
        cond = model(token, attention_mask=mask, position_ids=pos, cache=cond_cache)
        unc = model(token, cache=uncond_cache)
    return torch.cat(tokens, dim=1)


METHODS = {"eager": run_sampler("eager"), "compiled": run_sampler("compiled"), "hf-generate": run_hf_generate,
           "plain-loop": run_plain_loop}


# ----------------------------------------------------------------------------- measuring


def timed(fn, model, vocab, prompts, uncond, cfg_scale, seed) -> tuple[float, int, torch.Tensor]:
    with PeakMemory(model.device) as mem, torch.no_grad():
        start = time.perf_counter()
        tokens = fn(model, vocab, prompts, uncond, cfg_scale, seed)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    expected = (len(prompts), vocab.num_image_tokens)
    if tuple(tokens.shape) != expected or not bool(((tokens >= vocab.offset) & (tokens < vocab.vocab_size)).all()):
        raise AssertionError(f"{fn.__name__} returned {tuple(tokens.shape)} tokens (expected {expected}) or text ids")
    return seconds, mem.peak, tokens


def bench_batch(model, vocab, methods, batch, cfg_scale, repeats) -> list[dict]:
    """One row per method: best and median of ``repeats`` interleaved runs after a warm-up."""
    prompts, uncond = make_prompts(batch, vocab)
    compile_seconds = {name: 0.0 for name in methods}
    for name in methods:  # warm-up: kernels, allocator, thread pools; the compiled backend compiles for this grid
        before = COMPILE_STATS.seconds
        warm_vocab = vocab if name == "compiled" else vocab.with_grid((2, 2))
        timed(METHODS[name], model, warm_vocab, prompts, uncond, cfg_scale, seed=0)
        compile_seconds[name] = COMPILE_STATS.seconds - before
    times = {name: [] for name in methods}
    peaks = {name: 0 for name in methods}
    for r in range(repeats):  # interleaved so that drifting machine load hits every method alike
        for name in methods:
            seconds, peak, _ = timed(METHODS[name], model, vocab, prompts, uncond, cfg_scale, seed=r)
            times[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
    tokens = batch * vocab.num_image_tokens
    rows = []
    for name in methods:
        best = min(times[name])
        rows.append({
            "method": name, "batch": batch, "grid": list(vocab.grid), "seconds_best": best,
            "seconds_median": statistics.median(times[name]), "tokens_per_s": tokens / best,
            "seconds_per_image": best / batch, "images_per_s": batch / best, "peak_mem_mb": peaks[name] / 2**20,
            "compile_seconds": compile_seconds[name],
        })
    if "eager" in methods:
        eager = min(times["eager"])
        for row in rows:
            row["speed_vs_eager"] = eager / row["seconds_best"]
    return rows


def markdown(rows: list[dict], device: str) -> str:
    """The rows as a Markdown table."""
    mem = "peak GPU mem over start (MB)" if device == "cuda" else "peak RSS over start (MB)"
    lines = [
        f"| method | batch | grid | tokens/s | s/image | images/s | × eager speed | compile s | {mem} |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        speed = f"{r['speed_vs_eager']:.2f}" if "speed_vs_eager" in r else "–"
        lines.append(
            f"| {r['method']} | {r['batch']} | {r['grid'][0]}×{r['grid'][1]} | {r['tokens_per_s']:.0f} | "
            f"{r['seconds_per_image']:.3f} | {r['images_per_s']:.2f} | {speed} | {r['compile_seconds']:.1f} | "
            f"{r['peak_mem_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu",
                   help="model: tiny (the demo policy), cpu (4 layers, hidden 256) or 0.5b (Qwen2.5-0.5B dimensions)")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--grid", type=int, default=16, help="side of the square token grid")
    p.add_argument("--batch", default="8", help="comma-separated numbers of prompts, e.g. 1,16")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--cfg_scale", type=float, default=6.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.size, device, dtype)
    vocab = layout_vocab(args.size, (args.grid, args.grid))
    params = sum(t.numel() for t in model.parameters())
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "size": args.size, "dtype": str(dtype).removeprefix("torch."), "params": params, "vocab": vocab.vocab_size,
        "cfg_scale": args.cfg_scale, "repeats": args.repeats, "torch": torch.__version__,
    }
    print(f"# rollout benchmark: {json.dumps(env)}", flush=True)
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        rows += bench_batch(model, vocab, methods, batch, args.cfg_scale, args.repeats)
        done = ", ".join(f"{r['method']} {r['tokens_per_s']:.0f}" for r in rows[-len(methods):])
        print(f"# batch {batch}: tokens/s {done}", file=sys.stderr, flush=True)
    print(markdown(rows, device.type))
    write_rows(args.json, env, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
