"""Classifier-free guidance and the logit processing that defines the sampled distribution.

One implementation serves the rollout sampler and the GRPO trainer's guided log-probs, so the
trainer scores exactly the distribution the sampler drew from.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)
_warned_scales: set[float] = set()


@dataclass(frozen=True)
class SamplingConfig:
    """How image tokens are drawn.

    SimpleAR's inference defaults are ``cfg_scale=6.0, temperature=1.0``, top-k over the whole
    codebook and ``top_p=1.0``. ``top_k=0`` means no top-k truncation.
    """

    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(
                f"cfg_scale must be a finite number >= 0 (got {self.cfg_scale}): 1 samples the conditional "
                "distribution, > 1 strengthens guidance (SimpleAR uses 6.0), 0 samples the unconditional one"
            )
        if self.cfg_scale < 1 and self.cfg_scale not in _warned_scales:
            _warned_scales.add(self.cfg_scale)
            logger.warning(
                "cfg_scale=%g < 1 moves samples toward the unconditional distribution (0 = fully unconditional); "
                "guidance strengthens the prompt only above 1", self.cfg_scale,
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature}); greedy image decoding is not supported")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def uses_cfg(self) -> bool:
        """Whether the unconditional branch is needed at all (``cfg_scale == 1`` skips it)."""
        return self.cfg_scale != 1.0

    def truncates(self, codebook_size: int) -> bool:
        """Whether top-k or top-p removes any part of the codebook."""
        return (0 < self.top_k < codebook_size) or self.top_p < 1.0


def guide(cond_logits: torch.Tensor, uncond_logits: torch.Tensor | None, cfg_scale: float) -> torch.Tensor:
    """``log_softmax(u) + s * (log_softmax(c) - log_softmax(u))`` in float32.

    With ``cfg_scale == 1`` (or no unconditional logits) this is ``log_softmax(c)``. The result is
    unnormalised log-weights; :func:`process` normalises them after temperature and truncation.
    """
    cond = F.log_softmax(cond_logits.float(), dim=-1)
    if uncond_logits is None or cfg_scale == 1.0:
        return cond
    uncond = F.log_softmax(uncond_logits.float(), dim=-1)
    return uncond + cfg_scale * (cond - uncond)


def process(guided: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p; returns normalised log-probs (``-inf`` where removed)."""
    logits = guided / config.temperature
    vocab = logits.size(-1)
    if 0 < config.top_k < vocab:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p (the first token always stays).
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return F.log_softmax(logits, dim=-1)


def sampling_logprobs(
    cond_logits: torch.Tensor, uncond_logits: torch.Tensor | None, config: SamplingConfig
) -> torch.Tensor:
    """Log-probs of the distribution actually sampled from: guidance, temperature, top-k, top-p."""
    return process(guide(cond_logits, uncond_logits, config.cfg_scale), config)


def entropy_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each row of a log-prob tensor (``-inf`` entries contribute 0)."""
    probs = logprobs.exp()
    return -(probs * logprobs.masked_fill(probs == 0, 0.0)).sum(dim=-1)


def sample_from_logprobs(logprobs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: one pre-drawn uniform in ``[0,1)`` per row picks one index per row.

    Pre-drawn per-row uniforms make a row's sample depend only on its own seed, never on which
    other rows share the batch. A zero-probability index can never be returned.
    """
    probs = logprobs.exp()
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
    index = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # Rounding can push the target onto the total mass; fall back to the last possible index.
    last_possible = probs.size(-1) - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(index, last_possible)
