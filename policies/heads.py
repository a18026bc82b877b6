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
    _check_rows(head.weight.size(0), vocab)
    return head.weight, getattr(head, "bias", None), slice(vocab.offset, vocab.vocab_size)


def visual_head(model: nn.Module, vocab: VisualVocab) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight[K, H], bias[K] | None)``: views of the head rows of the visual codes.

    Reads the weight directly: use it where the weights are whole (sampling, which runs inside
    TRL's ZeRO-3 gather). Differentiable scoring uses :class:`VisualHead`.
    """
    weight, bias, rows = visual_head_rows(model, vocab)
    return weight[rows], bias[rows] if bias is not None else None


class VisualHead:
    """Differentiable visual-slice logits computed by CALLING the head module.

    The head's ``forward`` is swapped for the sliced projection during the call, so the hooks that
    DeepSpeed ZeRO-3 / FSDP2 attach to the module still gather its (possibly tied) weight for the
    forward and reduce its gradient in backward, and the ~151k text rows are still never multiplied.
    With ``fp32`` the projection runs in float32 even inside a bf16 autocast region (see
    :func:`visual_logits`).
    """

    def __init__(self, model: nn.Module, vocab: VisualVocab, fp32: bool = False):
        self.module = _output_head(model)
        rows = getattr(self.module.weight, "ds_shape", self.module.weight.shape)[0]  # ZeRO-3 keeps the full shape here
        _check_rows(int(rows), vocab)
        self.start, self.end = vocab.offset, vocab.vocab_size
        self.fp32 = fp32

    def _sliced_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.module.weight[self.start : self.end]
        bias = self.module.bias[self.start : self.end] if getattr(self.module, "bias", None) is not None else None
        return visual_logits(hidden, weight, bias, fp32=self.fp32)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., codebook_size]`` in float32."""
        had_own = "forward" in self.module.__dict__
        previous = self.module.__dict__.get("forward")
        self.module.forward = self._sliced_forward
        try:
            return self.module(hidden).float()
        finally:
            if had_own:
                self.module.forward = previous
            else:
                del self.module.forward


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
