"""Cosmos-1.0-Tokenizer-DV8x16x16 as a visual codec, loaded from its local TorchScript files.

The tokenizer is a video tokenizer; a single image is a one-frame video. ``encoder.jit`` maps pixels
``[B,3,1,H,W]`` in ``[-1,1]`` to ``(indices[B,1,h,w], codes[B,6,1,h,w], quant_loss)`` and
``decoder.jit`` maps indices ``[B,1,h,w]`` back to pixels ``[B,3,1,H,W]``, with ``h = H / 16``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch

from ..dtypes import resolve_dtype
from .base import VisualCodec
from .checks import check_code_range, check_codes, check_pixels
from .fsq import COSMOS_FSQ_LEVELS, FSQ

ENCODER_FILE = "encoder.jit"
DECODER_FILE = "decoder.jit"

def tokenizer_files(path: str | Path) -> tuple[Path, Path]:
    """The ``(encoder.jit, decoder.jit)`` paths of a tokenizer folder; raises if any is missing."""
    folder = Path(path).expanduser()
    needs = f"it must contain {ENCODER_FILE} and {DECODER_FILE} (TorchScript) of Cosmos-1.0-Tokenizer-DV8x16x16"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Cosmos tokenizer folder {folder} does not exist or is not a folder; set codec_path to a local "
            f"folder ({needs})."
        )
    files = (folder / ENCODER_FILE, folder / DECODER_FILE)
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise FileNotFoundError(f"Cosmos tokenizer folder {folder} is missing {', '.join(missing)}; {needs}.")
    return files


def load_jit(file: Path, device: torch.device, dtype: torch.dtype) -> torch.jit.ScriptModule:
    """Load a TorchScript module onto ``device`` in ``dtype``, in eval mode with gradients off."""
    try:
        with warnings.catch_warnings():
            # Cosmos ships only as TorchScript, so torch's deprecation notice for jit.load is not actionable.
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(file), map_location=device)
    except (RuntimeError, ValueError) as error:
        raise RuntimeError(f"could not load TorchScript file {file}: {error}") from error
    module.to(dtype)
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def _first(output):
    """NVIDIA's wrappers keep the first element of a tuple output (the indices or the pixels)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class CosmosCodec(VisualCodec):
    """Cosmos DV tokenizer (FSQ ``levels``, ``codebook_size`` codes, ``downsample`` pixels per code).

    Inputs are processed in chunks of ``batch_size`` images to bound memory; results come back on the
    device of the input. ``fsq`` gives the index <-> code-value arithmetic of the quantiser.
    """

    def __init__(
        self,
        path: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        codebook_size: int = 64000,
        downsample: int = 16,
        levels: Sequence[int] = COSMOS_FSQ_LEVELS,
        batch_size: int = 8,
    ):
        self.fsq = FSQ(levels)
        if self.fsq.codebook_size != int(codebook_size):
            raise ValueError(
                f"FSQ levels {list(self.fsq.levels)} give {self.fsq.codebook_size} codes but codebook_size is "
                f"{codebook_size}; they must agree."
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.codebook_size = int(codebook_size)
        self.downsample = int(downsample)
        self.batch_size = int(batch_size)
        self.path = Path(path).expanduser()
        encoder_file, decoder_file = tokenizer_files(self.path)
        self.device = torch.device(device if device is not None else "cpu")
        self.dtype = resolve_dtype(dtype, self.device)
        self.encoder = load_jit(encoder_file, self.device, self.dtype)
        self.decoder = load_jit(decoder_file, self.device, self.dtype)

    def __repr__(self) -> str:
        return f"CosmosCodec(path={str(self.path)!r}, device={self.device}, dtype={self.dtype})"

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> "CosmosCodec":
        """Move both TorchScript modules to ``device`` and/or cast them to ``dtype``; returns self."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = resolve_dtype(dtype, self.device)
        for module in (self.encoder, self.decoder):
            module.to(device=self.device, dtype=self.dtype)
        return self

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B,3,H,W]`` in ``[-1,1]`` to codes ``[B,H/16,W/16]`` (int64)."""
        height, width = check_pixels(pixels, self.downsample, "cosmos")
        chunks = []
        for batch in pixels.split(self.batch_size):
            indices = _first(self.encoder(batch.to(self.device, self.dtype).unsqueeze(2)))
            expected = (batch.shape[0], 1, height, width)
            if tuple(indices.shape) != expected:
                raise RuntimeError(
                    f"Cosmos encoder returned indices of shape {tuple(indices.shape)} but {expected} was expected "
                    f"for {tuple(batch.shape[-2:])} pixels with downsample {self.downsample}; check that the "
                    "folder holds a DV8x16x16 tokenizer and the codec's downsample matches it."
                )
            if indices.is_floating_point():  # some exports return float indices; truncation would be off by one
                indices = indices.round()
            indices = indices.squeeze(1).long()
            check_code_range(indices, self.codebook_size, "indices from the Cosmos encoder")
            chunks.append(indices.to(pixels.device))
        return torch.cat(chunks)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B,h,w]`` to pixels ``[B,3,16h,16w]`` in ``[-1,1]`` (float32)."""
        check_codes(codes, self.codebook_size, "cosmos")
        height, width = self.resolution_for(tuple(codes.shape[-2:]))
        chunks = []
        for batch in codes.split(self.batch_size):
            video = _first(self.decoder(batch.to(self.device, torch.long).unsqueeze(1)))
            expected = (batch.shape[0], 3, 1, height, width)
            if tuple(video.shape) != expected:
                raise RuntimeError(
                    f"Cosmos decoder returned pixels of shape {tuple(video.shape)} but {expected} was expected "
                    f"for a {tuple(batch.shape[-2:])} grid with downsample {self.downsample}."
                )
            chunks.append(video.squeeze(2).float().clamp(-1, 1).to(codes.device))
        return torch.cat(chunks)
