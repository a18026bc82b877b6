"""The visual vocabulary: where image codes live in the language model's vocabulary.

A SimpleAR-style policy appends ``codebook_size`` visual rows after the text vocabulary, so that
``token_id = text_vocab_size + code``. The offset is stored explicitly (in the model config under
``simplear_visual_vocab``) and never re-derived from a tokenizer that may have grown since.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

#: The seven special tokens SimpleAR adds to the Qwen2.5 tokenizer, in id order.
SIMPLEAR_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|t2i|>",
    "<|i2t|>",
    "<|soi|>",
    "<|vtokens|>",
    "<|t2v|>",
    "<|v2t|>",
    "<|sov|>",
)
#: Conditional prompt template. ``{prefix}`` and ``{caption}`` are the only placeholders.
DEFAULT_COND_TEMPLATE = "<|t2i|>{prefix}{caption}<|soi|>"
#: Unconditional template: the caption-dropped sequence SFT trains for classifier-free guidance.
DEFAULT_UNCOND_TEMPLATE = "<|t2i|><|soi|>"
#: Key under which the layout is stored in a Hugging Face model config.
CONFIG_KEY = "simplear_visual_vocab"


class VisualTokenError(ValueError):
    """A token id that should be visual lies outside ``[offset, offset + codebook_size)``."""


@dataclass(frozen=True)
class VisualVocab:
    """Layout of the visual vocabulary of an AR image policy.

    Attributes:
        text_vocab_size: id of the first visual token (the offset); every text id is below it.
        codebook_size: number of visual codes (64,000 for Cosmos DV8x16x16).
        grid: ``(h, w)`` visual tokens per image; a completion is exactly ``h * w`` tokens.
        special_tokens: the added specials, in id order.
        cond_template / uncond_template: prompt templates; ``{prefix}``, ``{caption}``, ``{height}``
            and ``{width}`` (the grid) are replaced literally (no ``str.format``, so braces in
            captions are safe).
        prompt_prefix: text inserted at ``{prefix}`` (SimpleAR used "A highly realistic image of ").
        row_end_id: a structural token that ends every row of ``w`` codes (Emu3's end-of-line), or
            None. It is forced, never sampled: log-prob 0 and no part of the loss. A completion
            is then ``h * (w + 1)`` tokens.
    """

    text_vocab_size: int
    codebook_size: int
    grid: tuple[int, int]
    special_tokens: tuple[str, ...] = SIMPLEAR_SPECIAL_TOKENS
    cond_template: str = DEFAULT_COND_TEMPLATE
    uncond_template: str = DEFAULT_UNCOND_TEMPLATE
    prompt_prefix: str = ""
    row_end_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.text_vocab_size <= 0:
            raise ValueError(f"text_vocab_size must be positive, got {self.text_vocab_size}")
        if self.codebook_size <= 0:
            raise ValueError(f"codebook_size must be positive, got {self.codebook_size}")
        grid = tuple(int(g) for g in self.grid)
        if len(grid) != 2 or min(grid) <= 0:
            raise ValueError(f"grid must be two positive ints (h, w), got {self.grid!r}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "special_tokens", tuple(self.special_tokens))
        if "{caption}" not in self.cond_template:
            raise ValueError(f"cond_template must contain '{{caption}}', got {self.cond_template!r}")

    # ----------------------------------------------------------------- sizes
    @property
    def offset(self) -> int:
        """Id of visual code 0."""
        return self.text_vocab_size

    @property
    def vocab_size(self) -> int:
        """Rows the model's embedding and head must have: text + codebook."""
        return self.text_vocab_size + self.codebook_size

    @property
    def num_image_tokens(self) -> int:
        """Codes in one image (``h * w``)."""
        return self.grid[0] * self.grid[1]

    @property
    def completion_length(self) -> int:
        """Tokens in one sampled completion: the codes, plus one forced row-end token per row if any."""
        return self.num_image_tokens + (self.grid[0] if self.row_end_id is not None else 0)

    def forced(self, tokens: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the forced structural tokens (row ends) among ``tokens``."""
        tokens = torch.as_tensor(tokens)
        if self.row_end_id is None:
            return torch.zeros_like(tokens, dtype=torch.bool)
        return tokens == self.row_end_id

    def with_grid(self, grid: tuple[int, int]) -> "VisualVocab":
        """The same layout with another grid (e.g. 32x32 for 512 px, 64x64 for 1024 px)."""
        return dataclasses.replace(self, grid=tuple(grid))

    def replace(self, **changes: Any) -> "VisualVocab":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def codec(self) -> dict[str, Any] | None:
        """The codec the policy was trained with (``policies.codecs.codec_record``), if recorded."""
        return self.extra.get("codec")

    def with_codec(self, record: dict[str, Any]) -> "VisualVocab":
        """A copy that records the codec the policy is trained with."""
        return dataclasses.replace(self, extra={**self.extra, "codec": dict(record)})

    # ------------------------------------------------------------ conversions
    def codes_to_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Map visual codes to LM token ids; refuses codes outside ``[0, codebook_size)``."""
        codes = torch.as_tensor(codes)
        bad = (codes < 0) | (codes >= self.codebook_size)
        if bool(bad.any()):
            raise VisualTokenError(
                f"{int(bad.sum())} of {codes.numel()} codes lie outside the codebook "
                f"[0, {self.codebook_size}) (e.g. {codes[bad].flatten()[:5].tolist()}); "
                "the codec and the policy disagree on codebook_size."
            )
        return codes.long() + self.offset

    def tokens_to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map LM token ids to visual codes; refuses (and counts) ids outside the visual range.

        SimpleAR clamps such ids silently to code 0, hiding a broken sampler; we report them.
        """
        tokens = torch.as_tensor(tokens)
        bad = ~self.is_visual(tokens)
        if bool(bad.any()):
            raise VisualTokenError(
                f"{int(bad.sum())} of {tokens.numel()} token ids are not visual tokens "
                f"(visual range is [{self.offset}, {self.vocab_size})), e.g. "
                f"{tokens[bad].flatten()[:5].tolist()}. Text tokens cannot be decoded as an image."
            )
        return tokens.long() - self.offset

    def is_visual(self, tokens: torch.Tensor) -> torch.Tensor:
        """Boolean mask of ids inside the visual range."""
        tokens = torch.as_tensor(tokens)
        return (tokens >= self.offset) & (tokens < self.vocab_size)

    # -------------------------------------------------------------- templates
    def _format(self, template: str, caption: str) -> str:
        grid = template.replace("{height}", str(self.grid[0])).replace("{width}", str(self.grid[1]))
        return grid.replace("{prefix}", self.prompt_prefix).replace("{caption}", caption)

    def format_cond(self, caption: str) -> str:
        """The conditional prompt text for ``caption``."""
        return self._format(self.cond_template, caption)

    def format_uncond(self) -> str:
        """The unconditional prompt text (the same for every row)."""
        return self._format(self.uncond_template, "")

    # ---------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the model config)."""
        d = dataclasses.asdict(self)
        d["grid"] = list(self.grid)
        d["special_tokens"] = list(self.special_tokens)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisualVocab":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown visual-vocab keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        d = dict(d)
        d["grid"] = tuple(d["grid"])
        if "special_tokens" in d:
            d["special_tokens"] = tuple(d["special_tokens"])
        return cls(**d)

    def attach_to_config(self, config: Any) -> None:
        """Record the layout in a Hugging Face config so every checkpoint carries it."""
        setattr(config, CONFIG_KEY, self.to_dict())

    @classmethod
    def from_config(cls, config: Any) -> "VisualVocab | None":
        """The layout stored in a config, or None if the config has none."""
        d = getattr(config, CONFIG_KEY, None)
        return None if d is None else cls.from_dict(d)


def stored_layout(config: Any, codebook_size: int | None = None, grid: tuple[int, int] | None = None) -> VisualVocab | None:
    """The layout a checkpoint's config records (``grid`` overrides its grid), or None if it records none.

    A ``codebook_size`` other than the recorded one is refused, naming both.
    """
    stored = VisualVocab.from_config(config)
    if stored is None:
        return None
    if codebook_size is not None and codebook_size != stored.codebook_size:
        raise ValueError(f"checkpoint records codebook_size {stored.codebook_size}, but {codebook_size} was asked")
    return stored if grid is None else stored.with_grid(grid)


def check_model_vocab(model_vocab_size: int, vocab: VisualVocab, where: str = "model") -> None:
    """Fail fast when the model's rows do not equal text vocab + codebook, naming all numbers."""
    if model_vocab_size != vocab.vocab_size:
        raise ValueError(
            f"{where} has {model_vocab_size} vocabulary rows but the visual layout needs "
            f"text_vocab_size {vocab.text_vocab_size} + codebook_size {vocab.codebook_size} = "
            f"{vocab.vocab_size}. Use the codebook size the policy was trained with, or extend a "
            "fresh LLM with `policies.loading.extend_llm`."
        )
