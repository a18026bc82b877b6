"""Input checks shared by the codecs; every error names the offending number and the expected one."""

from __future__ import annotations

import torch


def check_code_range(codes: torch.Tensor, codebook_size: int, what: str) -> None:
    """Raise unless ``codes`` is an integer tensor with every value in ``[0, codebook_size)``."""
    if codes.is_floating_point() or codes.is_complex():
        raise TypeError(f"{what} must be an integer tensor, got {codes.dtype}")
    bad = (codes < 0) | (codes >= codebook_size)
    if bool(bad.any()):
        raise ValueError(
            f"{int(bad.sum())} of {codes.numel()} {what} lie outside [0, {codebook_size}) "
            f"(min {int(codes.min())}, max {int(codes.max())})"
        )


def check_pixels(pixels: torch.Tensor, downsample: int, codec: str) -> tuple[int, int]:
    """Validate pixels ``[B,3,H,W]`` (floating, H and W multiples of ``downsample``); return ``(h, w)``."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"the {codec} codec encodes pixels [B,3,H,W], got shape {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise TypeError(f"the {codec} codec encodes floating pixels in [-1,1], got {pixels.dtype}")
    height, width = pixels.shape[-2:]
    if height % downsample or width % downsample:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the {codec} codec downsample {downsample}; "
            f"resize or crop to a multiple of {downsample} (e.g. {max(height // downsample, 1) * downsample}"
            f"x{max(width // downsample, 1) * downsample})."
        )
    return height // downsample, width // downsample


def check_codes(codes: torch.Tensor, codebook_size: int, codec: str) -> None:
    """Validate codes ``[B,h,w]``: integers, every value in ``[0, codebook_size)``."""
    if codes.dim() != 3:
        raise ValueError(f"the {codec} codec decodes codes [B,h,w], got shape {tuple(codes.shape)}")
    check_code_range(codes, codebook_size, f"{codec} codes")
