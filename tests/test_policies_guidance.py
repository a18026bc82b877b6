"""The sampled distribution: CFG formula, temperature, top-k, top-p, and inverse-CDF sampling.

References are plain Python loops over floats, written independently of ``policies.guidance``.
"""

from __future__ import annotations

import math

import pytest
import torch

from policies.guidance import (
    SamplingConfig,
    entropy_from_logprobs,
    guide,
    process,
    sample_from_logprobs,
    sampling_logprobs,
)


def plain_log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_total = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_total for x in row]


def plain_distribution(cond: list[float], uncond: list[float] | None, scale, temperature, top_k, top_p) -> list[float]:
    """Probabilities after guidance, temperature, top-k (ties kept) and top-p (crossing token kept)."""
    c = plain_log_softmax(cond)
    if uncond is None or scale == 1.0:
        guided = c
    else:
        u = plain_log_softmax(uncond)
        guided = [ui + scale * (ci - ui) for ci, ui in zip(c, u)]
    weights = [math.exp(g / temperature) for g in guided]
    keep = [True] * len(weights)
    if 0 < top_k < len(weights):
        kth = sorted(weights, reverse=True)[top_k - 1]
        keep = [w >= kth for w in weights]
    total = sum(w for w, k in zip(weights, keep) if k)
    probs = [w / total if k else 0.0 for w, k in zip(weights, keep)]
    if top_p < 1.0:
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        mass, nucleus = 0.0, set()
        for i in order:
            if mass >= top_p:
                break
            nucleus.add(i)
            mass += probs[i]
        total = sum(probs[i] for i in nucleus)
        probs = [p / total if i in nucleus else 0.0 for i, p in enumerate(probs)]
    return probs


def random_logits(rows: int = 4, width: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


# ----------------------------------------------------------------------------- guidance


@pytest.mark.parametrize("scale", [0.0, 1.5, 6.0])
def test_guide_is_uncond_plus_scale_times_cond_minus_uncond_of_log_softmaxes(scale):
    cond, uncond = random_logits(seed=1), random_logits(seed=2)
    out = guide(cond, uncond, scale)
    for r in range(cond.size(0)):
        c, u = plain_log_softmax(cond[r].tolist()), plain_log_softmax(uncond[r].tolist())
        expected = [ui + scale * (ci - ui) for ci, ui in zip(c, u)]
        assert out[r].tolist() == pytest.approx(expected, abs=1e-4)


def test_guide_with_scale_one_or_no_uncond_is_the_conditional_log_softmax():
    cond, uncond = random_logits(seed=3), random_logits(seed=4)
    expected = torch.tensor([plain_log_softmax(r) for r in cond.tolist()], dtype=torch.float64)
    torch.testing.assert_close(guide(cond, uncond, 1.0).double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(guide(cond, None, 6.0).double(), expected, atol=1e-5, rtol=0)


def test_guide_works_in_float32_even_for_bfloat16_logits():
    cond = random_logits(seed=5).bfloat16()
    assert guide(cond, cond, 3.0).dtype == torch.float32


# ----------------------------------------------------------------------------- processing


@pytest.mark.parametrize(
    "scale, temperature, top_k, top_p",
    [
        (1.0, 1.0, 0, 1.0),
        (6.0, 1.0, 0, 1.0),
        (3.0, 0.7, 0, 1.0),
        (3.0, 1.3, 7, 1.0),
        (2.0, 1.0, 0, 0.6),
        (4.0, 0.9, 10, 0.8),
        (1.0, 2.0, 1, 1.0),
        (6.0, 1.0, 50, 0.999),
    ],
)
def test_sampling_logprobs_match_plain_guidance_temperature_topk_topp(scale, temperature, top_k, top_p):
    config = SamplingConfig(cfg_scale=scale, temperature=temperature, top_k=top_k, top_p=top_p)
    cond, uncond = random_logits(seed=6), random_logits(seed=7)
    out = sampling_logprobs(cond.float(), uncond.float(), config)
    for r in range(cond.size(0)):
        expected = plain_distribution(cond[r].tolist(), uncond[r].tolist(), scale, temperature, top_k, top_p)
        got = out[r].exp().tolist()
        assert got == pytest.approx(expected, abs=1e-5)
        # Removed tokens are exactly -inf, kept ones finite.
        assert [math.isinf(x) for x in out[r].tolist()] == [p == 0.0 for p in expected]


def test_top_k_keeps_exactly_k_tokens_without_ties():
    logits = torch.arange(20, dtype=torch.float32).view(1, 20)
    out = process(logits, SamplingConfig(top_k=5))
    assert torch.isfinite(out).nonzero()[:, 1].tolist() == [15, 16, 17, 18, 19]


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    out = process(logits, SamplingConfig(top_p=0.01))
    assert out.exp().tolist()[0] == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_top_k_zero_and_top_k_at_least_the_codebook_truncate_nothing():
    assert not SamplingConfig(top_k=0).truncates(64)
    assert not SamplingConfig(top_k=64).truncates(64)
    assert SamplingConfig(top_k=63).truncates(64)
    assert SamplingConfig(top_p=0.9).truncates(64)
    logits = random_logits(seed=8).float()
    torch.testing.assert_close(process(logits, SamplingConfig(top_k=50)), logits.log_softmax(-1))


def test_uses_cfg_is_false_only_at_scale_one():
    assert not SamplingConfig(cfg_scale=1.0).uses_cfg
    assert SamplingConfig(cfg_scale=0.0).uses_cfg
    assert SamplingConfig(cfg_scale=6.0).uses_cfg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be >= 0"),
    ],
)
def test_bad_sampling_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


def test_entropy_matches_plain_sum_and_ignores_removed_tokens():
    logprobs = process(random_logits(seed=9).float(), SamplingConfig(top_k=10))
    got = entropy_from_logprobs(logprobs)
    for r, row in enumerate(logprobs.tolist()):
        expected = -sum(math.exp(x) * x for x in row if not math.isinf(x))
        assert got[r].item() == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------- sampling


def test_inverse_cdf_sampling_picks_the_bucket_containing_the_uniform():
    probs = torch.tensor([0.1, 0.0, 0.3, 0.6])
    logprobs = probs.log().expand(6, 4)
    uniforms = torch.tensor([0.0, 0.05, 0.1000001, 0.39, 0.41, 0.99])
    assert sample_from_logprobs(logprobs, uniforms).tolist() == [0, 0, 2, 2, 3, 3]


def test_zero_probability_tokens_are_never_sampled_even_at_the_edges():
    probs = torch.tensor([0.0, 0.5, 0.5, 0.0])
    logprobs = probs.log().expand(4, 4)
    uniforms = torch.tensor([0.0, 0.5, 1.0 - 1e-7, 1.0])  # 1.0 can arise from float64 -> float32 rounding
    picks = sample_from_logprobs(logprobs, uniforms).tolist()
    assert picks == [1, 2, 2, 2]


def test_sample_frequencies_follow_the_distribution():
    config = SamplingConfig(cfg_scale=3.0, temperature=0.8, top_k=6)
    lp = sampling_logprobs(random_logits(1, 12, seed=10).float(), random_logits(1, 12, seed=11).float(), config)
    n = 20_000
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(0))
    picks = sample_from_logprobs(lp.expand(n, -1), uniforms)
    freq = torch.bincount(picks, minlength=12).double() / n
    torch.testing.assert_close(freq, lp[0].exp().double(), atol=0.015, rtol=0)
    assert set(picks.tolist()) <= set(torch.isfinite(lp[0]).nonzero().flatten().tolist())
