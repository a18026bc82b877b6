"""Rollout weights: a bf16 snapshot of the decoder's linear weights samples exactly what bf16 autocast over the fp32
masters samples (log-probs within 1e-6), sees every optimizer update, and is chosen only where it can serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from policies.guidance import SamplingConfig
from policies.heads import decoder_of
from policies.rollout_weights import RolloutSnapshot, RolloutWeights, use_snapshot
from policies.sampler import sample_images
from policies.tiny import build_tiny_policy
from rl.curves import read_metrics
from rl.grpo import build_parser, build_trainer

REPO = Path(__file__).resolve().parents[1]
CONFIG = SamplingConfig(cfg_scale=3.0, temperature=0.9)
CAPTIONS = ["a red square", "two small blue circles in the upper left corner", "cat"]


def bf16_rollout(policy, model, backend="eager", seeds=(3, 4, 5)):
    """A rollout under bf16 autocast (as GRPO runs them) with the visual head in fp32 (GRPO's default)."""
    prompts = policy.encode_prompts(CAPTIONS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return sample_images(model, policy.vocab, prompts, policy.encode_uncond(), CONFIG, list(seeds),
                             pad_id=policy.pad_id, fp32_head=True, backend=backend)


def assert_same_rollout(a, b):
    assert torch.equal(a.codes, b.codes)
    assert (a.logprobs - b.logprobs).abs().max().item() <= 1e-6
    assert (a.entropy - b.entropy).abs().max().item() <= 1e-6


@pytest.fixture
def policy():
    return build_tiny_policy(grid=(4, 4), seed=7, hidden_size=64)


def test_snapshot_holds_bf16_linear_weights_and_shares_every_other_tensor(policy):
    snapshot = RolloutSnapshot(policy.model)
    snapshot.refresh()
    masters = dict(policy.model.named_parameters())
    linear = 0
    for name, param in snapshot.model.named_parameters(remove_duplicate=False):
        master = masters.get(name, policy.model.get_parameter(name))
        if name.startswith("model.layers.") and name.rsplit(".", 2)[-2].endswith("proj"):
            linear += 1
            assert param.dtype == torch.bfloat16 and torch.equal(param, master.to(torch.bfloat16)), name
        else:
            assert param is master, f"{name} should be the policy's own tensor"
    assert linear == 2 * 7 + 2 * 3  # 7 projections per layer, q/k/v with biases
    assert snapshot.nbytes == sum(p.numel() * 2 for n, p in snapshot.model.named_parameters() if p.dtype == torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in policy.model.parameters()), "the masters stay fp32"


def test_eager_snapshot_rollout_equals_autocast_over_the_masters(policy):
    snapshot = RolloutSnapshot(policy.model)
    snapshot.refresh()
    assert_same_rollout(bf16_rollout(policy, policy.model), bf16_rollout(policy, snapshot.model))


def test_compiled_snapshot_rollout_equals_compiled_autocast_over_the_masters(policy):
    snapshot = RolloutSnapshot(policy.model)
    snapshot.refresh()
    assert_same_rollout(bf16_rollout(policy, policy.model, "compiled"), bf16_rollout(policy, snapshot.model, "compiled"))


@pytest.mark.parametrize("kind", ["fused", "foreach", "for-loop"])
def test_snapshot_sees_each_optimizer_update_and_a_stale_one_would_differ(policy, kind):
    """Fused AdamW (the Trainer's default) updates in place without bumping the tensors' version counters."""
    model = policy.model
    snapshot = RolloutSnapshot(model)
    assert snapshot.refresh() and not snapshot.refresh(), "a second refresh with unchanged masters copies nothing"
    flags = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[kind]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, **flags)
    ids = torch.tensor([policy.encode_prompts(CAPTIONS)[0]])
    for step in range(3):
        stale = bf16_rollout(policy, snapshot.model)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert snapshot.stale(), f"step {step}: the optimizer step went unnoticed"
        fresh_autocast = bf16_rollout(policy, model)
        assert (stale.logprobs - fresh_autocast.logprobs).abs().max().item() > 1e-3, "a stale snapshot must show"
        assert snapshot.refresh()
        assert_same_rollout(bf16_rollout(policy, snapshot.model), fresh_autocast)
    assert snapshot.refreshes == 4


def test_an_in_place_edit_outside_an_optimizer_makes_the_snapshot_stale(policy):
    snapshot = RolloutSnapshot(policy.model)
    snapshot.refresh()
    with torch.no_grad():
        decoder_of(policy.model).layers[0].mlp.up_proj.weight.mul_(2)
    assert snapshot.stale() and snapshot.refresh()
    assert_same_rollout(bf16_rollout(policy, snapshot.model), bf16_rollout(policy, policy.model))


def test_snapshot_follows_train_and_eval_mode(policy):
    snapshot = RolloutSnapshot(policy.model)
    policy.model.train()
    snapshot.refresh()
    assert decoder_of(snapshot.model).training
    policy.model.eval()
    snapshot.refresh()
    assert not any(m.training for m in snapshot.model.modules())


def test_auto_picks_the_snapshot_only_for_compiled_bf16_rollouts_of_a_whole_policy(policy):
    model = policy.model
    assert use_snapshot("auto", "compiled", True, model)
    assert not use_snapshot("auto", "eager", True, model)
    assert not use_snapshot("auto", "compiled", False, model)
    assert not use_snapshot("autocast", "compiled", True, model)
    assert use_snapshot("snapshot", "eager", True, model)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert not use_snapshot("auto", "compiled", True, lora)
    with pytest.raises(ValueError, match="rollout_weights: snapshot cannot serve a PEFT"):
        use_snapshot("snapshot", "compiled", True, lora)
    with pytest.raises(ValueError, match="rollout_weights must be one of autocast, snapshot, auto"):
        RolloutWeights("bf16", True)


def test_snapshot_with_float32_rollouts_is_refused_in_the_recipe():
    argv = ["--config", str(REPO / "recipes" / "tiny" / "grpo.yaml"), "--rollout_weights", "snapshot"]
    with pytest.raises(ValueError, match="rollout_weights: snapshot needs bf16 rollouts"):
        build_parser().parse_args_and_config(argv)


def grpo_run(out: Path, weights: str):
    argv = ["--config", str(REPO / "recipes" / "tiny" / "grpo.yaml"), "--train_prompts",
            str(REPO / "recipes" / "tiny" / "prompts.jsonl"), "--output_dir", str(out), "--save_steps", "1000",
            "--sample_every", "0", "--max_steps", "2", "--bf16", "true", "--use_cpu", "true", "--learning_rate",
            "1e-3", "--rollout_backend", "eager", "--rollout_weights", weights]
    script, args, model_args = build_parser().parse_args_and_config(argv)
    trainer = build_trainer(script, args, model_args)
    trainer.train()
    return trainer, read_metrics(out)


@pytest.mark.slow
def test_grpo_with_a_snapshot_trains_exactly_as_with_autocast_refreshing_once_per_step(tmp_path):
    """Two tiny bf16 GRPO steps (the Trainer's fused AdamW in between): the same rewards, gaps and losses as autocast."""
    _, autocast = grpo_run(tmp_path / "autocast", "autocast")
    trainer, snapshot = grpo_run(tmp_path / "snapshot", "snapshot")
    assert trainer._rollout_weights.snapshot.refreshes == 2  # step 0's rollout, and step 1's after the update
    keys = ["reward", "sampling/logprob_gap/mean", "sampling/logprob_gap/max", "entropy/visual_sampler", "loss"]
    for a, s in zip(autocast, snapshot, strict=True):
        assert [a[k] for k in keys] == [s[k] for k in keys], a["step"]
