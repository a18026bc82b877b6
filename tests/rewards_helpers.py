"""Shared pieces of the reward tests: tiny open_clip weights, demo pictures, registry isolation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rewards import openclip_models, registry

#: Tiny ViT open_clip architectures registered for the tests (224 px input like ViT-H-14).
TINY_ARCH = "simplear-test-tiny-vit"
OTHER_ARCH = "simplear-test-other-vit"
_CONFIGS = {
    TINY_ARCH: {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    OTHER_ARCH: {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 48, "head_width": 16, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 3, "layers": 1},
    },
}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """Random tiny open_clip weights saved in every format the rewards read.

    ``bin`` (plain state dict), ``safetensors``, ``hps`` (``{"state_dict": ...}``), ``other_arch``
    (weights of a different architecture), ``missing_keys`` (the text tower removed), ``corrupt``.
    """
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny_openclip")
    configs = root / "configs"
    configs.mkdir()
    for name, cfg in _CONFIGS.items():
        (configs / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(configs)

    torch.manual_seed(0)
    state = open_clip.create_model(TINY_ARCH, pretrained=None).state_dict()
    paths = SimpleNamespace(
        bin=root / "open_clip_pytorch_model.bin",
        safetensors=root / "open_clip_model.safetensors",
        hps=root / "HPS_tiny_compressed.pt",
        other_arch=root / "other_arch.bin",
        missing_keys=root / "missing_keys.bin",
        corrupt=root / "corrupt.bin",
    )
    torch.save(state, paths.bin)
    save_file({k: v.contiguous() for k, v in state.items()}, str(paths.safetensors))
    torch.manual_seed(1)
    hps_state = open_clip.create_model(TINY_ARCH, pretrained=None).state_dict()
    torch.save({"state_dict": hps_state}, paths.hps)
    torch.save(open_clip.create_model(OTHER_ARCH, pretrained=None).state_dict(), paths.other_arch)
    torch.save({k: v for k, v in state.items() if not k.startswith("transformer.")}, paths.missing_keys)
    paths.corrupt.write_bytes(b"this is not a checkpoint")
    yield paths
    openclip_models.clear_model_cache()


@pytest.fixture
def isolated_registry():
    """Rewards a test registers (and plugins it loads) are forgotten after it."""
    saved = (dict(registry._REGISTRY), set(registry._LOADED_ENTRY_POINTS), dict(registry._FAILED_ENTRY_POINTS))
    yield registry
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved[0])
    registry._LOADED_ENTRY_POINTS.clear()
    registry._LOADED_ENTRY_POINTS.update(saved[1])
    registry._FAILED_ENTRY_POINTS.clear()
    registry._FAILED_ENTRY_POINTS.update(saved[2])


# ------------------------------------------------------------------ demo pictures
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
RED, BLUE = (255, 0, 0), (0, 0, 255)


def canvas(rgb=WHITE, size: int = 64) -> torch.Tensor:
    """A flat ``[3,size,size]`` image in [0,1]."""
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, size, size).clone() / 255.0


def paint(image: torch.Tensor, rows: slice, cols: slice, rgb) -> torch.Tensor:
    """Fill a pixel rectangle with ``rgb`` (0-255), in place; returns the image."""
    image[:, rows, cols] = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255.0
    return image


def demo_object(rgb, box, area: float, color: str = "red", shape: str = "square", region: str = "left") -> dict:
    """One entry of a demo prompt's ``objects`` metadata."""
    return {"color": color, "rgb": list(rgb), "shape": shape, "region": region, "box": list(box), "area": area}


def write_plugin_dist(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution in ``site`` declaring ``simplear_rl.rewards`` entry points."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}\n")


def score_with_cli(tmp_path: Path, pictures: torch.Tensor, captions: list[str], spec_line: str, name: str) -> torch.Tensor:
    """Save ``pictures`` as PNGs, score them with ``simplear-rl rewards score`` and a one-reward spec; returns the
    reward ``name``'s scores (as the CLI wrote them)."""
    from PIL import Image

    from rewards import cli

    images = tmp_path / "images"
    images.mkdir()
    for i, picture in enumerate(pictures):
        Image.fromarray((picture.permute(1, 2, 0) * 255).round().byte().numpy()).save(images / f"{i}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"{c}\n" for c in captions))
    spec = tmp_path / "rewards.yaml"
    spec.write_text(f"rewards:\n  - {spec_line}\n")
    out = tmp_path / "scores.jsonl"
    argv = ["score", "--rewards", str(spec), "--images", str(images), "--prompts", str(prompts), "--out", str(out)]
    assert cli.main(argv) == 0
    return torch.tensor([json.loads(line)[name] for line in out.read_text().splitlines()])
