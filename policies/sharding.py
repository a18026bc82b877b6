"""What the rest of the toolkit needs to know about sharded weights (DeepSpeed ZeRO-3, FSDP2).

- :func:`full_shape`: a parameter's whole shape, also while ZeRO-3 holds only this rank's
  partition (whose local ``shape`` is ``(0,)``); FSDP2's DTensor parameters report it already.
- :func:`gathered_for_edit`: whole parameters for an in-place edit at load time under ZeRO-3.
- :func:`is_fsdp2` / :func:`fsdp2_rollout`: rollouts under FSDP2 run through the root module (so
  FSDP2's hooks gather what each forward needs) with resharding held off until the rollout ends, so
  each unit is all-gathered once per rollout instead of once per sampled token.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


def full_shape(param: torch.Tensor) -> torch.Size:
    """The whole shape of ``param``: ZeRO-3 keeps it in ``ds_shape`` while the local tensor is an empty partition."""
    return torch.Size(getattr(param, "ds_shape", param.shape))


def is_zero3_partitioned(param: torch.Tensor) -> bool:
    """Whether ``param`` is managed by DeepSpeed ZeRO-3 (gathered only inside its module's forward)."""
    return hasattr(param, "ds_id")


def gathered_for_edit(params: list[torch.Tensor]):
    """Whole parameters for an in-place edit, also when DeepSpeed ZeRO-3 partitions them at load time."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled() or any(is_zero3_partitioned(p) for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return nullcontext()


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def fsdp2_units(model: nn.Module) -> dict[str, int]:
    """How many FSDP2 units of each module class ``model`` holds (``fully_shard`` subclasses each sharded module;
    the name is that of the module's own class), e.g. ``{"LlamaDecoderLayer": 24, "JanusForConditionalGeneration": 1}``."""
    from torch.distributed.fsdp import FSDPModule

    counts: dict[str, int] = {}
    for module in _fsdp_modules(model):
        name = next(c.__name__ for c in type(module).__mro__ if not issubclass(c, FSDPModule))
        counts[name] = counts.get(name, 0) + 1
    return counts


def is_fsdp2(model: nn.Module) -> bool:
    """Whether ``model`` (or a submodule) is sharded with FSDP2's ``fully_shard``."""
    return bool(_fsdp_modules(model))


def is_sharded(model: nn.Module) -> bool:
    """Whether some weights of ``model`` live on other ranks (FSDP2 or DeepSpeed ZeRO-3)."""
    return is_fsdp2(model) or any(is_zero3_partitioned(p) for p in model.parameters())


def _param_groups(module: nn.Module) -> list:
    """The unit's parameter groups (FSDP2 internals: ``_fsdp_param_groups`` in torch >= 2.10, one before)."""
    state = module._get_fsdp_state()
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:
        groups = [state._fsdp_param_group]
    return [g for g in groups if g is not None]


@contextmanager
def fsdp2_rollout(model: nn.Module) -> Iterator[None]:
    """Hold FSDP2's resharding off for a rollout; reshard every unit afterwards. A no-op without FSDP2.

    The rollout must call ``model`` itself (the root module) for every step: the root's forward is
    where FSDP2 initialises and all-gathers. Inside the block each unit stays whole after its first
    all-gather; on exit every unit is resharded and its own setting restored. If this torch hides the
    setting, rollouts stay correct and simply all-gather every step (logged once).
    """
    modules = _fsdp_modules(model)
    if not modules:
        yield
        return
    saved = []
    try:
        for module in modules:
            for group in _param_groups(module):
                saved.append((group, group.post_forward_mesh_info))
                group.post_forward_mesh_info = None  # what set_reshard_after_forward(False) sets
    except AttributeError:
        for group, mesh in saved:
            group.post_forward_mesh_info = mesh
        saved = []
        logger.warning("this torch hides FSDP2's reshard-after-forward setting: rollouts all-gather every step")
    try:
        yield
    finally:
        for group, mesh in saved:
            group.post_forward_mesh_info = mesh
        for module in modules:
            module.reshard()
