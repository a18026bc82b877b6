"""GRPO numerics at real settings: fp32 master weights under bf16 compute, bf16 rollouts, and TRL's
importance-sampling correction of the sampler-trainer mismatch (on the tiny recipe, CPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

from rl.curves import read_metrics
from rl.grpo import build_parser, build_trainer, main as grpo_main

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny" / "grpo.yaml"
PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"
REAL_RECIPES = sorted((REPO / "recipes" / "simplear_0.5b").glob("grpo_*.yaml"))
#: The recipes' numerics on a CPU: bf16 autocast over fp32 weights, lr 1e-6, constant schedule.
BF16_LR_1E6 = ["--bf16", "true", "--use_cpu", "true", "--learning_rate", "1e-6", "--lr_scheduler_type", "constant",
               "--warmup_steps", "0"]
LORA = ["--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "q_proj", "v_proj"]


def argv(out: Path, *extra: str) -> list[str]:
    return ["--config", str(RECIPE), "--train_prompts", str(PROMPTS), "--output_dir", str(out), "--save_steps", "1000",
            "--sample_every", "0", *extra]


def parse(*extra: str):
    return build_parser().parse_args_and_config(["--config", str(RECIPE), *extra])


class StepRecorder(TrainerCallback):
    """The trainable weights before training and their gradients (after clipping) at the first optimizer step."""

    def __init__(self):
        self.initial: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.initial = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.grads:
            self.grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def one_optimizer_step(out: Path, *extra: str):
    """Run one GRPO step; returns (trainer, recorder)."""
    script, args, model_args = build_parser().parse_args_and_config(argv(out, "--max_steps", "1", *extra))
    recorder = StepRecorder()
    trainer = build_trainer(script, args, model_args, callbacks=[recorder])
    trainer.train()
    return trainer, recorder


def fp32_reference_update(recorder: StepRecorder, args) -> dict[str, torch.Tensor]:
    """The update an fp32 AdamW step makes from the same weights and gradients."""
    params = {n: torch.nn.Parameter(w.clone()) for n, w in recorder.initial.items()}
    optimizer = torch.optim.AdamW(
        params.values(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
        weight_decay=args.weight_decay, foreach=False,
    )
    for n, p in params.items():
        p.grad = recorder.grads[n].clone()
    optimizer.step()
    return {n: p.detach() - recorder.initial[n] for n, p in params.items()}


def update_agreement(trainer, recorder: StepRecorder) -> tuple[float, float]:
    """(fraction of the elements the reference step changes that the real step also changed, relative error)."""
    reference = fp32_reference_update(recorder, trainer.args)
    final = {n: p.detach().float() for n, p in trainer.model.named_parameters() if p.requires_grad}
    kept = changed = 0
    err = norm = 0.0
    for n, ref in reference.items():
        actual = final[n] - recorder.initial[n]
        moved = ref != 0
        changed += int(moved.sum())
        kept += int((moved & (actual != 0)).sum())
        err += float(((actual - ref) ** 2).sum())
        norm += float((ref**2).sum())
    assert changed > 0, "the reference step moved nothing"
    return kept / changed, (err / norm) ** 0.5


# ------------------------------------------------------------------------- master weights
def test_real_recipes_load_fp32_master_weights_and_compute_in_bf16():
    for recipe in REAL_RECIPES:
        data = yaml.safe_load(recipe.read_text())
        assert data["dtype"] == "float32" and data["bf16"] is True, recipe.name


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_one_step_at_lr_1e_6_moves_the_weights_as_an_fp32_reference_step(mode, tmp_path):
    extra = [*BF16_LR_1E6, "--dtype", "float32"] if mode == "full" else [*BF16_LR_1E6, "--dtype", "bfloat16", *LORA]
    trainer, recorder = one_optimizer_step(tmp_path / mode, *extra)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    if mode == "lora":  # the frozen base stays bf16
        assert any(p.dtype == torch.bfloat16 for p in trainer.model.parameters() if not p.requires_grad)
    kept, rel_err = update_agreement(trainer, recorder)
    assert kept >= 0.99 and rel_err < 1e-2, (kept, rel_err)


def test_bf16_weights_without_a_master_copy_lose_most_of_the_update(tmp_path):
    """What the refusal protects against (and what the agreement check above would catch)."""
    trainer, recorder = one_optimizer_step(tmp_path / "bf16", *BF16_LR_1E6, "--dtype", "bfloat16",
                                           "--allow_low_precision_weights", "true")
    kept, _ = update_agreement(trainer, recorder)
    assert kept < 0.5, kept


def test_bf16_trainable_weights_without_a_master_copy_are_refused_in_one_line(tmp_path, capsys):
    assert grpo_main(argv(tmp_path / "run", *BF16_LR_1E6, "--dtype", "bfloat16")) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("simplear-rl grpo: error:")]
    assert len(lines) == 1 and "fp32 master copy" in lines[0] and "dtype: float32" in lines[0]
    assert not (tmp_path / "run" / "init-policy").exists()  # refused before anything was built


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_bf16_on_a_cpu_without_use_cpu_says_to_add_use_cpu(tmp_path, capsys):
    assert grpo_main(argv(tmp_path / "run", "--bf16", "true")) == 2
    assert "add use_cpu: true" in capsys.readouterr().err


# ------------------------------------------------------------------- importance sampling
def test_correction_is_on_for_bf16_rollouts_and_off_for_fp32_ones():
    _, fp32, _ = parse()
    assert fp32.rollout_precision == "float32" and fp32.importance_sampling_correction is False
    _, bf16, _ = parse("--bf16", "true", "--use_cpu", "true")
    assert bf16.rollout_precision == "bfloat16" and bf16.importance_sampling_correction is True
    assert bf16.vllm_importance_sampling_correction and bf16.vllm_importance_sampling_mode == "token_truncate"


def test_correction_is_refused_with_conditional_logprobs():
    with pytest.raises(ValueError, match="needs logprob_mode: guided"):
        parse("--logprob_mode", "conditional", "--importance_sampling_correction", "true")


def run_with_sampling_temperature(monkeypatch, out: Path, temperature: float, *extra: str) -> list[dict]:
    """A short run whose rollouts sample at ``temperature`` while the trainer scores at the recipe's 1.0."""
    import rl.trainer

    real = rl.trainer.sample_images

    def hotter(model, vocab, prompt_ids, uncond_ids, config, *args, **kwargs):
        return real(model, vocab, prompt_ids, uncond_ids, dataclasses.replace(config, temperature=temperature), *args,
                    **kwargs)

    monkeypatch.setattr(rl.trainer, "sample_images", hotter)
    script, args, model_args = build_parser().parse_args_and_config(argv(out, "--max_steps", "2", *extra))
    build_trainer(script, args, model_args).train()
    return read_metrics(out)


