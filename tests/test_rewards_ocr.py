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
from rewards.ocr import edit_distance, normalise_text, quoted_text, rendering_score



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
