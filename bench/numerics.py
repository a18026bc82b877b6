"""Numerics benchmark: sampler vs trainer log-prob gap, rollout cost and memory per numerics option.

At real GRPO settings the sampler (incremental, KV-cached decode) and the trainer (one teacher-forced
forward, chunked guided scoring) round differently in bf16, so the trainer's log-probs of the
sampled tokens differ from the sampler's. This script measures, on one random-weight Qwen2 with the
released SimpleAR vocabulary (151,672 text ids + 64,000 visual codes = 215,672 rows, tied) at
Qwen2.5-0.5B dimensions, in one run with the same prompts and seeds for every option:

1. the per-token gap |sampler log-prob - trainer guided log-prob| (mean, max, fraction > 0.1) and
   the per-sequence sum of signed differences (the log of a sequence-level importance ratio);
2. the rollout time of each option as a ratio against the fp32 rollout of the same run, and
   (part ``steps``) the time of one decode step of the body and of the visual head per compute
   mode, with a short KV cache and with a 64x64-grid one (4,126 tokens), and the cache's size;
3. memory, measured: (a, ``head_memory``) peak RSS of guided scoring's head part (visual head,
   guidance, log-softmaxes, forward + backward with recomputation) at a 64x64 grid for several
   chunk sizes and numbers of completions, each in its own subprocess, on random hidden states
   (the whole 0.5B decoder over 4k tokens is too slow on a 2-core CPU); (b, ``training_memory``)
   fp32-master training memory counted from the parameters of the real 0.5B / 1.5B configs built
   on the ``meta`` device, and the bf16 autocast weight-cast cache measured at 0.5B.

The options (the trainer always scores the completions; "autocast" = ``torch.autocast(bf16)``):

  fp32            sampler fp32, scorer fp32 (the reference)
  bf16            bf16 weights for sampler and scorer (the recipes before fp32 masters)
  A               sampler under one autocast region over the fp32 masters; scorer autocast over fp32
  A+fp32head      as A, visual head in float32 in sampler and scorer (``fp32_head=True``)
  B               sampler on a bf16 copy of the policy (refreshed by ``copy_`` before the rollout,
                  timed with it); scorer autocast over fp32
  B+fp32head      as B with ``fp32_head=True`` in sampler and scorer

    python bench/numerics.py --threads 1                       # everything at 0.5B dims, 16x16: ~30 min on 2 cores
    python bench/numerics.py --quick                           # smoke run of every part: a few minutes
    python bench/numerics.py --parts gap --threads 1           # the gap table and rollout ratios only: ~10 min
    python bench/numerics.py --parts head_memory --mem_settings autocast:512,autocast:512:2

At real dimensions this cannot be made quick on a 2-core CPU: one fp32 rollout of 4 images at
16x16 is ~100 s, and each 64x64 head-memory run is 40-130 s.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

# bench/common.py, beside this script; importing it puts the checkout on sys.path for `policies`.
from common import (  # isort: skip
    CODEBOOK, PAD, SIZES, SOI, T2I, TEXT_VOCAB, build_model, make_prompts, malloc_trim, qwen2_config, rss,
)
from policies.guidance import SamplingConfig, entropy_from_logprobs, sampling_logprobs
from policies.heads import HeadWeights, head_forward, replaced_head
from policies.sampler import sample_images
from policies.scoring import guided_token_logprobs, map_position_chunks
from policies.vocab import VisualVocab

#: Model sizes of the gap and memory parts (bench/common.py's dims).
GAP_SIZES = ("0.5b", "1.5b")
HEAD_MODES = ("autocast", "autocast+fp32head", "fp32")
OPTIONS = ("fp32", "bf16", "A", "A+fp32head", "B", "B+fp32head")
GiB, MiB = 2**30, 2**20


def cast_copy(src: nn.Module, dst: nn.Module) -> None:
    """Refresh the bf16 rollout copy from the fp32 masters (what option B does after every optimizer step)."""
    with torch.no_grad():
        for d, s in zip(dst.parameters(), src.parameters()):
            d.copy_(s)


# ----------------------------------------------------------------------------- part 1 and 2: gap and time


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


class Option:
    def __init__(self, name: str, master: nn.Module, copy_bf16: nn.Module, bf16_model: nn.Module):
        self.name = name
        self.fp32_head = name.endswith("+fp32head")
        kind = name.split("+")[0]
        self.kind = kind
        # sampler: which module, under autocast?, refresh a copy first?
        self.sample_model = {"fp32": master, "bf16": bf16_model, "A": master, "B": copy_bf16}[kind]
        self.sample_autocast = kind == "A"
        self.refresh = (master, copy_bf16) if kind == "B" else None
        # scorer: the trainer's way (autocast over the fp32 masters) except the fp32 and bf16-weight baselines
        self.score_model = bf16_model if kind == "bf16" else master
        self.score_autocast = kind in ("A", "B")

    def rollout(self, vocab, prompts, uncond, config, seeds, grid):
        start = time.perf_counter()
        if self.refresh:
            cast_copy(*self.refresh)
        refreshed = time.perf_counter()
        with autocast(self.sample_autocast):  # ONE region around the whole rollout: weights are cast once
            out = sample_images(
                self.sample_model, vocab, prompts, uncond, config, seeds, pad_id=PAD, grid=grid, fp32_head=self.fp32_head
            )
        end = time.perf_counter()
        return out, end - start, refreshed - start

    def score(self, vocab, prompts, uncond, token_ids, config, chunk):
        start = time.perf_counter()
        with torch.no_grad(), autocast(self.score_autocast):
            logps, _ = guided_token_logprobs(
                self.score_model, vocab, prompts, [uncond] * len(prompts), token_ids, config,
                pad_id=PAD, chunk_size=chunk, fp32_head=self.fp32_head,
            )
        return logps.float(), time.perf_counter() - start


def step_times(master: nn.Module, bf16_model: nn.Module, rows: int, contexts: list[int], steps: int = 6) -> list[dict]:
    """Milliseconds per decode step of the body and of the visual head, at several KV-cache lengths.

    Explains the rollout ratios: whether bf16 matmuls beat fp32 on this CPU, what a per-step cast of
    the head slice costs (under autocast the slice is a view, which autocast does not cache), and what
    the KV cache costs at a 64x64 grid. A context above the 30-token prefill is made by replacing each
    layer's cached keys/values with random tensors of the dtypes that compute mode produced (under
    autocast K is float32, because RoPE multiplies by float32 cos/sin, and V is bf16), so no
    4k-token prefill is needed; the decode then runs on the sampler's ``DynamicCache`` as it does.
    """
    from transformers import DynamicCache

    from policies.heads import visual_logits

    vocab = VisualVocab(text_vocab_size=TEXT_VOCAB, codebook_size=CODEBOOK, grid=(1, 1))
    ids = torch.randint(1_000, 150_000, (rows, 30), generator=torch.Generator().manual_seed(2))
    out = []
    cases = [("fp32", master, False, False), ("bf16 weights", bf16_model, False, False),
             ("autocast over fp32", master, True, False), ("autocast over fp32, fp32 head", master, True, True),
             ("bf16 weights, fp32 head", bf16_model, False, True)]
    for context in contexts:
        for name, model, ac, fp32_head in cases:
            if context > ids.size(1) and fp32_head:
                continue  # the head does not depend on the context
            with torch.no_grad(), autocast(ac):
                cache = DynamicCache()
                model.model(input_ids=ids, cache=cache, use_cache=True)
                if context > ids.size(1):
                    gen = torch.Generator().manual_seed(3)
                    for layer in cache.layers:
                        k, v = layer.keys, layer.values
                        shape = (*k.shape[:2], context, k.shape[-1])
                        layer.keys = torch.randn(shape, generator=gen).to(k.dtype)
                        layer.values = torch.randn(shape, generator=gen).to(v.dtype)
                kv_bytes = sum(la.keys.nbytes + la.values.nbytes for la in cache.layers)
                kv_dtypes = f"K {str(cache.layers[0].keys.dtype)[6:]}, V {str(cache.layers[0].values.dtype)[6:]}"
                weight, bias = HeadWeights(model, vocab).visual_rows()
                if fp32_head:
                    weight = weight.float()  # as sample_images does once per call
                token = ids[:, :1]
                for _ in range(2):  # warm-up
                    h = model.model(input_ids=token, cache=cache, use_cache=True).last_hidden_state[:, -1]
                    visual_logits(h, weight, bias, fp32=fp32_head)
                t = time.perf_counter()
                for _ in range(steps):
                    h = model.model(input_ids=token, cache=cache, use_cache=True).last_hidden_state[:, -1]
                body = (time.perf_counter() - t) / steps
                t = time.perf_counter()
                for _ in range(steps):
                    visual_logits(h, weight, bias, fp32=fp32_head)
                head = (time.perf_counter() - t) / steps
                del cache
            out.append({"compute": name, "context": context if context > ids.size(1) else ids.size(1), "rows": rows,
                        "kv_dtypes": kv_dtypes, "kv_mib": kv_bytes / MiB, "body_ms": 1000 * body, "head_ms": 1000 * head})
            print(f"# step: {name} @ {out[-1]['context']}: body {1000 * body:.0f} ms, head {1000 * head:.0f} ms, "
                  f"KV {kv_bytes / MiB:.0f} MiB ({kv_dtypes})", flush=True)
    return out


def run_steps(args) -> list[dict]:
    master = build_model(args.size, layers=args.layers, init_std=args.init_std)
    bf16_model = build_model(args.size, layers=args.layers, init_std=args.init_std).to(torch.bfloat16)
    contexts = [int(c) for c in args.step_contexts.split(",")]
    return step_times(master, bf16_model, rows=2 * args.prompts * args.samples, contexts=contexts)


def steps_markdown(rows: list[dict]) -> str:
    lines = ["| decode step | KV length | KV cache dtypes | KV MiB | body (ms) | visual head (ms) | step × fp32 time |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    base = {}
    for r in rows:
        if r["compute"] == "fp32":
            base[r["context"]] = r["body_ms"] + r["head_ms"]
    for r in rows:
        ratio = (r["body_ms"] + r["head_ms"]) / base[r["context"]] if r["context"] in base else float("nan")
        lines.append(f"| {r['compute']} | {r['context']:,} | {r['kv_dtypes']} | {r['kv_mib']:.0f} | {r['body_ms']:.0f} | "
                     f"{r['head_ms']:.0f} | {ratio:.2f} |")
    return "\n".join(lines)


def gap_stats(sampler: torch.Tensor, trainer: torch.Tensor) -> dict:
    diff = sampler.double() - trainer.double()
    seq_log_ratio = (trainer.double() - sampler.double()).sum(dim=1)  # log pi_trainer(y)/pi_sampler(y)
    return {
        "gap_mean": diff.abs().mean().item(),
        "gap_max": diff.abs().max().item(),
        "frac_gt_0.1": (diff.abs() > 0.1).double().mean().item(),
        "signed_mean": diff.mean().item(),
        "seq_log_ratio": [round(v, 4) for v in seq_log_ratio.tolist()],
        "seq_log_ratio_absmax": seq_log_ratio.abs().max().item(),
    }


def run_gap(args) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    master = build_model(args.size, layers=args.layers, init_std=args.init_std)
    bf16_model = build_model(args.size, layers=args.layers, init_std=args.init_std).to(torch.bfloat16)  # same init, cast
    copy_bf16 = bf16_model  # B's copy: the same values; B re-copies from the masters before every rollout
    print(f"# built models in {time.perf_counter() - t0:.0f} s", flush=True)
    params = sum(p.numel() for p in master.parameters())
    grid = (args.grid, args.grid)
    vocab = VisualVocab(text_vocab_size=TEXT_VOCAB, codebook_size=CODEBOOK, grid=grid)
    config = SamplingConfig(cfg_scale=args.cfg_scale, temperature=args.temperature)
    prompts, uncond = make_prompts(args.prompts, vocab, samples=args.samples, lengths=(10, 23, 40))
    seeds = [1000 + i for i in range(len(prompts))]
    names = [o.strip() for o in args.options.split(",") if o.strip()]
    options = [Option(n, master, copy_bf16, bf16_model) for n in names]

    # Warm-up (kernels, thread pools, allocator) on a 2x2 grid.
    for opt in options:
        out, _, _ = opt.rollout(vocab, prompts, uncond, config, seeds, (2, 2))
        opt.score(vocab, prompts, uncond, out.token_ids, config, args.chunk)

    # One timed refresh of the bf16 copy from the masters, for reference (also inside B's rollout times).
    t = time.perf_counter()
    cast_copy(master, copy_bf16)
    refresh_once = time.perf_counter() - t

    rollout_times = {o.name: [] for o in options}
    refresh_times = {o.name: [] for o in options}
    results: dict[str, dict] = {}
    for rep in range(args.repeats):  # interleaved: machine load drifts over all options alike
        for opt in options:
            out, seconds, refresh = opt.rollout(vocab, prompts, uncond, config, seeds, grid)
            rollout_times[opt.name].append(seconds)
            refresh_times[opt.name].append(refresh)
            print(f"# rep {rep} {opt.name}: rollout {seconds:.1f} s (refresh {refresh:.2f} s)", flush=True)
            if rep == 0:
                results[opt.name] = {"rollout": out}

    ref_tokens = results["fp32"]["rollout"].token_ids if "fp32" in results else None
    rows = []
    for opt in options:
        out = results[opt.name]["rollout"]
        logps, score_s = opt.score(vocab, prompts, uncond, out.token_ids, config, args.chunk)
        row = {
            "option": opt.name,
            "sampler": ("bf16 copy" if opt.kind == "B" else "bf16 weights" if opt.kind == "bf16"
                        else "autocast over fp32" if opt.kind == "A" else "fp32"),
            "scorer": ("bf16 weights" if opt.kind == "bf16" else "autocast over fp32" if opt.score_autocast else "fp32"),
            "fp32_head": opt.fp32_head,
            **gap_stats(out.logprobs, logps),
            "sampler_entropy_mean": out.entropy.mean().item(),
            "rollout_s_best": min(rollout_times[opt.name]),
            "rollout_s_median": statistics.median(rollout_times[opt.name]),
            "refresh_s": min(refresh_times[opt.name]),
            "score_s": score_s,
        }
        if ref_tokens is not None:
            row["same_tokens_as_fp32"] = (out.token_ids == ref_tokens).double().mean().item()
        rows.append(row)
        print(f"# {opt.name}: gap mean {row['gap_mean']:.3g} max {row['gap_max']:.3g} "
              f"(score {score_s:.1f} s)", flush=True)
    if "fp32" in results:
        base = next(r for r in rows if r["option"] == "fp32")
        for r in rows:
            r["rollout_vs_fp32"] = r["rollout_s_best"] / base["rollout_s_best"]
            r["score_vs_fp32"] = r["score_s"] / base["score_s"]
    env = {
        "params": params, "layers": master.config.num_hidden_layers, "hidden": master.config.hidden_size,
        "grid": list(grid), "cfg_scale": args.cfg_scale, "temperature": args.temperature,
        "prompts": args.prompts, "samples_per_prompt": args.samples,
        "prompt_lengths": sorted({len(p) for p in prompts}), "tokens_scored": len(prompts) * grid[0] * grid[1],
        "chunk": args.chunk, "repeats": args.repeats, "bf16_copy_refresh_s": refresh_once,
    }
    del master, bf16_model, copy_bf16
    return env, rows


def gap_markdown(rows: list[dict]) -> str:
    lines = [
        "| option | sampler | scorer | fp32 head | gap mean | gap max | frac > 0.1 | Σ log-ratio per seq (max abs) | "
        "same tokens as fp32 | rollout × fp32 time |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['option']} | {r['sampler']} | {r['scorer']} | {'yes' if r['fp32_head'] else 'no'} | "
            f"{r['gap_mean']:.2g} | {r['gap_max']:.2g} | {r['frac_gt_0.1']:.3f} | {r['seq_log_ratio_absmax']:.3g} | "
            f"{r.get('same_tokens_as_fp32', float('nan')):.2f} | {r.get('rollout_vs_fp32', float('nan')):.2f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- part 3a: head memory


class _HeadOnly(nn.Module):
    """Just a tied-size LM head (215,672 x hidden), so HeadWeights slices it as it slices a real policy's."""

    def __init__(self, hidden: int, rows: int = TEXT_VOCAB + CODEBOOK):
        super().__init__()
        self.lm_head = nn.Linear(hidden, rows, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def head_memory_worker(
    chunk: int, positions: int, batch: int, mode: str, hidden_size: int, cfg_scale: float, visual_only: bool = False
) -> dict:
    """Peak RSS above the setup of the head part of guided scoring, forward + backward, in this process.

    Mirrors ``guided_token_logprobs`` after the decoder: the post-norm hidden states (float32, as
    under autocast over fp32 weights) of cond and uncond rows, the visual-slice head called as a
    module, guidance + log-softmaxes per chunk with recomputation in backward. The head's gradient
    buffer (fp32, all 215,672 rows, as for the tied embedding) is allocated before the measurement:
    it belongs to the model's grads, counted in the training-memory table. ``visual_only`` gives the
    head one text row instead of 151,672 (an attribution run: what the tied rows cost in backward).
    """
    torch.manual_seed(0)
    text_rows = 1 if visual_only else TEXT_VOCAB
    vocab = VisualVocab(text_vocab_size=text_rows, codebook_size=CODEBOOK, grid=(1, positions))
    config = SamplingConfig(cfg_scale=cfg_scale)
    model = _HeadOnly(hidden_size, text_rows + CODEBOOK)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.02)
    head = HeadWeights(model, vocab, fp32=mode == "autocast+fp32head")
    use_autocast = mode.startswith("autocast")

    def run(length: int, chunk_size: int) -> None:
        # [2B, length + 1, H]: the decoder output; the completion is predicted by positions [-length-1, -1).
        hidden_all = torch.randn(2 * batch, length + 1, hidden_size).requires_grad_()
        codes = torch.randint(0, CODEBOOK, (batch, length))

        def chunk_scores(h_cond, h_uncond, y):
            cond = head.visual_logits(h_cond)
            uncond = head.visual_logits(h_uncond)
            logp = sampling_logprobs(cond, uncond, config)
            return logp.gather(-1, y.unsqueeze(-1)).squeeze(-1), entropy_from_logprobs(logp)

        def scores(hidden):
            hidden = hidden[:, :-1]
            # Entropies are dropped before backward, as TRL does (it logs them with .item() and, with no entropy
            # bonus, leaves them out of the loss). Kept alive, each chunk's recomputed entropy tensors would
            # stay in memory until they die: the peak would grow with the number of chunks.
            return map_position_chunks(chunk_scores, [hidden[:batch], hidden[batch:], codes], chunk_size)[0]

        with autocast(use_autocast), replaced_head(model, scores):  # computed by the head module, as in scoring
            logps = model.lm_head(hidden_all)
        logps.sum().backward()

    run(2, 1)  # allocates the head's gradient buffer and warms up kernels, at negligible size
    malloc_trim()
    base = rss()
    peak_reset = _reset_peak_rss()
    t = time.perf_counter()
    run(positions, chunk)
    seconds = time.perf_counter() - t
    peak = _peak_rss() if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"chunk": chunk, "positions": positions, "batch": batch, "mode": mode, "peak_reset": peak_reset,
            "head_rows": text_rows + CODEBOOK,
            "peak_over_setup_bytes": peak - base, "setup_rss_bytes": base, "seconds": seconds}


