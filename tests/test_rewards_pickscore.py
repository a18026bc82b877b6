"""``pickscore`` equals PickScore's own computation (processor + CLIPModel) on a tiny random CLIP folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from rewards_helpers import score_with_cli
from tokenizers import pre_tokenizers
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from rewards import RewardCheckpointError, build_rewards, cli, pickscore

PROMPTS = ["a red square on the left", "two blue circles", "a red square on the left"]


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every word is spelt out character by character."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({char: len(vocab) + i for i, char in enumerate(alphabet)})
    vocab.update({char + "</w>": len(vocab) + i for i, char in enumerate(alphabet)})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``(together, model_only, processor_only)``: PickScore_v1's layout, and model and processor apart."""
    root = tmp_path_factory.mktemp("tiny_pickscore")
    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(3.0)  # not the init value, so a score that ignores it would differ
    image_processor = CLIPImageProcessor()
    together, model_only, processor_only = root / "PickScore_v1", root / "model", root / "processor"
    # The published folder: weights, preprocessor_config.json and tokenizer files side by side.
    model.save_pretrained(together)
    image_processor.save_pretrained(together)
    tokenizer.save_pretrained(together)
    model.save_pretrained(model_only)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(processor_only)
    yield together, model_only, processor_only
    pickscore.clear_model_cache()


def _images(sizes) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=generator) for h, w in sizes]


def _reference(model_folder, processor_folder, images: list[torch.Tensor], prompts: list[str]) -> torch.Tensor:
    """PickScore's scoring code: 8-bit PIL pictures through the processor, CLIPModel's image-text logits."""
    model = AutoModel.from_pretrained(model_folder).eval()
    processor = AutoProcessor.from_pretrained(processor_folder)
    pictures = [Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()) for image in images]
    inputs = processor(images=pictures, text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits_per_image.diagonal()


@pytest.mark.parametrize("sizes", [[(64, 64)] * 3, [(64, 64), (300, 200), (48, 96)]])
def test_score_equals_pickscore_reference_in_the_published_layout(folders, sizes):
    together, _, _ = folders
    images = _images(sizes)
    got = build_rewards([{"name": "pickscore", "checkpoint": str(together)}]).score(images, PROMPTS)["pickscore"]
    expected = _reference(together, together, images, PROMPTS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert got[0] != got[2]  # same caption, different pictures


def test_processor_can_come_from_another_folder(folders):
    _, model_only, processor_only = folders
    images = _images([(80, 80)] * 3)
    spec = {"name": "pickscore", "checkpoint": str(model_only), "processor": str(processor_only), "batch_size": 2}
    got = build_rewards([spec]).score(images, PROMPTS)["pickscore"]
    torch.testing.assert_close(got, _reference(model_only, processor_only, images, PROMPTS), atol=1e-4, rtol=0)


def test_score_is_logit_scale_times_cosine(folders):
    together, _, _ = folders
    suite = build_rewards([{"name": "pickscore", "checkpoint": str(together)}])
    model = suite.rewards["pickscore"].pickscore.model
    images = torch.stack(_images([(64, 64)] * 3))
    scores = suite.score(images, PROMPTS)["pickscore"]
    with torch.no_grad():
        model.logit_scale.fill_(4.0)
    try:
        rescaled = suite.score(images, PROMPTS)["pickscore"]
    finally:
        with torch.no_grad():
            model.logit_scale.fill_(3.0)
    torch.testing.assert_close(rescaled / np.exp(4.0), scores / np.exp(3.0), atol=1e-6, rtol=0)
    assert (scores.abs() <= np.exp(3.0) + 1e-4).all()


def test_model_is_shared_in_eval_mode_without_grad_in_the_dtype_asked(folders):
    together, _, _ = folders
    suite = build_rewards(
        [
            {"name": "pickscore", "checkpoint": str(together), "dtype": "bf16"},
            {"name": "pickscore", "as": "pickscore_2", "checkpoint": str(together), "dtype": "bf16"},
        ]
    )
    first, second = suite.rewards["pickscore"].pickscore, suite.rewards["pickscore_2"].pickscore
    assert first.model is second.model and not first.model.training
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in first.model.parameters())
    images = _images([(64, 64)] * 3)
    expected = _reference(together, together, images, PROMPTS)
    torch.testing.assert_close(suite.score(images, PROMPTS)["pickscore"], expected, atol=0.3, rtol=0)


def test_missing_checkpoint_folder_is_named(tmp_path):
    missing = tmp_path / "PickScore_v1"
    with pytest.raises(RewardCheckpointError, match="checkpoint .*PickScore_v1.* does not exist"):
        build_rewards([{"name": "pickscore", "checkpoint": str(missing)}])


def test_checkpoint_without_processor_files_asks_for_the_processor_folder(folders):
    _, model_only, _ = folders
    with pytest.raises(RewardCheckpointError, match="has no preprocessor_config.json or processor_config.json.*`processor:`"):
        build_rewards([{"name": "pickscore", "checkpoint": str(model_only)}])


def test_folder_that_is_not_a_clip_model_is_named(folders, tmp_path):
    together, _, _ = folders
    broken = tmp_path / "broken"
    shutil.copytree(together, broken)
    config = json.loads((broken / "config.json").read_text())
    config["projection_dim"] = 8  # the weights hold 16-wide projections
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(RewardCheckpointError, match=f"cannot load a CLIPModel from {broken}"):
        build_rewards([{"name": "pickscore", "checkpoint": str(broken)}])


def test_cli_score_with_a_pickscore_recipe(folders, tmp_path):
    together, _, _ = folders
    pictures = _images([(64, 64), (64, 64)])
    got = score_with_cli(tmp_path, pictures, ["a red square", "two blue circles"], f"{{name: pickscore, checkpoint: '{together}'}}",
                         "pickscore")
    expected = _reference(together, together, pictures, ["a red square", "two blue circles"])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_importing_rewards_does_not_import_transformers_clip():
    import subprocess
    import sys

    code = "import sys, rewards; rewards.available_rewards(); print('transformers.models.clip.modeling_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pickscore_exposes_the_normalised_image_embeddings_its_score_used(folders):
    """diversity/embedding reads these instead of a second forward (issue 20)."""
    together, _, _ = folders
    suite = build_rewards([{"name": "pickscore", "checkpoint": str(together), "batch_size": 2}])
    reward = suite.rewards["pickscore"]
    images = torch.stack(_images([(64, 64)] * 3))
    scores = suite.score(images, PROMPTS)["pickscore"]
    embeddings = reward.image_embeddings
    assert embeddings.shape[0] == 3
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    model, processor = reward.pickscore.model, reward.pickscore.processor
    tokens = processor.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    torch.testing.assert_close(scores, model.logit_scale.exp() * (embeddings * text).sum(-1), atol=1e-4, rtol=0)
