"""GRPO, pretraining and SFT on 2 CPU processes under DDP, DeepSpeed ZeRO-2, ZeRO-3 and FSDP2.

Each engine runs the same tiny recipe with the same seed and global batch as DDP and must take the
same steps (loss and gradient norm within 1e-4), write its own kind of checkpoint, and save weights
that load with ``load_policy`` and ``AutoModelForCausalLM`` and sample an image. How each engine is
launched on CPU processes is in ``tests/engine_helpers.py``. One GRPO run per engine is in the default
suite; pretraining/SFT on the sharded engines and the LoRA / reference-model variants are ``slow``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

from engine_helpers import REPO, SHARDED, engine_artefacts, launch, metrics, tail
from policies import SamplingConfig, load_policy, sample_images
from policies.sources import resolve_source
from policies.tiny import build_word_tokenizer, tiny_qwen2_config
from pretrain_sft.demo_data import write_image_folder
from pretrain_sft.extract import ExtractArguments, extract
from rl.cli import main as cli
from rl.curves import read_metrics

GRPO = ["--config", str(REPO / "recipes/tiny/grpo.yaml"), "--train_prompts", str(REPO / "recipes/tiny/prompts.jsonl"),
        "--per_device_train_batch_size", "2", "--num_generations", "4", "--max_steps", "2", "--save_steps", "2"]
VARIANTS = {
    "full": ["--log_rollouts", "true", "--sample_every", "1"],
    "beta": ["--beta", "0.04", "--sample_every", "0"],  # a reference model, sharded like the policy
    "lora": ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--sample_every", "0"],
}
STAGE_ARGS = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "2"]
TOLERANCE = 1e-4


class Runs:
    """Runs launched on first use and shared by the tests of this module (each costs tens of seconds)."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[tuple, Path] = {}

    def run(self, engine: str, target: str, args: list[str], key: tuple) -> Path:
        key = (engine, *key)
        if key not in self.done:
            out = self.root / "_".join(key)
            log = out.with_suffix(".log")
            result = launch(engine, target, [*args, "--output_dir", str(out)], log)
            assert result.returncode == 0, tail(log)
            self.done[key] = out
        return self.done[key]

    def grpo(self, engine: str, variant: str = "full") -> Path:
        return self.run(engine, "rl.grpo", [*GRPO, *VARIANTS[variant]], ("grpo", variant))

    @property
    def cache(self) -> Path:
        cache = self.root / "cache"
        if not cache.exists():
            meta = write_image_folder(self.root / "images", num_images=32, seed=0)
            extract(ExtractArguments(images=str(meta), out=str(cache), resolution=64))
        return cache

    @property
    def llm(self) -> Path:
        """A plain Qwen2 LLM folder: pretraining extends its vocabulary (in place, under ZeRO-3 partitioned)."""
        llm = self.root / "llm"
        if not llm.exists():
            tokenizer = build_word_tokenizer(["a", "red", "square", "left", "on", "the"], special_tokens=())
            Qwen2ForCausalLM(tiny_qwen2_config(len(tokenizer), hidden_size=64)).save_pretrained(llm)
            tokenizer.save_pretrained(llm)
        return llm

    def pretrain(self, engine: str) -> Path:
        args = ["--config", str(REPO / "recipes/tiny/pretrain.yaml"), "--cache", str(self.cache),
                "--model_name_or_path", str(self.llm), *STAGE_ARGS]
        return self.run(engine, "pretrain_sft.train", args, ("pretrain",))

    def sft(self, engine: str) -> Path:
        start = self.pretrain("ddp")  # every engine fine-tunes the same checkpoint
        args = ["--config", str(REPO / "recipes/tiny/sft.yaml"), "--model_name_or_path", str(start),
                "--cache", str(self.cache), *STAGE_ARGS]
        return self.run(engine, "pretrain_sft.train", args, ("sft",))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("engines"))