def parse_mem_settings(spec: str, positions: int) -> list[tuple[int, int, str]]:
    """``mode:chunk[:completions[:visual]],...`` -> ``[(chunk, completions, mode, visual_only)]``.

    chunk 0 = unchunked; a 4th field ``visual`` gives the head only the visual rows (+1), not 215,672.
    """
    settings = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        mode, chunk, *rest = item.split(":")
        if mode not in HEAD_MODES:
            raise ValueError(f"unknown head mode {mode!r} in {item!r}; choose from {', '.join(HEAD_MODES)}")
        settings.append((int(chunk) or positions, int(rest[0]) if rest else 1, mode, rest[1:2] == ["visual"]))
    return settings


def run_head_memory(args) -> list[dict]:
    settings = parse_mem_settings(args.mem_settings, args.mem_positions)
    rows = []
    for chunk, batch, mode, visual_only in settings:
        cmd = [sys.executable, __file__, "--_head_worker", json.dumps(
            {"chunk": chunk, "positions": args.mem_positions, "batch": batch, "mode": mode,
             "hidden_size": SIZES[args.size]["hidden_size"], "cfg_scale": args.cfg_scale, "visual_only": visual_only})]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        # Every allocation above 64 KiB is its own mmap, returned to the OS when freed: RSS then follows
        # the live tensors instead of glibc's heap (whose reuse and fragmentation would blur the peak).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"# head memory: chunk {chunk} batch {batch} {mode} rows {row['head_rows']}: "
              f"{row['peak_over_setup_bytes'] / MiB:.0f} MiB "
              f"({row['seconds']:.1f} s)", flush=True)
    return rows


