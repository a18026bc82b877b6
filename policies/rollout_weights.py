"""Rollout weights: bf16 autocast over the fp32 masters, or a bf16 snapshot refreshed when the masters change.

Under autocast, every linear layer casts its fp32 weight to bf16 before the matmul. Eager code keeps
those casts in autocast's cast cache for the whole rollout; inside a compiled decode step the cache
does not apply, so every step reads the fp32 weights and writes bf16 copies again (at Qwen2.5-0.5B
dims, 2.2 GB read + 1.1 GB written per token). A :class:`RolloutSnapshot` makes that cast once per
optimizer step instead, the way trainers sync weights into a rollout engine:

- its modules are shallow copies of the policy's: the decoder body's ``nn.Linear`` weights and
  biases are bf16 tensors holding exactly what autocast's cast produces (round to nearest even);
  everything else (embeddings and the tied head, norms, rotary buffers) IS the policy's fp32 tensor;
- rollouts still run under the same autocast region, so every op sees the same inputs as over the
  masters: the log-probs are those of autocast (a test checks ≤ 1e-6);
- :meth:`RolloutSnapshot.refresh` copies the masters in place (same addresses, so a compiled graph
  or CUDA graph keeps replaying) whenever they may have changed since the last copy: after any
  ``torch.optim`` optimizer step in the process (a global step hook counts them: fused AdamW, the
  Trainer's default, updates in place WITHOUT bumping the tensors' version counters), after any other
  in-place edit (the version counters), or when a master was replaced (its address). A stale
  snapshot, sampling from weights older than the policy's, is the bug to avoid.

Costs: the snapshot holds a bf16 copy of the body's linear weights (0.67 GiB at 0.5B) for the
whole run, where autocast's cast cache lives only while a rollout does.
"""

from __future__ import annotations

import copy
import types

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .heads import decoder_of, unwrap_causal_lm
from .sharding import is_sharded

#: ``rollout_weights`` values; ``auto`` is ``snapshot`` where it was measured faster: the compiled backend under
#: bf16 rollouts (see docs/gpu.md), ``autocast`` elsewhere.
ROLLOUT_WEIGHTS = ("autocast", "snapshot", "auto")


