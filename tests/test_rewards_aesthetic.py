"""``aesthetic`` equals an independent computation: open_clip features, L2-normalised, the published MLP head."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import open_clip
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from rewards_helpers import TINY_ARCH, score_with_cli, tiny_weights  # noqa: F401  (fixture)
from torch import nn
from torchvision import transforms as T

from rewards import RewardCheckpointError, build_rewards, cli, openclip_models

#: A tiny ViT whose image embeddings are 768 wide, like CLIP ViT-L/14's.
WIDE_ARCH = "simplear-test-tiny-vit-768"
_WIDE_CONFIG = {
    "embed_dim": 768,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
#: The state dict of sac+logos+ava1-l14-linearMSE.pth: names and shapes as published.
PUBLISHED_KEYS = {
    "layers.0.weight": (1024, 768), "layers.0.bias": (1024,),
    "layers.2.weight": (128, 1024), "layers.2.bias": (128,),
    "layers.4.weight": (64, 128), "layers.4.bias": (64,),
    "layers.6.weight": (16, 64), "layers.6.bias": (16,),
    "layers.7.weight": (1, 16), "layers.7.bias": (1,),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_weights):  # noqa: F811  (tiny_weights registers TINY_ARCH)
    """``clip`` (random WIDE_ARCH open_clip weights), ``head`` (random head, published layout), ``bad_head``."""
    root = tmp_path_factory.mktemp("tiny_aesthetic")
    (root / "configs").mkdir()
    (root / "configs" / f"{WIDE_ARCH}.json").write_text(json.dumps(_WIDE_CONFIG))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(0)
    paths = {name: root / name for name in ("open_clip_pytorch_model.bin", "head.pth", "bad_head.pth")}
    torch.save(open_clip.create_model(WIDE_ARCH, pretrained=None).state_dict(), paths["open_clip_pytorch_model.bin"])
    generator = torch.Generator().manual_seed(1)
    head = OrderedDict((k, torch.randn(shape, generator=generator) / np.sqrt(shape[-1])) for k, shape in PUBLISHED_KEYS.items())
    torch.save(head, paths["head.pth"])
    torch.save(OrderedDict((k.replace("layers.7", "layers.8"), v) for k, v in head.items()), paths["bad_head.pth"])
    yield paths["open_clip_pytorch_model.bin"], paths["head.pth"], paths["bad_head.pth"]
    openclip_models.clear_model_cache()


def _reference(clip_path, head_path, images: torch.Tensor) -> torch.Tensor:
    """open_clip's own model and eval transform; numpy L2 normalisation and the head as published."""
    model, _, preprocess = open_clip.create_model_and_transforms(WIDE_ARCH, pretrained=str(clip_path))
    head = nn.Sequential(
        nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )
    head.load_state_dict({k.removeprefix("layers."): v for k, v in torch.load(head_path).items()})
    with torch.no_grad():
        features = model.eval().encode_image(torch.stack([preprocess(image) for image in images])).numpy()
        features = features / np.linalg.norm(features, axis=-1, keepdims=True)
        return head.eval()(torch.from_numpy(features)).squeeze(-1)


def _images(height: int, width: int, n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(height + width))


def _spec(weights, **extra) -> dict:
    clip, head, _ = weights
    return {"name": "aesthetic", "checkpoint": str(head), "clip_checkpoint": str(clip), "arch": WIDE_ARCH, **extra}


@pytest.mark.parametrize("size", [(64, 64), (300, 200), (224, 224)])
def test_score_equals_independent_computation(weights, size):
    clip, head, _ = weights
    images = _images(*size)
    got = build_rewards([_spec(weights)]).score(images, ["ignored"] * 3)["aesthetic"]
    torch.testing.assert_close(got, _reference(clip, head, images), atol=1e-5, rtol=0)
    assert len(set(got.tolist())) == 3


