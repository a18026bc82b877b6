"""``pickscore``: PickScore v1, a CLIP-H fine-tuned on Pick-a-Pic human preferences.

PickScore is published as a transformers ``CLIPModel`` folder (``yuvalkirstain/PickScore_v1``); its
authors preprocess with the processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``. The score is
``logit_scale.exp() * cos(image_embeds, text_embeds)``. transformers' CLIP classes are imported only
when the reward is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .base import Reward, resolve_dtype
from .embeddings import ImageEmbeddings
from .errors import RewardCheckpointError
from .registry import register_reward

#: Longest caption PickScore encodes (CLIP's context), as in the authors' scoring code.
MAX_TEXT_TOKENS = 77


@dataclass(frozen=True)
class LoadedPickScore:
    """A ``CLIPModel`` in eval mode without gradients, with its processor."""

    model: torch.nn.Module
    processor: Any
    device: torch.device
    dtype: torch.dtype


_CACHE: dict[tuple[str, str, str, torch.dtype], LoadedPickScore] = {}


def _require_folder(path: str, what: str, needs: tuple[str, ...], fix: str) -> None:
    """``path`` must be a folder holding at least one of the files ``needs``."""
    if not os.path.isdir(path):
        problem = "is a file, not a folder" if os.path.isfile(path) else "does not exist"
        raise RewardCheckpointError(f"reward 'pickscore': {what} {path!r} {problem}. {fix}")
    if not any(os.path.isfile(os.path.join(path, name)) for name in needs):
        raise RewardCheckpointError(f"reward 'pickscore': {what} folder {path!r} has no {' or '.join(needs)}. {fix}")


def load_pickscore(checkpoint: str, processor: str, *, device: torch.device, dtype: torch.dtype) -> LoadedPickScore:
    """The ``CLIPModel`` in folder ``checkpoint`` and the processor in folder ``processor``, shared.

    Raises :class:`RewardCheckpointError` naming the folder when it is missing, lacks its
    ``config.json`` / ``preprocessor_config.json`` (published folders; transformers 5 writes
    ``processor_config.json``), or transformers cannot load it.
    """
    _require_folder(
        checkpoint, "checkpoint", ("config.json",),
        "Set `checkpoint:` to a local copy of the PickScore_v1 model folder (nothing is downloaded).",
    )
    _require_folder(
        processor, "processor", ("preprocessor_config.json", "processor_config.json"),
        "Set `processor:` to a local folder holding the CLIP processor and tokenizer files (PickScore's "
        "authors use laion/CLIP-ViT-H-14-laion2B-s32B-b79K).",
    )
    key = (os.path.realpath(checkpoint), os.path.realpath(processor), str(device), dtype)
    if key not in _CACHE:
        from transformers import AutoProcessor, CLIPModel

        try:
            model = CLIPModel.from_pretrained(checkpoint, dtype=dtype, local_files_only=True)
        except Exception as exc:
            raise RewardCheckpointError(
                f"reward 'pickscore': cannot load a CLIPModel from {checkpoint}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            loaded_processor = AutoProcessor.from_pretrained(processor, local_files_only=True)
        except Exception as exc:
            raise RewardCheckpointError(
                f"reward 'pickscore': cannot load a CLIP processor from {processor}: {type(exc).__name__}: {exc}"
            ) from exc
        model = model.to(device).eval().requires_grad_(False)
        _CACHE[key] = LoadedPickScore(model=model, processor=loaded_processor, device=device, dtype=dtype)
    return _CACHE[key]


def clear_model_cache() -> None:
    """Forget every loaded PickScore model (freed once no reward holds it)."""
    _CACHE.clear()


@register_reward("pickscore")
class PickScoreReward(ImageEmbeddings, Reward):
    """PickScore v1 human preference: logit_scale.exp() times the cosine of CLIP-H image and caption features.

    Images are quantised to 8 bits (as the saved pictures PickScore was trained and evaluated on)
    and go through the CLIP processor: shortest side resized to 224 (bicubic), centre crop,
    OpenAI mean/std. Captions are tokenised with its tokenizer, truncated to 77 tokens; each
    distinct caption is encoded once per batch.

    Parameters: ``checkpoint`` (required: the PickScore_v1 folder, ``config.json`` + weights),
    ``processor`` (folder with ``preprocessor_config.json`` and the tokenizer files; default the
    checkpoint folder), ``dtype`` (fp32; ``bf16``/``fp16`` on GPU), ``batch_size``, ``device``.
    """

    default_batch_size = 32

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        processor: str | os.PathLike | None = None,
        dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.checkpoint = os.fspath(checkpoint)
        self.processor_path = os.fspath(processor) if processor is not None else self.checkpoint
        self.pickscore = load_pickscore(
            self.checkpoint, self.processor_path, device=self.device, dtype=resolve_dtype(dtype)
        )

    def score_batch(self, images: torch.Tensor, prompts: list[str], **metadata: Any) -> torch.Tensor:
        model, processor = self.pickscore.model, self.pickscore.processor
        position = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        tokens = processor.tokenizer(
            list(position), padding=True, truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
        ).to(self.device)
        pixels8 = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = processor.image_processor(images=list(pixels8), return_tensors="pt")["pixel_values"]
        image = model.get_image_features(pixel_values=pixels.to(self.device, self.pickscore.dtype)).pooler_output
        text = model.get_text_features(**tokens).pooler_output
        image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
        self.keep_image_embeddings(image)
        rows = torch.tensor([position[p] for p in prompts], device=text.device)
        return model.logit_scale.exp().float() * (image * text[rows]).sum(-1)
