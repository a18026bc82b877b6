"""The demo pipeline at reduced size, and the prompt-length ablation command on the tiny recipe."""

import json
from pathlib import Path

import yaml
from PIL import Image

from rl.ablate import AblationSpec, as_cli, variant_command
from rl.ablate import main as ablate_main
from rl.curves import read_metrics
from rl.demo import main as demo_main

REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    assert demo_main(["--out", str(out), "--quick", "true"]) == 0
    for done in ("data/eval_prompts.jsonl", "cache/simplear_cache.json", "pretrain/config.json", "sft/config.json",
                 "grpo/train_summary.json", "grpo/reward_curve.png", "report.md", "report.png",
                 "samples_before.png", "samples_after.png"):
        assert (out / done).exists(), done
    report = json.loads((out / "report.json").read_text())
    for model in ("SFT (before GRPO)", "GRPO (after)"):
        assert set(report["results"][model]) == {"short", "long"}
        assert 0.0 <= report["results"][model]["short"]["accuracy"] <= 1.0
    assert set(report["gain_points"]) == {"short", "long"}
    assert "Held-out accuracy" in (out / "report.md").read_text()
    records = read_metrics(out / "grpo")
    assert [r["step"] for r in records if "reward" in r] == [1, 2, 3]
    # The GRPO stage monitors both rewards on the held-out prompts (start and end here) and writes its run report.
    assert [r["step"] for r in records if "heldout/object_count/mean" in r] == [0, 3]
    assert "grpo/report.html" in (out / "report.md").read_text() and (out / "grpo" / "report.html").exists()

    # A second run reuses every finished stage instead of retraining.
    assert demo_main(["--out", str(out), "--quick", "true"]) == 0
    assert json.loads((out / "report.json").read_text())["seconds"]["pretrain"] == 0.0


def test_ablation_spec_turns_variants_into_recipe_overrides(tmp_path):
    spec_file = REPO / "recipes" / "demo" / "ablation_prompt_length.yaml"
    spec = AblationSpec.load(spec_file)
    assert list(spec.variants) == ["short", "long", "mix"]
    command = variant_command(spec, "long")
    assert command[-6:] == ["--train_prompts", "runs/demo/data/train_prompts.jsonl", "--prompt_length", "long",
                            "--output_dir", "runs/ablation_prompt_length/long"]
    assert as_cli({"rewards": [{"name": "a"}], "use_peft": True}) == ["--rewards", '{"name": "a"}', "--use_peft", "true"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"recipe": "x", "out": "y", "variants": {"a": {}}, "eval": {"prompts": "p", "rewards": []},
                                   "varaints": {}}))
    try:
        AblationSpec.load(bad)
    except ValueError as err:
        assert "varaints" in str(err)
    else:
        raise AssertionError("an unknown spec key was accepted")


def test_prompt_length_ablation_trains_each_variant_and_overlays_curves(tmp_path):
    out = tmp_path / "ablation"
    spec = {
        "name": "prompt length (tiny)",
        "recipe": str(REPO / "recipes" / "tiny" / "grpo.yaml"),
        "out": str(out),
        "overrides": {"train_prompts": str(REPO / "recipes" / "tiny" / "prompts.jsonl"), "max_steps": 2,
                      "sample_every": 0, "save_steps": 100},
        "variants": {"short": {"prompt_length": "short"}, "long": {"prompt_length": "long"}},
        "eval": {"prompts": str(REPO / "recipes" / "tiny" / "prompts.jsonl"), "rewards": ["color_region"],
                 "num_images": 1, "cfg_scale": 3.0, "batch_size": 8},
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    assert ablate_main([str(spec_file)]) == 0
    for variant in ("short", "long"):
        assert [r["step"] for r in read_metrics(out / variant)] == [1, 2]
    results = json.loads((out / "ablation.json").read_text())
    assert set(results) == {"short", "long"} and set(results["short"]) == {"short", "long"}
    assert "accuracy" in results["long"]["short"]
    with Image.open(out / "reward_curves.png") as im:
        assert im.width > 300
    table = (out / "ablation.md").read_text()
    assert "| short |" in table and "| long |" in table


def test_a_demo_stage_that_reports_an_error_stops_the_demo(tmp_path):
    from rl.demo import DemoConfig, Pipeline

    pipeline = Pipeline(DemoConfig(out=str(tmp_path)))
    try:
        pipeline.stage("grpo", tmp_path / "grpo" / "done", lambda argv: 2, ["--config", "x.yaml"])
    except RuntimeError as err:
        assert "'grpo' failed with status 2" in str(err)
    else:
        raise AssertionError("a failed stage was treated as done")
    assert "grpo" not in pipeline.timings
