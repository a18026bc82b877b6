"""Training sequences: ``<|t2i|>`` caption ``<|soi|>`` followed by the ``h*w`` visual tokens.

Prompt text comes from the policy's :class:`~policies.vocab.VisualVocab` (``format_cond`` /
``format_uncond``), the same strings the sampler uses, so training and CFG sampling agree. The
caption is truncated to fit ``model_max_length``; visual tokens never are.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch.utils.data import Dataset

from policies.rollout import left_pad
from policies.vocab import VisualVocab

IGNORE_INDEX = -100
CAPTION_MODES = ("short", "long", "mix")
#: Default room for the prompt (template + caption) when ``model_max_length`` is not given (SimpleAR's 512).
DEFAULT_PROMPT_TOKENS = 512

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def first_sentence(text: str) -> str:
    """The text up to and including its first sentence end (``.``, ``!`` or ``?`` before a space)."""
    text = text.strip()
    match = _SENTENCE_END.search(text)
    return text[: match.end()] if match else text


def pick_caption(row: Mapping[str, Any], mode: str, rng: random.Random) -> str:
    """The caption of a cache row for ``mode``: ``short``, ``long`` or ``mix`` (a fair coin per call).

    Short is ``short_caption``, else the first sentence of the caption; long is ``long_caption``,
    else ``caption``.
    """
    if mode not in CAPTION_MODES:
        raise ValueError(f"caption_mode must be one of {CAPTION_MODES}, got {mode!r}")
    if mode == "mix":
        mode = rng.choice(("short", "long"))
    caption, short, long = row.get("caption") or "", row.get("short_caption") or "", row.get("long_caption") or ""
    if mode == "short":
        return short or first_sentence(caption or long)
    return long or caption or short


@dataclass
class SequenceBuilder:
    """Turns cache rows into ``input_ids`` and ``labels``.

    Args:
        tokenizer: the policy's tokenizer (prompts are encoded with ``add_special_tokens=False``).
        vocab: the policy's visual layout, with the grid of the cache.
        model_max_length: prompt tokens + ``h*w`` visual tokens; the caption is cut to fit.
        caption_mode: ``short`` | ``long`` | ``mix``.
        p_drop_cond: probability of replacing the prompt by the unconditional one (for CFG).
        loss_on_text: also put the prompt tokens (after the first) in ``labels``.
    """

    tokenizer: Any
    vocab: VisualVocab
    model_max_length: int | None = None
    caption_mode: str = "mix"
    p_drop_cond: float = 0.1
    loss_on_text: bool = False
    uncond_ids: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.caption_mode not in CAPTION_MODES:
            raise ValueError(f"caption_mode must be one of {CAPTION_MODES}, got {self.caption_mode!r}")
        if not 0.0 <= self.p_drop_cond <= 1.0:
            raise ValueError(f"p_drop_cond must be in [0, 1], got {self.p_drop_cond}")
        if self.model_max_length is None:
            self.model_max_length = self.vocab.num_image_tokens + DEFAULT_PROMPT_TOKENS
        self.uncond_ids = self._encode(self.vocab.format_uncond())
        shortest = max(len(self._encode(self.vocab.format_cond(""))), len(self.uncond_ids))
        if self.prompt_budget < shortest:
            raise ValueError(
                f"model_max_length {self.model_max_length} leaves {self.prompt_budget} prompt tokens after the "
                f"{self.vocab.num_image_tokens} visual tokens of grid {self.vocab.grid}, but the prompt template alone "
                f"needs {shortest}; raise model_max_length to at least {self.vocab.num_image_tokens + shortest}"
            )

    @property
    def prompt_budget(self) -> int:
        """Most prompt tokens a sequence may hold."""
        return self.model_max_length - self.vocab.num_image_tokens

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, caption: str) -> list[int]:
        """``format_cond(caption)`` tokenised, with the caption cut (never the template) to fit the budget."""
        ids = self._encode(self.vocab.format_cond(caption))
        if len(ids) <= self.prompt_budget:
            return ids
        # Longest caption prefix (in characters) whose templated prompt fits: binary search.
        lo, hi = 0, len(caption)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self._encode(self.vocab.format_cond(caption[:mid]))) <= self.prompt_budget:
                lo = mid
            else:
                hi = mid - 1
        return self._encode(self.vocab.format_cond(caption[:lo].rstrip()))

    def build(self, row: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
        """``input_ids``/``labels`` (lists) and ``dropped`` (whether the caption was dropped) for one row."""
        codes = row["codes"]
        if len(codes) != self.vocab.num_image_tokens:
            raise ValueError(
                f"cache row {row.get('id')!r} has {len(codes)} codes but grid {self.vocab.grid} needs "
                f"{self.vocab.num_image_tokens}"
            )
        caption = pick_caption(row, self.caption_mode, rng)
        dropped = rng.random() < self.p_drop_cond
        prompt = list(self.uncond_ids) if dropped else self.prompt_ids(caption)
        visual = self.vocab.codes_to_tokens(torch.as_tensor(codes)).tolist()
        text_labels = [IGNORE_INDEX] + prompt[1:] if self.loss_on_text else [IGNORE_INDEX] * len(prompt)
        return {"input_ids": prompt + visual, "labels": text_labels + visual, "dropped": dropped}


class TokenSequenceDataset(Dataset):
    """Cache rows as training sequences; caption choice and dropping are drawn per (seed, epoch, index).

    The draws are reproducible for a seed yet differ between epochs (the trainer calls
    :meth:`set_epoch`), so ``mix`` shows both captions of a picture over training.
    """

    def __init__(self, rows: Any, builder: SequenceBuilder, seed: int = 0):
        self.rows, self.builder, self.seed, self.epoch = rows, builder, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        item = self.builder.build(self.rows[int(index)], rng)
        item.pop("dropped")
        return item


def collate_left_padded(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad sequences so every row's image tokens end at the last column.

    Position ids are derived from the attention mask downstream (``cumsum - 1``), so left padding
    does not shift positions.
    """
    ids, mask = left_pad([item["input_ids"] for item in batch], pad_id)
    labels, _ = left_pad([item["labels"] for item in batch], IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