def test_matched_fp32_numerics_give_importance_ratios_of_one(tmp_path, monkeypatch):
    records = run_with_sampling_temperature(monkeypatch, tmp_path / "run", 1.0, "--importance_sampling_correction", "true")
    for r in records:
        assert abs(r["sampling/importance_sampling_ratio/min"] - 1) < 1e-4
        assert abs(r["sampling/importance_sampling_ratio/max"] - 1) < 1e-4
        assert r["sampling/importance_sampling_ratio/clipped_frac"] == 0.0


def test_a_mismatched_sampler_gets_ratios_away_from_one_truncated_at_the_bound(tmp_path, monkeypatch):
    records = run_with_sampling_temperature(
        monkeypatch, tmp_path / "run", 1.3, "--importance_sampling_correction", "true", "--vllm_importance_sampling_clip_max", "1.05"
    )
    for r in records:
        assert r["sampling/importance_sampling_ratio/min"] < 0.99
        assert r["sampling/importance_sampling_ratio/max"] == pytest.approx(1.05)
        assert 0 < r["sampling/importance_sampling_ratio/clipped_frac"] < 1
        assert r["sampling/logprob_gap/mean"] > 1e-3


def test_masked_mode_zeroes_the_ratios_outside_the_bounds(tmp_path, monkeypatch):
    """Set through our alias keys (no vllm_ prefix): TRL's correction runs with them."""
    records = run_with_sampling_temperature(
        monkeypatch, tmp_path / "run", 1.3, "--importance_sampling_correction", "true", "--importance_sampling_mode",
        "token_mask", "--importance_sampling_clip_max", "1.05",
    )
    assert all(r["sampling/importance_sampling_ratio/min"] == 0.0 for r in records)
    assert all(r["sampling/importance_sampling_ratio/clipped_frac"] > 0 for r in records)


# ------------------------------------------------------------------- codec
def test_the_grpo_codec_is_built_on_the_trainers_device_in_its_documented_dtype(tmp_path, monkeypatch):
    """The codec decodes every rollout: it is built where the trainer runs, in ``codec_dtype`` (default bf16 on
    CUDA, fp32 on a CPU), not built on the CPU in fp32 and moved without a cast."""
    import policies.codecs as codecs
    import rl.grpo as grpo

    built = {}
    real = codecs.build_codec

    def spy(name, path=None, device=None, dtype=None, **kwargs):
        built.update(device=device, dtype=dtype)
        return real(name, path=path, device=device, dtype=dtype, **kwargs)

    monkeypatch.setattr(codecs, "build_codec", spy)
    script, args, model_args = build_parser().parse_args_and_config(argv(tmp_path / "run", "--max_steps", "1"))
    trainer = build_trainer(script, args, model_args)
    assert torch.device(built["device"]) == trainer.accelerator.device and built["dtype"] == torch.float32
    cuda = torch.device("cuda")
    assert grpo.codec_dtype(script, cuda) == torch.bfloat16  # what a GPU run gets
    assert grpo.codec_dtype(script, torch.device("cpu")) == torch.float32
    script.codec_dtype = "float32"
    assert grpo.codec_dtype(script, cuda) == torch.float32  # the recipe key wins
