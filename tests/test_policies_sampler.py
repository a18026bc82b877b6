"""Contracts of the CFG rollout sampler, checked against plain full-vocabulary forwards.

The reference runs ``model(ids).logits`` on each unpadded sequence without a KV cache, slices the
visual columns and applies the guidance formula by hand, so it shares nothing with the sampler
except the model weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from policies.guidance import SamplingConfig, sample_from_logprobs, sampling_logprobs
from policies.heads import decoder_of
from policies.rollout import row_uniforms
from policies.sampler import sample_images
from policies.tiny import build_tiny_policy

CAPTIONS = ["a red square", "two small blue circles in the upper left corner", "cat"]


@pytest.fixture(scope="module")
def policy():
    return build_tiny_policy(grid=(4, 4), seed=1)


def encode(policy, captions):
    return policy.encode_prompts(captions)


def run(policy, captions, config, seeds, uncond=None, model=None, **kwargs):
    uncond = policy.encode_uncond() if uncond is None else uncond
    return sample_images(
        model or policy.model, policy.vocab, encode(policy, captions), uncond, config, seeds, pad_id=policy.pad_id, **kwargs
    )


def reference_visual_logprobs(model, vocab, prompt, uncond, codes, config):
    """``[T, K]`` log-probs of the sampled distribution at each step, from full-vocab logits."""
    image = [vocab.offset + c for c in codes]

    def visual_log_softmax(prefix):
        with torch.no_grad():
            logits = model(torch.tensor([prefix + image])).logits[0]
        # Position len(prefix) - 1 + t predicts image token t.
        steps = logits[len(prefix) - 1 : len(prefix) - 1 + len(image), vocab.offset : vocab.vocab_size]
        return steps.double().log_softmax(-1)

    cond = visual_log_softmax(prompt)
    if config.cfg_scale == 1.0:
        guided = cond
    else:
        unc = visual_log_softmax(uncond)
        guided = unc + config.cfg_scale * (cond - unc)
    scores = guided / config.temperature
    if config.top_k:
        kth = scores.sort(-1, descending=True).values[:, config.top_k - 1 : config.top_k]
        scores = torch.where(scores >= kth, scores, -torch.inf)
    if config.top_p < 1.0:
        probs = scores.softmax(-1)
        desc = probs.sort(-1, descending=True).values
        needed = (desc.cumsum(-1) < config.top_p).sum(-1, keepdim=True) + 1  # tokens to reach top_p
        threshold = desc.gather(-1, needed - 1)
        scores = torch.where(probs >= threshold, scores, -torch.inf)
    return scores.log_softmax(-1)


CONFIGS = [
    SamplingConfig(cfg_scale=3.0),
    SamplingConfig(cfg_scale=6.0, temperature=0.8, top_k=20),
    SamplingConfig(cfg_scale=1.0, temperature=1.2, top_p=0.9),
    SamplingConfig(cfg_scale=2.0, top_k=30, top_p=0.95),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"s{c.cfg_scale}-t{c.temperature}-k{c.top_k}-p{c.top_p}")
def test_sampler_logprobs_equal_a_plain_full_vocabulary_recomputation(policy, config):
    rollout = run(policy, CAPTIONS, config, seeds=[11, 12, 13])
    vocab = policy.vocab
    assert rollout.codes.shape == (3, 4, 4)
    assert torch.equal(rollout.token_ids, rollout.codes.flatten(1) + vocab.offset)
    for row, prompt in enumerate(encode(policy, CAPTIONS)):
        codes = rollout.codes[row].flatten().tolist()
        ref = reference_visual_logprobs(policy.model, vocab, prompt, policy.encode_uncond(), codes, config)
        picked = ref.gather(-1, torch.tensor(codes)[:, None]).squeeze(-1)
        assert torch.isfinite(picked).all(), "sampled a token the reference distribution excludes"
        torch.testing.assert_close(rollout.logprobs[row].double(), picked, atol=1e-4, rtol=0)
        ref_entropy = -(ref.exp() * ref.nan_to_num(neginf=0.0)).sum(-1)
        torch.testing.assert_close(rollout.entropy[row].double(), ref_entropy, atol=1e-4, rtol=0)


def test_first_token_frequencies_follow_the_reference_distribution(policy):
    config = SamplingConfig(cfg_scale=3.0, temperature=0.9, top_k=12)
    n = 3000
    rollout = run(policy, ["a red square"] * n, config, seeds=list(range(n)), grid=(1, 1))
    prompt = encode(policy, ["a red square"])[0]
    ref = reference_visual_logprobs(policy.model, policy.vocab, prompt, policy.encode_uncond(), [0], config)[0]
    freq = torch.bincount(rollout.codes.flatten(), minlength=policy.vocab.codebook_size).double() / n
    assert (freq[~torch.isfinite(ref)] == 0).all(), "sampled outside the top-k set"
    total_variation = 0.5 * (freq - ref.exp()).abs().sum().item()
    assert total_variation < 0.05


# ----------------------------------------------------------------------------- CFG batching


def decoder_batch_sizes(policy, config, uncond):
    sizes = []
    handle = decoder_of(policy.model).register_forward_pre_hook(
        lambda _m, _a, kw: sizes.append(kw["input_ids"].size(0)), with_kwargs=True
    )
    try:
        run(policy, CAPTIONS[:2], config, seeds=[1, 2], uncond=uncond)
    finally:
        handle.remove()
    return sizes


def test_cfg_runs_cond_and_uncond_rows_in_one_forward_per_step(policy):
    sizes = decoder_batch_sizes(policy, SamplingConfig(cfg_scale=3.0), uncond=None)
    assert sizes == [4] * policy.vocab.num_image_tokens  # prefill + 15 steps, each with 2 cond + 2 uncond rows


def test_cfg_scale_one_skips_the_uncond_rows_and_needs_no_uncond_prompt(policy):
    assert decoder_batch_sizes(policy, SamplingConfig(cfg_scale=1.0), uncond=[]) == [2] * 16


def test_prefill_and_steps_get_explicit_positions_that_ignore_left_padding(policy):
    calls = []
    handle = decoder_of(policy.model).register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(kw["position_ids"].clone()), with_kwargs=True
    )
    try:
        run(policy, CAPTIONS, SamplingConfig(cfg_scale=3.0), seeds=[1, 2, 3])
    finally:
        handle.remove()
    lengths = [len(p) for p in encode(policy, CAPTIONS)] + [len(policy.encode_uncond())] * 3
    prefill = calls[0]
    for row, length in enumerate(lengths):
        assert prefill[row, -length:].tolist() == list(range(length))
        assert calls[1][row].tolist() == [length]  # the first image token follows its own prompt
        assert calls[2][row].tolist() == [length + 1]


# ----------------------------------------------------------------------------- visual head only


def untied_with_nan_text_rows(model: nn.Module, offset: int) -> nn.Module:
    """A copy whose LM head is its own parameter with NaN in every text row (embeddings untouched)."""
    clone = copy.deepcopy(model)
    weight = clone.get_input_embeddings().weight.detach().clone()
    weight[:offset] = float("nan")
    head = nn.Linear(weight.size(1), weight.size(0), bias=False)
    head.weight = nn.Parameter(weight)
    clone.set_output_embeddings(head)
    clone.config.tie_word_embeddings = False
    return clone


class RecordOutputShapes(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_text_rows_of_the_head_are_never_used(policy):
    config = SamplingConfig(cfg_scale=4.0, top_k=40)
    poisoned = untied_with_nan_text_rows(policy.model, policy.vocab.offset)
    ids = torch.tensor(encode(policy, CAPTIONS[:1]))
    with torch.no_grad():
        assert torch.isnan(poisoned(ids).logits[..., : policy.vocab.offset]).all()  # the poison bites a full head
    clean = run(policy, CAPTIONS, config, seeds=[5, 6, 7])
    dirty = run(policy, CAPTIONS, config, seeds=[5, 6, 7], model=poisoned)
    assert torch.equal(clean.codes, dirty.codes)
    torch.testing.assert_close(clean.logprobs, dirty.logprobs)


def test_no_tensor_as_wide_as_the_full_vocabulary_is_ever_computed(policy):
    full = policy.vocab.vocab_size
    with RecordOutputShapes() as sanity, torch.no_grad():
        policy.model(torch.tensor(encode(policy, CAPTIONS[:1])))
    assert any(full in s for s in sanity.shapes), "the recorder would see a full-vocabulary head"
    with RecordOutputShapes() as recorder:
        run(policy, CAPTIONS, SamplingConfig(cfg_scale=3.0), seeds=[1, 2, 3])
    assert not [s for s in recorder.shapes if full in s]
    assert any(s and s[-1] == policy.vocab.codebook_size for s in recorder.shapes)


# ----------------------------------------------------------------------------- padding and seeds


def test_left_padded_batch_gives_the_same_samples_as_each_prompt_alone(policy):
    config = SamplingConfig(cfg_scale=5.0, temperature=1.1)
    negative = policy.encode_text("<|t2i|>dark gray background<|soi|>")
    batch = run(policy, CAPTIONS, config, seeds=[21, 22, 23], uncond=negative)
    for row, (caption, seed) in enumerate(zip(CAPTIONS, [21, 22, 23])):
        alone = run(policy, [caption], config, seeds=[seed], uncond=negative)
        assert torch.equal(batch.codes[row], alone.codes[0])
        torch.testing.assert_close(batch.logprobs[row], alone.logprobs[0], atol=1e-4, rtol=0)


def test_same_seeds_give_the_same_codes(policy):
    config = SamplingConfig(cfg_scale=3.0, top_p=0.9)
    first = run(policy, CAPTIONS, config, seeds=[7, 8, 9])
    second = run(policy, CAPTIONS, config, seeds=[7, 8, 9])
    assert torch.equal(first.codes, second.codes)
    assert torch.equal(first.logprobs, second.logprobs)


def test_a_rows_codes_follow_its_seed_whatever_the_batch_order_and_company(policy):
    config = SamplingConfig(cfg_scale=3.0)
    forward = run(policy, CAPTIONS, config, seeds=[7, 8, 9])
    reordered = run(policy, [CAPTIONS[2], CAPTIONS[0], CAPTIONS[2]], config, seeds=[9, 7, 100])
    assert torch.equal(reordered.codes[0], forward.codes[2])
    assert torch.equal(reordered.codes[1], forward.codes[0])


def test_different_seeds_for_one_prompt_give_different_images(policy):
    rollout = run(policy, ["a red square"] * 4, SamplingConfig(cfg_scale=3.0), seeds=[0, 1, 2, 3])
    distinct = {tuple(c.flatten().tolist()) for c in rollout.codes}
    assert len(distinct) == 4


# ----------------------------------------------------------------------------- bad input


def test_wrong_number_of_seeds_is_refused(policy):
    with pytest.raises(ValueError, match="got 2 seeds for 3 rows"):
        run(policy, CAPTIONS, SamplingConfig(), seeds=[1, 2])


@pytest.mark.parametrize("uncond", [None, []])
def test_cfg_without_uncond_ids_is_refused(policy, uncond):
    with pytest.raises(ValueError, match=r"cfg_scale=3.0 needs the unconditional prompt ids"):
        sample_images(policy.model, policy.vocab, encode(policy, CAPTIONS), uncond, SamplingConfig(cfg_scale=3.0), [1, 2, 3])


def test_empty_prompt_is_refused(policy):
    with pytest.raises(ValueError, match="at least one token"):
        sample_images(policy.model, policy.vocab, [[]], None, SamplingConfig(), [1])


def test_a_model_whose_head_does_not_fit_the_layout_is_refused_naming_both_sizes(policy):
    wrong = policy.vocab.replace(codebook_size=60)
    with pytest.raises(ValueError, match=r"144 rows .* 80 \+ codebook_size 60 = 140"):
        sample_images(policy.model, wrong, encode(policy, CAPTIONS[:1]), None, SamplingConfig(), [1])


# ----------------------------------------------------------------------------- KV cache


def no_cache_reference(model, vocab, prompts, uncond, config, seeds, steps):
    """Codes and log-probs from a plain loop that re-runs every full (unpadded) sequence, no cache.

    Each step feeds ``prompt + codes so far`` (and ``uncond + codes so far``) through the whole
    model from scratch with ``use_cache=False``, guides the visual slice of the full-vocabulary
    logits and draws with the same per-row uniforms the sampler uses.
    """
    uniforms = row_uniforms(seeds, steps)
    codes = torch.empty((len(prompts), steps), dtype=torch.long)
    logprobs = torch.empty((len(prompts), steps), dtype=torch.float32)

    def last_visual_logits(prefix, image):
        with torch.no_grad():
            logits = model(torch.tensor([prefix + image]), use_cache=False).logits
        return logits[:, -1, vocab.offset : vocab.vocab_size]

    for row, prompt in enumerate(prompts):
        image: list[int] = []
        for t in range(steps):
            cond = last_visual_logits(prompt, image)
            unc = last_visual_logits(uncond, image) if config.uses_cfg else None
            lp = sampling_logprobs(cond, unc, config)
            code = sample_from_logprobs(lp, uniforms[row : row + 1, t])
            codes[row, t] = code[0]
            logprobs[row, t] = lp[0, code[0]]
            image.append(vocab.offset + int(code[0]))
    return codes, logprobs


def assert_sampler_matches_no_cache_reference(policy):
    config = SamplingConfig(cfg_scale=4.0, temperature=1.1)
    seeds = [31, 32, 33]
    prompts = encode(policy, CAPTIONS)
    assert len({len(p) for p in prompts}) == len(prompts), "the prompts must need different left padding"
    rollout = run(policy, CAPTIONS, config, seeds=seeds)
    steps = policy.vocab.num_image_tokens
    codes, logprobs = no_cache_reference(policy.model, policy.vocab, prompts, policy.encode_uncond(), config, seeds, steps)
    assert torch.equal(rollout.codes.flatten(1), codes), "the sampler's codes differ from a no-cache recomputation"
    torch.testing.assert_close(rollout.logprobs, logprobs, atol=1e-5, rtol=0)


def test_cached_sampling_equals_a_no_cache_full_recompute_reference(policy):
    assert_sampler_matches_no_cache_reference(policy)


def test_the_reference_comparison_catches_a_decoder_that_silently_ignores_the_cache(policy):
    # What a transformers release that no longer knows the sampler's cache kwarg would do: swallow
    # it (forward takes **kwargs) and run each step on the new token alone, with no error.
    decoder = decoder_of(policy.model)
    forward = decoder.forward

    def forgetful(*args, cache=None, **kwargs):
        return forward(*args, **kwargs)

    decoder.forward = forgetful
    try:
        with pytest.raises(AssertionError, match="differ from a no-cache recomputation"):
            assert_sampler_matches_no_cache_reference(policy)
    finally:
        del decoder.forward
