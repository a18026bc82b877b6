"""What a run writes loads everywhere and exports to a plain Hugging Face folder (issue 19).

Every export source round-trips on the tiny policy: load -> sample with fixed seeds -> the same codes as
the run's own policy; the exported tensors equal the trained ones (fp32) or their bf16 rounding. The
ZeRO-3 and FSDP2 sources are in tests/test_distributed_engines.py (they reuse its 2-process runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from policies import SamplingConfig, load_policy, sample_images
from policies.sources import POLICY_RECORD_FILE, resolve_source
from rl.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny" / "grpo.yaml"
PROMPTS = REPO / "recipes" / "tiny" / "prompts.jsonl"
CAPTIONS = ["a red square on the left", "a blue circle"]
SEEDS = [3, 4]
LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", "1e-2"]


def grpo(out: Path, *extra: str) -> Path:
    argv = ["grpo", "--config", str(RECIPE), "--output_dir", str(out), "--train_prompts", str(PROMPTS),
            "--max_steps", "1", "--save_steps", "1", "--sample_every", "0", "--resolution", "32", *extra]
    assert cli(argv) == 0
    return out


def codes_of(model, policy) -> torch.Tensor:
    """Codes (4x4 grids) of CAPTIONS with SEEDS sampled from ``model`` in ``policy``'s layout (CFG, fixed seeds)."""
    return sample_images(model, policy.vocab, policy.encode_prompts(CAPTIONS), policy.encode_uncond(),
                         SamplingConfig(cfg_scale=3.0), seeds=SEEDS, pad_id=policy.pad_id).codes


def assert_same_tensors(folder: Path, reference: dict[str, torch.Tensor], dtype=torch.float32) -> None:
    exported = load_file(str(folder / "model.safetensors"))
    for name, tensor in reference.items():
        if name in exported:
            assert exported[name].dtype == dtype, name
            assert torch.equal(exported[name], tensor.to(dtype)), name


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """One full fine-tuning GRPO step with a checkpoint (checkpoint-1 = the final weights)."""
    return grpo(tmp_path_factory.mktemp("full") / "run")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """One LoRA GRPO step, launched from the CLI as a user would."""
    return grpo(tmp_path_factory.mktemp("lora") / "run", *LORA)


@pytest.fixture(scope="module")
def full_own(full_run):
    """``(policy, codes)``: the full run's own saved policy and its codes."""
    policy = load_policy(full_run, dtype="float32")
    return policy, codes_of(policy.model, policy)


@pytest.fixture(scope="module")
def lora_own(lora_run):
    """``(layout policy, codes)``: the codes of the LoRA run's own policy as the trainer held it (base + adapter,
    unmerged), and a policy with the layout the run recorded to sample others with."""
    base = load_policy(lora_run / "init-policy", dtype="float32")
    base.vocab = load_policy(lora_run, dtype="float32").vocab  # the layout the run recorded
    return base, codes_of(PeftModel.from_pretrained(base.model, str(lora_run)).eval(), base)


# ------------------------------------------------------------------------------------------- loading


def test_a_lora_run_and_its_checkpoint_load_merged_with_the_recorded_layout_and_codec(lora_run, lora_own):
    _, own_codes = lora_own
    for folder in (lora_run, lora_run / "checkpoint-1"):
        source = resolve_source(folder)
        assert source.kind == "adapter" and source.model_folder.resolve() == (lora_run / "init-policy").resolve()
        policy = load_policy(folder, dtype="float32")
        assert policy.vocab.codec == {"name": "palette", "levels": 4, "patch": 8}  # only the run's record has it
        assert policy.vocab.grid == (4, 4)  # the run's grid (--resolution 32), not its base's default
        assert not any("lora" in name for name, _ in policy.model.named_parameters())  # merged in memory
        assert torch.equal(codes_of(policy.model, policy), own_codes)


