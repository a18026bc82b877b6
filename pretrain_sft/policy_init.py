"""The policy a pretrain/SFT run starts from, chosen by ``model_name_or_path``.

(a) a SimpleAR / simplear-rl checkpoint (its config records ``simplear_visual_vocab``, or its
    tokenizer has the SimpleAR special tokens) is loaded with :func:`policies.load_policy`;
(b) a plain Qwen2 LLM folder is extended with the specials and the codec's codebook
    (:func:`policies.extend_llm`);
(c) ``tiny`` builds a small random Qwen2 with a word-level tokenizer over the cache's caption
    words plus the demo vocabulary (:func:`policies.tiny.build_tiny_policy`).

In every case the policy's grid becomes the cache's grid and its codebook must equal the cache's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from policies.families import family_for_model_type
from policies.loading import Policy, extend_llm, load_source, load_tokenizer
from policies.sources import resolve_source
from policies.tiny import build_tiny_policy, caption_words
from policies.vocab import CONFIG_KEY, SIMPLEAR_SPECIAL_TOKENS

from .cache import CacheInfo, check_cache_fits
from .config import PolicyArguments
from .demo_data import demo_words

TINY = "tiny"


def is_simplear_checkpoint(folder: Path) -> bool:
    """Whether a model folder already has a visual vocabulary (layout in config, or the specials)."""
    config = json.loads((folder / "config.json").read_text())
    if CONFIG_KEY in config:
        return True
    vocab = load_tokenizer(folder).get_vocab()
    return all(t in vocab for t in SIMPLEAR_SPECIAL_TOKENS)


def check_start_path(args: PolicyArguments) -> None:
    """Fail before anything loads when ``model_name_or_path`` is neither ``tiny`` nor a model folder, or is a
    checkpoint of a family these stages do not train (Janus, Emu3: GRPO, generate and eval only)."""
    if args.model_name_or_path != TINY:
        source = resolve_source(args.model_name_or_path, what="model_name_or_path")
        folder = source.folder
        try:
            family = family_for_model_type(source.model_type)
        except ValueError:
            return  # a plain LLM of another type: extend_llm says what it accepts
        if "pretrain" not in family.stages:
            raise ValueError(
                f"model_name_or_path {str(folder)!r} is a {family.name} checkpoint: pretraining and SFT train "
                f"SimpleAR-style (qwen2) policies; {family.name} policies are trained with `simplear-rl grpo`"
            )


def init_policy(args: PolicyArguments, info: CacheInfo, captions: Iterable[str], seed: int = 0) -> Policy:
    """The starting policy for a cache with layout ``info`` (see the module docstring)."""
    name, grid = args.model_name_or_path, info.grid
    model_kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    if name == TINY:
        policy = build_tiny_policy(
            words=sorted(set(caption_words(captions)) | set(demo_words())),
            codebook_size=info.codebook_size,
            grid=grid,
            seed=seed,
            prompt_prefix=args.prompt_prefix or "",
            hidden_size=args.tiny_hidden_size,
            num_hidden_layers=args.tiny_num_layers,
            num_attention_heads=args.tiny_num_heads,
            num_key_value_heads=args.tiny_num_kv_heads,
            intermediate_size=args.tiny_intermediate_size,
            **model_kwargs,
        )
    else:
        source = resolve_source(name, what="model_name_or_path")
        if source.kind != "model" or is_simplear_checkpoint(source.folder):
            policy = load_source(source, dtype=args.dtype, grid=grid)
        else:
            policy = extend_llm(
                source.folder, codebook_size=info.codebook_size, grid=grid, dtype=args.dtype, prompt_prefix=args.prompt_prefix or ""
            )
        if args.attn_implementation:
            policy.model.set_attn_implementation(args.attn_implementation)
    if args.prompt_prefix is not None and args.prompt_prefix != policy.vocab.prompt_prefix:
        policy.vocab = policy.vocab.replace(prompt_prefix=args.prompt_prefix)
    check_cache_fits(info, policy.vocab.codebook_size)
    policy.vocab = policy.vocab.with_codec({"name": info.codec, **info.codec_kwargs})
    policy.vocab.attach_to_config(policy.model.config)
    policy.model.train()
    return policy
