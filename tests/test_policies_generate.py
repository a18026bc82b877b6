"""``simplear-rl generate`` run in-process on the tiny default and on a saved tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from policies.generate import main
from policies.tiny import build_tiny_policy
from rl.cli import main as cli_main


def read_metadata(out):
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny default policy saved as a checkpoint folder."""
    folder = tmp_path_factory.mktemp("tiny-ckpt")
    build_tiny_policy().save(folder)
    return folder


def test_tiny_default_writes_pngs_grid_and_metadata_and_says_weights_are_random(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(["generate", "--prompts", "a red square", "two blue dots", "--num_images", "3", "--batch_size", "4", "--out", str(out)])
    assert code == 0
    assert "RANDOM weights" in capsys.readouterr().err
    names = sorted(p.name for p in out.glob("*_*.png"))
    assert names == [f"{i}_{s}.png" for i in range(2) for s in range(3)]
    assert Image.open(out / "0_0.png").size == (64, 64)  # 8x8 palette grid, 8 px per code
    assert (out / "grid.png").exists()
    records = read_metadata(out)
    assert [(r["prompt_index"], r["sample"]) for r in records] == [(i, s) for i in range(2) for s in range(3)]
    assert len({r["seed"] for r in records}) == 6
    assert records[4]["prompt"] == "two blue dots"
    assert records[0]["cfg_scale"] == 3.0 and records[0]["grid"] == [8, 8] and records[0]["resolution"] == [64, 64]


def test_any_image_is_reproduced_alone_from_its_recorded_seed(tmp_path):
    main(["--prompts", "a red square", "two blue dots", "--num_images", "2", "--seed", "40", "--out", str(tmp_path / "all")])
    record = read_metadata(tmp_path / "all")[3]
    alone = tmp_path / "alone"
    main(["--prompts", record["prompt"], "--seed", str(record["seed"]), "--out", str(alone)])
    assert np.array_equal(pixels(alone / "0_0.png"), pixels(tmp_path / "all" / record["image"]))


def test_prompts_file_txt_and_jsonl_are_read(tmp_path):
    (tmp_path / "p.txt").write_text("a red square\n\n two blue dots \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "id": 1}\n{"prompt": "a dog"}\n')
    for name, expected in (("p.txt", ["a red square", "two blue dots"]), ("p.jsonl", ["x", "a cat", "a dog"])):
        out = tmp_path / name.replace(".", "_")
        extra = ["--prompts", "x"] if name.endswith("jsonl") else []
        assert main([*extra, "--prompts_file", str(tmp_path / name), "--out", str(out)]) == 0
        assert [r["prompt"] for r in read_metadata(out)] == expected


def test_saved_checkpoint_generates_the_same_images_as_the_tiny_default(tiny_checkpoint, tmp_path):
    common = ["--prompts", "a red square", "--num_images", "2", "--cfg_scale", "3", "--seed", "5"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    assert main([*common, "--model", str(tiny_checkpoint), "--codec", "palette", "--out", str(tmp_path / "ckpt")]) == 0
    for name in ("0_0.png", "0_1.png"):
        assert np.array_equal(pixels(tmp_path / "ckpt" / name), pixels(tmp_path / "default" / name))


def test_settings_reach_the_sampler_and_the_metadata(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    args = ["--model", str(tiny_checkpoint), "--codec", "palette", "--prompts", "a cat", "--resolution", "32",
            "--top_k", "5", "--top_p", "0.9", "--temperature", "0.7", "--prompt_prefix", "a picture of ",
            "--uncond_prompt", "dark gray", "--out", str(out)]
    assert main(args) == 0
    record = read_metadata(out)[0]
    assert Image.open(out / "0_0.png").size == (32, 32)
    assert record["grid"] == [4, 4] and record["cfg_scale"] == 6.0  # SimpleAR's default for real checkpoints
    assert (record["top_k"], record["top_p"], record["temperature"]) == (5, 0.9, 0.7)
    assert record["prompt_prefix"] == "a picture of "
    assert record["uncond_prompt"] == "<|t2i|>dark gray<|soi|>"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/ckpt"], "'/no/such/ckpt' does not exist"),
        (["--resolution", "60"], "resolution 60 is not a multiple of the codec downsample 8"),
        (["--prompts_file", "/no/such/prompts.txt"], "prompts file '/no/such/prompts.txt' does not exist"),
        (["--codec", "cosmos"], "only works with the palette codec"),
        (["--num_images", "0"], "must be >= 1"),
        (["--temperature", "0"], "temperature must be > 0"),
    ],
)
def test_bad_input_is_reported_with_a_message_and_exit_status_2(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path).glob("out/*.png"))


def test_codec_with_another_codebook_than_the_policy_is_refused_naming_both(tmp_path, capsys):
    folder = tmp_path / "ckpt27"
    build_tiny_policy(codebook_size=27).save(folder)
    assert main(["--model", str(folder), "--codec", "palette", "--prompts", "a cat", "--out", str(tmp_path / "o")]) == 2
    assert "codec has codebook_size 64 but the policy expects 27" in capsys.readouterr().err


def test_cosmos_codec_needs_a_codec_path(tiny_checkpoint, tmp_path, capsys):
    assert main(["--model", str(tiny_checkpoint), "--prompts", "a cat", "--out", str(tmp_path / "o")]) == 2
    assert "codec_path is required" in capsys.readouterr().err


def test_malformed_jsonl_names_the_line(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\n{"caption": "no prompt key"}\n')
    assert main(["--prompts_file", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "row 2 of prompts file" in capsys.readouterr().err


def test_a_model_needs_prompts(tiny_checkpoint, tmp_path, capsys):
    assert main(["--model", str(tiny_checkpoint), "--codec", "palette", "--out", str(tmp_path / "o")]) == 2
    assert "no prompts" in capsys.readouterr().err


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_every_template_is_formatted_with_the_grid_actually_sampled(tmp_path, negative):
    """An Emu3 checkpoint's templates carry the grid (``{height}*{width}``): with ``--resolution`` both the
    unconditional template and a ``--uncond_prompt`` negative prompt name the sampled grid, not the checkpoint's."""
    from policies.tiny_families import save_tiny_emu3

    folder = save_tiny_emu3(tmp_path / "emu3")  # records no layout: the family's default grid is 90x90
    out = tmp_path / "out"
    extra = [] if negative is None else ["--uncond_prompt", negative]
    assert main(["--model", str(folder), "--prompts", "a red square", "--resolution", "24", "--out", str(out),
                 "--dtype", "float32", *extra]) == 0
    (record,) = read_metadata(out)
    assert record["grid"] == [3, 3]  # 24 px / the VQ-VAE's 8x downsampling
    assert "3*3" in record["uncond_prompt"] and "90*90" not in record["uncond_prompt"]
    if negative is not None:
        assert negative in record["uncond_prompt"]