def assert_same_steps(run: Path, reference: Path) -> None:
    ours, ddp = metrics(run), metrics(reference)
    assert [r["step"] for r in ours] == [r["step"] for r in ddp] == [1, 2]
    for a, b in zip(ours, ddp):
        assert abs(a["loss"] - b["loss"]) < TOLERANCE, (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) < TOLERANCE, (a, b)
        assert a["grad_norm"] > 0.01  # a real gradient, not a vanished one
        for key in ("reward", "loss_visual"):
            if key in b:
                assert abs(a[key] - b[key]) < TOLERANCE, (key, a, b)


def assert_loads_and_samples(run: Path, reference: Path | None = None) -> None:
    """The saved weights load through our loader and plain transformers, sample an image, and equal ``reference``'s."""
    policy = load_policy(run)
    plain = AutoModelForCausalLM.from_pretrained(run)
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, policy.model.state_dict()[name]), name
    rollout = sample_images(policy.model, policy.vocab, policy.encode_prompts(["a red square"]), policy.encode_uncond(),
                            SamplingConfig(cfg_scale=3.0), seeds=[0])
    assert rollout.codes.shape == (1, *policy.vocab.grid)
    assert int(rollout.codes.min()) >= 0 and int(rollout.codes.max()) < policy.vocab.codebook_size
    if reference is not None:  # (files may differ in whether they list the tied head: compare the loaded models)
        # 1e-4 against updates of ~1e-3 per step: Adam divides by the gradient's own scale, so where a gradient is
        # ~0 the engines' different reduction orders (last-bit differences) move a weight by a visible fraction.
        theirs = AutoModelForCausalLM.from_pretrained(reference).state_dict()
        for name, tensor in plain.state_dict().items():
            torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=TOLERANCE, msg=name)


# ---------------------------------------------------------------------------------------------------- GRPO


# ZeRO runs are slow (each ~30-60 s on 2 cores, plus DeepSpeed's op build): `make test-slow`
@pytest.mark.parametrize("engine", [pytest.param("zero2", marks=pytest.mark.slow), pytest.param("zero3", marks=pytest.mark.slow),
                                    "fsdp"])
def test_grpo_under_each_engine_takes_the_ddp_steps_and_saves_loadable_weights(runs, engine):
    run = runs.grpo(engine)
    assert engine_artefacts(engine, run / "checkpoint-2")  # the engine really ran (its own optimizer-state files)
    assert_same_steps(run, runs.grpo("ddp"))
    assert_loads_and_samples(run, reference=runs.grpo("ddp"))


def nanstd_unbiased(x: torch.Tensor) -> torch.Tensor:
    return ((x - x.mean()) ** 2).sum().div(len(x) - 1).sqrt()


