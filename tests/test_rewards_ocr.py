"""``ocr`` reward: target extraction, Flow-GRPO's edit-distance score, and the real bundled OCR models."""

from __future__ import annotations

import functools
import json
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from rewards import RewardCheckpointError, RewardConfigError, RewardScoreError, build_rewards, cli, ocr
from rewards.ocr import (
    edit_distance,
    edit_similarity,
    exact_match,
    normalise_text,
    prepare_picture,
    quoted_text,
    rendering_score,
)



# ------------------------------------------------------------------ target text
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ('a neon sign that says "Open 24 Hours" above a door', "Open 24 Hours"),
        ("a cake with “Happy Birthday” written in icing", "Happy Birthday"),
        ("the cat's poster reads 'NO MICE' in red", "NO MICE"),
        ("a shop’s sign: ‘BAKERY’", "BAKERY"),
        ('a poster "SALE" and a label "50% off"', "SALE 50% off"),
        ("""a mug saying "COFFEE" next to 'tea'""", "COFFEE"),  # double quotes win
        ('an empty "" banner with "HELLO"', "HELLO"),
        ("the dogs' bowl and the cat's toy", None),
        ("a red square on the left", None),
    ],
)
def test_quoted_text_takes_the_quoted_spans(prompt, expected):
    assert quoted_text(prompt) == expected


def test_normalise_text_ignores_case_whitespace_and_full_width_forms():
    assert normalise_text("  Open\t24\nHOURS ") == "open24hours"
    assert normalise_text("ＳＡＬＥ：５０％") == "sale:50%"
    assert normalise_text("Don't!") == "don't!"  # punctuation is kept


# ------------------------------------------------------------------ edit distance
@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("flaw", "lawn", 2), ("same", "same", 0), ("ab", "ba", 2)],
)
def test_edit_distance_known_values(a, b, distance):
    assert edit_distance(a, b) == distance == edit_distance(b, a)


def _recursive_distance(a: str, b: str) -> int:
    @functools.lru_cache(maxsize=None)
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def test_edit_distance_equals_the_recursive_definition_on_random_strings():
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 8)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 8)))
        assert edit_distance(a, b) == _recursive_distance(a, b), (a, b)


@pytest.mark.parametrize(
    ("recognised", "target", "score"),
    [
        ("HELLO", "hello", 1.0),
        ("Open 24 Hours", "open24hours", 1.0),
        ("WELCOME: OPEN 24 HOURS!", "Open 24 Hours", 1.0),  # target inside the recognised text: distance 0
        ("HELLQ", "HELLO", 0.8),  # one substitution in five characters
        ("HELL", "HELLO", 0.8),
        ("", "HELLO", 0.0),
        ("completely unrelated words", "HELLO", 0.0),  # distance above len(target) is clamped
    ],
)
def test_rendering_score_is_one_minus_clamped_normalised_distance(recognised, target, score):
    assert rendering_score(recognised, target) == pytest.approx(score)


def test_rendering_score_refuses_an_empty_target():
    with pytest.raises(ValueError, match="empty"):
        rendering_score("HELLO", " \t")


# ------------------------------------------------------------------ the real OCR models
def _font(size: int):
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        pytest.skip("Pillow has no FreeType support here, so it cannot draw large text")
    return font


