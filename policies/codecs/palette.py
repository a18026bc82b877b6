"""A deterministic, weight-free codec: each token is the quantised mean colour of one patch.

It lets the demo and the tests see real pictures without downloaded weights. With ``levels``
evenly spaced values per channel, code ``r*L*L + g*L + b`` is the colour whose channel levels are
``(r, g, b)``; decoding paints the patch flat in that colour, so a picture made of flat patches of
palette colours round-trips exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import VisualCodec
from .checks import check_codes, check_pixels


class PaletteCodec(VisualCodec):
    """Patch-mean colour codec with ``levels**3`` codes and ``downsample = patch``.

    For ``levels=4`` the palette channels are ``{0, 85, 170, 255}`` in 0-255 terms.
    """

    def __init__(self, levels: int = 4, patch: int = 8):
        if int(levels) < 2:
            raise ValueError(f"palette levels must be >= 2, got {levels}")
        if int(patch) < 1:
            raise ValueError(f"palette patch must be >= 1, got {patch}")
        self.levels = int(levels)
        self.patch = int(patch)
        self.downsample = self.patch
        self.codebook_size = self.levels**3

    def __repr__(self) -> str:
        return f"PaletteCodec(levels={self.levels}, patch={self.patch})"

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B,3,H,W]`` in ``[-1,1]`` to codes ``[B,H/patch,W/patch]`` (int64)."""
        check_pixels(pixels, self.patch, "palette")
        unit = ((pixels.float() + 1) / 2).clamp(0, 1)
        mean = F.avg_pool2d(unit, self.patch)
        channel_levels = torch.round(mean * (self.levels - 1)).long()
        return self._join(*channel_levels.unbind(dim=1))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B,h,w]`` to flat-patch pixels ``[B,3,h*patch,w*patch]`` in ``[-1,1]`` (float32)."""
        check_codes(codes, self.codebook_size, "palette")
        channel_levels = torch.stack(self._channel_levels(codes.long()), dim=1)
        colours = channel_levels.float() * (2.0 / (self.levels - 1)) - 1
        return colours.repeat_interleave(self.patch, dim=2).repeat_interleave(self.patch, dim=3)

    def _channel_levels(self, code):
        """Split codes (int or int64 tensor) into their (red, green, blue) level numbers."""
        return code // (self.levels * self.levels), (code // self.levels) % self.levels, code % self.levels

    def _join(self, red, green, blue):
        """The code of (red, green, blue) level numbers (ints or int64 tensors)."""
        return (red * self.levels + green) * self.levels + blue

    def rgb_to_code(self, rgb: tuple[int, int, int]) -> int:
        """The code of a 0-255 RGB colour (each channel snapped to the nearest palette level)."""
        if len(rgb) != 3 or any(not 0 <= int(c) <= 255 for c in rgb):
            raise ValueError(f"expected an RGB triple with channels in 0..255, got {tuple(rgb)}")
        return self._join(*(round(int(c) * (self.levels - 1) / 255) for c in rgb))

    def code_to_rgb(self, code: int) -> tuple[int, int, int]:
        """The 0-255 RGB colour a code decodes to."""
        code = int(code)
        if not 0 <= code < self.codebook_size:
            raise ValueError(f"palette code {code} outside [0, {self.codebook_size})")
        return tuple(round(level * 255 / (self.levels - 1)) for level in self._channel_levels(code))

    def palette(self) -> list[tuple[int, int, int]]:
        """Every palette colour as 0-255 RGB, indexed by code."""
        return [self.code_to_rgb(code) for code in range(self.codebook_size)]
