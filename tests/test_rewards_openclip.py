"""CLIP and HPS rewards equal an independent open_clip computation; checkpoints fail clearly."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from rewards_helpers import OTHER_ARCH, TINY_ARCH, tiny_weights  # noqa: F401  (fixture)
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from rewards import (
    RewardCheckpointError,
    RewardConfigError,
    build_rewards,
    openclip_models,
)
from rewards.preprocess import letterbox_pixels

PROMPTS = ["a red square on the left", "two blue circles", "a red square on the left"]


def _images(height: int, width: int, n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(height * 1000 + width)
    return torch.rand(n, 3, height, width, generator=generator)


def _reference_scores(checkpoint, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Cosine of normalised features, computed with open_clip's own loading, tokenizer and encoders."""
    model, _, _ = open_clip.create_model_and_transforms(TINY_ARCH, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(tokenizer(prompts), normalize=True)
    return (image * text).sum(dim=-1)


def _openclip_eval_pixels(checkpoint, images: torch.Tensor) -> torch.Tensor:
    """open_clip's evaluation transform, applied image by image."""
    _, _, preprocess_val = open_clip.create_model_and_transforms(TINY_ARCH, pretrained=str(checkpoint))
    return torch.stack([preprocess_val(image) for image in images])


def _simplear_pixels(images: torch.Tensor) -> torch.Tensor:
    resized = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
    return TF.normalize(resized, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


def _hps_pixels(image: torch.Tensor) -> torch.Tensor:
    """HPS's ResizeMaxSize(224, fill=0) then normalisation, for one [3,H,W] image."""
    height, width = image.shape[1:]
    scale = 224 / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    resized = TF.resize(image, [new_h, new_w], interpolation=InterpolationMode.BICUBIC)
    pad_h, pad_w = 224 - new_h, 224 - new_w
    padded = TF.pad(resized, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(padded, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


@pytest.mark.parametrize("checkpoint_kind", ["bin", "safetensors"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (320, 256)])  # up and down (no antialias)
def test_clip_simplear_preprocess_equals_open_clip_cosine(tiny_weights, checkpoint_kind, size):
    checkpoint = getattr(tiny_weights, checkpoint_kind)
    images = _images(*size)
    suite = build_rewards([{"name": "clip", "checkpoint": str(checkpoint), "arch": TINY_ARCH}])
    got = suite.score(images, PROMPTS)["clip"]
    expected = _reference_scores(checkpoint, _simplear_pixels(images), PROMPTS)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (320, 256)])
def test_clip_openclip_preprocess_equals_open_clip_eval_transform(tiny_weights, size):
    images = _images(*size)
    suite = build_rewards([{"name": "clip", "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH, "preprocess": "clip"}])
    got = suite.score(images, PROMPTS)["clip"]
    expected = _reference_scores(tiny_weights.bin, _openclip_eval_pixels(tiny_weights.bin, images), PROMPTS)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["hpsv2", "hpsv2.1"])
def test_hps_letterbox_score_equals_open_clip_cosine_on_mixed_sizes(tiny_weights, name):
    images = [_images(64, 64, 1)[0], _images(48, 80, 1)[0], _images(300, 100, 1)[0]]
    suite = build_rewards([{"name": name, "checkpoint": str(tiny_weights.hps), "arch": TINY_ARCH}])
    got = suite.score(images, PROMPTS)[name]
    pixels = torch.stack([_hps_pixels(image) for image in images])
    expected = _reference_scores(tiny_weights.hps, pixels, PROMPTS)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_letterbox_pads_with_black_split_evenly_extra_pixel_bottom():
    white = torch.ones(1, 3, 100, 224)
    pixels = letterbox_pixels(white, (224, 224))
    black = (0.0 - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
    white_n = (1.0 - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
    column = pixels[0, :, :, 112]  # [3, 224]
    assert pixels.shape == (1, 3, 224, 224)
    torch.testing.assert_close(column[:, :62], black.view(3, 1).expand(3, 62))  # top: 124 // 2
    torch.testing.assert_close(column[:, 62:162], white_n.view(3, 1).expand(3, 100), atol=1e-4, rtol=0)
    torch.testing.assert_close(column[:, 162:], black.view(3, 1).expand(3, 62))  # bottom: 124 - 62


def test_rewards_with_same_weights_share_one_model(tiny_weights):
    suite = build_rewards(
        [
            {"name": "clip", "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH},
            {"name": "clip", "as": "clip_eval", "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH, "preprocess": "clip"},
            {"name": "hpsv2", "checkpoint": str(tiny_weights.hps), "arch": TINY_ARCH},
        ]
    )
    clip, clip_eval, hps = (suite.rewards[n].clip for n in ("clip", "clip_eval", "hpsv2"))
    assert clip.model is clip_eval.model
    assert hps.model is not clip.model


def test_model_is_loaded_in_eval_mode_without_grad_in_the_dtype_asked(tiny_weights):
    suite = build_rewards([{"name": "clip", "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH}], dtype="bf16")
    model = suite.rewards["clip"].clip.model
    assert not model.training
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())
    images = _images(64, 64)
    expected = _reference_scores(tiny_weights.bin, _simplear_pixels(images), PROMPTS)
    torch.testing.assert_close(suite.score(images, PROMPTS)["clip"], expected, atol=3e-2, rtol=0)


def test_batch_size_splits_scoring_without_changing_scores(tiny_weights):
    spec = {"name": "clip", "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH}
    images = _images(64, 64, 5)
    prompts = [f"prompt {i}" for i in range(5)]
    whole = build_rewards([spec]).score(images, prompts)["clip"]
    batched = build_rewards([{**spec, "batch_size": 2}]).score(images, prompts)["clip"]
    torch.testing.assert_close(batched, whole, atol=1e-6, rtol=0)


def test_missing_checkpoint_fails_at_build_before_any_model_loads(tiny_weights, tmp_path):
    openclip_models.clear_model_cache()
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(RewardCheckpointError, match="open_clip_pytorch_model.bin") as info:
        build_rewards(
            [
                {"name": "clip", "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH},
                {"name": "hpsv2", "checkpoint": str(missing), "arch": TINY_ARCH},
            ]
        )
    assert "hpsv2" in str(info.value) and str(missing) in str(info.value)
    assert openclip_models._CACHE == {}


def test_checkpoint_of_another_architecture_names_file_arch_and_mismatch(tiny_weights):
    with pytest.raises(RewardCheckpointError) as info:
        build_rewards([{"name": "clip", "checkpoint": str(tiny_weights.other_arch), "arch": TINY_ARCH}])
    message = str(info.value)
    assert str(tiny_weights.other_arch) in message and repr(TINY_ARCH) in message
    assert "shape mismatches" in message


def test_checkpoint_with_missing_keys_names_them(tiny_weights):
    with pytest.raises(RewardCheckpointError, match=r"missing keys \(e\.g\. transformer\.") as info:
        build_rewards([{"name": "hpsv2", "checkpoint": str(tiny_weights.missing_keys), "arch": TINY_ARCH}])
    assert str(tiny_weights.missing_keys) in str(info.value)


def test_unreadable_checkpoint_names_file(tiny_weights):
    with pytest.raises(RewardCheckpointError, match="cannot read checkpoint") as info:
        build_rewards([{"name": "clip", "checkpoint": str(tiny_weights.corrupt), "arch": TINY_ARCH}])
    assert str(tiny_weights.corrupt) in str(info.value)


def test_unknown_architecture_is_named(tiny_weights):
    with pytest.raises(RewardCheckpointError, match="unknown open_clip architecture 'ViT-Nope'"):
        build_rewards([{"name": "clip", "checkpoint": str(tiny_weights.bin), "arch": "ViT-Nope"}])


def test_unknown_preprocess_mode_is_refused(tiny_weights):
    with pytest.raises(RewardConfigError, match="preprocess must be one of"):
        build_rewards([{"name": "clip", "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH, "preprocess": "bicubic"}])


@pytest.mark.parametrize("name", ["clip", "hpsv2"])
def test_embedding_rewards_expose_the_image_embeddings_they_scored_with_row_aligned_across_batches(tiny_weights, name):
    """diversity/embedding reads these instead of a second forward (issue 20)."""
    images = _images(64, 64, n=5)
    prompts = [f"caption {i}" for i in range(5)]
    suite = build_rewards([{"name": name, "checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH, "batch_size": 2}])
    reward = suite.rewards[name]
    scores = suite.score(images, prompts)[name]
    assert reward.image_embeddings.shape == (5, 16)
    model, _, _ = open_clip.create_model_and_transforms(TINY_ARCH, pretrained=str(tiny_weights.bin))
    pixels = _simplear_pixels(images) if name == "clip" else torch.stack([_hps_pixels(i) for i in images])
    with torch.no_grad():
        expected = model.eval().encode_image(pixels, normalize=True)
        text = model.encode_text(open_clip.get_tokenizer(TINY_ARCH)(prompts), normalize=True)
    torch.testing.assert_close(reward.image_embeddings, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores, (reward.image_embeddings * text).sum(-1), atol=1e-5, rtol=0)
