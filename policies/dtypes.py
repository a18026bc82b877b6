"""Dtype names from recipes and command lines (``bf16``, ``float32``, ``auto``...) as torch dtypes."""

from __future__ import annotations

import torch

_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype:
    """``None``/"auto" → bf16 on CUDA and fp32 elsewhere (CPU bf16 is slow); names → torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or str(dtype).lower() == "auto":
        return torch.bfloat16 if torch.device(device or "cpu").type == "cuda" else torch.float32
    name = str(dtype).removeprefix("torch.").lower()
    if name not in _NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto or one of {sorted(_NAMES)}")
    return _NAMES[name]
