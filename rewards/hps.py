"""``hpsv2`` / ``hpsv2.1``: Human Preference Score v2, rebuilt on open_clip_torch.

HPSv2 is a fully fine-tuned open_clip ViT-H-14; its checkpoints (``HPS_v2_compressed.pt``,
``HPS_v2.1_compressed.pt``) hold ``{"state_dict": ...}``. The score is the cosine similarity of the
normalised image and text features (about 0.2-0.35 on real images) after HPS's letterbox
preprocessing. The PyPI ``hpsv2`` wheel is not used (it cannot be imported offline).
"""

from __future__ import annotations

import torch

from .clip import OpenCLIPReward
from .preprocess import letterbox_pixels
from .registry import register_reward


@register_reward("hpsv2")
class HPSv2Reward(OpenCLIPReward):
    """HPSv2 human-preference score: open_clip ViT-H-14 with an HPS checkpoint, letterboxed input.

    Parameters: ``checkpoint`` (``HPS_v2_compressed.pt``), ``arch`` (default ``ViT-H-14``),
    ``dtype``, ``batch_size``, ``device``.
    """

    def prepare_pixels(self, images: torch.Tensor) -> torch.Tensor:
        return letterbox_pixels(images, self.clip.image_size)


@register_reward("hpsv2.1")
class HPSv21Reward(HPSv2Reward):
    """HPSv2.1 human-preference score: as ``hpsv2`` with the ``HPS_v2.1_compressed.pt`` checkpoint."""
