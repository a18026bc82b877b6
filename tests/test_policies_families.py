"""Janus and Emu3 policies through the policy-family interface: the same guarantees as the SimpleAR path.

Tiny random checkpoints of transformers' own classes (``policies/tiny_families.py``) are saved to a
folder and loaded with ``load_policy``; every reference below is computed from the family's own
modules (Janus: language model + generation head; Emu3: the causal LM's full-vocabulary logits) or
from its own ``generate()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LogitsProcessor

from policies import SamplingConfig, load_policy, sample_images
from policies.codecs import build_codec
from policies.families import Emu3Family, JanusFamily, family_for_model_type
from policies.scoring import guided_token_logprobs
from policies.tiny_families import save_tiny_emu3, save_tiny_janus
from rl.curves import read_metrics

CONFIG = SamplingConfig(cfg_scale=4.0, temperature=0.9, top_k=20)
PLUGIN = Path(__file__).resolve().parent / "plugins" / "simplear_rl_example_plugin"


@pytest.fixture(scope="module")
def janus(tmp_path_factory):
    return load_policy(save_tiny_janus(tmp_path_factory.mktemp("janus") / "ckpt"))


@pytest.fixture(scope="module")
def emu3(tmp_path_factory):
    return load_policy(save_tiny_emu3(tmp_path_factory.mktemp("emu3") / "ckpt", grid=(3, 4)), grid=(3, 4))


def guided_reference(cond: torch.Tensor, uncond: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Log-probs of the sampled distribution from two rows of visual logits (log-softmax guidance, then T, top-k)."""
    c, u = cond.double().log_softmax(-1), uncond.double().log_softmax(-1)
    scores = (u + config.cfg_scale * (c - u)) / config.temperature
    kth = scores.sort(-1, descending=True).values[..., config.top_k - 1 : config.top_k]
    return torch.where(scores >= kth, scores, -torch.inf).log_softmax(-1)


def janus_first_step_logits(policy, prompt: list[int]) -> torch.Tensor:
    """The Janus generation head on the language model's last hidden state, from the family's own modules."""
    model = policy.model
    with torch.no_grad():
        embeds = model.get_input_embeddings()(torch.tensor([prompt]))
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
        return model.model.generation_head(hidden)[0]


def emu3_first_step_logits(policy, prompt: list[int]) -> torch.Tensor:
    """The visual columns of Emu3's own full-vocabulary logits."""
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([prompt])).logits[0, -1]
    return logits[policy.vocab.offset : policy.vocab.vocab_size]


FIRST_STEP = {"janus": janus_first_step_logits, "emu3": emu3_first_step_logits}


@pytest.fixture(params=["janus", "emu3"])
def family_policy(request):
    return request.param, request.getfixturevalue(request.param)


def first_step_reference(name, policy, caption="a red square"):
    prompt = policy.encode_prompts([caption])[0]
    uncond = policy.uncond_prompts([prompt])[0]
    logits = FIRST_STEP[name]
    return guided_reference(logits(policy, prompt), logits(policy, uncond), CONFIG)


# ------------------------------------------------------------------------------------------- distribution


def test_families_are_chosen_from_the_model_type_and_unknown_ones_are_named():
    assert isinstance(family_for_model_type("janus"), JanusFamily)
    assert isinstance(family_for_model_type("emu3"), Emu3Family)
    with pytest.raises(ValueError, match=r"'llava'.*simplear \(qwen2\), janus \(janus\), emu3 \(emu3\)"):
        family_for_model_type("llava")


def first_tokens(policy, n: int):
    """``n`` one-token images of one caption, each from its own seed."""
    prompts = policy.encode_prompts(["a red square"] * n)
    return sample_images(policy.model, policy.vocab, prompts, policy.uncond_prompts(prompts), CONFIG,
                         seeds=list(range(n)), pad_id=policy.pad_id, grid=(1, 1))


def test_sampled_first_tokens_carry_the_log_probs_of_the_familys_own_guided_distribution(family_policy):
    name, policy = family_policy
    ref = first_step_reference(name, policy)
    rollout = first_tokens(policy, 64)
    first = rollout.codes.flatten()
    torch.testing.assert_close(rollout.logprobs[:, 0].double(), ref[first], atol=1e-5, rtol=0)