def test_ddp_ranks_share_group_advantages_and_write_metrics_once(runs):
    out = runs.grpo("ddp")
    assert engine_artefacts("ddp", out / "checkpoint-2")
    assert_loads_and_samples(out)
    rows = {rank: [json.loads(line) for line in (out / "rollouts" / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}
    for step in (0, 1):
        group = [r for rank in (0, 1) for r in rows[rank] if r["step"] == step]
        assert len(group) == 4 and len({r["prompt"] for r in group}) == 1  # one group split over both ranks
        assert {r["rank"] for r in group} == {0, 1}
        rewards = torch.tensor([r["reward"] for r in group])
        expected = (rewards - rewards.mean()) / (nanstd_unbiased(rewards) + 1e-4)
        assert torch.allclose(torch.tensor([r["advantage"] for r in group]), expected, atol=1e-5)
        assert len({r["seed"] for r in group}) == 4  # ranks never draw the same sample

    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step_0.png", "step_1.png"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", SHARDED)
@pytest.mark.parametrize("variant", ["beta", "lora"])
def test_grpo_with_a_reference_model_or_lora_under_sharded_engines_takes_the_ddp_steps(runs, engine, variant):
    run = runs.grpo(engine, variant)
    assert_same_steps(run, runs.grpo("ddp", variant))
    if variant == "beta":
        assert metrics(run)[1]["kl"] > 0  # the reference model scored the completions after one update
        assert_loads_and_samples(run, reference=runs.grpo("ddp", variant))
    else:
        assert (run / "adapter_model.safetensors").exists()


@pytest.mark.slow  # ~60 s each on 2 cores; the default run keeps the DDP kill-and-resume test (test_rl_distributed.py)
@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_a_killed_sharded_run_resumes_from_its_checkpoint_with_every_step_logged_once(tmp_path, engine):
    out = tmp_path / "run"
    args = [*GRPO, "--max_steps", "4", "--save_steps", "2", "--sample_every", "0", "--output_dir", str(out)]
    killer = str(REPO / "tests" / "distributed" / "kill_at_step.py")
    crashed = launch(engine, killer, args, tmp_path / "crash.log", env={"KILL_AT_STEP": "3"})
    assert crashed.returncode != 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert engine_artefacts(engine, out / "checkpoint-2")

    resumed = launch(engine, "rl.grpo", [*args, "--resume_from_checkpoint", "last"], tmp_path / "resume.log")
    assert resumed.returncode == 0, tail(tmp_path / "resume.log")
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert_loads_and_samples(out)


# ------------------------------------------------------------------------------------------ pretrain / SFT


def test_pretraining_on_two_processes_logs_the_loss_of_both_ranks(runs):
    """``loss_visual`` is summed over ranks before it is logged: with image targets only it IS the global loss."""
    run = runs.pretrain("ddp")
    for row in metrics(run):
        assert row["loss_visual"] == pytest.approx(row["loss"], abs=1e-4)
    assert_loads_and_samples(run)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["zero2", "zero3", "fsdp"])
@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_pretraining_and_sft_under_each_engine_take_the_ddp_steps(runs, engine, stage):
    run = getattr(runs, stage)(engine)
    assert engine_artefacts(engine, run / "checkpoint-2")
    assert_same_steps(run, getattr(runs, stage)("ddp"))
    assert_loads_and_samples(run, reference=getattr(runs, stage)("ddp"))


# ------------------------------------------------------------------------------------------------- export


def sampled_codes(policy) -> torch.Tensor:
    prompts = policy.encode_prompts(["a red square", "a blue circle"])
    return sample_images(policy.model, policy.vocab, prompts, policy.encode_uncond(), SamplingConfig(cfg_scale=3.0),
                         seeds=[5, 6], pad_id=policy.pad_id).codes


def assert_exports_the_runs_weights(checkpoint: Path, run: Path, out: Path, step: int) -> None:
    """``export checkpoint`` writes the run's final weights exactly (fp32) and they sample the run's codes."""
    assert cli(["export", str(checkpoint), "--out", str(out)]) == 0
    own = load_policy(run, dtype="float32")
    exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, tensor in own.model.state_dict().items():
        assert torch.equal(exported[name], tensor), name
    policy = load_policy(out)
    assert policy.vocab == own.vocab and policy.vocab.codec == own.vocab.codec
    assert torch.equal(sampled_codes(policy), sampled_codes(own))
    assert f"| training step | {step} |" in (out / "README.md").read_text()


@pytest.mark.parametrize("engine", [pytest.param("zero3", marks=pytest.mark.slow), "fsdp"])
def test_a_sharded_checkpoint_exports_the_engines_consolidated_weights_that_sample_the_runs_codes(runs, engine, tmp_path):
    """The fp32 weights come from the engine's own files (ZeRO-3 partitions through deepspeed's zero_to_fp32, FSDP2
    through accelerate), not from the 16-bit copy beside them; they equal the run's final weights (same step)."""
    run = runs.grpo(engine)
    checkpoint = run / "checkpoint-2"
    assert resolve_source(checkpoint, prefer_engine=True).kind == engine
    assert_exports_the_runs_weights(checkpoint, run, tmp_path / "export", step=2)


