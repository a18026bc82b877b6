"""Opening, centre-cropping and resizing training pictures, with a reason whenever one is skipped."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps


class SkipImage(Exception):
    """A picture that cannot be used; ``str(exc)`` is the reason written to the skip report."""


def open_image(source: Any) -> Image.Image:
    """An RGB PIL image from a path, PIL image, ``{"bytes"|"path"}`` dict, raw bytes or a loader.

    Raises :class:`SkipImage` for missing or unreadable files (decoding is forced here, so a
    truncated file fails now rather than later in a batch).
    """
    try:
        if callable(source):
            source = source()
        if isinstance(source, dict):
            source = source.get("bytes") or source.get("path")
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise SkipImage(f"missing file: {path}")
            image = Image.open(path)
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        elif isinstance(source, Image.Image):
            image = source
        else:
            raise SkipImage(f"no image: expected a path or an image, got {type(source).__name__}")
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except SkipImage:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data; the reason keeps its name
        raise SkipImage(f"unreadable image ({type(exc).__name__}: {exc})") from exc


def center_crop_resize(image: Image.Image, resolution: int, min_size: int) -> Image.Image:
    """The centre square of ``image`` resized to ``resolution``; refuses a shorter side below ``min_size``."""
    width, height = image.size
    side = min(width, height)
    if side < min_size:
        raise SkipImage(f"too small: {width}x{height} px, shorter side below min_size {min_size}")
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return image


def to_pixels(image: Image.Image) -> torch.Tensor:
    """``float32 [3, H, W]`` in ``[-1, 1]``: the codec input convention."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def prepare_image(source: Any, resolution: int, min_size: int | None = None) -> torch.Tensor:
    """Open, centre-crop and resize one picture to ``[3, resolution, resolution]`` in ``[-1, 1]``.

    ``min_size`` defaults to ``resolution`` (pictures are never upscaled). Raises :class:`SkipImage`.
    """
    image = open_image(source)
    return to_pixels(center_crop_resize(image, resolution, resolution if min_size is None else min_size))

