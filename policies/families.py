"""Policy families: what differs between AR text-to-image models, behind one small interface.

A family says, for the checkpoints of one ``model_type``:

- how it loads (model class, tokenizer, the :class:`~policies.vocab.VisualVocab` layout: where code
  ``c`` lives as token ``offset + c``, the grid, the prompt templates, forced row-end tokens);
- how a caption becomes cond / uncond prompt ids (:meth:`PolicyFamily.uncond_prompts`);
- which map from final hidden states to visual logits defines the image distribution
  (:meth:`PolicyFamily.visual_head`: rows of the LM head, or a separate generation head);
- how a sampled code is fed back: always as token ``offset + c``; a family whose image tokens are
  embeddings of their own (Janus) maps those ids to them inside the model's forward;
- how codes become pixels (:meth:`PolicyFamily.default_codec`: a codec record);
- what training touches (frozen parts, the module prefix LoRA targets are restricted to).

The sampler, guided scoring, the GRPO trainer, generate and eval work through this interface and
the vocabulary only. Families: ``simplear`` (``qwen2``: SimpleAR and the tiny policies), ``janus``
(Janus / Janus-Pro) and ``emu3``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .heads import HeadWeights, unwrap_causal_lm
from .sharding import full_shape
from .vocab import SIMPLEAR_SPECIAL_TOKENS, VisualVocab, check_model_vocab, stored_layout


class PolicyFamily:
    """One model family. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    #: Training stages the family supports (``pretrain``/``sft`` need the SimpleAR layout).
    stages: ClassVar[tuple[str, ...]] = ("grpo",)
    #: Whether the compiled rollout backend (a linear head slice, token-id decode steps) serves it.
    compiled_rollouts: ClassVar[bool] = False
    #: Module-name prefix that LoRA targets are restricted to (None: anywhere).
    lora_scope: ClassVar[str | None] = None
    #: Module-name prefixes that never train (vision towers, VQ-VAEs).
    frozen: ClassVar[tuple[str, ...]] = ()
    #: The guidance scale the family's authors sample with (generate/eval's default).
    default_cfg_scale: ClassVar[float] = 6.0
    #: Whether the checkpoint holds its own VQ-VAE (the ``vqvae`` codec decodes with it).
    own_vqvae: ClassVar[bool] = False

    # ------------------------------------------------------------------ loading
    def load_model(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        raise NotImplementedError

    def layout(self, model: nn.Module, tokenizer: Any, codebook_size: int | None, grid: tuple[int, int] | None) -> VisualVocab:
        """The layout of a checkpoint that records none (a released checkpoint of this family)."""
        raise NotImplementedError

    def resolve_layout(self, model: nn.Module, tokenizer: Any, codebook_size: int | None = None,
                       grid: tuple[int, int] | None = None) -> VisualVocab:
        """The layout a checkpoint records (``grid`` overrides its grid), else :meth:`layout`."""
        stored = stored_layout(model.config, codebook_size, grid)
        return stored if stored is not None else self.layout(model, tokenizer, codebook_size, grid)

    def adapt_model(self, model: nn.Module) -> nn.Module:
        """Make a loaded model of this family take ``offset + code`` ids (a no-op where it already does)."""
        return model

    def prepare_for_training(self, model: nn.Module) -> None:
        """Freeze the parts that never train (and that DDP would otherwise wait for gradients of)."""
        for name, param in unwrap_causal_lm(model).named_parameters():
            if name.startswith(self.frozen):
                param.requires_grad_(False)

    # ---------------------------------------------------------------- prompting
    def uncond_prompts(self, policy: Any, cond_prompts: list[list[int]]) -> list[list[int]]:
        """One unconditional prompt per conditional one (default: the vocab's uncond template for every row)."""
        return [policy.encode_uncond()] * len(cond_prompts)

    # ------------------------------------------------------------- distribution
    def visual_head(self, model: nn.Module, vocab: VisualVocab, fp32: bool = False, frozen: bool = False):
        """An object whose ``visual_logits(hidden)`` gives float32 logits ``[..., codebook_size]``.

        Call it only inside :func:`policies.heads.head_forward`'s function (where sharding engines have
        gathered the weights). Default: the visual rows of the LM head (:class:`policies.heads.HeadWeights`).
        """
        return HeadWeights(model, vocab, fp32=fp32, frozen=frozen)

    # ------------------------------------------------------------------- pixels
    def default_codec(self, folder: str | Path | None) -> dict | None:
        """The codec record to decode with when neither the recipe nor the checkpoint names one."""
        return {"name": "vqvae", "path": str(folder)} if self.own_vqvae and folder is not None else None


#: Grid of a released SimpleAR checkpoint when none is given (1024 px with Cosmos DV8x16x16).
SIMPLEAR_DEFAULT_GRID = (64, 64)


class SimpleARFamily(PolicyFamily):
    """SimpleAR-style Qwen2 decoders: visual codes appended after the text vocabulary, one LM head."""

    name = "simplear"
    model_types = ("qwen2",)
    stages = ("pretrain", "sft", "grpo")
    compiled_rollouts = True

    def load_model(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        from transformers import AutoModelForCausalLM, GenerationConfig

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        model.generation_config = GenerationConfig()  # never inherit a text-chat sampling config
        return model

    def layout(self, model, tokenizer, codebook_size, grid) -> VisualVocab:
        """A released SimpleAR checkpoint records no layout: the offset is the id after the last of its 7 specials
        (151,672); the codebook is the rows after it."""
        ids = tokenizer.convert_tokens_to_ids(list(SIMPLEAR_SPECIAL_TOKENS))
        missing = [t for t, i in zip(SIMPLEAR_SPECIAL_TOKENS, ids) if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(
                f"tokenizer lacks the SimpleAR special tokens {missing}; this is not a SimpleAR checkpoint. "
                "Build a fresh policy from an LLM with `policies.loading.extend_llm`."
            )
        offset = max(ids) + 1
        codebook = codebook_size if codebook_size is not None else _embedding_rows(model) - offset
        return VisualVocab(text_vocab_size=offset, codebook_size=codebook, grid=grid or SIMPLEAR_DEFAULT_GRID)

    def resolve_layout(self, model, tokenizer, codebook_size=None, grid=None) -> VisualVocab:
        """The stored or recovered layout, checked against the model's rows (visual codes are real rows here)."""
        vocab = super().resolve_layout(model, tokenizer, codebook_size, grid)
        check_model_vocab(_embedding_rows(model), vocab, where="checkpoint embedding")
        return vocab


def _embedding_rows(model: nn.Module) -> int:
    """The input embedding's row count (the whole table, not the local shard under ZeRO-3)."""
    return full_shape(model.get_input_embeddings().weight)[0]


# --------------------------------------------------------------------------------------------- Janus

#: Janus(-Pro)'s image-generation prompt (its chat format with an empty system prompt, then the image tag).
JANUS_COND_TEMPLATE = "<｜begin▁of▁sentence｜><|User|>: {prefix}{caption}\n\n<|Assistant|>:<begin_of_image>"


class GenerationHead:
    """Janus's generation head (Linear, GELU, Linear over the codebook): the image distribution, not ``lm_head``.

    Called as a module inside the model's forward, so the engines' hooks gather it. ``fp32`` runs it
    outside autocast on float32 inputs: exact float32 when the weights are float32 (fp32 masters).
    """

    def __init__(self, model: nn.Module, vocab: VisualVocab, fp32: bool = False):
        self.module = unwrap_causal_lm(model).model.generation_head
        out = self.module.vision_head.out_features
        if out != vocab.codebook_size:
            raise ValueError(f"Janus generation head has {out} outputs but the layout's codebook_size is {vocab.codebook_size}")
        self.fp32 = fp32

    def visual_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                return self.module(hidden.float()).float()
        return self.module(hidden).float()


def _janus_embed_image_ids(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: ids ``>= text vocab`` are image codes, embedded by the generation embeddings + aligner."""
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    if input_ids is None or kwargs.get("inputs_embeds") is not None:
        return args, kwargs
    text_rows = module.config.text_config.vocab_size
    is_image = input_ids >= text_rows
    if not bool(is_image.any()):
        return args, kwargs
    text = module.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
    image = module.prepare_embeddings_for_image_generation((input_ids - text_rows).clamp(min=0))
    kwargs = {**kwargs, "input_ids": None, "inputs_embeds": torch.where(is_image[..., None], image.to(text.dtype), text)}
    return (), kwargs


class JanusFamily(PolicyFamily):
    """Janus / Janus-Pro (``JanusForConditionalGeneration``): generation embeddings, aligner and head.

    Code ``c`` is the virtual id ``text_vocab_size + c``; a forward pre-hook embeds such ids with the
    generation embeddings and aligner inside the model's forward. The uncond row of a prompt keeps
    BOS and the image tag and pads everything between (same length, pads attended), as Janus does.
    """

    name = "janus"
    model_types = ("janus",)
    default_cfg_scale = 5.0
    own_vqvae = True
    lora_scope = "model.language_model"
    frozen = ("model.vqmodel.", "model.vision_model.", "model.aligner.")

    def load_model(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        from transformers import JanusForConditionalGeneration

        return JanusForConditionalGeneration.from_pretrained(folder, dtype=dtype)

    def adapt_model(self, model: nn.Module) -> nn.Module:
        base = unwrap_causal_lm(model)
        if not getattr(base, "_simplear_image_ids", False):
            base.register_forward_pre_hook(_janus_embed_image_ids, with_kwargs=True)
            base._simplear_image_ids = True
        return model

    def layout(self, model, tokenizer, codebook_size, grid) -> VisualVocab:
        config = model.config
        side = int(math.isqrt(config.vision_config.num_image_tokens))
        return VisualVocab(
            text_vocab_size=config.text_config.vocab_size,
            codebook_size=codebook_size or config.vq_config.num_embeddings,
            grid=grid or (side, side),
            special_tokens=(),
            cond_template=JANUS_COND_TEMPLATE,
            uncond_template=JANUS_COND_TEMPLATE,  # per-row masking, see uncond_prompts
        )

    def uncond_prompts(self, policy, cond_prompts):
        pad = policy.pad_id
        return [[p[0], *[pad] * (len(p) - 2), p[-1]] if len(p) >= 2 else list(p) for p in cond_prompts]

    def visual_head(self, model, vocab, fp32=False, frozen=False):
        return GenerationHead(model, vocab, fp32=fp32)


# ---------------------------------------------------------------------------------------------- Emu3

EMU3_COND_TEMPLATE = "<|extra_203|>{prefix}{caption}<|image start|>{height}*{width}<|image token|>"
EMU3_UNCOND_TEMPLATE = "<|extra_203|><|image start|>{height}*{width}<|image token|>"
EMU3_ROW_END = "<|extra_200|>"
EMU3_VISUAL_PREFIX = "<|visual token"


class Emu3Family(PolicyFamily):
    """Emu3 (``Emu3ForConditionalGeneration``): visual tokens are the last rows of the vocabulary and LM head;
    every row of ``w`` codes ends with a forced end-of-line token (never sampled, log-prob 0, not in the loss)."""

    name = "emu3"
    model_types = ("emu3",)
    default_cfg_scale = 3.0  # Emu3's image_generation.py
    own_vqvae = True
    lora_scope = "model.text_model"
    frozen = ("model.vqmodel.",)

    def load_model(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        from transformers import Emu3ForConditionalGeneration

        return Emu3ForConditionalGeneration.from_pretrained(folder, dtype=dtype)

    def layout(self, model, tokenizer, codebook_size, grid) -> VisualVocab:
        vocab_map = model.config.vocabulary_map
        visual = sorted(i for name, i in vocab_map.items() if name.startswith(EMU3_VISUAL_PREFIX))
        rows = model.config.text_config.vocab_size
        if not visual or visual != list(range(visual[0], visual[0] + len(visual))) or visual[-1] != rows - 1:
            raise ValueError(
                f"Emu3 checkpoint: its {len(visual)} visual tokens are not the last contiguous ids of its {rows}-row "
                "vocabulary, which the layout needs (code c = offset + c)"
            )
        if EMU3_ROW_END not in vocab_map:
            raise ValueError(f"Emu3 checkpoint: vocabulary_map has no end-of-line token {EMU3_ROW_END!r}")
        return VisualVocab(
            text_vocab_size=visual[0],
            codebook_size=codebook_size or len(visual),
            grid=grid or (90, 90),  # Emu3's 720x720 default
            special_tokens=(),
            cond_template=EMU3_COND_TEMPLATE,
            uncond_template=EMU3_UNCOND_TEMPLATE,
            row_end_id=vocab_map[EMU3_ROW_END],
        )


FAMILIES: tuple[PolicyFamily, ...] = (SimpleARFamily(), JanusFamily(), Emu3Family())


def family_for_model_type(model_type: str | None) -> PolicyFamily:
    """The family of a checkpoint's ``model_type``; the error names the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)
    raise ValueError(f"model_type {model_type!r} is not a supported policy family; supported: {supported}")


def family_of(model: nn.Module) -> PolicyFamily:
    """The family of a (possibly wrapped) model."""
    return family_for_model_type(getattr(unwrap_causal_lm(model).config, "model_type", None))


def visual_head(model: nn.Module, vocab: VisualVocab, fp32: bool = False, frozen: bool = False):
    """The model's family's visual head (see :meth:`PolicyFamily.visual_head`)."""
    return family_of(model).visual_head(model, vocab, fp32=fp32, frozen=frozen)


__all__ = [
    "FAMILIES",
    "Emu3Family",
    "GenerationHead",
    "JanusFamily",
    "PolicyFamily",
    "SimpleARFamily",
    "family_for_model_type",
    "family_of",
    "visual_head",
]