def test_a_moved_lora_base_is_named_and_found_with_base(lora_run, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = json.loads((lora_run / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    for name in ("adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", POLICY_RECORD_FILE):
        (adapter / name).write_bytes((lora_run / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"trained on base model '.*gone'.*--base PATH"):
        load_policy(adapter)
    assert load_policy(adapter, base=lora_run / "init-policy").vocab.grid == (4, 4)


def test_a_folder_that_is_neither_kind_names_both(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert cli(["generate", "--model", str(tmp_path), "--prompts", "a", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no config.json and no adapter_config.json" in err
    assert "a Hugging Face model folder" in err and "a LoRA adapter folder" in err


# -------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("which", ["run", "checkpoint"])
def test_a_full_run_and_its_checkpoint_export_the_trained_weights_that_sample_the_same_codes(
        full_run, full_own, tmp_path, which):
    source = full_run if which == "run" else full_run / "checkpoint-1"
    own, own_codes = full_own
    out = tmp_path / "export"
    assert cli(["export", str(source), "--out", str(out)]) == 0
    assert_same_tensors(out, own.model.state_dict())
    exported = load_policy(out)
    assert exported.vocab == own.vocab and exported.vocab.codec == own.vocab.codec
    assert torch.equal(codes_of(exported.model, exported), own_codes)
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"
    assert json.loads((out / "generation_config.json").read_text()).get("top_k") is None  # no text-chat defaults


def test_bf16_export_holds_the_bf16_rounding_of_the_trained_weights(full_run, full_own, tmp_path):
    out = tmp_path / "bf16"
    assert cli(["export", str(full_run), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert_same_tensors(out, full_own[0].model.state_dict(), dtype=torch.bfloat16)


def test_a_lora_run_exports_merged_and_as_an_adapter_both_sampling_the_runs_codes(lora_run, lora_own, tmp_path):
    layout, own_codes = lora_own
    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    assert cli(["export", str(lora_run), "--out", str(merged), "--merge"]) == 0
    assert cli(["export", str(lora_run), "--out", str(adapter)]) == 0
    plain = AutoModelForCausalLM.from_pretrained(merged)  # a plain transformers model, sampled in the run's layout
    assert torch.equal(codes_of(plain, layout), own_codes)
    policy = load_policy(adapter, dtype="float32")
    assert policy.vocab.codec == {"name": "palette", "levels": 4, "patch": 8}
    assert policy.vocab == load_policy(merged, dtype="float32").vocab
    assert torch.equal(codes_of(policy.model, policy), own_codes)
    assert Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]).is_absolute()


def test_the_model_card_is_built_from_the_runs_records(full_run, tmp_path):
    out = tmp_path / "card"
    assert cli(["export", str(full_run), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    last = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert f"| rewards/color_region/mean | {last['rewards/color_region/mean']:.4g} |" in card
    assert "| color_region | 1 |" in card  # the recipe's reward and weight
    assert "| training step | 1 |" in card and "| stage | grpo |" in card
    assert "| learning_rate | 0.001 |" in card


def test_export_refuses_a_non_empty_out_and_overwrite_moves_it_aside(full_run, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert cli(["export", str(full_run), "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err and (out / "precious.txt").exists()
    assert cli(["export", str(full_run), "--out", str(out), "--overwrite", "true"]) == 0
    (aside,) = tmp_path.glob("export.overwritten-*")
    assert (aside / "precious.txt").read_text() == "keep me"
    assert (out / "model.safetensors").exists() and not (out / "precious.txt").exists()
    assert not list(tmp_path.glob(".export.partial-*"))  # nothing half-written left behind


# --------------------------------------------------------------------------------------- end to end


def test_a_lora_run_goes_from_the_cli_to_images_an_eval_table_a_new_grpo_run_and_an_export(lora_run, tmp_path):
    images = tmp_path / "images"
    assert cli(["generate", "--model", str(lora_run), "--prompts", "a red square", "--out", str(images)]) == 0
    assert (images / "0_0.png").exists()
    record = json.loads((images / "metadata.jsonl").read_text().splitlines()[0])
    assert record["codec"] == {"name": "palette", "levels": 4, "patch": 8} and record["grid"] == [4, 4]

    evaluation, prompts = tmp_path / "eval", tmp_path / "prompts.jsonl"
    prompts.write_text("".join(PROMPTS.read_text().splitlines(keepends=True)[:2]))
    assert cli(["eval", "rewards", "--model", str(lora_run), "--prompts", str(prompts), "--rewards", "color_region",
                "--num_images", "1", "--out", str(evaluation)]) == 0
    summary = json.loads((evaluation / "summary.json").read_text())
    assert 0 <= summary["rewards/color_region/mean"] <= 1

    second = grpo(tmp_path / "second", "--model_name_or_path", str(lora_run), *LORA)
    assert (second / "adapter_config.json").exists()
    start = resolve_source(second).model_folder  # the new adapter's base: the first run, merged
    first = load_policy(lora_run, dtype="float32").model.state_dict()
    for name, tensor in load_policy(start, dtype="float32").model.state_dict().items():
        assert torch.equal(tensor, first[name]), name
    assert load_policy(second, dtype="float32").vocab.codec == {"name": "palette", "levels": 4, "patch": 8}

    out = tmp_path / "export"
    assert cli(["export", str(second), "--out", str(out), "--merge"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"


@pytest.mark.parametrize("argv, needle", [
    (lambda t: [t / "missing", "--out", t / "o"], "does not exist"),
    (lambda t: [t, "--out", t / "o", "--dtype", "int8"], "invalid choice: 'int8'"),
    (lambda t: [t, "--out", t / "o", "--overwrite", "maybe"], "expected true or false"),
    (lambda t: [t], "--out"),
])
def test_export_reports_bad_input_in_one_line_with_exit_2(tmp_path, capsys, argv, needle):
    assert cli(["export", *map(str, argv(tmp_path))]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("simplear-rl export: error: ")]
    assert needle in line
