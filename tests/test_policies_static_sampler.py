"""The compiled rollout backend against the eager reference loop: for the same seeds, the same codes and
log-probs/entropies within 1e-5, from one compiled graph per (batch bucket, grid, sampling settings)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers.integrations.sdpa_attention import repeat_kv

from policies import static_sampler
from policies.guidance import SamplingConfig
from policies.heads import decoder_of
from policies.sampler import resolve_backend, sample_images
from policies.rollout import COMPILE_STATS
from policies.static_sampler import PROMPT_BLOCK, batch_bucket
from policies.tiny import build_tiny_policy

LENGTHS = ["a red square", "two small blue circles in the upper left corner of the picture", "cat"]
REPEATS = ["a green triangle in the center", "two dots"]


def sample_both(policy, prompts, config, seeds, model=None, **kwargs):
    """(eager, compiled) rollouts of the same prompts and seeds."""
    args = (model or policy.model, policy.vocab, prompts, policy.encode_uncond(), config, seeds)
    return tuple(sample_images(*args, pad_id=policy.pad_id, backend=b, **kwargs) for b in ("eager", "compiled"))


def assert_same_samples(eager, compiled):
    assert torch.equal(compiled.codes, eager.codes), "the compiled backend drew other codes than the eager loop"
    assert torch.equal(compiled.token_ids, eager.token_ids)
    torch.testing.assert_close(compiled.logprobs, eager.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled.entropy, eager.entropy, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "captions, seeds",
    [
        (LENGTHS, [11, 12, 13]),  # left padding of different widths
        ([REPEATS[0]] * 2 + [REPEATS[1]] * 2, [21, 22, 23, 24]),  # G = 2 samples of each prompt
        (LENGTHS[:1], [5]),  # one image, padded with dummy rows to the compiled bucket
    ],
    ids=["padded-lengths", "g-repeats", "single"],
)
def test_compiled_backend_draws_the_eager_samples_with_cfg_temperature_top_k_and_top_p(compiled_tiny, captions, seeds):
    policy, config = compiled_tiny
    prompts = policy.encode_prompts(captions)
    eager, compiled = sample_both(policy, prompts, config, seeds, min_bucket=4)
    assert_same_samples(eager, compiled)
    if len(set(captions)) < len(captions):  # repeats of a prompt still draw different images
        assert len({tuple(c.flatten().tolist()) for c in compiled.codes}) == len(captions)


def test_grouped_decode_attention_equals_transformers_sdpa_without_expanding_the_cache():
    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    query, key, value = torch.randn(2, 6, 1, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    mask = torch.rand(2, 1, 1, 10) > 0.3
    mask[..., 0] = True
    expanded = F.scaled_dot_product_attention(query, repeat_kv(key, 3), repeat_kv(value, 3), attn_mask=mask, scale=0.3)
    expected = expanded.transpose(1, 2)  # [batch, 1, heads, dim], as transformers' attention returns it
    grouped, _ = static_sampler._grouped_query_attention(module, query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(grouped, expected, atol=1e-6, rtol=0)


def test_batches_of_one_bucket_reuse_one_compiled_graph(compiled_tiny):
    policy, config = compiled_tiny
    before = COMPILE_STATS.compiles
    for captions, seeds in ((LENGTHS, [1, 2, 3]), (REPEATS * 2, [4, 5, 6, 7]), (REPEATS[:1], [8])):
        sample_images(policy.model, policy.vocab, policy.encode_prompts(captions), policy.encode_uncond(),
                      config, seeds, pad_id=policy.pad_id, backend="compiled", min_bucket=4)
    assert COMPILE_STATS.compiles == before, "a batch of the same bucket, grid and settings compiled a new graph"
    assert COMPILE_STATS.seconds > 0
    assert policy.model.config._attn_implementation == "sdpa", "the decode loop's attention leaked out of it"


def test_a_lora_wrapped_policy_with_cfg_off_draws_the_eager_samples(compiled_tiny):
    policy, _ = compiled_tiny
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = get_peft_model(copy.deepcopy(policy.model), lora)
    config = SamplingConfig(cfg_scale=1.0, temperature=1.3)  # no uncond rows at all
    prompts = policy.encode_prompts(LENGTHS)
    eager, compiled = sample_both(policy, prompts, config, [31, 32, 33], model=wrapped)
    assert_same_samples(eager, compiled)
    (engine,) = static_sampler._ENGINES[decoder_of(wrapped)].values()
    assert engine.rows == engine.images == 4, "without CFG the static cache holds cond rows only (3 images -> bucket 4)"
    base = sample_images(policy.model, policy.vocab, prompts, None, config, [31, 32, 33], pad_id=policy.pad_id)
    assert not torch.allclose(base.logprobs, compiled.logprobs), "the adapter had no effect: the test proves nothing"


def test_rows_are_padded_to_buckets_of_powers_of_two_then_multiples_of_eight():
    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17, 64, 65)] == [1, 2, 4, 4, 8, 8, 16, 16, 24, 64, 72]
    assert PROMPT_BLOCK == 64
    with pytest.raises(ValueError, match="at least one image"):
        batch_bucket(0)


def test_auto_backend_is_compiled_on_cuda_and_eager_on_cpu():
    assert resolve_backend("auto", "cuda") == "compiled"
    assert resolve_backend("auto", "cpu") == "eager"
    assert resolve_backend("compiled", "cpu") == "compiled"


def test_an_unknown_backend_is_refused_naming_the_choices():
    policy = build_tiny_policy(grid=(2, 2))
    with pytest.raises(ValueError, match="unknown rollout backend 'fast'; use one of eager, compiled, auto"):
        sample_images(policy.model, policy.vocab, policy.encode_prompts(LENGTHS[:1]), None, SamplingConfig(), [1],
                      backend="fast")


@pytest.mark.slow
def test_bf16_rollouts_under_autocast_and_on_bf16_weights_stay_within_bf16_rounding_of_eager():
    """GRPO's bf16 rollouts (autocast over fp32 weights) and a bf16 model whose head has a bias (the fp32 head is a
    float32 copy then): each gets its own cache and graph."""
    policy = build_tiny_policy(grid=(4, 4), seed=2, hidden_size=64)
    config = SamplingConfig(cfg_scale=3.0)
    prompts = policy.encode_prompts(LENGTHS)
    for cast_weights in (False, True):
        if cast_weights:
            weight = policy.model.get_input_embeddings().weight.detach().clone()
            head = torch.nn.Linear(weight.size(1), weight.size(0))
            head.weight = torch.nn.Parameter(weight)
            torch.nn.init.normal_(head.bias, std=0.5)
            policy.model.set_output_embeddings(head)
            policy.model.config.tie_word_embeddings = False
            policy.model.to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not cast_weights):
            eager, compiled = sample_both(policy, prompts, config, [1, 2, 3], fp32_head=True)
        assert (compiled.codes == eager.codes).float().mean() > 0.9
        assert (compiled.logprobs - eager.logprobs).abs().max() < 0.05  # bf16 rounding, not another distribution


@pytest.mark.slow  # a second compilation: tens of seconds on CPU
def test_prompts_longer_than_the_prompt_block_rebuild_the_cache_compile_once_more_and_draw_the_eager_samples(
        compiled_tiny):
    """A prompt past PROMPT_BLOCK tokens outgrows the bucket's static cache: it is rebuilt at the next multiple of the
    block, the decode step compiles for that shape, and the samples are still the eager loop's; the next call of
    the same shape reuses both. (Last in the file: it grows the shared fixture's engine.)"""
    policy, config = compiled_tiny
    prompts = policy.encode_prompts([" ".join(["a", "red", "square"] * 30), *REPEATS, "cat"])  # the fixture's bucket
    assert max(len(p) for p in prompts) > PROMPT_BLOCK
    engines = static_sampler._ENGINES[decoder_of(policy.model)]
    assert max(e.capacity for e in engines.values()) == PROMPT_BLOCK
    before = COMPILE_STATS.compiles
    eager, compiled = sample_both(policy, prompts, config, [41, 42, 43, 44])
    assert_same_samples(eager, compiled)
    assert max(e.capacity for e in engines.values()) == 2 * PROMPT_BLOCK, "the cache was not rebuilt larger"
    assert COMPILE_STATS.compiles > before, "the decode step ran on the larger cache without a new graph"
    settled = COMPILE_STATS.compiles
    again = sample_images(policy.model, policy.vocab, prompts, policy.encode_uncond(), config, [41, 42, 43, 44],
                          pad_id=policy.pad_id, backend="compiled")
    assert torch.equal(again.codes, compiled.codes)
    assert COMPILE_STATS.compiles == settled