def test_first_token_frequencies_follow_the_familys_guided_distribution(family_policy):
    name, policy = family_policy
    ref = first_step_reference(name, policy)
    n = 3000
    rollout = first_tokens(policy, n)
    freq = torch.bincount(rollout.codes.flatten(), minlength=policy.vocab.codebook_size).double() / n
    assert (freq[~torch.isfinite(ref)] == 0).all(), "sampled outside the top-k set"
    assert 0.5 * (freq - ref.exp()).abs().sum().item() < 0.05


class _Recorder(LogitsProcessor):
    """Appended after generate()'s warpers: sees the processed scores of every step."""

    def __init__(self):
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append(scores.detach().clone())
        return scores


def test_janus_first_step_equals_the_processed_scores_of_its_own_generate(janus):
    """Janus's generate(generation_mode="image") guides raw logits (u + s(c - u)); the distribution is ours."""
    model, recorder = janus.model, _Recorder()
    original = model._get_logits_processor
    model._get_logits_processor = lambda *a, **k: (lambda lp: (lp.append(recorder), lp)[1])(original(*a, **k))
    try:
        prompt = janus.encode_prompts(["a red square"])[0]
        model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                       generation_mode="image", do_sample=True, guidance_scale=CONFIG.cfg_scale,
                       temperature=CONFIG.temperature, top_k=CONFIG.top_k, top_p=1.0)
    finally:
        model._get_logits_processor = original
    theirs = recorder.seen[0][0].double().log_softmax(-1)
    ours = first_step_reference("janus", janus)
    assert torch.equal(torch.isfinite(theirs), torch.isfinite(ours))
    torch.testing.assert_close(theirs[torch.isfinite(theirs)], ours[torch.isfinite(ours)], atol=1e-5, rtol=0)


def test_emu3_first_step_equals_the_processed_scores_of_its_own_generate(emu3):
    """Emu3's generate() with a negative prompt guides full-vocabulary log-softmaxes; restricted to the visual
    tokens (its constraint at the first image step), the distribution is ours."""
    prompt = emu3.encode_prompts(["a red square"])[0]
    uncond = emu3.uncond_prompts([prompt])[0]
    visual = list(range(emu3.vocab.offset, emu3.vocab.vocab_size))
    out = emu3.model.generate(
        input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=1, do_sample=True, guidance_scale=CONFIG.cfg_scale, negative_prompt_ids=torch.tensor([uncond]),
        negative_prompt_attention_mask=torch.ones(1, len(uncond), dtype=torch.long),
        prefix_allowed_tokens_fn=lambda batch, ids: visual, temperature=CONFIG.temperature, top_k=CONFIG.top_k,
        return_dict_in_generate=True, output_scores=True,
    )
    theirs = out.scores[0][0, emu3.vocab.offset :].double().log_softmax(-1)
    ours = first_step_reference("emu3", emu3)
    assert torch.equal(torch.isfinite(theirs), torch.isfinite(ours))
    torch.testing.assert_close(theirs[torch.isfinite(theirs)], ours[torch.isfinite(ours)], atol=1e-5, rtol=0)


def test_janus_images_come_from_the_generation_head(janus):
    """The first-step tests show the sampler's log-probs ARE the generation head's; changing that head (and only
    it) changes them, while Janus's text head has no rows for image codes at all."""
    prompts = janus.encode_prompts(["a red square"] * 4)
    args = (janus.vocab, prompts, janus.uncond_prompts(prompts), CONFIG)
    before = sample_images(janus.model, *args, seeds=[0, 1, 2, 3], pad_id=janus.pad_id)
    weight = janus.model.model.generation_head.vision_head.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(torch.randn_like(weight))
        after = sample_images(janus.model, *args, seeds=[0, 1, 2, 3], pad_id=janus.pad_id)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert not torch.allclose(before.logprobs, after.logprobs)
    assert janus.model.lm_head.weight.size(0) == janus.vocab.text_vocab_size


def test_janus_uncond_rows_keep_bos_and_the_image_tag_and_pad_the_rest(janus):
    prompt = janus.encode_prompts(["a red square on the left"])[0]
    (uncond,) = janus.uncond_prompts([prompt])
    assert len(uncond) == len(prompt) and uncond[0] == prompt[0] and uncond[-1] == prompt[-1]
    assert set(uncond[1:-1]) == {janus.pad_id}


# ------------------------------------------------------------------------------- batching and seeds


