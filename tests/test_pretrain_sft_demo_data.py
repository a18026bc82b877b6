"""Synthetic demo data: schema, determinism, exact palette round trips, held-out prompts, vocabulary."""

from __future__ import annotations

import json
import random

import numpy as np
import torch
from PIL import Image

from policies.codecs import PaletteCodec
from policies.tiny import build_word_tokenizer
from pretrain_sft.demo_data import (
    SHAPES,
    demo_words,
    is_held_out,
    random_scene,
    region_cell_box,
    write_image_folder,
    write_prompt_sets,
)
from pretrain_sft.images import to_pixels

PALETTE_LEVELS = {0, 85, 170, 255}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prompt_rows_follow_the_reward_schema_exactly(tmp_path):
    train, _ = write_prompt_sets(tmp_path, num_train=40, num_eval=10)
    for row in _rows(train):
        assert set(row) == {"prompt", "long_prompt", "background", "objects"}
        assert set(row["background"]) == {"color", "rgb"}
        assert 1 <= len(row["objects"]) <= 2
        for obj in row["objects"]:
            assert set(obj) == {"color", "rgb", "shape", "region", "box", "area"}
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and 0 < obj["area"] < 1
            assert set(obj["rgb"]) <= PALETTE_LEVELS and obj["rgb"] != row["background"]["rgb"]


def test_same_seed_gives_identical_images_and_meta(tmp_path):
    a = write_image_folder(tmp_path / "a", num_images=12, seed=7)
    b = write_image_folder(tmp_path / "b", num_images=12, seed=7)
    c = write_image_folder(tmp_path / "c", num_images=12, seed=8)
    assert a.read_text() == b.read_text() != c.read_text()
    assert (a.parent / "images/000011.png").read_bytes() == (b.parent / "images/000011.png").read_bytes()


def test_pictures_round_trip_exactly_through_the_palette_codec_and_shapes_stay_distinct(tmp_path):
    meta = write_image_folder(tmp_path, num_images=60, seed=1)
    codec = PaletteCodec(levels=4, patch=8)
    for row in _rows(meta):
        pixels = to_pixels(Image.open(tmp_path / row["image"]).convert("RGB"))[None]
        codes = codec.encode(pixels)
        assert torch.equal(codec.decode(codes), pixels)
        # Each object's colour covers exactly its shape's cells inside its region (shapes are patch-aligned).
        grid = codes[0].numpy()
        for obj in row["objects"]:
            r0, c0, rows, cols = region_cell_box(obj["region"], 8)
            region = grid[r0 : r0 + rows, c0 : c0 + cols]
            cells = int((region == codec.rgb_to_code(obj["rgb"])).sum())
            same = sum(o["color"] == obj["color"] and o["region"] == obj["region"] for o in row["objects"])
            assert cells == same * len(SHAPES[obj["shape"]])
            assert abs(obj["area"] - len(SHAPES[obj["shape"]]) / (rows * cols)) < 1e-9


def test_shapes_have_pairwise_different_cell_patterns():
    patterns = {frozenset(cells) for cells in SHAPES.values()}
    assert len(patterns) == len(SHAPES) >= 4


def test_held_out_combinations_appear_only_in_eval_prompts(tmp_path):
    meta = write_image_folder(tmp_path, num_images=300, seed=2)
    train, evaluation = write_prompt_sets(tmp_path, num_train=200, num_eval=50, seed=2)
    for row in _rows(meta) + _rows(train):
        objs = row["objects"]
        assert not any(is_held_out(o["color"], o["shape"], o["region"]) for o in objs)
    eval_rows = _rows(evaluation)
    assert len(eval_rows) == 50
    assert all(any(is_held_out(o["color"], o["shape"], o["region"]) for o in r["objects"]) for r in eval_rows)
    assert not {r["prompt"] for r in eval_rows} & {r["prompt"] for r in _rows(train)}


def test_demo_words_cover_every_caption_without_unknown_tokens():
    tokenizer = build_word_tokenizer(demo_words())
    rng = random.Random(0)
    for split in ("train", "eval"):
        for _ in range(200):
            scene = random_scene(rng, split)
            for text in (scene.short_caption(), scene.long_caption()):
                assert tokenizer.unk_token_id not in tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_captions_state_counts_colours_shapes_and_positions():
    rng = random.Random(5)
    scenes = [random_scene(rng) for _ in range(300)]
    pair = next(s for s in scenes if len(s.objects) == 2 and s.objects[0].color == s.objects[1].color)
    obj = pair.objects[0]
    assert pair.short_caption().startswith(f"two {obj.color} ")
    assert "there are two" in pair.long_caption()
    single = next(s for s in scenes if len(s.objects) == 1)
    assert single.long_caption() == (
        f"A picture with a {single.background} background. "
        + {"left": "On the left side", "right": "On the right side", "top": "At the top",
           "bottom": "At the bottom", "center": "In the center"}[single.objects[0].region]
        + f" there is one {single.objects[0].color} {single.objects[0].shape}."
    )


def test_pictures_use_only_palette_channel_values(tmp_path):
    meta = write_image_folder(tmp_path, num_images=20, seed=4)
    for row in _rows(meta):
        values = set(np.unique(np.asarray(Image.open(tmp_path / row["image"]))).tolist())
        assert values <= PALETTE_LEVELS
