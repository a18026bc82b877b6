"""The CFG rollout sampler: prompts in, image code grids and their log-probs out.

Cond and uncond rows run in ONE batched forward per step sharing one KV cache; logits are taken
only over the visual rows of the head; guidance is applied on log-softmaxes before temperature,
top-k and top-p; every row draws from its own seeded stream, so a row's sample does not depend on
which other rows share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache

from .guidance import (
    SamplingConfig,
    entropy_from_logprobs,
    sample_from_logprobs,
    sampling_logprobs,
)
from .heads import decoder_of, position_ids_from_mask, visual_head, visual_logits
from .vocab import VisualVocab


@dataclass
class Rollout:
    """What the sampler returns, one row per sampled image."""

    codes: torch.Tensor  #: long ``[N, h, w]`` visual codes
    token_ids: torch.Tensor  #: long ``[N, h*w]`` LM token ids (offset + code)
    logprobs: torch.Tensor  #: float32 ``[N, h*w]`` log-prob of each token under the sampled distribution
    entropy: torch.Tensor  #: float32 ``[N, h*w]`` entropy of the sampled distribution at each step


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(input_ids, attention_mask)``."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must have at least one token")
    width = max(len(r) for r in rows)
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


@torch.no_grad()
def sample_images(
    model: nn.Module,
    vocab: VisualVocab,
    prompt_ids: list[list[int]],
    uncond_ids: list[int] | None,
    config: SamplingConfig,
    seeds: list[int],
    pad_id: int = 0,
    grid: tuple[int, int] | None = None,
    progress: bool = False,
    fp32_head: bool = False,
) -> Rollout:
    """Sample one image per prompt row (repeat a prompt G times for G samples).

    Args:
        model: a Hugging Face causal LM (plain or PEFT-wrapped) whose vocabulary follows ``vocab``.
        prompt_ids: templated conditional prompts, one token list per output row.
        uncond_ids: the templated unconditional prompt, shared by all rows (needed when
            ``config.cfg_scale != 1``; ignored otherwise).
        seeds: one seed per row.
        grid: ``(h, w)`` to sample; defaults to ``vocab.grid``.
        fp32_head: compute the visual head in float32 even under bf16 weights or autocast (the
            float32 copy of its rows is made once per call).
    """
    n = len(prompt_ids)
    if len(seeds) != n:
        raise ValueError(f"need one seed per prompt row: got {len(seeds)} seeds for {n} rows")
    use_cfg = config.uses_cfg
    if use_cfg and not uncond_ids:
        raise ValueError(f"cfg_scale={config.cfg_scale} needs the unconditional prompt ids (uncond_ids)")
    h, w = grid or vocab.grid
    steps = h * w
    weight, bias = visual_head(model, vocab)
    if fp32_head:
        weight, bias = weight.float(), bias.float() if bias is not None else None
    decoder = decoder_of(model)
    device = weight.device

    rows = list(prompt_ids) + ([list(uncond_ids)] * n if use_cfg else [])
    input_ids, mask = left_pad(rows, pad_id, device)
    positions = position_ids_from_mask(mask)
    uniforms = row_uniforms(seeds, steps, device)
    cache = DynamicCache()

    codes = torch.empty((n, steps), dtype=torch.long, device=device)
    logprobs = torch.empty((n, steps), dtype=torch.float32, device=device)
    entropy = torch.empty((n, steps), dtype=torch.float32, device=device)

    hidden = decoder(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
    ).last_hidden_state[:, -1]
    next_pos = positions[:, -1:] + 1
    for t in tqdm(range(steps), desc="sampling tokens", disable=not progress, leave=False):
        logits = visual_logits(hidden, weight, bias, fp32=fp32_head)
        cond, uncond = (logits[:n], logits[n:]) if use_cfg else (logits, None)
        lp = sampling_logprobs(cond, uncond, config)
        code = sample_from_logprobs(lp, uniforms[:, t])
        codes[:, t] = code
        logprobs[:, t] = lp.gather(-1, code[:, None]).squeeze(-1)
        entropy[:, t] = entropy_from_logprobs(lp)
        if t == steps - 1:
            break
        token = (code + vocab.offset)[:, None]
        if use_cfg:
            token = torch.cat([token, token])  # the uncond row follows the image its cond row draws
        mask = torch.cat([mask, mask.new_ones((mask.size(0), 1))], dim=1)
        hidden = decoder(
            input_ids=token, attention_mask=mask, position_ids=next_pos, cache=cache, use_cache=True
        ).last_hidden_state[:, -1]
        next_pos = next_pos + 1

    return Rollout(
        codes=codes.view(n, h, w),
        token_ids=codes + vocab.offset,
        logprobs=logprobs,
        entropy=entropy,
    )
