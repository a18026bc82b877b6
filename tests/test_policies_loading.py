"""Loading SimpleAR-shaped checkpoints, extending a fresh LLM, and the bad folders both refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from policies import dtypes
from policies.dtypes import resolve_dtype
from policies.guidance import SamplingConfig
from policies.loading import extend_llm, load_policy
from policies.sampler import sample_images
from policies.tiny import build_tiny_policy, build_word_tokenizer
from policies.vocab import SIMPLEAR_SPECIAL_TOKENS

QWEN_TEXT_TOKENS = 151_665  # len(Qwen2.5 tokenizer) before SimpleAR's 7 specials
SIMPLEAR_ROWS = 215_672
CHAT_DEFAULTS = dict(repetition_penalty=1.1, top_k=20, top_p=0.8, temperature=0.7, do_sample=True, eos_token_id=[151645, 151643])


def dummy_qwen_sized_tokenizer(with_specials: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Qwen2.5's 151,665 entries (``w0`` ... plus ``<|endoftext|>``)."""
    vocab = {f"w{i}": i for i in range(QWEN_TEXT_TOKENS)}
    del vocab["w151643"]
    vocab["<|endoftext|>"] = 151_643
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", pad_token="<|endoftext|>")
    if with_specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(SIMPLEAR_SPECIAL_TOKENS)})
    return tokenizer


def save_qwen2(folder: Path, tokenizer, rows: int, hidden: int = 8, tie: bool = True, seed: int = 0) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=rows, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def simplear_folder(tmp_path_factory) -> Path:
    """A released-SimpleAR-shaped folder: 215,672 rows, 7 specials, chat generation_config, no layout."""
    folder = tmp_path_factory.mktemp("simplear")
    save_qwen2(folder, dummy_qwen_sized_tokenizer(), SIMPLEAR_ROWS)
    GenerationConfig(**CHAT_DEFAULTS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("tiny")
    policy = build_tiny_policy(grid=(4, 4), seed=3, prompt_prefix="a picture of ")
    policy.save(folder)
    return folder, policy


# ----------------------------------------------------------------------------- SimpleAR checkpoints


def test_simplear_checkpoint_layout_is_offset_151672_vocab_215672(simplear_folder):
    policy = load_policy(simplear_folder)
    assert policy.vocab.offset == 151_672
    assert policy.vocab.vocab_size == SIMPLEAR_ROWS
    assert policy.vocab.codebook_size == 64_000
    assert policy.vocab.grid == (64, 64)
    ids = policy.tokenizer.convert_tokens_to_ids(list(SIMPLEAR_SPECIAL_TOKENS))
    assert ids == list(range(151_665, 151_672))


def test_simplear_checkpoint_prompts_tokenize_as_saved(simplear_folder):
    policy = load_policy(simplear_folder)
    assert policy.encode_prompts(["w5 w17"]) == [[151_665, 5, 17, 151_667]]
    assert policy.encode_uncond() == [151_665, 151_667]


def test_loading_ignores_the_text_chat_generation_config(simplear_folder):
    gen = load_policy(simplear_folder).model.generation_config
    for key, chat_value in CHAT_DEFAULTS.items():
        assert getattr(gen, key, None) != chat_value, key


def test_loading_honours_dtype_and_grid(simplear_folder):
    policy = load_policy(simplear_folder, dtype="bf16", grid=(32, 32))
    assert next(policy.model.parameters()).dtype == torch.bfloat16
    assert policy.vocab.grid == (32, 32)
    assert policy.model.config.simplear_visual_vocab["grid"] == [32, 32]


def test_asking_a_codebook_the_checkpoint_cannot_hold_names_both_numbers(simplear_folder):
    with pytest.raises(ValueError) as err:
        load_policy(simplear_folder, codebook_size=60_000)
    for number in ("215672", "151672", "60000", "211672"):
        assert number in str(err.value)


# ----------------------------------------------------------------------------- our own checkpoints


def test_saved_policy_reloads_with_the_same_layout_tokenizer_and_samples(tiny_folder):
    folder, policy = tiny_folder
    loaded = load_policy(folder)
    assert loaded.vocab == policy.vocab
    assert loaded.vocab.prompt_prefix == "a picture of "
    captions = ["A red square, on the LEFT", "two blue circles"]
    assert loaded.encode_prompts(captions) == policy.encode_prompts(captions)
    assert loaded.pad_id == policy.pad_id
    config = SamplingConfig(cfg_scale=3.0)
    args = (policy.encode_prompts(captions), policy.encode_uncond(), config, [1, 2])
    before = sample_images(policy.model, policy.vocab, *args, pad_id=policy.pad_id)
    after = sample_images(loaded.model, loaded.vocab, *args, pad_id=loaded.pad_id)
    assert torch.equal(before.codes, after.codes)


def test_a_recorded_layout_that_disagrees_with_the_weights_names_both_numbers(tiny_folder, tmp_path):
    folder, _ = tiny_folder
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["simplear_visual_vocab"]["codebook_size"] = 60
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"has 144 vocabulary rows .* 80 \+ codebook_size 60 = 140"):
        load_policy(tmp_path)