def test_left_padded_batches_give_each_prompt_its_own_samples(family_policy):
    _, policy = family_policy
    captions = ["a red square", "two blue circles on the left of a green triangle"]
    prompts = policy.encode_prompts(captions)
    alone = [sample_images(policy.model, policy.vocab, [p], policy.uncond_prompts([p]), CONFIG, seeds=[s],
                           pad_id=policy.pad_id) for p, s in zip(prompts, (5, 6))]
    batch = sample_images(policy.model, policy.vocab, prompts, policy.uncond_prompts(prompts), CONFIG, seeds=[5, 6],
                          pad_id=policy.pad_id)
    for i, single in enumerate(alone):
        assert torch.equal(batch.codes[i], single.codes[0])
        torch.testing.assert_close(batch.logprobs[i], single.logprobs[0], atol=1e-5, rtol=0)


def test_same_seeds_give_the_same_images_and_other_seeds_other_ones(family_policy):
    _, policy = family_policy
    prompts = policy.encode_prompts(["a red square"] * 3)
    run = lambda seeds: sample_images(policy.model, policy.vocab, prompts, policy.uncond_prompts(prompts), CONFIG,  # noqa: E731
                                      seeds=seeds, pad_id=policy.pad_id)
    a, b, c = run([1, 2, 3]), run([1, 2, 3]), run([4, 5, 6])
    assert torch.equal(a.codes, b.codes) and torch.equal(a.token_ids, b.token_ids)
    assert not torch.equal(a.codes, c.codes)


