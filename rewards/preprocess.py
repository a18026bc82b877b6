"""Image preprocessing for open_clip rewards, on batched float tensors ``[B,3,H,W]`` in ``[0,1]``.

Three ways, one per source of truth:
- ``simplear``: what SimpleAR's CLIP reward trained with: bilinear resize to the model's input size
  (no antialias), OpenAI mean/std.
- ``clip``: open_clip's own evaluation transform for the architecture (resize shortest side,
  centre crop, normalise), applied to the tensors.
- ``letterbox``: HPSv2's: resize the longer side to the input size (bicubic), pad the rest with
  zeros split evenly (the extra pixel going right/bottom), OpenAI mean/std.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F


def _openai_normalize(pixels: torch.Tensor) -> torch.Tensor:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(OPENAI_DATASET_MEAN, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def simplear_pixels(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to ``size`` without antialias, then OpenAI mean/std (SimpleAR's CLIP reward)."""
    resized = F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return _openai_normalize(resized)


def letterbox_pixels(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """HPSv2's letterbox: fit the image inside ``size`` keeping its aspect, zero-pad, OpenAI mean/std.

    HPS resizes with torchvision's bicubic tensor resize (antialiased in current torchvision) to
    ``round(side * scale)`` and pads ``[left, top, right, bottom] = [pw//2, ph//2, pw - pw//2, ph - ph//2]``
    with 0 before normalising. HPS skips both steps when the image already has the longer side at
    the target size; for square inputs that is the same thing.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    height, width = images.shape[-2:]
    target_h, target_w = size
    scale = min(target_h / height, target_w / width)
    new_h, new_w = round(height * scale), round(width * scale)
    pixels = images.float()
    if (new_h, new_w) != (height, width):
        pixels = TF.resize(pixels, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    pad_h, pad_w = target_h - new_h, target_w - new_w
    if pad_h or pad_w:
        pixels = TF.pad(pixels, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0.0)
    return _openai_normalize(pixels)


def openclip_eval_transform(preprocess_cfg: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """open_clip's evaluation transform for a model's ``preprocess_cfg``; it accepts batched tensors."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    transform = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    return lambda images: transform(images.float())
