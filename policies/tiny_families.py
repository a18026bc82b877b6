"""Tiny random Janus and Emu3 checkpoints, saved to a folder and loadable like the real ones.

Each builder writes ``config.json``, ``generation_config.json``, ``model.safetensors``, an offline word-level
tokenizer and a real processor (``JanusProcessor`` / ``Emu3Processor``), so tests can exercise the real loading
path (``from_pretrained``, ``AutoModelForImageTextToText``, ``AutoProcessor``) without downloads.

The VQ-VAEs keep the real families' spatial factors (Janus-Pro 16, Emu3 8; Emu3 also its temporal factor 4),
with tiny widths, so a grid of ``h x w`` codes decodes to ``16h x 16w`` (Janus) or ``8h x 8w`` (Emu3) pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    Emu3Config,
    Emu3ForConditionalGeneration,
    Emu3ImageProcessor,
    Emu3Processor,
    GenerationConfig,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessor,
    JanusProcessor,
    PreTrainedTokenizerFast,
)

from .tiny import BASIC_WORDS

UNK = "<unk>"

# Janus (DeepSeek LLM tokenizer) specials.
JANUS_BOS = "<｜begin▁of▁sentence｜>"
JANUS_EOS = "<｜end▁of▁sentence｜>"
JANUS_PAD = "<｜▁pad▁｜>"
JANUS_USER = "<|User|>"
JANUS_ASSISTANT = "<|Assistant|>"
JANUS_BOI = "<begin_of_image>"
JANUS_EOI = "<end_of_image>"
JANUS_IMAGE = "<image_placeholder>"
#: Pixels per code of the Janus-Pro VQ (and of the tiny one: five levels, four 2x steps).
JANUS_DOWNSAMPLE = 16

# Emu3 specials (names as in the Emu3 tokenizer; the BOS/EOS/pad/eol/eof ids of the real one are 151849 etc.).
EMU3_PAD = "<|endoftext|>"
EMU3_EOL = "<|extra_200|>"
EMU3_EOF = "<|extra_201|>"
EMU3_BOS = "<|extra_203|>"
EMU3_EOS = "<|extra_204|>"
EMU3_IMAGE = "<image>"
EMU3_BOI = "<|image start|>"
EMU3_EOI = "<|image end|>"
EMU3_WRAP = "<|image token|>"
#: Pixels per code of the Emu3 VQ (and of the tiny one); ``Emu3Processor`` hard-codes the same 8.
EMU3_DOWNSAMPLE = 8


def janus_prompt(caption: str) -> str:
    """The Janus(-Pro) image-generation prompt: BOS, the SFT chat turn with an empty system prompt, then BOI.

    Encode it with ``add_special_tokens=False`` (the BOS is already in the text).
    """
    return f"{JANUS_BOS}{JANUS_USER}: {caption}\n\n{JANUS_ASSISTANT}:{JANUS_BOI}"


def emu3_prompt(caption: str, grid: tuple[int, int]) -> str:
    """The Emu3 image-generation prompt for a ``(h, w)`` code grid, as ``Emu3Processor`` builds it.

    Encode it with ``add_special_tokens=False``.
    """
    h, w = grid
    return f"{EMU3_BOS}{caption}{EMU3_BOI}{h}*{w}{EMU3_WRAP}"


def _vocabulary(words: Iterable[str], extra: Iterable[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in (UNK, *(w.lower() for w in words), *extra):
        vocab.setdefault(token, len(vocab))
    return vocab


def _special(tokens: Iterable[str]) -> list[AddedToken]:
    # normalized=False: the lower-casing normalizer must not touch e.g. "<|User|>".
    return [AddedToken(t, special=True, normalized=False) for t in tokens]


def build_janus_tokenizer(words: Iterable[str] = BASIC_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Janus's specials; like the real one it PREPENDS BOS on encode.

    Ids: ``<unk>``, the words, ``:``, then BOS, EOS, pad, ``<|User|>``, ``<|Assistant|>``, BOI, EOI and
    ``<image_placeholder>``. Whitespace and newlines are dropped by the pre-tokenizer.
    """
    backend = Tokenizer(models.WordLevel(vocab=_vocabulary(words, [":"]), unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(_special([JANUS_BOS, JANUS_EOS, JANUS_PAD, JANUS_USER, JANUS_ASSISTANT, JANUS_BOI,
                                         JANUS_EOI, JANUS_IMAGE]))
    bos = backend.token_to_id(JANUS_BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{JANUS_BOS} $A", pair=f"{JANUS_BOS} $A {JANUS_BOS} $B", special_tokens=[(JANUS_BOS, bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=JANUS_BOS, eos_token=JANUS_EOS, pad_token=JANUS_PAD, unk_token=UNK,
        padding_side="left",
        extra_special_tokens={"image_token": JANUS_IMAGE, "boi_token": JANUS_BOI, "eoi_token": JANUS_EOI},
    )


def build_emu3_tokenizer(words: Iterable[str] = BASIC_WORDS, codebook_size: int = 64) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Emu3's specials and ``codebook_size`` visual tokens LAST.

    Digits are split one by one (as Qwen's BPE does) so ``"12*12"`` is five tokens. Nothing is added on
    encode (``Emu3Processor`` prepends the BOS text itself). Visual code ``c`` has id
    ``len(tokenizer) - codebook_size + c``.
    """
    backend = Tokenizer(models.WordLevel(vocab=_vocabulary(words, ["*", *"0123456789"]), unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    backend.add_special_tokens(_special([EMU3_PAD, EMU3_EOL, EMU3_EOF, EMU3_BOS, EMU3_EOS, EMU3_IMAGE, EMU3_BOI,
                                         EMU3_EOI, EMU3_WRAP]))
    backend.add_special_tokens(_special(f"<|visual token {c:06d}|>" for c in range(codebook_size)))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=EMU3_BOS, eos_token=EMU3_EOS, pad_token=EMU3_PAD, unk_token=UNK,
        padding_side="left",
        extra_special_tokens={"image_token": EMU3_IMAGE, "boi_token": EMU3_BOI, "eoi_token": EMU3_EOI,
                              "image_wrapper_token": EMU3_WRAP, "eof_token": EMU3_EOF},
    )


def _text_config(tokenizer: PreTrainedTokenizerFast, grid: tuple[int, int], **extra) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max(256, 2 * grid[0] * (grid[1] + 1) + 128),
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **extra,
    )


def _random(model_class, config, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config).eval()


def save_tiny_janus(
    folder: str | Path, grid: tuple[int, int] = (4, 4), codebook_size: int = 64,
    words: Iterable[str] = BASIC_WORDS, seed: int = 0,
) -> Path:
    """Save a random tiny ``JanusForConditionalGeneration`` with its tokenizer and ``JanusProcessor``.

    Janus has one square grid (``vision_config.image_size // patch_size``), so ``grid`` must be square.
    The VQ downsamples 16x like Janus-Pro's; images are ``16h x 16w``. Returns the folder.
    """
    h, w = grid
    if h != w:
        raise ValueError(f"Janus checkpoints have a square grid (image_size // patch_size); got {tuple(grid)}")
    tokenizer = build_janus_tokenizer(words)
    hidden, image_size = 32, h * JANUS_DOWNSAMPLE
    config = JanusConfig(
        text_config=_text_config(tokenizer, grid, model_type="llama"),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, image_size=image_size,
                           patch_size=JANUS_DOWNSAMPLE, projection_dim=hidden, depth=2, mlp_ratio=2.0,
                           num_image_tokens=h * w),
        # GroupNorm(32 groups) needs channel counts that are multiples of 32.
        vq_config=dict(embed_dim=8, num_embeddings=codebook_size, latent_channels=32, base_channels=32,
                       channel_multiplier=[1, 1, 1, 1, 1], num_res_blocks=1, projection_dim=hidden,
                       image_token_embed_dim=hidden, num_hidden_layers=2),
        image_token_id=tokenizer.convert_tokens_to_ids(JANUS_IMAGE),
    )
    model = _random(JanusForConditionalGeneration, config, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, guidance_scale=5.0,
        generation_kwargs={"boi_token_id": tokenizer.convert_tokens_to_ids(JANUS_BOI)},
    )
    image_processor = JanusImageProcessor(size={"height": image_size, "width": image_size},
                                          image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=h * w)
    return _save(folder, model, processor)


def save_tiny_emu3(
    folder: str | Path, grid: tuple[int, int] = (4, 4), codebook_size: int = 64,
    words: Iterable[str] = BASIC_WORDS, seed: int = 0,
) -> Path:
    """Save a random tiny ``Emu3ForConditionalGeneration`` with its tokenizer and ``Emu3Processor``.

    The visual tokens are the LAST ``codebook_size`` ids. The VQ downsamples 8x spatially and 4x in time
    like Emu3's, so any ``(h, w)`` grid decodes to ``8h x 8w`` pixels; ``grid`` only sizes the context.
    Returns the folder.
    """
    tokenizer = build_emu3_tokenizer(words, codebook_size)
    config = Emu3Config(
        text_config=_text_config(tokenizer, grid),
        # attention sits at level 3 as in Emu3; its width (hidden_size) is the channel count there.
        vq_config=dict(codebook_size=codebook_size, embed_dim=4, latent_channels=4, base_channels=32,
                       channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[3], hidden_size=32,
                       temporal_downsample_factor=4),
        vocabulary_map=tokenizer.get_vocab(),
    )
    model = _random(Emu3ForConditionalGeneration, config, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    image_processor = Emu3ImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3, spatial_factor=EMU3_DOWNSAMPLE,
                                         min_pixels=EMU3_DOWNSAMPLE**2, max_pixels=(64 * EMU3_DOWNSAMPLE) ** 2)
    processor = Emu3Processor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(folder, model, processor)


def _save(folder: str | Path, model, processor) -> Path:
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
