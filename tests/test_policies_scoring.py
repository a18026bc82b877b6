"""Guided scoring (the trainer's log-probs) agrees with the sampler and is differentiable."""

from __future__ import annotations

import pytest
import torch

from policies.guidance import SamplingConfig
from policies.sampler import sample_images
from policies.scoring import guided_token_logprobs
from policies.tiny import build_tiny_policy
from policies.vocab import VisualTokenError

CAPTIONS = ["a red square on the left", "two blue circles", "a large green triangle in the center"]
SEEDS = [3, 4, 5]


@pytest.fixture(scope="module")
def policy():
    return build_tiny_policy(grid=(4, 6), seed=2)


def rollout_and_prompts(policy, config):
    prompts = policy.encode_prompts(CAPTIONS)
    uncond = policy.encode_uncond()
    rollout = sample_images(policy.model, policy.vocab, prompts, uncond, config, SEEDS, pad_id=policy.pad_id)
    return rollout, prompts, [uncond] * len(prompts)


@pytest.mark.parametrize(
    "config",
    [SamplingConfig(cfg_scale=4.0), SamplingConfig(cfg_scale=6.0, temperature=0.9, top_k=25), SamplingConfig()],
    ids=["cfg", "cfg-topk", "no-cfg"],
)
def test_guided_logprobs_equal_the_samplers_logprobs(policy, config):
    rollout, prompts, unconds = rollout_and_prompts(policy, config)
    with torch.no_grad():
        logps, entropy = guided_token_logprobs(
            policy.model, policy.vocab, prompts, unconds, rollout.token_ids, config, pad_id=policy.pad_id
        )
    assert logps.shape == rollout.token_ids.shape
    torch.testing.assert_close(logps, rollout.logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(entropy, rollout.entropy, atol=1e-4, rtol=0)


def test_chunk_size_does_not_change_the_scores(policy):
    config = SamplingConfig(cfg_scale=3.0)
    rollout, prompts, unconds = rollout_and_prompts(policy, config)
    args = (policy.model, policy.vocab, prompts, unconds, rollout.token_ids, config)
    with torch.no_grad():
        whole, _ = guided_token_logprobs(*args, pad_id=policy.pad_id)
        chunked, _ = guided_token_logprobs(*args, pad_id=policy.pad_id, chunk_size=5)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


def test_guided_logprobs_are_differentiable_through_both_branches(policy):
    config = SamplingConfig(cfg_scale=4.0)
    rollout, prompts, unconds = rollout_and_prompts(policy, config)
    policy.model.zero_grad(set_to_none=True)
    logps, _ = guided_token_logprobs(
        policy.model, policy.vocab, prompts, unconds, rollout.token_ids, config, pad_id=policy.pad_id, chunk_size=8
    )
    assert logps.requires_grad
    logps.sum().backward()
    grads = {name: p.grad for name, p in policy.model.named_parameters()}
    policy.model.zero_grad(set_to_none=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    # The head is tied to the embedding: its visual rows get gradient from the scored slice.
    embed_grad = grads["model.embed_tokens.weight"]
    assert embed_grad[policy.vocab.offset :].abs().sum() > 0


def test_guided_scoring_with_cfg_needs_one_uncond_prompt_per_row(policy):
    config = SamplingConfig(cfg_scale=4.0)
    rollout, prompts, unconds = rollout_and_prompts(policy, config)
    for bad in (None, unconds[:1]):
        with pytest.raises(ValueError, match="needs one uncond prompt per row"):
            guided_token_logprobs(policy.model, policy.vocab, prompts, bad, rollout.token_ids, config)


def test_guided_scoring_refuses_completions_with_text_tokens(policy):
    config = SamplingConfig()
    rollout, prompts, _ = rollout_and_prompts(policy, config)
    completion = rollout.token_ids.clone()
    completion[1, 2] = 5
    with pytest.raises(VisualTokenError, match="1 of"):
        guided_token_logprobs(policy.model, policy.vocab, prompts, None, completion, config)


def test_scoring_runs_inside_one_forward_of_the_outermost_module_through_the_head_module():
    """ZeRO-3 / FSDP2 gather weights in module hooks and reshard after the root's forward: the visual slice must
    be computed by the head MODULE, inside ONE forward of the outermost module (never a second head call after it).
    """
    from policies.tiny import build_tiny_policy

    policy = build_tiny_policy(hidden_size=32, num_hidden_layers=1)
    head_module = policy.model.get_output_embeddings()
    events = []
    hooks = [
        policy.model.register_forward_pre_hook(lambda m, a: events.append("model")),
        policy.model.register_forward_hook(lambda m, a, out: events.append("model done")),
        head_module.register_forward_pre_hook(lambda m, a: events.append("head")),
        head_module.register_forward_hook(lambda m, a, out: events.append(("head done", tuple(out.shape)))),
    ]
    config = SamplingConfig(cfg_scale=3.0)
    completion = policy.vocab.codes_to_tokens(torch.randint(0, policy.vocab.codebook_size, (2, 5)))
    prompts = [policy.encode_prompts(["a red square"])[0]] * 2
    try:
        logps, _ = guided_token_logprobs(policy.model, policy.vocab, prompts, [policy.encode_uncond()] * 2, completion,
                                         config, chunk_size=2)
    finally:
        for h in hooks:
            h.remove()
    # One forward; the head is called once inside it and returns the stacked (log-prob, entropy) of every token.
    assert events == ["model", "head", ("head done", (2, 5, 2)), "model done"]
    assert logps.shape == (2, 5)
    assert "forward" not in head_module.__dict__  # the swap is undone