def head_memory_markdown(rows: list[dict]) -> str:
    lines = [
        "| head numerics | chunk | completions | head rows | peak RSS over setup (GiB) | time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        chunk = f"unchunked ({r['positions']:,})" if r["chunk"] == r["positions"] else str(r["chunk"])
        lines.append(
            f"| {r['mode']} | {chunk} | {r['batch']} | {r['head_rows']:,} | {r['peak_over_setup_bytes'] / GiB:.2f} | "
            f"{r['seconds']:.0f} |"
        )
    # Per completion vs per call: runs that differ only in the number of completions.
    key = lambda r: (r["mode"], r["chunk"], r["head_rows"])  # noqa: E731
    by_key: dict = {}
    for r in rows:
        by_key.setdefault(key(r), {})[r["batch"]] = r["peak_over_setup_bytes"]
    for (mode, chunk, head_rows), peaks in by_key.items():
        sizes = sorted(peaks)
        for lo, hi in zip(sizes, sizes[1:]):
            slope = (peaks[hi] - peaks[lo]) / (hi - lo)
            lines.append("")
            lines.append(
                f"{mode}, chunk {chunk}, {head_rows:,} head rows, {lo} → {hi} completions: each added completion "
                f"adds {slope / GiB:.2f} GiB ({slope / MiB / chunk:.2f} MiB per chunk position)."
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- part 3b: training memory


def count_params(size: str) -> dict:
    """Parameter counts of the real config on the meta device (no memory, no init)."""
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(qwen2_config(size))
    params = {n: p for n, p in model.named_parameters()}  # tied: the head is the embedding, counted once
    total = sum(p.numel() for p in params.values())
    embedding = model.get_input_embeddings().weight.numel()
    # What autocast casts to bf16 (and caches, as leaf params that require grad): the inputs of linear ops.
    linear = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                 for m in model.model.modules() if isinstance(m, nn.Linear))
    return {"size": size, "params": total, "embedding": embedding, "body_linear": linear,
            "norms": total - embedding - linear, "visual_rows": CODEBOOK * model.config.hidden_size}


def measure_autocast_cache(layers: int | None, init_std: float) -> dict:
    """RSS added by a 5-token forward under bf16 autocast over fp32 weights, measured inside the region.

    Two paths, both through the causal LM's own forward (:func:`policies.heads.head_forward`) whose head
    multiplies only the 64,000 visual rows: the sampler's (last position, ``no_grad``) and the scorer's (every
    position, grad on). The visual rows are a slice (a view), which autocast casts per call but never caches.
    """
    model = build_model("0.5b", layers=layers, init_std=init_std)
    vocab = VisualVocab(text_vocab_size=TEXT_VOCAB, codebook_size=CODEBOOK, grid=(1, 1))
    head = HeadWeights(model, vocab)
    ids = torch.tensor([[T2I, 5, 6, 7, SOI]])
    mask = torch.ones_like(ids)
    out: dict = {"layers": model.config.num_hidden_layers}
    for path in ("sampler (head_forward, no_grad)", "scorer (head_forward, grad)"):
        malloc_trim()
        base = rss()
        with autocast(True):
            if path.startswith("sampler"):
                with torch.no_grad():
                    logits = head_forward(model, lambda h: head.visual_logits(h[:, -1]), ids, mask, keep=1)
            else:
                logits = head_forward(model, head.visual_logits, ids, mask)
            del logits
            malloc_trim()
            out[path] = rss() - base
    return out


def training_memory_markdown(counts: list[dict], cache: dict | None) -> str:
    lines = [
        "| model | params | fp32 weights | fp32 grads | AdamW m+v (fp32) | sum | bf16 autocast cache (body linears) | bf16 rollout copy (option B) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in counts:
        p = c["params"]
        # The tied head is never cast whole: its visual rows are a view, which autocast casts per call but never caches.
        cache_b = 2 * c["body_linear"]
        lines.append(
            f"| {c['size']} | {p / 1e6:.1f} M | {4 * p / GiB:.2f} GiB | {4 * p / GiB:.2f} GiB | {8 * p / GiB:.2f} GiB | "
            f"{16 * p / GiB:.2f} GiB | {cache_b / GiB:.2f} GiB | "
            f"{2 * p / GiB:.2f} GiB |"
        )
    if cache:
        lines.append("")
        layers = cache.pop("layers", None)
        lines.append(f"Measured autocast cast cache at 0.5B dims, {layers} layers (RSS added by a 5-token forward inside "
                     "an autocast region; sampler path under no_grad as the sampler runs, scorer path with grad on): "
                     + "; ".join(f"{k}: {v / GiB:.2f} GiB" for k, v in cache.items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), platform.processor())
        flags = sorted({f for f in ("avx512_bf16", "amx_bf16", "avx512f", "amx_tile") if f" {f} " in out.replace("\n", " ")})
        return f"{name}, {torch.get_num_threads()} threads, flags: {', '.join(flags) or 'no bf16 flags'}"
    except (OSError, StopIteration):
        return platform.processor()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="gap,steps,head_memory,training_memory", help="comma-separated subset")
    p.add_argument("--size", choices=GAP_SIZES, default="0.5b", help="dims of the gap model (default Qwen2.5-0.5B)")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers (default: the real 24)")
    p.add_argument("--grid", type=int, default=16, help="side of the sampled token grid")
    p.add_argument("--prompts", type=int, default=2, help="distinct prompts (different lengths, left-padded)")
    p.add_argument("--samples", type=int, default=2, help="samples per prompt (different seeds)")
    p.add_argument("--cfg_scale", type=float, default=6.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--init_std", type=float, default=0.02)
    p.add_argument("--chunk", type=int, default=256, help="scoring chunk for the gap part")
    p.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated subset of {', '.join(OPTIONS)}")
    p.add_argument("--repeats", type=int, default=1, help="timed rollouts per option (interleaved)")
    p.add_argument("--step_contexts", default="0,4126",
                   help="KV lengths for the decode-step timings (0 = the 30-token prefill; 4126 = a 64x64 grid + prompt)")
    p.add_argument("--mem_positions", type=int, default=4096, help="completion positions for the head-memory part")
    p.add_argument(
        "--mem_settings",
        default="autocast:128,autocast:128:2,autocast:256,autocast:256:2,autocast:512,autocast:512:2,autocast:512:4,"
        "autocast:0,autocast+fp32head:512,autocast+fp32head:0,autocast:512:1:visual",
        help="head-memory runs, one subprocess each: mode:chunk[:completions] with mode in "
        f"{', '.join(HEAD_MODES)} and chunk 0 = unchunked",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared machine)")
    p.add_argument("--quick", action="store_true",
                   help="a ~2-minute smoke run: 4 layers, 8x8 grid, 1,024 head-memory positions, two memory settings")
    p.add_argument("--json", help="also write everything to this JSON file")
    p.add_argument("--_head_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.layers, args.grid, args.mem_positions = args.layers or 4, 8, 1024
        args.mem_settings, args.step_contexts = "autocast:256,autocast:256:2", "0,1054"
    if args._head_worker:
        print(json.dumps(head_memory_worker(**json.loads(args._head_worker))))
        return 0
    unknown = {o.strip() for o in args.options.split(",")} - set(OPTIONS)
    if unknown:
        p.error(f"unknown options {sorted(unknown)}; choose from {', '.join(OPTIONS)}")

    env = {
        "date": _dt.datetime.now().isoformat(timespec="minutes"), "cpu": cpu_name(), "torch": torch.__version__,
        "command": "python bench/numerics.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(f"# numerics benchmark: {json.dumps(env)}", flush=True)
    parts = {x.strip() for x in args.parts.split(",")}
    report: dict = {"env": env}
    if "gap" in parts:
        gap_env, rows = run_gap(args)
        report["gap"] = {"env": gap_env, "rows": rows}
        print(f"# gap setup: {json.dumps(gap_env)}")
        print(gap_markdown(rows), flush=True)
    if "steps" in parts:
        steps = run_steps(args)
        report["steps"] = steps
        print(steps_markdown(steps), flush=True)
    if "head_memory" in parts:
        rows = run_head_memory(args)
        report["head_memory"] = rows
        print(head_memory_markdown(rows), flush=True)
    if "training_memory" in parts:
        counts = [count_params(s) for s in ("0.5b", "1.5b")]
        cache = measure_autocast_cache(args.layers, args.init_std)
        report["training_memory"] = {"counts": counts, "autocast_cache_measured_0.5b": cache}
        print(training_memory_markdown(counts, dict(cache)), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
