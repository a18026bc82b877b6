"""Reaching the decoder and the visual slice of the LM head of a (possibly wrapped) policy.

The ~151k text rows of the head are never multiplied when sampling or scoring images: only the
``codebook_size`` visual rows are. Wrappers (DDP, FSDP, DeepSpeed, PEFT) are peeled for
read-only access to weights, but forwards go through the outermost module (:func:`head_forward`),
with the head computing only what is asked for, so that distributed wrappers see them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .sharding import full_shape
from .vocab import VisualVocab


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The underlying ``*ForCausalLM`` below DDP/DeepSpeed (``.module``) and PEFT wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
    return model


def decoder_of(model: nn.Module) -> nn.Module:
    """The transformer body (``Qwen2Model``) that returns ``last_hidden_state``."""
    lm = unwrap_causal_lm(model)
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
    if decoder is None:
        raise TypeError(f"{type(lm).__name__} exposes no decoder; expected a Hugging Face causal LM")
    return decoder


def _output_head(model: nn.Module) -> nn.Module:
    head = unwrap_causal_lm(model).get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(unwrap_causal_lm(model)).__name__} has no output head")
    if hasattr(head, "base_layer") or hasattr(head, "lora_A"):
        raise TypeError(
            "the LM head carries a PEFT adapter: remove lm_head from lora_target_modules, because image tokens "
            "are scored on the visual rows of the head and an adapter there would be ignored"
        )
    return head


def _check_rows(rows: int, vocab: VisualVocab) -> None:
    if rows != vocab.vocab_size:
        raise ValueError(
            f"LM head has {rows} rows but the visual layout needs text_vocab_size "
            f"{vocab.text_vocab_size} + codebook_size {vocab.codebook_size} = {vocab.vocab_size}"
        )


def visual_head_rows(model: nn.Module, vocab: VisualVocab) -> tuple[nn.Parameter, nn.Parameter | None, slice]:
    """``(weight[V, H], bias[V] | None, rows)``: the head's own parameters and the slice of their visual rows.

    Compiled code takes the parameters themselves (which it treats as static inputs) and slices them inside.
    """
    head = _output_head(model)
    _check_rows(full_shape(head.weight)[0], vocab)
    return head.weight, getattr(head, "bias", None), slice(vocab.offset, vocab.vocab_size)


class HeadWeights:
    """The output head's weights, read at CALL time: use it inside :func:`head_forward`'s ``fn``.

    There the head module is being called, so the engines that shard weights have gathered them:
    DeepSpeed ZeRO-3 in the module's forward hooks (and again for backward, before a checkpointed
    chunk is recomputed), FSDP2 in the root's forward. Reading the weights at call time, never
    holding them, is what keeps chunked, recomputed scoring correct under both.

    Args:
        fp32: visual logits in float32 whatever the weights' dtype or autocast (:func:`visual_logits`).
        frozen: the weights do not change while this object lives (a rollout): a float32 copy of the
            visual rows is made once instead of per call.
    """

    def __init__(self, model: nn.Module, vocab: VisualVocab, fp32: bool = False, frozen: bool = False):
        self.module = _output_head(model)
        _check_rows(full_shape(self.module.weight)[0], vocab)
        self.rows = slice(vocab.offset, vocab.vocab_size)
        self.fp32 = fp32
        self.frozen = frozen
        self._fp32_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def visual_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight[K, H], bias[K] | None)`` as the head holds them now."""
        if self._fp32_rows is not None:
            return self._fp32_rows
        bias = getattr(self.module, "bias", None)
        rows = self.module.weight[self.rows], bias[self.rows] if bias is not None else None
        if self.frozen and self.fp32 and rows[0].dtype != torch.float32:
            self._fp32_rows = rows = (rows[0].float(), rows[1].float() if rows[1] is not None else None)
        return rows

    def visual_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., codebook_size]`` (float32) of the visual rows only."""
        weight, bias = self.visual_rows()
        return visual_logits(hidden, weight, bias, fp32=self.fp32)

    def full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary (float32): for the few text targets of pretraining."""
        weight, bias = self.module.weight, getattr(self.module, "bias", None)
        return F.linear(hidden.to(weight.dtype), weight, bias).float()


def visual_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, fp32: bool = False
) -> torch.Tensor:
    """Logits over the codebook only, returned in float32.

    By default the projection runs in the compute dtype (the weights', or autocast's). With ``fp32``
    it runs in float32 whatever the weights and any autocast region say: the last matmul then adds
    no bf16 rounding to the logits, at the cost of a float32 head (see bench/numerics.py).
    """
    if fp32:
        bias = bias.float() if bias is not None else None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return F.linear(hidden.float(), weight.float(), bias)
    return F.linear(hidden.to(weight.dtype), weight, bias).float()


@contextmanager
def replaced_head(model: nn.Module, fn: Callable[[torch.Tensor], Any]) -> Iterator[nn.Module]:
    """Inside the block, the output head MODULE computes ``fn(hidden)`` instead of its full projection.

    Only ``forward`` is swapped: calls still go through the module, so the hooks of DDP, FSDP2 and
    DeepSpeed ZeRO-3 still gather its (possibly tied) weight and reduce its gradient.
    """
    module = _output_head(model)
    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = fn
    try:
        yield module
    finally:
        if had_own:
            module.forward = previous
        else:
            del module.forward


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Explicit positions for left-padded rows: ``cumsum(mask) - 1``, pads clamped to 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def head_forward(
    model: nn.Module,
    fn: Callable[[torch.Tensor], Any],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    keep: int = 0,
    **kwargs: Any,
) -> Any:
    """One forward of the OUTERMOST module whose head computes ``fn(hidden)``; returns what ``fn`` returned.

    ``hidden`` is the final (post-norm) hidden states of the last ``keep`` positions (0: all),
    ``[B, keep, H]``. Everything ``fn`` computes happens inside the model's own forward, so DDP,
    FSDP2 and ZeRO-3 see one forward whose output is ``fn``'s result (no second call of the head after
    the forward, which FSDP2 cannot reshard correctly in backward). The ~151k text rows of the head are
    multiplied only if ``fn`` asks for them. ``kwargs`` go to the model (``cache``, ``use_cache``).
    """
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    kwargs.setdefault("use_cache", False)
    with replaced_head(model, fn):
        output = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=keep, **kwargs
        )
    return output.logits
