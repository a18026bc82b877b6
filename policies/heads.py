"""Reaching the decoder and the visual slice of the LM head of a (possibly wrapped) policy.

The ~151k text rows of the head are never multiplied when sampling or scoring images: only the
``codebook_size`` visual rows are. Wrappers (DDP, FSDP, DeepSpeed, PEFT) are peeled for
read-only access to weights, but differentiable forwards go through the outermost module so that
distributed wrappers see them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

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


def visual_head(model: nn.Module, vocab: VisualVocab) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight[K, H], bias[K] | None)``: views of the head rows of the visual codes."""
    head = unwrap_causal_lm(model).get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or weight.dim() != 2:
        raise TypeError(
            "the LM head has no plain 2-D weight (is it wrapped by a PEFT adapter? target_modules must not "
            "include lm_head, because the visual slice of the head is read directly)"
        )
    if weight.size(0) != vocab.vocab_size:
        raise ValueError(
            f"LM head has {weight.size(0)} rows but the visual layout needs text_vocab_size "
            f"{vocab.text_vocab_size} + codebook_size {vocab.codebook_size} = {vocab.vocab_size}"
        )
    start, end = vocab.offset, vocab.vocab_size
    bias = head.bias[start:end] if getattr(head, "bias", None) is not None else None
    return weight[start:end], bias


def visual_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Logits over the codebook only, returned in float32."""
    return F.linear(hidden.to(weight.dtype), weight, bias).float()


@contextmanager
def _capture_decoder_output(model: nn.Module) -> Iterator[dict]:
    holder: dict = {}

    def hook(_module, _args, output):
        holder["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = decoder_of(model).register_forward_hook(hook)
    try:
        yield holder
    finally:
        handle.remove()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Explicit positions for left-padded rows: ``cumsum(mask) - 1``, pads clamped to 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def last_hidden_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Final (post-norm) hidden states ``[B, T, H]`` of a forward through the OUTERMOST module.

    The full-vocabulary head is skipped (``logits_to_keep`` selects no position), so this costs a
    backbone forward only, while DDP/FSDP/DeepSpeed wrappers still see the call.
    """
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    no_positions = torch.empty(0, dtype=torch.long, device=input_ids.device)
    with _capture_decoder_output(model) as holder:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=no_positions,
            use_cache=False,
        )
    if "hidden" not in holder:
        raise RuntimeError("the decoder forward hook did not fire; is this a Hugging Face causal LM?")
    return holder["hidden"]
