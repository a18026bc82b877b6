"""The visual codec contract shared by every codec (Cosmos, palette, user codecs)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class VisualCodec(ABC):
    """Turns pixels into a grid of discrete codes and back.

    ``encode(pixels: float[B,3,H,W] in [-1,1]) -> long[B,h,w]`` and
    ``decode(codes: long[B,h,w]) -> float[B,3,H,W] in [-1,1]``, with ``h = H // downsample``.
    """

    #: Number of distinct codes; must equal the policy's ``codebook_size``.
    codebook_size: int
    #: Pixels per code along each side (16 for Cosmos DV8x16x16).
    downsample: int

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B,3,H,W]`` in ``[-1,1]`` to codes ``[B,h,w]`` (int64)."""

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B,h,w]`` to pixels ``[B,3,H,W]`` in ``[-1,1]``."""

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "VisualCodec":
        """Move the codec's weights (if any); weight-free codecs return themselves."""
        return self

    def grid_for(self, resolution: int) -> tuple[int, int]:
        """The token grid of a square image of ``resolution`` pixels; refuses non-multiples."""
        if resolution % self.downsample:
            raise ValueError(
                f"resolution {resolution} is not a multiple of the codec downsample {self.downsample}; "
                f"use a multiple such as {resolution - resolution % self.downsample or self.downsample}."
            )
        side = resolution // self.downsample
        return (side, side)

    def resolution_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Pixel size ``(H, W)`` of a decoded ``grid``."""
        return (grid[0] * self.downsample, grid[1] * self.downsample)


def check_codec_matches(codec: VisualCodec, codebook_size: int, grid: tuple[int, int], resolution: int | None = None) -> None:
    """Fail fast when a codec cannot serve a policy layout, naming both numbers."""
    if codec.codebook_size != codebook_size:
        raise ValueError(
            f"codec has codebook_size {codec.codebook_size} but the policy expects {codebook_size}; "
            "pick the codec the policy was trained with."
        )
    if resolution is not None:
        expected = codec.grid_for(resolution)
        if tuple(grid) != expected:
            raise ValueError(
                f"grid {tuple(grid)} does not match resolution {resolution} with codec downsample "
                f"{codec.downsample} (which gives {expected})."
            )