@pytest.mark.slow
def test_an_fsdp2_sharded_state_dict_run_loads_exports_and_continues(tmp_path):
    """With ``fsdp_state_dict_type: SHARDED_STATE_DICT`` no whole weights are written anywhere: the run folder
    stands for its newest checkpoint, whose shards accelerate's merge_fsdp_weights consolidates."""
    run = tmp_path / "run"
    log = tmp_path / "run.log"
    result = launch("fsdp", "rl.grpo", [*GRPO, *VARIANTS["full"], "--output_dir", str(run)], log,
                    flags=["--fsdp_state_dict_type", "SHARDED_STATE_DICT"])
    assert result.returncode == 0, tail(log)
    assert (run / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    source = resolve_source(run)
    assert source.kind == "fsdp" and source.folder.name == "checkpoint-2"
    out = tmp_path / "export"
    assert cli(["export", str(run), "--out", str(out)]) == 0
    reference = AutoModelForCausalLM.from_pretrained(out).state_dict()
    policy = load_policy(run, dtype="float32")
    for name, tensor in policy.model.state_dict().items():
        assert torch.equal(reference[name], tensor), name
    assert cli(["generate", "--model", str(run), "--prompts", "a red square", "--out", str(tmp_path / "images")]) == 0


# ------------------------------------------------------------------------------------- other policy families

PLUGIN = REPO / "tests" / "plugins" / "simplear_rl_example_plugin"


@pytest.mark.parametrize("family", ["janus", pytest.param("emu3", marks=pytest.mark.slow)])
def test_fsdp2_shards_each_familys_own_decoder_layers_and_trains_two_steps(tmp_path, family):
    """``fsdp.yaml`` names no layer class: accelerate wraps the loaded model's ``_no_split_modules`` (Janus's
    ``LlamaDecoderLayer``, Emu3's ``Emu3DecoderLayer``), so one config serves every family. Emu3 is launched
    with ``--fsdp_cpu_ram_efficient_loading false``: accelerate 1.15's rank-0 broadcast of the weights cannot
    carry its VQ-VAE's BatchNorm buffers (the launch line of ``recipes/emu3/grpo_clip.yaml``)."""
    import yaml

    from policies.tiny_families import save_tiny_emu3, save_tiny_janus

    folder = (save_tiny_janus if family == "janus" else save_tiny_emu3)(tmp_path / "ckpt")
    recipe = yaml.safe_load((REPO / "recipes/tiny/grpo.yaml").read_text())
    recipe["rewards"] = [{"name": "simplear_rl_example_plugin:brightness", "weight": 1.0}]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run, log = tmp_path / "run", tmp_path / "run.log"
    args = ["--config", str(tmp_path / "recipe.yaml"), "--train_prompts", str(REPO / "recipes/tiny/prompts.jsonl"),
            "--model_name_or_path", str(folder), "--codec", "vqvae", "--resolution", "64" if family == "janus" else "32",
            "--per_device_train_batch_size", "2", "--num_generations", "4", "--max_steps", "2", "--save_steps", "2",
            "--sample_every", "0", "--write_report", "false", "--output_dir", str(run)]
    flags = ["--fsdp_cpu_ram_efficient_loading", "false"] if family == "emu3" else []
    result = launch("fsdp", "rl.grpo", args, log, env={"PYTHONPATH": f"{REPO}{os.pathsep}{PLUGIN}"}, flags=flags)
    assert result.returncode == 0, tail(log)
    assert engine_artefacts("fsdp", run / "checkpoint-2")
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm"] > 0 for r in rows)
    layer = {"janus": "LlamaDecoderLayer", "emu3": "Emu3DecoderLayer"}[family]
    units = re.search(r"FSDP2 units: (.*)", log.read_text()).group(1)
    assert f"{layer} x2" in units.split(", "), units  # both decoder layers are units of their own
    again = load_policy(run)
    assert again.family.name == family
