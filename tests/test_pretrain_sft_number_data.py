"""Synthetic number data: held-out numbers never reach training, captions, token cache, determinism."""

from __future__ import annotations

import json
import re

import torch
from PIL import Image

from policies.codecs import PaletteCodec
from policies.tiny import build_word_tokenizer
from pretrain_sft.cache import load_cache
from pretrain_sft.number_data import (
    HELD_OUT_EVERY,
    held_out_numbers,
    is_held_out,
    main,
    number_text,
    number_words,
    render_number,
    short_caption,
    to_pixels,
)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _numbers_in(caption: str) -> set[str]:
    """Every run of digits in a caption, with the spaces between single digits removed."""
    return {m.replace(" ", "") for m in re.findall(r"\d(?: \d)*", caption)}


def test_about_one_number_in_fifty_is_held_out_and_the_rule_is_fixed():
    held = [n for n in (number_text(v) for v in range(10_000)) if is_held_out(n)]
    assert abs(len(held) - 10_000 / HELD_OUT_EVERY) < 30
    assert held == [n for n in (number_text(v) for v in range(10_000)) if is_held_out(n)]
    assert held_out_numbers(16, seed=3) == held_out_numbers(16, seed=3) and set(held_out_numbers(16)) <= set(held)


def test_no_held_out_number_is_in_any_training_caption_or_prompt(tmp_path):
    assert main(["--out", str(tmp_path), "--num_images", "600", "--num_train_prompts", "100",
                 "--num_eval_prompts", "20"]) == 0
    held = {n for n in (number_text(v) for v in range(10_000)) if is_held_out(n)}
    captions = [c for r in _rows(tmp_path / "meta.jsonl") for c in (r["caption"], r["short_caption"], r["long_caption"])]
    captions += [c for r in _rows(tmp_path / "train_prompts.jsonl") for c in (r["prompt"], r["long_prompt"])]
    cache, _ = load_cache(tmp_path / "cache")
    captions += [c for column in ("caption", "short_caption", "long_caption") for c in cache[column]]
    seen = set().union(*(_numbers_in(c) for c in captions))
    assert len(seen) > 300 and not seen & held
    evaluation = _rows(tmp_path / "eval_prompts.jsonl")
    assert len(evaluation) == 20 and all(is_held_out(r["text"]) and r["prompt"] == short_caption(r["text"]) for r in evaluation)
    assert {r["text"] for r in evaluation}.isdisjoint(seen)


def test_token_cache_holds_the_palette_codes_of_each_picture_on_an_8x24_grid(tmp_path):
    assert main(["--out", str(tmp_path), "--num_images", "8", "--num_train_prompts", "4", "--num_eval_prompts", "2"]) == 0
    rows, info = load_cache(tmp_path / "cache")
    assert info.grid == (8, 24) and info.codebook_size == 512
    codec = PaletteCodec(levels=8, patch=4)
    meta = _rows(tmp_path / "meta.jsonl")
    for row, record in zip(rows, meta):
        pixels = to_pixels(Image.open(tmp_path / record["image"]).convert("RGB"))
        assert row["codes"] == codec.encode(pixels[None]).flatten().tolist()
        assert json.loads(row["meta"]) == {"text": record["text"]} and record["caption"] == row["caption"]


def test_same_seed_gives_identical_pictures_and_captions(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        assert main(["--out", str(tmp_path / name), "--num_images", "6", "--num_train_prompts", "4",
                     "--num_eval_prompts", "2", "--seed", str(seed)]) == 0
    a, b, c = ((tmp_path / n / "meta.jsonl").read_text() for n in "abc")
    assert a == b != c
    assert (tmp_path / "a/images/000005.png").read_bytes() == (tmp_path / "b/images/000005.png").read_bytes()


def test_pictures_are_dark_digits_centred_on_white():
    pixels = to_pixels(render_number("4721"))
    assert pixels.shape == (3, 32, 96)
    dark = (pixels.mean(0) < 0).nonzero()
    assert pixels[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    cols, rows = dark[:, 1].float(), dark[:, 0].float()
    assert abs(cols.mean() - 47.5) < 6 and abs(rows.mean() - 15.5) < 4
    assert not torch.equal(to_pixels(render_number("4721")), to_pixels(render_number("4720")))


def test_every_caption_word_is_in_the_tokenizer_so_no_held_out_number_is_unknown():
    tokenizer = build_word_tokenizer(number_words())
    for number in held_out_numbers(5):
        ids = tokenizer(short_caption(number))["input_ids"]
        assert tokenizer.unk_token_id not in ids
