"""The one rule for trainable weights' precision: fp32 master copies, or an explicit opt-out.

AdamW updates at lr ~1e-6 fall below bf16's resolution and round away, so trainable weights below fp32
are refused unless LoRA (fp32 adapters), DeepSpeed (fp32 masters) or ``allow_low_precision_weights``
says otherwise. Checked twice with the same words: from the recipe's ``dtype`` before anything loads
(:func:`check_master_weights`), and on the loaded model, which ``dtype: auto`` may have made bf16
(:func:`check_trainable_dtypes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from policies.dtypes import DTYPE_NAMES

if TYPE_CHECKING:
    from .config import ImageGRPOConfig

#: Dtypes too coarse for trainable weights without an fp32 master copy.
LOW_PRECISION = (torch.bfloat16, torch.float16)


def check_master_weights(args: ImageGRPOConfig, dtype: str | None, use_peft: bool) -> None:
    """Refuse a recipe ``dtype`` below fp32 for trainable weights (before anything loads)."""
    if use_peft or DTYPE_NAMES.get(str(dtype).lower()) not in LOW_PRECISION:
        return  # LoRA adapters are fp32 (PEFT upcasts them); auto / None are checked on the loaded model
    refuse_low_precision(args, f"dtype: {dtype} would train the policy's weights in {dtype}")


def check_trainable_dtypes(model: torch.nn.Module, args: ImageGRPOConfig) -> None:
    """Refuse trainable weights below fp32 on the loaded model (e.g. a checkpoint loaded with ``dtype: auto``)."""
    low = {p.dtype for p in model.parameters() if p.requires_grad and p.dtype != torch.float32}
    if low:
        refuse_low_precision(args, f"trainable weights are {', '.join(sorted(str(d).removeprefix('torch.') for d in low))}")


def refuse_low_precision(args: ImageGRPOConfig, what: str) -> None:
    """Raise the one error for weights below fp32 with no master copy, unless DeepSpeed or the opt-out applies."""
    if args.deepspeed or args.allow_low_precision_weights:
        return  # DeepSpeed keeps fp32 masters; the opt-out accepts the loss
    raise ValueError(
        f"{what} with no fp32 master copy: AdamW updates at lr ~1e-6 fall below bf16's resolution and round away "
        "(about 2% of the weights move). Load fp32 master weights (dtype: float32) and compute in bf16 with "
        "bf16: true; or use LoRA (use_peft: true) or DeepSpeed; allow_low_precision_weights: true accepts the loss"
    )
