"""Sequence layout, labels, caption modes, condition dropping, truncation and batching."""

from __future__ import annotations

import random

import pytest
import torch

from policies.tiny import build_word_tokenizer
from policies.vocab import VisualVocab
from pretrain_sft.sequences import (
    IGNORE_INDEX,
    SequenceBuilder,
    TokenSequenceDataset,
    collate_left_padded,
    first_sentence,
    pick_caption,
)

WORDS = "a an the red blue green square bar on left right picture of with white background one big . there is".split()
GRID = (4, 4)


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return VisualVocab(text_vocab_size=len(tokenizer), codebook_size=64, grid=GRID, prompt_prefix="a picture of ")


def _row(codes=None, **captions):
    row = {"id": "x", "caption": "", "short_caption": "", "long_caption": "", "codes": codes or list(range(16))}
    row.update(captions)
    return row


def _encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_conditional_row_is_the_vocab_template_then_the_visual_tokens(tokenizer, vocab):
    builder = SequenceBuilder(tokenizer, vocab, caption_mode="long", p_drop_cond=0.0)
    codes = [5, 0, 63, 7] * 4
    item = builder.build(_row(codes, caption="a red square on the left"), random.Random(0))
    prompt = _encode(tokenizer, vocab.format_cond("a red square on the left"))
    assert tokenizer.decode(prompt[:1]) == "<|t2i|>" and tokenizer.decode(prompt[-1:]) == "<|soi|>"
    assert item["input_ids"] == prompt + [vocab.offset + c for c in codes]
    assert item["labels"] == [IGNORE_INDEX] * len(prompt) + [vocab.offset + c for c in codes]
    assert not item["dropped"]


def test_dropped_row_uses_the_unconditional_template(tokenizer, vocab):
    builder = SequenceBuilder(tokenizer, vocab, p_drop_cond=1.0)
    item = builder.build(_row(caption="a red square"), random.Random(0))
    uncond = _encode(tokenizer, vocab.format_uncond())
    assert item["dropped"] and item["input_ids"][: len(uncond)] == uncond
    assert len(item["input_ids"]) == len(uncond) + 16


def test_loss_on_text_labels_every_prompt_token_after_the_first(tokenizer, vocab):
    builder = SequenceBuilder(tokenizer, vocab, caption_mode="long", p_drop_cond=0.0, loss_on_text=True)
    item = builder.build(_row(caption="a blue bar"), random.Random(0))
    assert item["labels"][0] == IGNORE_INDEX and item["labels"][1:] == item["input_ids"][1:]


def test_condition_drop_rate_matches_p_drop_cond(tokenizer, vocab):
    builder = SequenceBuilder(tokenizer, vocab, p_drop_cond=0.1)
    rng = random.Random(123)
    drops = sum(builder.build(_row(caption="a red square"), rng)["dropped"] for _ in range(4000))
    assert 0.085 < drops / 4000 < 0.115  # > 4 standard deviations either side


def test_caption_modes_pick_short_long_or_a_fair_mix():
    row = _row(caption="A big picture. With more.", short_caption="red square", long_caption="A long caption.")
    rng = random.Random(0)
    assert pick_caption(row, "short", rng) == "red square"
    assert pick_caption(row, "long", rng) == "A long caption."
    mixed = [pick_caption(row, "mix", rng) for _ in range(2000)]
    assert set(mixed) == {"red square", "A long caption."}
    assert 0.45 < mixed.count("red square") / 2000 < 0.55


def test_short_mode_falls_back_to_the_first_sentence_and_long_to_the_caption():
    row = _row(caption="A red square on the left. The background is white! Done")
    rng = random.Random(0)
    assert pick_caption(row, "short", rng) == "A red square on the left."
    assert pick_caption(row, "long", rng) == row["caption"]
    assert first_sentence("No sentence end here") == "No sentence end here"
    assert first_sentence("Version 2.5 is out. Next.") == "Version 2.5 is out."


def test_long_captions_are_cut_but_image_tokens_never_are(tokenizer, vocab):
    builder = SequenceBuilder(tokenizer, vocab, model_max_length=16 + 12, caption_mode="long", p_drop_cond=0.0)
    codes = list(range(16))
    visual = [vocab.offset + c for c in codes]
    for n in range(1, 30):
        caption = " ".join(["red square on the left"] * n)
        item = builder.build(_row(codes, caption=caption), random.Random(n))
        ids = item["input_ids"]
        assert len(ids) <= 28
        assert ids[-16:] == visual and item["labels"][-16:] == visual
        assert tokenizer.decode(ids[:1]) == "<|t2i|>" and tokenizer.decode(ids[-17:-16]) == "<|soi|>"
    # A SimpleAR-style right truncation of the same long row would have cut image tokens:
    full = _encode(tokenizer, vocab.format_cond(caption)) + visual
    assert full[:28][-16:] != visual


def test_cut_caption_is_the_longest_prefix_that_fits(tokenizer, vocab):
    builder = SequenceBuilder(tokenizer, vocab, model_max_length=16 + 10)
    ids = builder.prompt_ids("red square on the left with one blue bar on the right")
    assert len(ids) == 10
    assert tokenizer.decode(ids, skip_special_tokens=True).split() == "a picture of red square on the left".split()


def test_model_max_length_too_small_for_the_template_is_refused_with_numbers(tokenizer, vocab):
    with pytest.raises(ValueError, match=r"model_max_length 18 leaves 2 prompt tokens .* needs 5"):
        SequenceBuilder(tokenizer, vocab, model_max_length=18)


def test_batches_are_left_padded_so_images_share_the_last_columns(tokenizer, vocab):
    builder = SequenceBuilder(tokenizer, vocab, caption_mode="long", p_drop_cond=0.0)
    rows = [_row(caption="a red square"), _row(caption="a blue bar on the right with one green square")]
    batch = collate_left_padded([builder.build(r, random.Random(0)) for r in rows], pad_id=tokenizer.pad_token_id)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    assert torch.equal(ids[:, -16:], ids[1:, -16:].expand(2, -1))  # same codes, same columns
    short = int(mask[0].sum())
    assert mask[0, : ids.size(1) - short].eq(0).all() and labels[0, : ids.size(1) - short].eq(IGNORE_INDEX).all()


def test_dataset_draws_are_reproducible_per_epoch_and_change_between_epochs(tokenizer, vocab):
    rows = [_row(short_caption="red square", long_caption="a big red square on the left") for _ in range(64)]
    builder = SequenceBuilder(tokenizer, vocab, caption_mode="mix", p_drop_cond=0.2)
    a, b = TokenSequenceDataset(rows, builder, seed=1), TokenSequenceDataset(rows, builder, seed=1)
    epoch0 = [a[i]["input_ids"] for i in range(64)]
    assert epoch0 == [b[i]["input_ids"] for i in range(64)]
    a.set_epoch(1)
    assert [a[i]["input_ids"] for i in range(64)] != epoch0
