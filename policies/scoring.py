"""Differentiable scoring of image tokens over the visual slice of the head, chunked over positions.

A 4,096-token completion at a 64,000-code slice is 1 GB of fp32 logits per row; chunks are
recomputed in the backward pass (activation checkpointing) so only hidden states are kept.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .guidance import SamplingConfig, entropy_from_logprobs, sampling_logprobs
from .families import visual_head
from .heads import head_forward
from .rollout import left_pad
from .vocab import VisualVocab

DEFAULT_CHUNK = 256


def map_position_chunks(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    tensors: Sequence[torch.Tensor],
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, ...]:
    """Apply ``fn`` to slices ``[:, i:i+chunk]`` of every tensor and concatenate its outputs on dim 1.

    When gradients are on, each chunk is checkpointed so its logits are recomputed in backward
    instead of being stored.
    """
    length = tensors[0].size(1)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    pieces: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, length, chunk_size):
        sl = [t[:, start : start + chunk_size] for t in tensors]
        pieces.append(checkpoint(fn, *sl, use_reentrant=False) if grad else fn(*sl))
    return tuple(torch.cat(parts, dim=1) for parts in zip(*pieces))


def visual_cross_entropy(
    hidden: torch.Tensor,
    target_codes: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Per-position negative log-likelihood ``[B, T]`` of ``target_codes`` under the visual slice.

    ``hidden[:, t]`` predicts ``target_codes[:, t]``; positions with target ``-100`` get 0.
    ``head`` maps hidden states to visual logits (e.g. :meth:`policies.heads.HeadWeights.visual_logits`,
    called inside :func:`policies.heads.head_forward`).
    """

    def chunk_nll(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
        logp = F.log_softmax(head(h), dim=-1)
        nll = -logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (nll.masked_fill(y < 0, 0.0),)

    return map_position_chunks(chunk_nll, [hidden, target_codes], chunk_size)[0]


def _prompt_plus_completion(
    prompts: list[list[int]], completion: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = left_pad(prompts, pad_id, completion.device)
    ids = torch.cat([ids, completion], dim=1)
    mask = torch.cat([mask, torch.ones_like(completion)], dim=1)
    return ids, mask


def guided_token_logprobs(
    model: nn.Module,
    vocab: VisualVocab,
    cond_prompts: list[list[int]],
    uncond_prompts: list[list[int]] | None,
    completion_ids: torch.Tensor,
    config: SamplingConfig,
    pad_id: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    fp32_head: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies ``[B, T]`` of completions under the distribution the sampler used.

    Cond and uncond rows are stacked into ONE forward (two forwards before one backward would
    trip DDP), with explicit position ids, and only the family's visual head is evaluated. Forced
    row-end tokens (``vocab.row_end_id``) get log-prob and entropy 0.
    With ``cfg_scale == 1`` the uncond rows are skipped. ``fp32_head`` computes the visual head in
    float32 (pass the same value the sampler used).
    """
    batch, length = completion_ids.shape
    use_cfg = config.uses_cfg
    if use_cfg and (uncond_prompts is None or len(uncond_prompts) != batch):
        raise ValueError(f"guided scoring with cfg_scale={config.cfg_scale} needs one uncond prompt per row")
    rows = list(cond_prompts) + (list(uncond_prompts) if use_cfg else [])
    completion = torch.cat([completion_ids, completion_ids]) if use_cfg else completion_ids
    ids, mask = _prompt_plus_completion(rows, completion, pad_id)
    head = visual_head(model, vocab, fp32=fp32_head)
    forced = vocab.forced(completion_ids)  # row-end tokens: fed, never drawn, so log-prob 0 and entropy 0
    codes = vocab.tokens_to_codes(completion_ids.masked_fill(forced, vocab.offset))

    def chunk_scores(h_cond: torch.Tensor, h_uncond: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond = head.visual_logits(h_cond)
        uncond = head.visual_logits(h_uncond) if use_cfg else None
        logp = sampling_logprobs(cond, uncond, config)
        return logp.gather(-1, y.unsqueeze(-1)).squeeze(-1), entropy_from_logprobs(logp)

    def scores(hidden: torch.Tensor) -> torch.Tensor:
        # hidden[:, j] predicts token j + 1: the completion is predicted by the `length` positions before its end.
        hidden = hidden[:, :-1]
        h_cond, h_uncond = (hidden[:batch], hidden[batch:]) if use_cfg else (hidden, hidden)
        return torch.stack(map_position_chunks(chunk_scores, [h_cond, h_uncond, codes], chunk_size), dim=-1)

    out = head_forward(model, scores, ids, mask, keep=length + 1).masked_fill(forced[..., None], 0.0)
    return out[..., 0], out[..., 1]
