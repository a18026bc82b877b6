"""Turning decoded image tensors into PNGs and captioned grids."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """Codec output in ``[-1, 1]`` to ``[0, 1]`` (the reward contract's range)."""
    return ((pixels.float() + 1.0) / 2.0).clamp_(0.0, 1.0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``[3, H, W]`` tensor in ``[0, 1]`` as an RGB PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def captioned_grid(
    images: torch.Tensor | list[torch.Tensor],
    captions: list[str] | None = None,
    ncol: int | None = None,
    min_cell: int = 128,
    caption_lines: int = 3,
    gap: int = 4,
) -> Image.Image:
    """A grid of ``[3, H, W]`` images in ``[0, 1]`` with a wrapped caption under each cell.

    Small images (the demo's 64 px) are upscaled with nearest-neighbour to ``min_cell`` so their
    patches stay visible.
    """
    images = list(images)
    if not images:
        raise ValueError("captioned_grid needs at least one image")
    captions = list(captions) if captions is not None else [""] * len(images)
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    ncol = ncol or min(len(images), 4)
    nrow = (len(images) + ncol - 1) // ncol
    h, w = images[0].shape[-2:]
    scale = max(1, -(-min_cell // max(h, w)))
    cell_w, cell_h = w * scale, h * scale
    font = ImageFont.load_default()
    chars = max(8, cell_w // 6)
    line_h = 12
    text_h = line_h * caption_lines + 4 if any(captions) else 0
    step_x, step_y = cell_w + gap, cell_h + text_h + gap
    grid = Image.new("RGB", (ncol * step_x - gap, nrow * step_y - gap), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % ncol) * step_x, (i // ncol) * step_y
        grid.paste(to_pil(image).resize((cell_w, cell_h), Image.NEAREST), (x, y))
        lines = textwrap.wrap(caption, chars)[:caption_lines]
        for j, line in enumerate(lines):
            draw.text((x + 2, y + cell_h + 2 + j * line_h), line, fill="black", font=font)
    return grid


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Save atomically (write a temp file, then rename) so a crash never leaves a half PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path