def test_a_recorded_codebook_differs_from_the_one_asked(tiny_folder):
    with pytest.raises(ValueError, match="records codebook_size 64, but 100 was asked"):
        load_policy(tiny_folder[0], codebook_size=100)


# ----------------------------------------------------------------------------- extending a fresh LLM


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def llm_folder(request, tmp_path):
    """A tiny "LLM" whose embedding has more rows (100) than its tokenizer has tokens, as Qwen2.5 does."""
    tokenizer = build_word_tokenizer(special_tokens=())
    assert len(tokenizer) < 100
    model = save_qwen2(tmp_path, tokenizer, rows=100, hidden=16, tie=request.param)
    return tmp_path, len(tokenizer), model


def test_extend_llm_adds_specials_then_codebook_rows_initialised_to_the_mean(llm_folder):
    folder, text_tokens, original = llm_folder
    policy = extend_llm(folder, codebook_size=32, grid=(4, 4))
    ids = policy.tokenizer.convert_tokens_to_ids(list(SIMPLEAR_SPECIAL_TOKENS))
    assert ids == list(range(text_tokens, text_tokens + 7))
    assert policy.vocab.offset == text_tokens + 7
    rows = text_tokens + 7 + 32
    assert policy.model.get_input_embeddings().weight.shape[0] == rows
    assert policy.model.get_output_embeddings().weight.shape[0] == rows
    assert policy.model.config.vocab_size == rows

    pairs = [(original.get_input_embeddings().weight, policy.model.get_input_embeddings().weight)]
    pairs.append((original.get_output_embeddings().weight, policy.model.get_output_embeddings().weight))
    for old, new in pairs:
        old = old.detach()
        torch.testing.assert_close(new[:text_tokens], old[:text_tokens])  # token rows kept
        mean = old[:text_tokens].mean(dim=0)
        torch.testing.assert_close(new[text_tokens:], mean.expand(rows - text_tokens, -1))


def test_extended_policy_keeps_tied_embeddings_tied_after_save_and_load(llm_folder, tmp_path_factory):
    folder, _, original = llm_folder
    policy = extend_llm(folder, codebook_size=32, grid=(4, 4))
    tied = original.config.tie_word_embeddings
    out = tmp_path_factory.mktemp("extended")
    policy.save(out)
    loaded = load_policy(out)
    assert loaded.vocab == policy.vocab
    for model in (policy.model, loaded.model):
        same = model.get_input_embeddings().weight is model.get_output_embeddings().weight
        assert same == tied
    rollout = sample_images(
        loaded.model, loaded.vocab, loaded.encode_prompts(["a red dot"]), loaded.encode_uncond(),
        SamplingConfig(cfg_scale=2.0), [0], pad_id=loaded.pad_id,
    )
    assert rollout.codes.shape == (1, 4, 4)


def test_extending_an_already_extended_folder_is_refused(tiny_folder):
    with pytest.raises(ValueError, match="already has SimpleAR special tokens; load it with `load_policy`"):
        extend_llm(tiny_folder[0])


# ----------------------------------------------------------------------------- bad folders


def test_missing_folder_is_named_and_never_downloaded(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint.*does not exist.*never downloaded"):
        load_policy(missing)
    with pytest.raises(FileNotFoundError, match="LLM folder"):
        extend_llm(missing)


def test_a_file_instead_of_a_folder_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_policy(path)


def test_folder_without_config_json_is_refused(tmp_path):
    build_word_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_policy(tmp_path)


def test_folder_without_tokenizer_is_refused(tmp_path):
    Qwen2Config(vocab_size=144, hidden_size=8, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_policy(tmp_path)


def test_tokenizer_without_the_specials_is_not_a_simplear_checkpoint(llm_folder):
    folder = llm_folder[0]
    with pytest.raises(ValueError, match=r"lacks the SimpleAR special tokens \['<\|t2i\|>'.*extend_llm"):
        load_policy(folder)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", "cpu")
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16


@pytest.mark.parametrize("hardware", [True, False])
def test_auto_dtype_on_cpu_is_bf16_only_with_bf16_hardware_and_a_model_wide_enough(monkeypatch, hardware):
    monkeypatch.setattr(dtypes, "cpu_has_bf16", lambda: hardware)
    wide = torch.bfloat16 if hardware else torch.float32
    assert resolve_dtype("auto", "cpu", hidden_size=896) == wide
    assert resolve_dtype(None, "cpu", hidden_size=dtypes.CPU_BF16_MIN_HIDDEN) == wide
    assert resolve_dtype("auto", "cpu", hidden_size=128) == torch.float32  # tiny models run slower in bf16
    assert resolve_dtype("auto", "cpu") == torch.float32  # size unknown
    assert resolve_dtype("float32", "cpu", hidden_size=896) == torch.float32
