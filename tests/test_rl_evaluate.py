"""``simplear-rl eval``: GenEval and DPG-Bench folder layouts, and reward evaluation of a checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from policies.codecs import PaletteCodec
from policies.guidance import SamplingConfig
from policies.loading import load_policy
from policies.rendering import render
from policies.tiny import build_tiny_policy
from rl.evaluate import main as eval_main

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"
COMMON = ["--codec", "palette", "--cfg_scale", "2.0", "--batch_size", "4"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-policy")
    build_tiny_policy(hidden_size=32, num_hidden_layers=1).save(folder)
    return folder


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def reference_image(checkpoint, caption: str, seed: int) -> np.ndarray:
    """The image of one caption and seed, rendered alone (batch of one)."""
    policy = load_policy(checkpoint)
    image = render(policy, PaletteCodec(), [caption], [seed], SamplingConfig(cfg_scale=2.0), desc=None)[0]
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_geneval_layout_has_metadata_samples_and_reproducible_seeds(checkpoint, tmp_path):
    rows = [{"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a red square"},
            {"tag": "colors", "include": [{"class": "bar", "count": 1, "color": "blue"}], "prompt": "a blue bar"}]
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "geneval"
    assert eval_main(["geneval", "--model", str(checkpoint), "--prompts", str(meta), "--out", str(out),
                      "--num_images", "3", "--seed", "7", *COMMON]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001"]
    for i, row in enumerate(rows):
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == row
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png"]
        seeds = json.loads((folder / "generation.json").read_text())["seeds"]
        assert seeds == [7 + 3 * i + k for k in range(3)]
    record = json.loads((out / "00001" / "generation.json").read_text())
    again = reference_image(checkpoint, "a blue bar", record["seeds"][2])
    assert np.array_equal(pixels(out / "00001" / "samples" / "0002.png"), again)


def test_dpg_layout_is_a_two_by_two_grid_per_prompt_file(checkpoint, tmp_path):
    prompts = tmp_path / "dpg_prompts"
    prompts.mkdir()
    (prompts / "scene_a.txt").write_text("a red square on the left\n")
    (prompts / "scene_b.txt").write_text("two green bars\n")
    out = tmp_path / "dpg"
    assert eval_main(["dpg", "--model", str(checkpoint), "--prompts", str(prompts), "--out", str(out), *COMMON]) == 0
    grid = pixels(out / "scene_b.png")
    assert grid.shape == (128, 128, 3)  # 2x2 of 64-px images
    log = [json.loads(line) for line in (out / "generation.jsonl").read_text().splitlines()]
    assert [r["name"] for r in log] == ["scene_a", "scene_b"]
    bottom_left = reference_image(checkpoint, "two green bars", log[1]["seeds"][2])
    assert np.array_equal(grid[64:, :64], bottom_left)
    assert eval_main(["dpg", "--model", str(checkpoint), "--prompts", str(prompts), "--out", str(out),
                      "--num_images", "2", *COMMON]) == 2


def test_reward_evaluation_reports_means_pass_rates_and_per_prompt_scores(checkpoint, tmp_path, capsys):
    out = tmp_path / "scores"
    assert eval_main(["rewards", "--model", str(checkpoint), "--prompts", str(TINY_PROMPTS), "--rewards",
                      "color_region,object_count", "--out", str(out), "--num_images", "2", *COMMON]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 16 and summary["prompts"] == 8
    for key in ("rewards/color_region/mean", "rewards/color_region/pass_rate", "rewards/object_count/pass_rate",
                "accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["color_region"]) == 2 and len(r["passed"]) == 2 for r in rows)
    passed = sum(p for r in rows for p in r["passed"]) / 16
    assert summary["accuracy"] == pytest.approx(passed)
    assert "accuracy:" in capsys.readouterr().out


def test_reward_evaluation_refuses_a_prompt_set_without_the_needed_metadata(checkpoint, tmp_path, capsys):
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"prompt": "a red square"}\n')
    assert eval_main(["rewards", "--model", str(checkpoint), "--prompts", str(bare), "--rewards", "color_region",
                      "--out", str(tmp_path / "o"), *COMMON]) == 2
    assert "objects" in capsys.readouterr().err
