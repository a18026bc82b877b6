"""Rewards that embed images (clip, hpsv2, pickscore, aesthetic) keep the last call's image embeddings.

The GRPO trainer reads them for ``diversity/embedding`` instead of running a second forward. A reward using
this mixin calls :meth:`ImageEmbeddings.keep_image_embeddings` in ``score_batch`` with the features it computed.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F


class ImageEmbeddings:
    """Mixin for a :class:`~rewards.base.Reward`: after each call, :attr:`image_embeddings` holds the
    L2-normalised float32 CPU embeddings ``[B, D]`` of the images just scored, row-aligned (None when a call
    scored no rows or its batches did not all record)."""

    image_embeddings: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **metadata: Any) -> torch.Tensor:
        self._embedding_batches: list[torch.Tensor] = []
        scores = super().__call__(images, prompts, **metadata)
        kept = torch.cat(self._embedding_batches) if self._embedding_batches else None
        self.image_embeddings = kept if kept is not None and kept.shape[0] == scores.shape[0] else None
        self._embedding_batches = []
        return scores

    def keep_image_embeddings(self, features: torch.Tensor) -> None:
        """Record the image features ``[b, D]`` computed for the current batch."""
        if hasattr(self, "_embedding_batches"):
            self._embedding_batches.append(F.normalize(features.detach().float(), dim=-1).cpu())
