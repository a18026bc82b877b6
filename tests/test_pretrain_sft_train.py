"""Tiny pretrain -> SFT runs through the recipes and the CLI entry points, and their error messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from policies import SamplingConfig, load_policy, sample_images
from policies.codecs import PaletteCodec
from policies.tiny import build_tiny_policy, build_word_tokenizer, tiny_qwen2_config
from pretrain_sft.cache import (
    INFO_FILE,
    CacheError,
    publish_cache,
    read_cache_info,
    rows_to_dataset,
)
from pretrain_sft.demo_data import write_image_folder
from pretrain_sft.extract import ExtractArguments, extract
from pretrain_sft.train import cpu_threads, main_pretrain, main_sft, train_stage

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = str(REPO / "recipes/tiny/pretrain.yaml")
SFT = str(REPO / "recipes/tiny/sft.yaml")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU the threads stall on each other."""
    with cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stages")


@pytest.fixture(scope="module")
def cache(workdir) -> Path:
    meta = write_image_folder(workdir / "demo", num_images=160, seed=0)
    return extract(ExtractArguments(images=str(meta), out=str(workdir / "cache"), resolution=64))


def _with_eval(cache: Path, steps: int) -> list[str]:
    """Evaluation on a fixed cache before training and at the end: a noise-free view of the loss."""
    return ["--eval_cache", str(cache), "--eval_on_start", "true", "--eval_strategy", "steps",
            "--eval_steps", str(steps), "--per_device_eval_batch_size", "80"]


@pytest.fixture(scope="module")
def pretrained(workdir, cache) -> Path:
    out = workdir / "pretrain"
    argv = ["--config", PRETRAIN, "--cache", str(cache), "--output_dir", str(out), *_with_eval(cache, 40)]
    assert main_pretrain(argv) == 0
    return out


@pytest.fixture(scope="module")
def finetuned(workdir, cache, pretrained) -> Path:
    out = workdir / "sft"
    argv = ["--config", SFT, "--model_name_or_path", str(pretrained), "--cache", str(cache), "--output_dir", str(out),
            *_with_eval(cache, 20)]
    assert main_sft(argv) == 0
    return out


def _eval_losses(run: Path) -> list[float]:
    last = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return [entry["eval_loss"] for entry in history if "eval_loss" in entry]


def test_tiny_pretrain_loss_falls_from_chance(pretrained):
    start, *_, end = _eval_losses(pretrained)
    assert start > 3.0  # near ln(64) = 4.16, chance on the 64-code palette
    assert end < 0.25 * start


def test_sft_from_the_pretrained_run_starts_where_pretraining_ended_and_lowers_the_loss(pretrained, finetuned):
    start, *_, end = _eval_losses(finetuned)
    assert start == pytest.approx(_eval_losses(pretrained)[-1], rel=1e-3)
    assert end < start
    record = json.loads((finetuned / "simplear_training.json").read_text())
    assert record["stage"] == "sft" and record["start"] == str(pretrained) and record["global_step"] == 20


def test_sft_checkpoint_samples_images_through_policies_and_loads_as_plain_causal_lm(finetuned):
    policy = load_policy(finetuned)
    assert policy.vocab.grid == (8, 8) and policy.vocab.codebook_size == 64
    captions = ["a red square on the left", "two blue bars at the top"]
    rollout = sample_images(
        policy.model, policy.vocab, policy.encode_prompts(captions), policy.encode_uncond(),
        SamplingConfig(cfg_scale=3.0), seeds=[0, 1], pad_id=policy.pad_id,
    )
    images = PaletteCodec().decode(rollout.codes)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(rollout.logprobs).all()

    plain = AutoModelForCausalLM.from_pretrained(finetuned)
    assert plain.get_input_embeddings().weight.shape[0] == policy.vocab.vocab_size
    assert not list(finetuned.glob(".final-tmp"))