def rendered(word: str, size: int = 256, font_size: int = 48) -> torch.Tensor:
    """A ``[3,size,size]`` image in [0,1]: ``word`` in black, centred on white."""
    picture = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(picture)
    font = _font(font_size)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    draw.text(((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top), word, fill="black", font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def suite():
    return build_rewards([{"name": "ocr", "batch_size": 2}])


def test_correct_word_scores_one_wrong_word_lower_blank_zero(suite):
    images = torch.stack([rendered("HELLO"), rendered("WORLD"), torch.ones(3, 256, 256), rendered("HELP")])
    prompts = ['a sign that says "HELLO"'] * 4
    scores = suite.score(images, prompts)["ocr"]
    assert scores[0] == 1.0
    assert scores[1] < 0.5
    assert scores[2] == 0.0
    assert scores[3] == pytest.approx(0.6)  # HELP vs HELLO: one substitution and one insertion
    assert suite.rewards["ocr"].passed(scores).tolist() == [True, False, False, False]


def test_text_column_overrides_the_prompt_and_is_optional_per_row(suite):
    images = torch.stack([rendered("SALE"), rendered("SALE")])
    scores = suite.score(images, ['a poster saying "OPEN"', 'a poster saying "SALE"'], text=["sale", None])["ocr"]
    assert scores.tolist() == [1.0, 1.0]


def test_row_without_target_text_is_an_error_naming_the_prompt(suite):
    with pytest.raises(RewardScoreError, match="a plain poster"):
        suite.score(rendered("SALE").unsqueeze(0), ["a plain poster"])


def test_reward_runs_on_cpu_whatever_device_is_asked():
    suite = build_rewards([{"name": "ocr"}], device="cuda")
    assert suite.rewards["ocr"].device == torch.device("cpu")
    assert suite.score(rendered("OK").unsqueeze(0), ['"OK"'])["ocr"].tolist() == [1.0]


def test_missing_model_file_fails_at_build(tmp_path):
    missing = tmp_path / "rec.onnx"
    with pytest.raises(RewardCheckpointError, match="rec_model .*rec.onnx.* does not exist"):
        build_rewards([{"name": "ocr", "rec_model": str(missing)}])


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(ocr, "_ENGINES", {})
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # makes the import fail
    with pytest.raises(RewardConfigError, match=r'pip install -e "\.\[ocr\]"'):
        build_rewards([{"name": "ocr"}])


def test_cli_score_reads_pictures_and_text_column(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for name, word in (("a.png", "GRPO"), ("b.png", "GRAPE")):
        Image.fromarray((rendered(word).permute(1, 2, 0) * 255).byte().numpy()).save(images / name)
        rows.append({"image": name, "prompt": "a banner", "text": "GRPO"})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    assert cli.main(["score", "--rewards", "ocr", "--images", str(images), "--prompts", str(prompts), "--out", str(out)]) == 0
    scores = [json.loads(line)["ocr"] for line in out.read_text().splitlines()]
    assert scores[0] == 1.0 and scores[1] < 1.0


def test_eval_rewards_scores_a_checkpoint_with_ocr(tmp_path):
    from policies.tiny import build_tiny_policy
    from rl.evaluate import main as eval_main

    checkpoint = tmp_path / "policy"
    build_tiny_policy(hidden_size=32, num_hidden_layers=1).save(checkpoint)
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": 'a red square saying "HI"', "text": None}, {"prompt": "a blue bar", "text": "BAR"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    assert eval_main(["rewards", "--model", str(checkpoint), "--prompts", str(prompts), "--rewards", "ocr",
                      "--out", str(out), "--num_images", "1", "--codec", "palette", "--batch_size", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2
    assert 0.0 <= summary["rewards/ocr/mean"] <= 1.0 and "rewards/ocr/pass_rate" in summary


def test_importing_rewards_does_not_import_rapidocr():
    import subprocess

    code = "import sys, rewards; rewards.available_rewards(); print(sorted({'rapidocr_onnxruntime', 'onnxruntime', 'cv2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ options for small single-line pictures
@pytest.mark.parametrize(
    ("recognised", "target", "similarity"),
    [
        ("4721", "4721", 1.0),
        ("472", "4721", 0.75),  # one digit missing
        ("4781", "4721", 0.75),  # one digit wrong
        ("47211", "4721", 0.8),  # extra text costs too (Flow-GRPO's score would give 1.0)
        ("", "4721", 0.0),
        ("", "", 1.0),
    ],
)
def test_edit_similarity_is_one_minus_distance_over_the_longer_text(recognised, target, similarity):
    assert edit_similarity(recognised, target) == pytest.approx(similarity)


def test_exact_match_compares_normalised_texts():
    assert exact_match(" 47 21", "4721") == 1.0
    assert exact_match("4721", "4720") == 0.0
    assert exact_match("47211", "4721") == 0.0


def test_prepare_picture_is_the_identity_by_default_and_enlarges_when_asked():
    picture = np.random.default_rng(0).integers(0, 256, (32, 96, 3), dtype=np.uint8)
    assert np.array_equal(prepare_picture(picture), picture)
    assert prepare_picture(picture, upscale=2.0).shape == (64, 192, 3)
    blurred = prepare_picture(picture, blur=1.5)
    assert blurred.shape == picture.shape and blurred.std() < picture.std()  # a blur smooths


def _coarse_numbers(numbers, levels=6, patch=4):
    """Hand-made pictures: each number drawn at 96x32 px, then flattened into 4-px patches of 6 grey levels
    (what the palette codec does), in [0,1]."""
    from policies.codecs import build_codec
    from pretrain_sft.number_data import render_number, to_pixels

    codec = build_codec("palette", levels=levels, patch=patch)
    clean = torch.stack([to_pixels(render_number(n)) for n in numbers])
    return (codec.decode(codec.encode(clean)) + 1) / 2


NUMBERS = ["0493", "1258", "2714", "3806", "4423", "5333", "6190", "7777", "8062", "9701"]


def test_a_blurred_upscale_of_the_patches_reads_better_than_the_raw_patches():
    images = _coarse_numbers(NUMBERS)
    prompts = [f"the number {n}" for n in NUMBERS]
    raw, smooth = build_rewards([
        {"name": "ocr", "use_det": False, "score": "exact", "text_score": 0.0},
        {"name": "ocr", "as": "ocr_smooth", "use_det": False, "upscale": 2.0, "blur": 1.5, "score": "exact",
         "text_score": 0.0},
    ]).rewards.values()
    raw_scores = raw(images, prompts, text=NUMBERS)
    smooth_scores = smooth(images, prompts, text=NUMBERS)
    assert smooth_scores.sum() > raw_scores.sum()
    assert smooth_scores.mean() >= 0.8


def test_recognition_only_reads_a_clean_single_line_picture_and_partial_reads_score_between_0_and_1():
    from pretrain_sft.number_data import render_number, to_pixels

    suite = build_rewards([{"name": "ocr", "use_det": False, "score": "edit_similarity"}])
    clean = (torch.stack([to_pixels(render_number("4721")), to_pixels(render_number("472"))]) + 1) / 2
    scores = suite.score(clean, ["the number 4721"] * 2, text=["4721", "4721"])["ocr"]
    assert scores[0] == 1.0
    assert 0.0 < scores[1] < 1.0  # "472" read for "4721": 0.75


@pytest.mark.parametrize(("options", "message"), [
    ({"score": "bleu"}, "unknown score 'bleu'"),
    ({"upscale": 0}, "upscale must be > 0"),
    ({"blur": -1}, "blur >= 0"),
])
def test_bad_reading_options_are_refused_at_build(options, message):
    with pytest.raises(RewardConfigError, match=message):
        build_rewards([{"name": "ocr", **options}])
