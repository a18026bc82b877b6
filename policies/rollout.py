"""What both rollout backends share: the :class:`Rollout` they return, prompt padding, per-row uniforms, the
per-token draw, and the compile counter of the compiled backend.

:mod:`policies.sampler` (the eager loop, and :func:`~policies.sampler.sample_images`, which picks a
backend) and :mod:`policies.static_sampler` (the compiled backend) both import this module; neither
imports the other for these, so the eager and compiled draws are one piece of code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .guidance import SamplingConfig, entropy_from_logprobs, sample_from_logprobs, sampling_logprobs
from .heads import visual_logits


@dataclass
class Rollout:
    """What the sampler returns, one row per sampled image."""

    codes: torch.Tensor  #: long ``[N, h, w]`` visual codes
    token_ids: torch.Tensor  #: long ``[N, L]`` completion ids (offset + code; forced row ends where the layout has them)
    logprobs: torch.Tensor  #: float32 ``[N, L]`` log-prob of each token under the sampled distribution (0 if forced)
    entropy: torch.Tensor  #: float32 ``[N, L]`` entropy of the sampled distribution at each step (0 if forced)


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device | str | None = None,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(input_ids, attention_mask)`` of ``width`` columns (default: the longest row)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must have at least one token")
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def row_uniforms(seeds: list[int], steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[N, steps]`` uniforms, row ``i`` drawn from a CPU generator seeded with ``seeds[i]``."""
    rows = [torch.rand(steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=torch.float32)


def draw_from_logits(
    logits: torch.Tensor, n: int, config: SamplingConfig, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token for ``n`` images from visual logits: ``(code, logprob, entropy)``, each ``[n]``.

    ``logits`` (float32) holds the ``n`` cond rows, then (with CFG) the ``n`` uncond rows;
    ``uniforms`` holds one pre-drawn uniform per image.
    """
    cond, uncond = (logits[:n], logits[n:]) if config.uses_cfg else (logits, None)
    lp = sampling_logprobs(cond, uncond, config)
    code = sample_from_logprobs(lp, uniforms)
    return code, lp.gather(-1, code[:, None]).squeeze(-1), entropy_from_logprobs(lp)


def draw(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    config: SamplingConfig,
    uniforms: torch.Tensor,
    fp32_head: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`draw_from_logits` from final hidden states and the visual head rows (the compiled step's form)."""
    return draw_from_logits(visual_logits(hidden, weight, bias, fp32=fp32_head), n, config, uniforms)


@dataclass
class CompileStats:
    """Compilations of the decode step in this process, and the wall time of the calls that compiled."""

    compiles: int = 0
    seconds: float = 0.0


COMPILE_STATS = CompileStats()
