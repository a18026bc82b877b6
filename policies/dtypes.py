"""Dtype names from recipes and command lines (``bf16``, ``float32``, ``auto``...) as torch dtypes.

The one table of dtype names: the policy, its codec, the rewards and the trainer's checks all read it.
"""

from __future__ import annotations

import torch

#: Every dtype name a recipe or command line may use.
DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


#: On a CPU with bf16 hardware, bf16 is the faster dtype from this hidden size on (measured, docs/performance.md).
CPU_BF16_MIN_HIDDEN = 256


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16); elsewhere bf16 is emulated, slower than fp32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's capability probes (private names)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None,
                  hidden_size: int | None = None) -> torch.dtype:
    """Names → torch dtypes; ``None``/"auto" → the faster dtype for a model of ``hidden_size`` on ``device``.

    That is bf16 on CUDA. On a CPU it is bf16 only where bf16 is measured faster: the CPU multiplies bf16 in
    hardware (AMX or AVX512-BF16) and the model is known to be at least :data:`CPU_BF16_MIN_HIDDEN` wide;
    otherwise fp32 (tiny models and CPUs that emulate bf16 run slower in it).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or str(dtype).lower() == "auto":
        if torch.device(device or "cpu").type == "cuda":
            return torch.bfloat16
        wide = hidden_size is not None and hidden_size >= CPU_BF16_MIN_HIDDEN
        return torch.bfloat16 if wide and cpu_has_bf16() else torch.float32
    return named_dtype(dtype, "auto or one of")


def named_dtype(name: str | torch.dtype, choices: str = "one of", error: type[Exception] = ValueError) -> torch.dtype:
    """The torch dtype of a name in :data:`DTYPE_NAMES` (``"torch."`` prefix and case ignored); an unknown name raises
    ``error`` naming the choices."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.").lower()
    if key not in DTYPE_NAMES:
        raise error(f"unknown dtype {name!r}; use {choices} {sorted(DTYPE_NAMES)}")
    return DTYPE_NAMES[key]
