"""``simplear-rl rewards list`` and ``rewards score`` on images on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from rewards_helpers import (  # noqa: F401
    RED,
    TINY_ARCH,
    WHITE,
    canvas,
    demo_object,
    isolated_registry,
    paint,
    tiny_weights,
)

from rewards import build_rewards, cli, register_reward

LEFT = [0.0, 0.0, 0.5, 1.0]


def _save(image: torch.Tensor, path) -> None:
    Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)


@pytest.fixture
def demo_folder(tmp_path):
    """Three demo pictures and a JSONL prompt file carrying the demo metadata."""
    images = tmp_path / "images"
    images.mkdir()
    pictures = {
        "a.png": paint(canvas(), slice(0, 32), slice(0, 16), RED),  # right
        "b.png": paint(canvas(), slice(0, 16), slice(0, 16), RED),  # half
        "c.png": canvas(),  # missing
    }
    rows = []
    for name, picture in pictures.items():
        _save(picture, images / name)
        rows.append(
            {
                "image": name,
                "prompt": "a red square on the left",
                "objects": [demo_object(RED, LEFT, 0.25)],
                "background": {"color": "white", "rgb": list(WHITE)},
            }
        )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return images, prompts, rows


def test_list_prints_every_builtin_with_parameters_fields_and_source(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "clip  [builtin]" in out
    assert "parameters: checkpoint (required), arch='ViT-H-14', preprocess='simplear', dtype=None, batch_size=32" in out
    assert "hpsv2.1  [builtin]" in out
    assert "required fields: objects" in out
    assert "passed when score >= 0.5" in out


def test_rewards_subcommand_is_dispatched_by_the_simplear_rl_command(capsys):
    from rl.cli import main as simplear_rl

    assert simplear_rl(["rewards", "list"]) == 0
    assert "color_region  [builtin]" in capsys.readouterr().out


def test_score_jsonl_writes_per_image_scores_and_prints_means(demo_folder, tmp_path, capsys):
    images, prompts, _ = demo_folder
    spec = tmp_path / "recipe.yaml"
    spec.write_text(
        "learning_rate: 1.0e-6\nreward_aggregation: sum\nrewards:\n"
        "  - {name: color_region, weight: 2.0}\n  - {name: background, weight: 1.0}\n"
    )
    out = tmp_path / "scores.jsonl"
    code = cli.main(["score", "--rewards", str(spec), "--images", str(images), "--prompts", str(prompts), "--out", str(out), "--device", "cpu"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in records] == ["a.png", "b.png", "c.png"]
    assert [r["color_region"] for r in records] == [1.0, 0.5, 0.0]
    assert [r["background"] for r in records] == [1.0, 1.0, 1.0]
    assert [r["total"] for r in records] == [3.0, 2.0, 1.0]
    table = capsys.readouterr().out
    assert "color_region" in table and "0.5000" in table and "total" in table


def test_score_text_prompts_match_sorted_images_and_inline_names(tiny_weights, demo_folder, tmp_path):
    images, _, _ = demo_folder
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\nsomething white\nnothing\n")
    spec = tmp_path / "clip.yaml"
    spec.write_text(f"rewards:\n  - {{name: clip, checkpoint: '{tiny_weights.bin}', arch: {TINY_ARCH}}}\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["score", "--rewards", str(spec), "--images", str(images), "--prompts", str(prompts), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    pixels = torch.stack([cli.load_image(images / r["image"]) for r in records])
    suite = build_rewards([{"name": "clip", "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH}])
    expected = suite.score(pixels, ["a red square", "something white", "nothing"])["clip"]
    torch.testing.assert_close(torch.tensor([r["clip"] for r in records]), expected, atol=1e-6, rtol=0)


def test_score_refuses_prompt_image_count_mismatch(demo_folder, tmp_path, capsys):
    images, _, _ = demo_folder
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("only one prompt\n")
    code = cli.main(["score", "--rewards", "color_region", "--images", str(images), "--prompts", str(prompts)])
    assert code == 2
    assert "1 prompts in" in capsys.readouterr().err


def test_score_names_a_corrupt_image(demo_folder, capsys):
    images, prompts, _ = demo_folder
    (images / "b.png").write_bytes(b"\x89PNG not really")
    code = cli.main(["score", "--rewards", "color_region", "--images", str(images), "--prompts", str(prompts)])
    assert code == 2
    assert f"cannot read image {images / 'b.png'}" in capsys.readouterr().err


def test_score_names_a_missing_metadata_column_before_scoring(demo_folder, tmp_path, capsys):
    images, _, rows = demo_folder
    prompts = tmp_path / "no_objects.jsonl"
    prompts.write_text("".join(json.dumps({"image": r["image"], "prompt": r["prompt"]}) + "\n" for r in rows))
    code = cli.main(["score", "--rewards", "color_region,object_count", "--images", str(images), "--prompts", str(prompts)])
    assert code == 2
    err = capsys.readouterr().err
    assert "reward 'color_region' needs metadata column 'objects'" in err
    assert "reward 'object_count' needs metadata column 'objects'" in err


def test_score_names_an_unknown_reward(demo_folder, capsys):
    images, prompts, _ = demo_folder
    assert cli.main(["score", "--rewards", "t_unknown_reward_x", "--images", str(images), "--prompts", str(prompts)]) == 2
    assert "unknown reward 't_unknown_reward_x'" in capsys.readouterr().err


def test_score_shows_a_progress_bar_over_many_images(tmp_path, isolated_registry, capsys):
    @register_reward("t_brightness")
    def brightness(images, prompts):
        return images.mean(dim=(1, 2, 3))

    count = cli.CHUNK + 6
    images = tmp_path / "many"
    images.mkdir()
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), 255, dtype=np.uint8)).save(images / f"{i:03d}.png")
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(count)))
    out = tmp_path / "s.jsonl"
    assert cli.main(["score", "--rewards", "t_brightness", "--images", str(images), "--prompts", str(prompts), "--out", str(out)]) == 0
    assert f"{count}/{count}" in capsys.readouterr().err
    assert [json.loads(line)["t_brightness"] for line in out.read_text().splitlines()] == [1.0] * count
