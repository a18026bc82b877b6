"""``clip``: SimpleAR's CLIP reward, cosine similarity of open_clip image and caption features."""

from __future__ import annotations

import os
from typing import Any

import torch

from .base import Reward, resolve_dtype
from .errors import RewardConfigError
from .embeddings import ImageEmbeddings
from .openclip_models import cosine_scores_and_image_features, load_openclip
from .preprocess import openclip_eval_transform, simplear_pixels
from .registry import register_reward


class OpenCLIPReward(ImageEmbeddings, Reward):
    """An open_clip model loaded from a local file that scores image/caption cosine similarity.

    Subclasses choose the preprocessing (:meth:`prepare_pixels`). The model is loaded at
    construction (once per arch, file, device and dtype, shared between rewards), in eval mode,
    without gradients.
    """

    default_batch_size = 32
    path_parameters = ("checkpoint",)

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        arch: str = "ViT-H-14",
        dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.checkpoint = os.fspath(checkpoint)
        self.arch = arch
        self.clip = load_openclip(arch, self.checkpoint, device=self.device, dtype=resolve_dtype(dtype))

    def prepare_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images in ``[0,1]`` -> the model's normalised input."""
        raise NotImplementedError

    def score_batch(self, images: torch.Tensor, prompts: list[str], **metadata: Any) -> torch.Tensor:
        scores, image_features = cosine_scores_and_image_features(self.clip, self.prepare_pixels(images), prompts)
        self.keep_image_embeddings(image_features)
        return scores


@register_reward("clip")
class CLIPReward(OpenCLIPReward):
    """Cosine similarity of normalised open_clip image and caption features (SimpleAR's reward).

    Parameters: ``checkpoint`` (``open_clip_pytorch_model.bin`` or ``.safetensors``), ``arch``
    (open_clip architecture, default ``ViT-H-14``), ``preprocess`` (``simplear``: bilinear resize to
    the input size and OpenAI mean/std, as SimpleAR trained; ``clip``: open_clip's eval transform),
    ``dtype``, ``batch_size``, ``device``.
    """

    PREPROCESS = ("simplear", "clip")

    def __init__(self, checkpoint: str | os.PathLike, arch: str = "ViT-H-14", preprocess: str = "simplear", **kwargs: Any):
        if preprocess not in self.PREPROCESS:
            raise RewardConfigError(f"reward 'clip': preprocess must be one of {self.PREPROCESS}, got {preprocess!r}")
        super().__init__(checkpoint, arch, **kwargs)
        self.preprocess = preprocess
        self._eval_transform = openclip_eval_transform(self.clip.preprocess_cfg) if preprocess == "clip" else None

    def prepare_pixels(self, images: torch.Tensor) -> torch.Tensor:
        if self._eval_transform is not None:
            return self._eval_transform(images)
        return simplear_pixels(images, self.clip.image_size)
