"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest

from policies.guidance import SamplingConfig
from policies.sampler import sample_images
from policies.tiny import build_tiny_policy


@pytest.fixture(scope="session")
def compiled_tiny():
    """``(policy, config)``: a tiny policy whose decode step the compiled rollout backend has compiled, once per
    test session (tens of seconds on a cold inductor cache), for batches of up to 4 images on its 4x4 grid with
    ``config`` (CFG, temperature, top-k and top-p at once). Other settings, models or buckets compile anew."""
    policy = build_tiny_policy(grid=(4, 4), seed=1, hidden_size=64)
    config = SamplingConfig(cfg_scale=3.0, temperature=0.8, top_k=20, top_p=0.9)
    prompts = policy.encode_prompts(["a red square"] * 4)
    sample_images(policy.model, policy.vocab, prompts, policy.encode_uncond(), config, [0, 1, 2, 3],
                  pad_id=policy.pad_id, backend="compiled")
    return policy, config
