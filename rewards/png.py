"""Images on the wire: float ``[3,H,W]`` in ``[0,1]`` <-> 8-bit RGB PNG bytes, raw or base64.

Used by the reward server, the ``remote`` reward and the ``vlm_judge`` reward. PNG is lossless, so a
picture survives the trip exactly once rounded to 8 bits per channel (what any saved image is).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import torch
from PIL import Image


class ImageTooLarge(ValueError):
    """An image with more pixels than the caller accepts."""


#: Fastest zlib level: images are sent once and thrown away, so size matters less than time.
COMPRESS_LEVEL = 1


def to_png(image: torch.Tensor) -> bytes:
    """PNG bytes of one float ``[3,H,W]`` image in ``[0,1]`` (values outside are clamped)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"an image to encode must be a float [3,H,W] tensor, got {shape}")
    pixels = (image.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy(), "RGB").save(buffer, format="PNG", compress_level=COMPRESS_LEVEL)
    return buffer.getvalue()


def from_png(data: bytes, max_pixels: int | None = None) -> torch.Tensor:
    """Float ``[3,H,W]`` in ``[0,1]`` from PNG bytes; ``ValueError`` for anything else or a too-large image.

    The size is checked from the header, before the pixels are decompressed, so a small file that
    would expand to a huge image is refused cheaply.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ValueError(f"not a PNG image (found {image.format or 'an unknown format'})")
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"{width}x{height} is above the limit of {max_pixels} pixels")
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:  # what PIL raises on broken files
        raise ValueError(f"not a readable PNG image: {exc}") from exc
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0


def to_base64_png(image: torch.Tensor) -> str:
    """:func:`to_png` as base64 text (for JSON bodies and ``data:`` URLs)."""
    return base64.b64encode(to_png(image)).decode("ascii")


def from_base64_png(text: str, max_pixels: int | None = None) -> torch.Tensor:
    """:func:`from_png` of base64 text; ``ValueError`` if the text is not base64 or not a PNG."""
    if not isinstance(text, str):
        raise ValueError(f"expected a base64 string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64: {exc}") from exc
    return from_png(data, max_pixels)
