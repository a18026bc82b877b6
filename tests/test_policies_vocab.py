"""Contracts of the visual vocabulary: id offsets, refusals, prompt templates, persistence."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2Config

from policies.tiny import build_word_tokenizer
from policies.vocab import (
    SIMPLEAR_SPECIAL_TOKENS,
    VisualTokenError,
    VisualVocab,
    check_model_vocab,
)

SIMPLEAR = VisualVocab(text_vocab_size=151_672, codebook_size=64_000, grid=(64, 64))


def small_vocab(**changes) -> VisualVocab:
    return VisualVocab(text_vocab_size=80, codebook_size=64, grid=(8, 8)).replace(**changes)


# ----------------------------------------------------------------------------- offsets


def test_simplear_layout_places_code_c_at_token_151672_plus_c():
    assert SIMPLEAR.offset == 151_672
    assert SIMPLEAR.vocab_size == 215_672
    assert SIMPLEAR.num_image_tokens == 4_096
    codes = torch.tensor([0, 1, 63_999])
    assert SIMPLEAR.codes_to_tokens(codes).tolist() == [151_672, 151_673, 215_671]


def test_tokens_to_codes_inverts_codes_to_tokens_for_every_code():
    vocab = small_vocab()
    codes = torch.arange(vocab.codebook_size).view(8, 8)
    tokens = vocab.codes_to_tokens(codes)
    assert tokens.dtype == torch.long
    assert torch.equal(vocab.tokens_to_codes(tokens), codes)


def test_is_visual_is_true_exactly_on_the_half_open_visual_range():
    vocab = small_vocab()
    ids = torch.tensor([0, 79, 80, 143, 144, 10_000, -1])
    assert vocab.is_visual(ids).tolist() == [False, False, True, True, False, False, False]


def test_tokens_to_codes_refuses_text_ids_and_counts_them_instead_of_clamping():
    vocab = small_vocab()
    ids = torch.tensor([[5, 80, 144], [200, 81, 143]])
    with pytest.raises(VisualTokenError, match=r"3 of 6 token ids are not visual") as err:
        vocab.tokens_to_codes(ids)
    message = str(err.value)
    assert "[80, 144)" in message
    assert "5" in message and "144" in message and "200" in message


def test_codes_to_tokens_refuses_codes_outside_the_codebook_with_a_count():
    vocab = small_vocab()
    with pytest.raises(VisualTokenError, match=r"2 of 4 codes lie outside the codebook \[0, 64\)"):
        vocab.codes_to_tokens(torch.tensor([-1, 0, 63, 64]))


def test_visual_token_error_is_a_value_error_for_callers_that_catch_broadly():
    assert issubclass(VisualTokenError, ValueError)


# ----------------------------------------------------------------------------- templates


def test_default_templates_are_simplears_cond_and_caption_dropped_uncond():
    vocab = small_vocab()
    assert vocab.format_cond("a red square") == "<|t2i|>a red square<|soi|>"
    assert vocab.format_uncond() == "<|t2i|><|soi|>"


def test_caption_with_braces_and_placeholder_names_is_inserted_literally():
    vocab = small_vocab(prompt_prefix="P: ")
    caption = "a {red} square {caption} {prefix} {0} }{"
    assert vocab.format_cond(caption) == "<|t2i|>P: " + caption + "<|soi|>"


def test_prompt_prefix_is_inserted_before_the_caption_only_in_the_cond_prompt():
    vocab = small_vocab(prompt_prefix="A highly realistic image of ")
    assert vocab.format_cond("a cat") == "<|t2i|>A highly realistic image of a cat<|soi|>"
    assert vocab.format_uncond() == "<|t2i|><|soi|>"


def test_a_negative_prompt_can_replace_the_uncond_template():
    vocab = small_vocab(uncond_template="<|t2i|>blurry, dark<|soi|>")
    assert vocab.format_uncond() == "<|t2i|>blurry, dark<|soi|>"


def test_templated_prompts_tokenize_to_t2i_caption_soi():
    tokenizer = build_word_tokenizer()
    vocab = small_vocab(text_vocab_size=len(tokenizer))
    t2i, soi = tokenizer.convert_tokens_to_ids(["<|t2i|>", "<|soi|>"])
    ids = tokenizer(vocab.format_cond("a {red} square"), add_special_tokens=False)["input_ids"]
    assert ids[0] == t2i and ids[-1] == soi
    assert ids[1:-1] == tokenizer("a {red} square", add_special_tokens=False)["input_ids"]
    assert tokenizer(vocab.format_uncond(), add_special_tokens=False)["input_ids"] == [t2i, soi]


def test_word_tokenizer_puts_the_seven_specials_last_so_offset_is_its_length():
    tokenizer = build_word_tokenizer()
    ids = tokenizer.convert_tokens_to_ids(list(SIMPLEAR_SPECIAL_TOKENS))
    assert ids == list(range(len(tokenizer) - 7, len(tokenizer)))


# ----------------------------------------------------------------------------- persistence


def test_layout_round_trips_through_a_plain_dict_and_json():
    vocab = small_vocab(prompt_prefix="x ", uncond_template="<|t2i|>bad<|soi|>", grid=(4, 6))
    again = VisualVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab
    assert again.grid == (4, 6) and isinstance(again.grid, tuple)
    assert isinstance(again.special_tokens, tuple)


def test_layout_round_trips_through_a_hugging_face_config_json(tmp_path):
    vocab = small_vocab(prompt_prefix="x ")
    config = Qwen2Config(vocab_size=vocab.vocab_size, hidden_size=8, num_attention_heads=2)
    vocab.attach_to_config(config)
    config.save_pretrained(tmp_path)
    assert VisualVocab.from_config(Qwen2Config.from_pretrained(tmp_path)) == vocab


def test_a_config_without_a_layout_gives_none():
    assert VisualVocab.from_config(Qwen2Config()) is None


def test_from_dict_names_unknown_keys():
    d = small_vocab().to_dict() | {"offset_typo": 3}
    with pytest.raises(ValueError, match="offset_typo"):
        VisualVocab.from_dict(d)


def test_with_grid_changes_only_the_grid():
    vocab = small_vocab(prompt_prefix="p")
    other = vocab.with_grid((32, 32))
    assert other.grid == (32, 32) and other.num_image_tokens == 1024
    assert other.replace(grid=(8, 8)) == vocab


# ----------------------------------------------------------------------------- bad layouts


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"text_vocab_size": 0}, "text_vocab_size must be positive"),
        ({"codebook_size": 0}, "codebook_size must be positive"),
        ({"grid": (0, 8)}, "grid must be two positive ints"),
        ({"grid": (8,)}, "grid must be two positive ints"),
        ({"cond_template": "<|t2i|><|soi|>"}, "must contain '{caption}'"),
    ],
)
def test_invalid_layouts_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        small_vocab(**changes)


def test_model_vocab_mismatch_names_rows_offset_and_codebook():
    with pytest.raises(ValueError) as err:
        check_model_vocab(215_000, SIMPLEAR)
    message = str(err.value)
    for number in ("215000", "151672", "64000", "215672"):
        assert number in message
    check_model_vocab(215_672, SIMPLEAR)  # the matching size passes silently