def snapshot_refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be served by a snapshot (None when it can)."""
    if is_sharded(model):
        return "sharded weights (FSDP2 / DeepSpeed ZeRO-3)"
    if any(hasattr(m, "base_layer") or hasattr(m, "lora_A") for m in model.modules()):
        return "a PEFT (LoRA) policy (its adapter layers are not plain nn.Linear modules; not supported yet)"
    return None


def use_snapshot(setting: str, backend: str, bf16_rollouts: bool, model: nn.Module) -> bool:
    """Whether rollouts sample from a snapshot for ``rollout_weights: setting``.

    ``backend`` is the resolved rollout backend (``eager``/``compiled``). ``snapshot`` where it cannot
    serve raises ``ValueError`` with the fix; ``auto`` then falls back to autocast.
    """
    if setting not in ROLLOUT_WEIGHTS:
        raise ValueError(f"rollout_weights must be one of {', '.join(ROLLOUT_WEIGHTS)}, got {setting!r}")
    if setting == "autocast":
        return False
    refusal = snapshot_refusal(model) or (None if bf16_rollouts else "float32 rollouts (nothing to cast)")
    if setting == "snapshot":
        if refusal:
            raise ValueError(f"rollout_weights: snapshot cannot serve {refusal}; use rollout_weights: autocast "
                             "(or auto, which picks it)")
        return True
    return refusal is None and backend == "compiled"


_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def _shallow_tree(module: nn.Module) -> nn.Module:
    """A copy of ``module`` and its submodules that shares every parameter and buffer (own dicts, own children).

    Calling the copy must never run the original: a ``forward`` patched onto the instance (accelerate's
    mixed-precision wrapper, TRL's fused-LM-head forward, both closing over the original's bound forward)
    is dropped, so the copy runs its class's forward (rollouts open their own autocast region); other
    methods bound to the instance are bound to the copy.
    """
    clone = copy.copy(module)
    clone.__dict__.pop("forward", None)
    for name, value in vars(module).items():
        if name != "forward" and isinstance(value, types.MethodType) and value.__self__ is module:
            setattr(clone, name, types.MethodType(value.__func__, clone))
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: _shallow_tree(child) if child is not None else None
                      for name, child in module._modules.items()}
    return clone


class RolloutSnapshot:
    """A policy whose decoder linear weights are a ``dtype`` snapshot of ``model``'s fp32 masters.

    Sample from :attr:`model` after :meth:`refresh`; everything it does not snapshot is ``model``'s own tensor.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        refusal = snapshot_refusal(model)
        if refusal:
            raise ValueError(f"a rollout snapshot cannot serve {refusal}")
        self.source = unwrap_causal_lm(model)
        self.model = _shallow_tree(self.source)
        self.dtype = dtype
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (master, snapshot)
        source_modules = dict(decoder_of(self.source).named_modules())
        for name, clone in decoder_of(self.model).named_modules():
            if type(clone) is not nn.Linear:
                continue
            master = source_modules[name]
            for key in ("weight", "bias"):
                param = master._parameters.get(key)
                if param is not None and param.is_floating_point():
                    copy_ = torch.empty_like(param, dtype=dtype, requires_grad=False)
                    clone._parameters[key] = nn.Parameter(copy_, requires_grad=False)
                    self._pairs.append((param, clone._parameters[key]))
        self._seen: tuple | None = None
        self.refreshes = 0

    @property
    def nbytes(self) -> int:
        """Bytes the snapshot holds on top of the policy."""
        return sum(s.numel() * s.element_size() for _, s in self._pairs)

    def _state(self) -> tuple:
        return _optimizer_steps, [(m._version, m.data_ptr()) for m, _ in self._pairs]

    def stale(self) -> bool:
        """Whether a master may have changed since the last refresh (an optimizer step, an in-place edit, a new
        tensor)."""
        return self._seen != self._state()

    @torch.no_grad()
    def refresh(self, force: bool = False) -> bool:
        """Copy the masters into the snapshot if any changed since the last copy; whether it copied.

        Also mirrors the policy's train/eval mode onto the snapshot's modules (dropout, and the compiled
        backend's graph key).
        """
        for clone, master in zip(self.model.modules(), self.source.modules()):
            clone.training = master.training
        if not (force or self.stale()):
            return False
        for master, snap in self._pairs:
            snap.copy_(master)  # the same rounding as autocast's cast
        self._seen = self._state()
        self.refreshes += 1
        return True


class RolloutWeights:
    """What a trainer's rollouts sample from, per ``rollout_weights``: the policy, or its :class:`RolloutSnapshot`
    (made on first use, refreshed before every rollout in which a master changed)."""

    def __init__(self, setting: str, bf16_rollouts: bool):
        if setting not in ROLLOUT_WEIGHTS:
            raise ValueError(f"rollout_weights must be one of {', '.join(ROLLOUT_WEIGHTS)}, got {setting!r}")
        self.setting, self.bf16_rollouts = setting, bf16_rollouts
        self.snapshot: RolloutSnapshot | None = None

    def model_for(self, model: nn.Module, backend: str) -> nn.Module:
        """The module to sample from for the rollout about to run with ``backend`` (a name, ``auto`` allowed)."""
        from .sampler import eager_only_reason, resolve_backend

        device = next(model.parameters()).device
        resolved = resolve_backend(backend, device, eager_only_reason(model))
        if not use_snapshot(self.setting, resolved, self.bf16_rollouts, model):
            return model
        if self.snapshot is None or self.snapshot.source is not unwrap_causal_lm(model):
            self.snapshot = RolloutSnapshot(model)
        self.snapshot.refresh()
        return self.snapshot.model
