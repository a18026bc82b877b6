"""Captions in, decoded images out: batched CFG sampling followed by the codec's decoder."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .codecs import VisualCodec
from .guidance import SamplingConfig
from .images import to_unit
from .loading import Policy
from .sampler import sample_images


@torch.no_grad()
def render(
    policy: Policy,
    codec: VisualCodec,
    captions: list[str],
    seeds: list[int],
    config: SamplingConfig,
    uncond_ids: list[int] | None = None,
    grid: tuple[int, int] | None = None,
    batch_size: int = 8,
    desc: str | None = "images",
    backend: str = "eager",
) -> torch.Tensor:
    """Sample one image per ``(caption, seed)`` pair in batches; returns ``[N,3,H,W]`` in ``[0,1]`` on CPU.

    Each image depends only on its caption and seed, never on the batch it was drawn in (nor on the
    rollout ``backend``). ``uncond_ids`` (a negative prompt shared by every row) defaults to the policy
    family's unconditional prompts (:meth:`policies.loading.Policy.uncond_prompts`).
    """
    if len(captions) != len(seeds):
        raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds: one seed per image")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = []
    with tqdm(total=len(captions), desc=desc, unit="img", disable=desc is None) as bar:
        for start in range(0, len(captions), batch_size):
            batch = slice(start, start + batch_size)
            prompts = policy.encode_prompts(captions[batch])
            rollout = sample_images(
                policy.model, policy.vocab, prompts, uncond_ids or policy.uncond_prompts(prompts), config,
                seeds=seeds[batch], pad_id=policy.pad_id, grid=grid, backend=backend,
                min_bucket=min(batch_size, len(captions)),
            )
            images.append(to_unit(codec.decode(rollout.codes)).cpu())
            bar.update(len(rollout.codes))
    return torch.cat(images)