def test_preprocessing_follows_openai_clip_on_8bit_pictures(weights):
    """Resize shortest side to 224 (bicubic), centre crop, OpenAI mean/std, as OpenAI CLIP's PIL pipeline."""
    reward = build_rewards([_spec(weights)]).rewards["aesthetic"]
    # A smooth picture (a blurred random field), so that PIL's and torch's bicubic kernels agree closely.
    field = torch.nn.functional.interpolate(_images(8, 12, 1), size=(300, 450), mode="bilinear", align_corners=False)
    picture = Image.fromarray((field[0].permute(1, 2, 0) * 255).round().byte().numpy())
    openai = T.Compose([
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
        T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
    ])(picture)
    ours = reward._transform(T.functional.to_tensor(picture).unsqueeze(0))[0]
    assert ours.shape == openai.shape == (3, 224, 224)
    assert (ours - openai).abs().mean() < 0.01


def test_head_is_loaded_from_the_published_key_names(weights):
    _, head_path, _ = weights
    reward = build_rewards([_spec(weights)]).rewards["aesthetic"]
    state = reward.head.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == PUBLISHED_KEYS
    for key, value in torch.load(head_path).items():
        assert torch.equal(state[key], value)
    assert not reward.head.training and not any(p.requires_grad for p in reward.head.parameters())


def test_batches_and_bf16_clip(weights):
    clip, head, _ = weights
    images = _images(64, 64, 5)
    whole = build_rewards([_spec(weights)]).score(images, ["x"] * 5)["aesthetic"]
    batched = build_rewards([_spec(weights, batch_size=2)]).score(images, ["x"] * 5)["aesthetic"]
    torch.testing.assert_close(batched, whole, atol=1e-6, rtol=0)
    suite = build_rewards([_spec(weights)], dtype="bf16")
    reward = suite.rewards["aesthetic"]
    assert all(p.dtype == torch.bfloat16 for p in reward.clip.model.parameters())
    assert all(p.dtype == torch.float32 for p in reward.head.parameters())
    torch.testing.assert_close(suite.score(images, ["x"] * 5)["aesthetic"], whole, atol=5e-2, rtol=0)


def test_head_with_other_keys_is_refused_naming_them(weights):
    clip, _, bad = weights
    with pytest.raises(RewardCheckpointError, match=r"does not fit the published aesthetic head.*missing layers\.7\.weight"):
        build_rewards([{"name": "aesthetic", "checkpoint": str(bad), "clip_checkpoint": str(clip), "arch": WIDE_ARCH}])


def test_clip_with_other_embedding_width_is_refused(weights, tiny_weights):  # noqa: F811
    _, head, _ = weights
    with pytest.raises(RewardCheckpointError, match="16-wide image embeddings but the aesthetic head reads 768"):
        build_rewards([{"name": "aesthetic", "checkpoint": str(head), "clip_checkpoint": str(tiny_weights.bin), "arch": TINY_ARCH}])


def test_missing_files_fail_before_any_model_loads(weights, tmp_path):
    openclip_models.clear_model_cache()
    missing = tmp_path / "ViT-L-14.bin"
    with pytest.raises(RewardCheckpointError, match="clip_checkpoint .*ViT-L-14.bin.* does not exist"):
        build_rewards([_spec(weights), {**_spec(weights), "as": "aesthetic_2", "clip_checkpoint": str(missing)}])
    assert openclip_models._CACHE == {}


def test_cli_score_with_an_aesthetic_recipe(weights, tmp_path):
    clip, head, _ = weights
    pictures = _images(64, 64, 2)
    spec = f"{{name: aesthetic, checkpoint: '{head}', clip_checkpoint: '{clip}', arch: {WIDE_ARCH}}}"
    got = score_with_cli(tmp_path, pictures, ["first", "second"], spec, "aesthetic")
    saved = torch.stack([cli.load_image(tmp_path / "images" / f"{i}.png") for i in range(2)])
    torch.testing.assert_close(got, _reference(clip, head, saved), atol=1e-5, rtol=0)