def test_the_trainer_scores_sampled_completions_with_the_samplers_log_probs(family_policy):
    _, policy = family_policy
    prompts = policy.encode_prompts(["a red square", "a blue circle on the right"])
    uncond = policy.uncond_prompts(prompts)
    rollout = sample_images(policy.model, policy.vocab, prompts, uncond, CONFIG, seeds=[3, 4], pad_id=policy.pad_id)
    logps, entropy = guided_token_logprobs(policy.model, policy.vocab, prompts, uncond, rollout.token_ids, CONFIG,
                                           pad_id=policy.pad_id, chunk_size=5)
    torch.testing.assert_close(logps, rollout.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, rollout.entropy, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- Emu3 rows


def test_emu3_forced_end_of_line_ends_every_row_and_is_never_drawn_or_scored(emu3):
    h, w = emu3.vocab.grid
    prompts = emu3.encode_prompts(["a red square", "a blue circle"])
    rollout = sample_images(emu3.model, emu3.vocab, prompts, emu3.uncond_prompts(prompts), CONFIG, seeds=[1, 2],
                            pad_id=emu3.pad_id)
    eol = emu3.model.config.vocabulary_map["<|extra_200|>"]
    rows = rollout.token_ids.view(2, h, w + 1)
    assert (rows[..., -1] == eol).all() and (rows[..., :-1] != eol).all()
    assert torch.equal(rows[..., :-1] - emu3.vocab.offset, rollout.codes)
    forced = rollout.token_ids == eol
    assert (rollout.logprobs[forced] == 0).all() and (rollout.entropy[forced] == 0).all()
    assert (rollout.logprobs[~forced] < 0).all()


def test_decoded_images_have_the_size_of_the_grid_times_the_vq_downsampling(family_policy, tmp_path):
    _, policy = family_policy
    codec = build_codec("vqvae", path=policy.model.config._name_or_path)
    prompts = policy.encode_prompts(["a red square"])
    rollout = sample_images(policy.model, policy.vocab, prompts, policy.uncond_prompts(prompts), CONFIG, seeds=[0],
                            pad_id=policy.pad_id)
    images = codec.decode(rollout.codes)
    h, w = policy.vocab.grid
    assert images.shape == (1, 3, h * codec.downsample, w * codec.downsample)
    assert images.min() >= -1 and images.max() <= 1


# ------------------------------------------------------------------------------------- GRPO and CLI


def grpo_argv(folder, out, *extra):
    """The tiny GRPO recipe on a family checkpoint, rewarded by mean brightness (it varies on random-weight
    images, so the groups have advantages)."""
    repo = Path(__file__).resolve().parents[1]
    recipe = yaml.safe_load((repo / "recipes/tiny/grpo.yaml").read_text())
    recipe["rewards"] = [{"name": "simplear_rl_example_plugin:brightness", "weight": 1.0}]
    path = Path(out).parent / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return ["--config", str(path), "--train_prompts", str(repo / "recipes/tiny/prompts.jsonl"),
            "--model_name_or_path", str(folder), "--codec", "vqvae", "--output_dir", str(out), "--max_steps", "2",
            "--save_steps", "2", "--sample_every", "0", "--learning_rate", "1e-3", *extra]


@pytest.mark.parametrize("name", ["janus", "emu3"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_tiny_grpo_runs_score_exactly_what_they_sampled(name, lora, request, tmp_path, monkeypatch):
    from rl.grpo import main as grpo_main

    monkeypatch.syspath_prepend(str(PLUGIN))  # the example plugin's brightness reward, by dotted path

    folder = request.getfixturevalue(name).model.config._name_or_path
    extra = ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"] if lora else []
    resolution = "64"  # Janus: 4x4 codes x 16 px; Emu3: 8x8 codes x 8 px
    assert grpo_main(grpo_argv(folder, tmp_path / "run", "--resolution", resolution, *extra)) == 0
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["sampling/logprob_gap/max"] < 1e-4
        assert row["grad_norm"] > 0
    saved = tmp_path / "run"
    if lora:
        config = json.loads((saved / "adapter_config.json").read_text())
        assert ("language_model" if name == "janus" else "text_model") in config["target_modules"]
    else:
        again = load_policy(saved)
        assert again.family.name == name and again.vocab.codebook_size == 64


@pytest.mark.parametrize("name", ["janus", "emu3"])
def test_generate_and_eval_run_on_tiny_family_checkpoints_from_the_cli(name, request, tmp_path):
    from policies.generate import main as generate_main
    from rl.evaluate import main as eval_main

    folder = request.getfixturevalue(name).model.config._name_or_path
    out = tmp_path / "gen"
    assert generate_main(["--model", str(folder), "--prompts", "a red square", "--num_images", "2", "--out", str(out),
                          "--resolution", "64"]) == 0
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["codec"]["name"] == "vqvae"
    assert records[0]["cfg_scale"] == (5.0 if name == "janus" else 3.0)  # the family's own default
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text(json.dumps({"prompt": "a photo of a cat", "tag": "single_object",
                                    "include": [{"class": "cat", "count": 1}]}) + "\n")
    assert eval_main(["geneval", "--model", str(folder), "--prompts", str(metadata), "--out", str(tmp_path / "eval"),
                      "--resolution", "64", "--num_images", "1"]) == 0
    assert len(list((tmp_path / "eval").rglob("samples/*.png"))) == 1  # GenEval layout: <index>/samples/0000.png


def test_the_compiled_backend_serves_simplear_only_and_auto_picks_eager_for_other_families(janus, emu3):
    from policies.sampler import eager_only_reason, resolve_backend
    from policies.tiny import build_tiny_policy

    assert eager_only_reason(build_tiny_policy(hidden_size=16, num_hidden_layers=1).model) is None
    for policy in (janus, emu3):
        reason = eager_only_reason(policy.model)
        assert resolve_backend("auto", "cuda", reason) == "eager"
        with pytest.raises(ValueError, match=f"does not serve the {policy.family.name} policy family"):
            resolve_backend("compiled", "cpu", reason)


def test_pretraining_refuses_family_checkpoints_it_cannot_train(janus):
    from pretrain_sft.config import PolicyArguments
    from pretrain_sft.policy_init import check_start_path

    with pytest.raises(ValueError, match="janus checkpoint: pretraining and SFT train SimpleAR-style"):
        check_start_path(PolicyArguments(model_name_or_path=janus.model.config._name_or_path))


def test_emu3_row_ends_are_handed_to_trl_outside_the_loss_mask(emu3, tmp_path, monkeypatch):
    """TRL multiplies its loss mask by the tool mask ``_generate`` returns: 0 exactly at the forced row ends."""
    from rl.grpo import build_parser, build_trainer

    monkeypatch.syspath_prepend(str(PLUGIN))
    argv = grpo_argv(emu3.model.config._name_or_path, tmp_path / "run", "--resolution", "32")  # 4x4 codes x 8 px
    trainer = build_trainer(*build_parser().parse_args_and_config(argv))
    _, completion_ids, loss_mask, *_ = trainer._generate(["a red square", "a blue circle"])
    eol = emu3.model.config.vocabulary_map["<|extra_200|>"]
    for ids, mask in zip(completion_ids, loss_mask):
        assert len(ids) == 4 * 5 and [t == eol for t in ids] == [m == 0 for m in mask]
    assert trainer.args.max_completion_length == 20
