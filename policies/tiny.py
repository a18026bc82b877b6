"""Tiny policies built in code: a word-level tokenizer and a small random Qwen2.

The demo and the tests use these, so nothing needs downloaded weights.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from .vocab import SIMPLEAR_SPECIAL_TOKENS, VisualVocab

PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"

#: A small vocabulary for the tiny default (colours, shapes, positions, counts, glue words).
BASIC_WORDS: tuple[str, ...] = tuple(
    """a an the one two three four of and with on in at to is are there picture image photo
    background side top bottom left right center middle corner upper lower small large big
    red green blue yellow purple orange white black gray cyan pink brown
    square squares circle circles triangle triangles rectangle bar stripe dot dots shape shapes
    sky sea grass cat dog tree house sun moon . ,""".split()
)


#: What the tokenizer's Whitespace pre-tokenizer splits text into.
_WORD = re.compile(r"\w+|[^\w\s]+")


def caption_words(captions: Iterable[str]) -> list[str]:
    """Sorted distinct lower-case words and punctuation runs of ``captions`` (a word tokenizer's vocabulary)."""
    return sorted({w for c in captions for w in _WORD.findall(str(c).lower())})


def build_word_tokenizer(
    words: Iterable[str] = BASIC_WORDS, special_tokens: Iterable[str] = SIMPLEAR_SPECIAL_TOKENS
) -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace/punctuation-splitting word-level tokenizer.

    Ids: ``[PAD]=0, [UNK]=1, [EOS]=2``, then the words, then ``special_tokens`` last (as in
    SimpleAR, where the 7 specials end the text vocabulary). No BOS/EOS is added on encode.
    """
    vocab: dict[str, int] = {}
    for tok in (PAD, UNK, EOS, *(w.lower() for w in words)):
        vocab.setdefault(tok, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, unk_token=UNK, eos_token=EOS, padding_side="left"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    return tokenizer


def tiny_qwen2_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    **overrides,
) -> Qwen2Config:
    """A small Qwen2 config with tied embeddings (as Qwen2.5-0.5B/1.5B have)."""
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        use_sliding_window=False,
        **overrides,
    )


def build_tiny_policy(
    words: Iterable[str] = BASIC_WORDS,
    codebook_size: int = 64,
    grid: tuple[int, int] = (8, 8),
    seed: int = 0,
    prompt_prefix: str = "",
    **config_overrides,
):
    """A random tiny Qwen2 policy whose vocabulary is ``len(tokenizer) + codebook_size``.

    Returns a :class:`policies.loading.Policy`.
    """
    from .loading import (
        Policy,  # local import: loading imports this module's tokenizer helpers lazily too
    )

    tokenizer = build_word_tokenizer(words)
    vocab = VisualVocab(
        text_vocab_size=len(tokenizer), codebook_size=codebook_size, grid=grid, prompt_prefix=prompt_prefix
    )
    config = tiny_qwen2_config(
        vocab.vocab_size,
        max_position_embeddings=max(2048, 4 * vocab.num_image_tokens),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **config_overrides,
    )
    vocab.attach_to_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.eval()
    return Policy(model=model, tokenizer=tokenizer, vocab=vocab)
