"""Loading SimpleAR checkpoints and building fresh policies from a Qwen2 LLM, all from local paths."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .dtypes import resolve_dtype
from .families import PolicyFamily, SimpleARFamily, family_for_model_type
from .sharding import gathered_for_edit
from .sources import TOKENIZER_FILES, PolicySource, resolve_source
from .vocab import CONFIG_KEY, SIMPLEAR_SPECIAL_TOKENS, VisualVocab

logger = logging.getLogger(__name__)

DEFAULT_CODEBOOK_SIZE = 64_000


@dataclass
class Policy:
    """An AR image policy: the model, its tokenizer, its visual layout and its family."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    vocab: VisualVocab
    family: PolicyFamily = field(default_factory=SimpleARFamily)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of an already-templated prompt (specials in the text become their ids)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompts(self, captions: list[str]) -> list[list[int]]:
        """Conditional prompt ids ``<|t2i|>{prefix}{caption}<|soi|>`` for each caption."""
        return [self.encode_text(self.vocab.format_cond(c)) for c in captions]

    def encode_uncond(self) -> list[int]:
        """The unconditional prompt ids of the vocab's uncond template (shared by every row)."""
        return self.encode_text(self.vocab.format_uncond())

    def uncond_prompts(self, cond_prompts: list[list[int]]) -> list[list[int]]:
        """The unconditional prompt ids for classifier-free guidance, one per conditional prompt (family rule)."""
        return self.family.uncond_prompts(self, cond_prompts)

    def save(self, out_dir: str | Path) -> None:
        """Save model (with the layout in its config) and tokenizer to a folder."""
        self.vocab.attach_to_config(self.model.config)
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def check_model_folder(path: str | Path, what: str = "policy checkpoint") -> Path:
    """A local HF model folder with ``config.json`` and a tokenizer; errors name the missing piece."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"{what} folder {str(folder)!r} does not exist (weights are never downloaded; give a local path)")
    if not folder.is_dir():
        raise NotADirectoryError(f"{what} {str(folder)!r} is a file; expected a Hugging Face model folder")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{what} folder {str(folder)!r} has no config.json; is it a Hugging Face model folder?")
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{what} folder {str(folder)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer next to the model"
        )
    return folder


def checkpoint_config(folder: str | Path, base: str | Path | None = None) -> dict:
    """A policy folder's effective ``config.json`` (an adapter's base config, the run's layout record on top),
    read without loading the model ({} if it is not a policy folder)."""
    try:
        return resolve_source(folder, base=base).config
    except (OSError, ValueError):
        return {}


def checkpoint_hidden_size(folder: Path) -> int | None:
    """The hidden size ``config.json`` records (at the top or in ``text_config``), read without loading the model."""
    config = checkpoint_config(folder)
    return config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size")


def checkpoint_family(folder: str | Path, base: str | Path | None = None) -> PolicyFamily:
    """The policy family of a policy folder, from its ``model_type`` (read without loading the model)."""
    return family_for_model_type(checkpoint_config(folder, base=base).get("model_type"))


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer exactly as saved in ``folder``.

    transformers 5 maps every ``qwen2`` folder to ``Qwen2Tokenizer``, which rebuilds a byte-level
    BPE pipeline around the saved vocabulary (silently dropping words of a word-level tokenizer such
    as the tiny policies') and appends ``<|endoftext|>``; ``tokenizer.json`` holds the real pipeline.
    """
    if (folder / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def load_policy(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    codebook_size: int | None = None,
    grid: tuple[int, int] | None = None,
    base: str | Path | None = None,
) -> Policy:
    """Load a policy of any supported family from anything a stage wrote (see :mod:`policies.sources`).

    A run or ``checkpoint-N`` folder, an exported folder, a LoRA adapter (its base from
    ``adapter_config.json``, or ``base`` when it has moved; merged in memory) or a ZeRO-3 / FSDP2
    checkpoint (consolidated with the engine's own utility). The family comes from the config's
    ``model_type`` (:mod:`policies.families`); the layout, templates and codec the run recorded come
    along. For SimpleAR-style ``qwen2`` checkpoints the text-chat ``generation_config`` (repetition
    penalty, top-k 20, ...) is replaced by a neutral one: image sampling never inherits it. ``dtype``
    None/"auto" picks the faster dtype for the model's size on ``device``
    (:func:`policies.dtypes.resolve_dtype`).
    """
    return load_source(resolve_source(path, base=base), dtype, device, codebook_size, grid)


def load_source(
    source: PolicySource,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    codebook_size: int | None = None,
    grid: tuple[int, int] | None = None,
) -> Policy:
    """:func:`load_policy` of an already resolved :class:`~policies.sources.PolicySource`."""
    family = family_for_model_type(source.model_type)
    device = torch.device(device or "cpu")
    torch_dtype = resolve_dtype(dtype, device, source.hidden_size)
    tokenizer = load_tokenizer(source.tokenizer_folder)
    model = load_source_model(source, family, torch_dtype).to(device)
    model.eval()
    if source.layout:  # the layout the run recorded (an adapter's base may record an older one, or none)
        setattr(model.config, CONFIG_KEY, source.layout)
    family.adapt_model(model)
    vocab = family.resolve_layout(model, tokenizer, codebook_size=codebook_size, grid=grid)
    vocab.attach_to_config(model.config)
    return Policy(model=model, tokenizer=tokenizer, vocab=vocab, family=family)


def load_source_model(source: PolicySource, family: PolicyFamily, dtype: torch.dtype) -> PreTrainedModel:
    """The model of a source with whole weights: a LoRA adapter merged into its base in float32 (then cast),
    an engine checkpoint consolidated by the engine's own utility."""
    if source.kind == "adapter":
        from peft import PeftModel

        base = family.load_model(source.model_folder, torch.float32)
        merged = PeftModel.from_pretrained(base, str(source.adapter)).merge_and_unload()
        return merged.to(dtype)
    if source.kind in ("zero3", "fsdp"):
        import shutil
        import tempfile

        from safetensors.torch import save_file

        from .consolidate import engine_state_dict

        state = engine_state_dict(source.kind, source.folder)
        with tempfile.TemporaryDirectory(prefix="simplear-consolidated-") as tmp:
            shutil.copy(source.model_folder / "config.json", Path(tmp) / "config.json")
            save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(Path(tmp) / "model.safetensors"),
                      metadata={"format": "pt"})
            del state
            return family.load_model(Path(tmp), dtype)
    return family.load_model(source.model_folder, dtype)