def test_pretraining_from_a_plain_qwen2_llm_folder_extends_its_vocabulary(workdir, cache):
    llm = workdir / "llm"
    tokenizer = build_word_tokenizer(["a", "red", "square", "left", "on", "the"], special_tokens=())
    Qwen2ForCausalLM(tiny_qwen2_config(len(tokenizer), hidden_size=64)).save_pretrained(llm)
    tokenizer.save_pretrained(llm)
    out = workdir / "from_llm"
    argv = ["--config", PRETRAIN, "--cache", str(cache), "--output_dir", str(out), "--model_name_or_path", str(llm),
            "--max_steps", "2", "--save_strategy", "no"]
    assert main_pretrain(argv) == 0
    policy = load_policy(out)
    assert policy.vocab.text_vocab_size == len(tokenizer) + 7
    assert policy.vocab.codebook_size == 64 and policy.vocab.grid == (8, 8)


def test_resuming_continues_from_the_last_checkpoint_and_an_unresumed_rerun_is_refused(cache, pretrained, tmp_path):
    run = shutil.copytree(pretrained, tmp_path / "run")
    argv = ["--config", PRETRAIN, "--cache", str(cache), "--output_dir", str(run)]
    with pytest.raises(FileExistsError, match="resume_from_checkpoint last"):
        train_stage(argv, "pretrain")
    assert main_pretrain(argv + ["--resume_from_checkpoint", "last", "--max_steps", "42"]) == 0
    assert json.loads((run / "simplear_training.json").read_text())["global_step"] == 42


def test_sft_keeps_the_word_tokenizer_of_a_tiny_checkpoint(finetuned):
    tokenizer = TokenizersBackend.from_pretrained(finetuned)
    ids = tokenizer("a red square on the left", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == "a red square on the left".split()


def test_load_policy_round_trips_a_tiny_word_tokenizer(finetuned):
    policy = load_policy(finetuned)
    ids = policy.tokenizer("a red square on the left", add_special_tokens=False)["input_ids"]
    assert policy.tokenizer.convert_ids_to_tokens(ids) == "a red square on the left".split()


def test_missing_start_path_fails_before_loading_and_names_it(cache, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        train_stage(["--config", SFT, "--cache", str(cache), "--model_name_or_path", str(missing), "--output_dir", str(tmp_path / "o")], "sft")


def test_missing_cache_is_named(tmp_path):
    with pytest.raises(CacheError, match="no-cache.*does not exist"):
        train_stage(["--config", PRETRAIN, "--cache", str(tmp_path / "no-cache"), "--output_dir", str(tmp_path / "o")], "pretrain")


def test_cache_with_another_codebook_is_refused_with_both_numbers(cache, tmp_path):
    other = tmp_path / "policy27"
    build_tiny_policy(codebook_size=27, grid=(8, 8), hidden_size=64).save(other)
    with pytest.raises(CacheError, match="codebook_size 64.*codebook_size 27"):
        train_stage(["--config", SFT, "--cache", str(cache), "--model_name_or_path", str(other), "--output_dir", str(tmp_path / "o")], "sft")


def test_cache_with_another_resolution_is_refused_with_both_numbers(cache, tmp_path):
    with pytest.raises(CacheError, match="resolution 64.*resolution 128"):
        train_stage(["--config", PRETRAIN, "--cache", str(cache), "--resolution", "128", "--output_dir", str(tmp_path / "o")], "pretrain")


def test_empty_cache_is_refused_when_published_and_when_trained_on(cache, tmp_path):
    info = read_cache_info(cache)
    with pytest.raises(CacheError, match="empty"):
        publish_cache(rows_to_dataset([]), info, tmp_path / "empty", skipped=[])
    empty = tmp_path / "empty"
    rows_to_dataset([]).save_to_disk(str(empty))  # as another tool might leave it
    shutil.copy(cache / INFO_FILE, empty / INFO_FILE)
    with pytest.raises(CacheError, match="is empty"):
        train_stage(["--config", PRETRAIN, "--cache", str(empty), "--output_dir", str(tmp_path / "o")], "pretrain")


def test_unknown_recipe_key_is_rejected_by_name(cache, tmp_path):
    recipe = yaml.safe_load(Path(PRETRAIN).read_text()) | {"learning_rat": 0.1}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="learning_rat"):
        train_stage(["--config", str(path), "--cache", str(cache), "--output_dir", str(tmp_path / "o")], "pretrain")


def test_recipe_stage_must_match_the_command(cache, tmp_path):
    with pytest.raises(ValueError, match="stage: pretrain.*simplear-rl sft"):
        train_stage(["--config", PRETRAIN, "--cache", str(cache), "--output_dir", str(tmp_path / "o")], "sft")
