"""Whole fp32 weights from a sharding engine's checkpoint, with the engine's own tools (never by hand).

- DeepSpeed ZeRO (``global_step*/`` partitions): ``deepspeed.utils.zero_to_fp32``, which rebuilds the
  fp32 master weights from every rank's optimizer partition.
- FSDP2 through accelerate: ``accelerate.utils.merge_fsdp_weights`` for a sharded state dict
  (``pytorch_model_fsdp_0/``, torch distributed checkpoint); a full state dict
  (``pytorch_model_fsdp.bin``, ``fsdp_state_dict_type: FULL_STATE_DICT``) is already whole.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .sources import FSDP_FULL, FSDP_SHARDS


def zero_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a DeepSpeed ZeRO checkpoint folder (the tag its ``latest`` file names, else the only one)."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as err:
        raise ImportError(
            f"{checkpoint} is a DeepSpeed ZeRO checkpoint; consolidating it needs DeepSpeed: pip install -e \".[deepspeed]\""
        ) from err
    tag = None
    if not (checkpoint / "latest").is_file():
        tags = sorted(p.name for p in checkpoint.glob("global_step*") if p.is_dir())
        tag = tags[-1] if tags else None
    return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=tag))


def fsdp_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The weights of an FSDP checkpoint folder written by accelerate (sharded or full state dict)."""
    if (checkpoint / FSDP_SHARDS).is_dir():
        from accelerate.utils import merge_fsdp_weights
        from safetensors.torch import load_file

        with tempfile.TemporaryDirectory(prefix="simplear-fsdp-") as tmp:
            merge_fsdp_weights(str(checkpoint / FSDP_SHARDS), tmp, safe_serialization=True)
            return {k: v.clone() for k, v in load_file(str(Path(tmp) / "model.safetensors")).items()}
    return torch.load(checkpoint / FSDP_FULL, map_location="cpu", weights_only=True)


def engine_state_dict(kind: str, checkpoint: Path) -> dict[str, torch.Tensor]:
    """Whole weights of a ``zero3`` or ``fsdp`` checkpoint (see :mod:`policies.sources`)."""
    state = zero_state_dict(checkpoint) if kind == "zero3" else fsdp_state_dict(checkpoint)
    # Unwrapped names: a checkpoint of a model wrapped for training may prefix them.
    return {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