def extend_vocabulary(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    codebook_size: int,
    grid: tuple[int, int],
    prompt_prefix: str = "",
) -> VisualVocab:
    """Add the 7 specials and ``codebook_size`` visual rows to an LLM, in place.

    Every row from the original tokenizer length onward (padding rows of the LLM, the specials and
    the visual codes) is set to the mean of the original token rows; tied embeddings stay tied.
    """
    text_rows = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SIMPLEAR_SPECIAL_TOKENS)})
    vocab = VisualVocab(
        text_vocab_size=len(tokenizer), codebook_size=codebook_size, grid=grid, prompt_prefix=prompt_prefix
    )
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    model.resize_token_embeddings(vocab.vocab_size, mean_resizing=False)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied_head = head.weight if not tied and head is not None and head.weight is not embed else None
    with torch.no_grad(), gathered_for_edit([embed] + ([untied_head] if untied_head is not None else [])):
        embed[text_rows:] = embed[:text_rows].mean(dim=0, keepdim=True)
        if untied_head is not None:
            untied_head[text_rows:] = untied_head[:text_rows].mean(dim=0, keepdim=True)
    vocab.attach_to_config(model.config)
    return vocab


def extend_llm(
    path: str | Path,
    codebook_size: int = DEFAULT_CODEBOOK_SIZE,
    grid: tuple[int, int] = (32, 32),
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    prompt_prefix: str = "",
) -> Policy:
    """A fresh policy for pretraining from a local Qwen2 LLM folder (e.g. Qwen2.5-0.5B-Instruct)."""
    folder = check_model_folder(path, what="LLM")
    device = torch.device(device or "cpu")
    tokenizer = load_tokenizer(folder)
    if any(t in tokenizer.get_vocab() for t in SIMPLEAR_SPECIAL_TOKENS):
        raise ValueError(
            f"{str(folder)!r} already has SimpleAR special tokens; load it with `load_policy` instead of extending it"
        )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=resolve_dtype(dtype, device)).to(device)
    model.generation_config = GenerationConfig()
    vocab = extend_vocabulary(model, tokenizer, codebook_size, grid, prompt_prefix=prompt_prefix)
    logger.info("extended %s to %d rows (offset %d, codebook %d)", folder, vocab.vocab_size, vocab.offset, codebook_size)
    return Policy(model=model, tokenizer=tokenizer, vocab=vocab)
