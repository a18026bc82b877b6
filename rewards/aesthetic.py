"""``aesthetic``: the LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor).

An MLP head (``sac+logos+ava1-l14-linearMSE.pth``) on the L2-normalised image embedding of OpenAI's
CLIP ViT-L/14, trained to predict the 1-10 rating of a picture. The CLIP model comes through
open_clip from a local file; the head is loaded here from its published state dict.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Reward, resolve_dtype
from .embeddings import ImageEmbeddings
from .errors import RewardCheckpointError
from .openclip_models import load_openclip
from .preprocess import openclip_eval_transform
from .registry import register_reward

#: Width of the CLIP ViT-L/14 image embedding the published head reads.
EMBED_DIM = 768


class AestheticMLP(nn.Module):
    """The published head: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, linear, dropouts in between.

    Its state-dict keys are ``layers.{0,2,4,6,7}.{weight,bias}``, as in the released ``.pth`` files.
    """

    def __init__(self, input_size: int = EMBED_DIM):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def load_aesthetic_head(path: str, device: torch.device) -> AestheticMLP:
    """The head with the weights in ``path`` (a plain state dict), fp32, eval mode, no gradients.

    Raises :class:`RewardCheckpointError` naming the file when it cannot be read or its keys or
    shapes differ from the published head.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RewardCheckpointError(
            f"reward 'aesthetic': cannot read checkpoint {path} as the aesthetic predictor's state dict: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    head = AestheticMLP()
    expected = head.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RewardCheckpointError(f"reward 'aesthetic': checkpoint {path} is not a state dict of tensors")
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: file {list(state[k].shape)} vs head {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise RewardCheckpointError(
            f"reward 'aesthetic': checkpoint {path} does not fit the published aesthetic head "
            f"(768-1024-128-64-16-1): {'; '.join(problems[:4])}. Use sac+logos+ava1-l14-linearMSE.pth."
        )
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.to(device).eval().requires_grad_(False)


@register_reward("aesthetic")
class AestheticReward(ImageEmbeddings, Reward):
    """LAION aesthetic score (a 1-10 rating scale): the improved predictor's MLP on normalised CLIP ViT-L/14 features.

    Images go through open_clip's evaluation transform for ``arch`` (shortest side resized to 224,
    bicubic, centre crop, OpenAI mean/std, as OpenAI CLIP's preprocessing); the image embedding is
    L2-normalised and fed to the head in fp32. The caption is not used.

    Parameters: ``checkpoint`` (required: the head, ``sac+logos+ava1-l14-linearMSE.pth``),
    ``clip_checkpoint`` (required: OpenAI CLIP ViT-L/14 weights in open_clip's format, e.g.
    ``open_clip_pytorch_model.bin`` of ``timm/vit_large_patch14_clip_224.openai``), ``arch``
    (``ViT-L-14-quickgelu``: OpenAI's weights use QuickGELU; any open_clip arch with 768-wide
    embeddings loads), ``dtype`` (of the CLIP model), ``batch_size``, ``device``.
    """

    default_batch_size = 32
    path_parameters = ("checkpoint", "clip_checkpoint")

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        clip_checkpoint: str | os.PathLike,
        arch: str = "ViT-L-14-quickgelu",
        dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.checkpoint = os.fspath(checkpoint)
        self.clip_checkpoint = os.fspath(clip_checkpoint)
        self.arch = arch
        self.head = load_aesthetic_head(self.checkpoint, self.device)
        self.clip = load_openclip(arch, self.clip_checkpoint, device=self.device, dtype=resolve_dtype(dtype))
        width = getattr(self.clip.model.visual, "output_dim", None)
        if width is not None and width != EMBED_DIM:
            raise RewardCheckpointError(
                f"reward 'aesthetic': open_clip arch {arch!r} gives {width}-wide image embeddings but the aesthetic "
                f"head reads {EMBED_DIM} (CLIP ViT-L/14); use arch 'ViT-L-14-quickgelu' with OpenAI's ViT-L/14 weights."
            )
        self._transform = openclip_eval_transform(self.clip.preprocess_cfg)

    def score_batch(self, images: torch.Tensor, prompts: list[str], **metadata: Any) -> torch.Tensor:
        pixels = self._transform(images).to(self.device, self.clip.dtype)
        embeddings = F.normalize(self.clip.model.encode_image(pixels).float(), dim=-1)
        self.keep_image_embeddings(embeddings)
        return self.head(embeddings).squeeze(-1)
