"""Loading open_clip models from local checkpoint files, once per (arch, file, device, dtype).

open_clip is imported here, lazily, so that importing ``rewards`` and ``simplear-rl rewards list``
stay fast. Nothing here downloads: the architecture comes from open_clip's config registry and
the weights from the file given (``open_clip_pytorch_model.bin``, ``*.safetensors``, or an HPS
``{"state_dict": ...}`` file).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from .errors import RewardCheckpointError


@dataclass(frozen=True)
class LoadedCLIP:
    """A loaded open_clip model with its tokenizer, in eval mode and without gradients."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    #: open_clip's preprocessing config for this architecture (size, mean, std, interpolation, ...).
    preprocess_cfg: dict[str, Any]
    device: torch.device
    dtype: torch.dtype

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.preprocess_cfg["size"]
        return (size, size) if isinstance(size, int) else tuple(size)


_CACHE: dict[tuple[str, str, str, torch.dtype], LoadedCLIP] = {}


def clear_model_cache() -> None:
    """Forget every loaded model (they are freed once no reward holds them)."""
    _CACHE.clear()


def load_openclip(arch: str, checkpoint: str | os.PathLike, *, device: torch.device, dtype: torch.dtype) -> LoadedCLIP:
    """The open_clip ``arch`` with the weights in ``checkpoint``, shared between callers.

    Raises :class:`RewardCheckpointError` naming the file when it is missing, unreadable, or does
    not fit ``arch`` (missing / unexpected keys, shape mismatches).
    """
    path = os.path.realpath(checkpoint)
    key = (arch, path, str(device), dtype)
    if key not in _CACHE:
        _CACHE[key] = _load(arch, path, device, dtype)
    return _CACHE[key]


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    # create_model(pretrained=None) logs "No pretrained weights loaded"; we load them right after.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _load(arch: str, path: str, device: torch.device, dtype: torch.dtype) -> LoadedCLIP:
    import open_clip

    if not os.path.isfile(path):
        raise RewardCheckpointError(f"checkpoint file {path} does not exist (expected open_clip {arch!r} weights)")
    if arch not in open_clip.list_models():
        raise RewardCheckpointError(
            f"unknown open_clip architecture {arch!r} for checkpoint {path}; known: {open_clip.list_models()}"
        )
    with _quiet_open_clip():
        # pretrained_text=False: towers with a Hugging Face text model must not fetch its weights.
        model = open_clip.create_model(arch, pretrained=None, pretrained_text=False, device="cpu")
    try:
        open_clip.load_checkpoint(model, path, strict=True)
    except Exception as exc:
        raise RewardCheckpointError(_explain_mismatch(model, path, arch, exc)) from exc
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedCLIP(
        model=model,
        tokenizer=open_clip.get_tokenizer(arch),
        preprocess_cfg=dict(model.visual.preprocess_cfg),
        device=device,
        dtype=dtype,
    )


def _explain_mismatch(model: torch.nn.Module, path: str, arch: str, exc: Exception) -> str:
    """Name the file, the architecture expected and what does not fit."""
    from open_clip.factory import load_state_dict

    try:
        found = load_state_dict(path)
    except Exception as read_exc:
        return f"cannot read checkpoint {path} as open_clip {arch!r} weights: {type(read_exc).__name__}: {read_exc}"
    if not isinstance(found, dict) or not all(isinstance(v, torch.Tensor) for v in found.values()):
        return f"checkpoint {path} is not a state dict of tensors (expected open_clip {arch!r} weights)"
    expected = model.state_dict()
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: file {list(found[k].shape)} vs {arch} {list(expected[k].shape)}"
        for k in sorted(set(found) & set(expected))
        if found[k].shape != expected[k].shape
    ]
    parts = [
        f"{len(items)} {what} (e.g. {', '.join(items[:3])})"
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ] or [f"{type(exc).__name__}: {exc}"]
    return (
        f"checkpoint {path} does not fit open_clip architecture {arch!r}: {'; '.join(parts)}. "
        "Give the `arch` the checkpoint was trained with (SimpleAR's CLIP and HPSv2 are 'ViT-H-14')."
    )


def cosine_scores(clip: LoadedCLIP, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Cosine similarity of L2-normalised image and text features (no logit scale), float32 ``[B]``.

    ``pixels`` are already preprocessed for the model. Each distinct prompt is encoded once (GRPO
    repeats every prompt ``num_generations`` times).
    """
    return cosine_scores_and_image_features(clip, pixels, prompts)[0]


def cosine_scores_and_image_features(clip: LoadedCLIP, pixels: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cosine_scores` and the normalised image features ``[B, D]`` it computed."""
    position = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    tokens = clip.tokenizer(list(position)).to(clip.device)
    text = F.normalize(clip.model.encode_text(tokens).float(), dim=-1)
    image = F.normalize(clip.model.encode_image(pixels.to(clip.device, clip.dtype)).float(), dim=-1)
    rows = torch.tensor([position[p] for p in prompts], device=text.device)
    return (image * text[rows]).sum(-1), image
