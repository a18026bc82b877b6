"""Next-token cross-entropy of a policy, with visual targets scored over the visual slice of the head.

Visual targets never need the ~151k text rows of the head: their logits are taken over the
``codebook_size`` visual rows only, chunked over positions and recomputed in backward
(:func:`policies.scoring.visual_cross_entropy`), so a 4,608-token sequence at a 215k vocabulary
never materialises full-vocabulary fp32 logits. Text targets (only with ``loss_on_text``) are few
and get full-vocabulary logits at their positions only. Both sums are computed inside the model's
own forward (:func:`policies.heads.head_forward`), as sharding engines require.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from policies.heads import HeadWeights, head_forward
from policies.scoring import DEFAULT_CHUNK, visual_cross_entropy
from policies.vocab import VisualVocab


@dataclass
class NLLSums:
    """Summed negative log-likelihoods and target counts of one batch (scalars)."""

    visual: torch.Tensor
    visual_count: torch.Tensor
    text: torch.Tensor
    text_count: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.visual + self.text

    @property
    def count(self) -> torch.Tensor:
        return self.visual_count + self.text_count


def next_token_nll_sums(
    model: nn.Module,
    vocab: VisualVocab,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
) -> NLLSums:
    """Sums of ``-log p(labels[:, t] | tokens < t)`` over visual and text targets (``-100`` is ignored).

    ``labels`` are aligned with ``input_ids`` (the model shifts nothing): the hidden state at
    ``t - 1`` predicts ``labels[:, t]``. Labels ``>= vocab.offset`` are visual targets.
    """
    targets = labels[:, 1:]
    is_visual = targets >= vocab.offset
    is_text = (targets >= 0) & ~is_visual
    columns = is_visual.any(dim=0).nonzero().flatten()
    any_text = bool(is_text.any())
    head = HeadWeights(model, vocab)

    def sums(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden[:, :-1]
        visual_sum = text_sum = hidden.new_zeros((), dtype=torch.float32)
        if columns.numel():
            # Only the columns holding visual targets (the image suffix, with left padding) are scored.
            lo, hi = int(columns[0]), int(columns[-1]) + 1
            codes = torch.where(is_visual, targets - vocab.offset, torch.full_like(targets, -100))[:, lo:hi]
            visual_sum = visual_cross_entropy(hidden[:, lo:hi], codes, head.visual_logits, chunk_size).sum()
        if any_text:
            text_sum = F.cross_entropy(head.full_logits(hidden[is_text]), targets[is_text], reduction="sum")
        return torch.stack([visual_sum, text_sum])

    visual_sum, text_sum = head_forward(model, sums, input_ids, attention_mask).unbind()
    return NLLSums(visual_sum, is_visual.sum(), text_sum, is_text.sum())
