"""The compiled rollout backend: a static KV cache and one fixed-shape decode step under ``torch.compile``.

For the same seeds it returns what the eager loop of :mod:`policies.sampler` returns (the same codes;
log-probs and entropies equal up to float rounding), built to keep a GPU busy:

- One :class:`transformers.StaticCache` holds the cond and uncond rows of the whole batch, sized for
  the prompt capacity plus the grid. Every per-step input (next token, positions, padding mask, step
  counter, the pre-drawn uniforms) and output (codes, log-probs, entropies) is a buffer allocated
  once; the decode step reads and writes them in place, so the loop allocates nothing, concatenates
  nothing and never waits for the device.
- The decode step (a one-token decoder forward, then :func:`policies.sampler.draw`: the visual head and the
  ``draw_from_logits`` the eager loop calls) has fixed shapes and is compiled with ``torch.compile``; on CUDA with
  ``mode="reduce-overhead"``, so that it replays as a CUDA graph. The prefill and the first token run
  eagerly.
- Batches are padded to a bucket of rows (:func:`batch_bucket`) and prompts to a multiple of
  :data:`PROMPT_BLOCK` tokens, and the buffers are kept per model and settings (an :class:`Engine`),
  so GRPO steps, eval and generate reuse one compiled graph: one compilation per (bucket, grid,
  sampling settings) per process. :data:`COMPILE_STATS` counts the compilations and their seconds.

Sampling settings are constants of the compiled graph (a new ``cfg_scale`` compiles a new graph), so
the graph does only the work those settings need, exactly as the eager loop does.
"""

from __future__ import annotations

import inspect
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AttentionInterface, StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .guidance import SamplingConfig
from .heads import decoder_of, position_ids_from_mask, visual_head_rows
from .sampler import Rollout, draw, left_pad, row_uniforms
from .vocab import VisualVocab

#: Prompts are left-padded to a multiple of this many tokens, so that prompt sets of similar lengths share a cache.
PROMPT_BLOCK = 64
#: Compiled variants of the decode step one process may hold (buckets x grids x settings x models).
RECOMPILE_LIMIT = 64


@dataclass
class CompileStats:
    """Compilations of the decode step in this process, and the wall time of the calls that compiled."""

    compiles: int = 0
    seconds: float = 0.0


COMPILE_STATS = CompileStats()


def batch_bucket(images: int) -> int:
    """Rows a batch of ``images`` is padded to: 1, 2, 4, 8, then multiples of 8."""
    if images < 1:
        raise ValueError(f"a batch needs at least one image, got {images}")
    return 1 << (images - 1).bit_length() if images <= 8 else -(-images // 8) * 8


class Engine:
    """The static KV cache and the step buffers of one (bucket, grid, settings) for one model, reused across calls.

    Row layout: ``images`` cond rows, then (with CFG) ``images`` uncond rows; cache slot ``j`` holds
    position ``j`` of the left-padded prompt block (``capacity`` slots), then the image tokens.
    """

    def __init__(self, model_config, images: int, use_cfg: bool, steps: int, capacity: int, device: torch.device):
        self.images, self.capacity = images, capacity
        self.rows = 2 * images if use_cfg else images
        length = capacity + steps - 1  # the last drawn token is never fed back
        self.cache = StaticCache(config=model_config, max_cache_len=length)
        if any(self.cache.is_sliding):
            raise ValueError("the compiled rollout backend needs full-attention layers; use backend eager")
        long = dict(dtype=torch.long, device=device)
        self.mask = torch.ones((self.rows, length), **long)  # image slots stay 1: the causal mask hides the future
        self.token = torch.zeros((self.rows, 1), **long)
        self.position = torch.zeros((self.rows, 1), **long)
        self.step = torch.zeros(1, **long)
        self.uniforms = torch.zeros((images, steps), dtype=torch.float32, device=device)
        self.codes = torch.zeros((images, steps), **long)
        self.logprobs = torch.zeros((images, steps), dtype=torch.float32, device=device)
        self.entropy = torch.zeros((images, steps), dtype=torch.float32, device=device)
        self.head: torch.Tensor | None = None  # float32 copy of the visual head rows (fp32_head, low-precision weights)
        for buffer in (self.mask, self.token, self.position, self.step, self.uniforms, self.codes, self.logprobs,
                       self.entropy):
            torch._dynamo.mark_static_address(buffer)  # CUDA graphs read and write them where they are

    def record(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: SamplingConfig,
               fp32_head: bool, offset: int) -> None:
        """Draw the token of step ``self.step`` for every image, store it and feed it back as the next input."""
        t = self.step
        uniforms = self.uniforms.index_select(1, t).squeeze(1)
        code, logprob, entropy = draw(hidden, weight, bias, self.images, config, uniforms, fp32_head)
        self.codes.index_copy_(1, t, code[:, None])
        self.logprobs.index_copy_(1, t, logprob[:, None])
        self.entropy.index_copy_(1, t, entropy[:, None])
        self.token.view(-1, self.images).copy_(code + offset)  # an uncond row follows the image of its cond row


def _grouped_query_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, reading the KV cache in place for one query token.

    Under ``torch.compile`` transformers repeats each KV head for its query heads (``repeat_kv``): a copy of
    the whole static cache per layer and step, which grows with batch and context. Here the query heads of a
    KV head attend to it as that head's queries, as transformers does outside compiled code.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, _, dim = query.shape
    grouped = query.reshape(batch, heads // groups, groups, dim)
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


#: The attention implementation the decode step runs with where the model uses transformers' ``sdpa``.
DECODE_ATTENTION = "simplear_grouped_sdpa"
AttentionInterface.register(DECODE_ATTENTION, _grouped_query_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


@contextmanager
def _decode_attention(config) -> Iterator[None]:
    """Switch an ``sdpa`` model to :data:`DECODE_ATTENTION` while the decode loop runs."""
    previous = config._attn_implementation
    if previous != "sdpa":
        yield
        return
    config._attn_implementation = DECODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


def _decode_step(decoder: nn.Module, engine: Engine, weight: torch.Tensor, bias: torch.Tensor | None, rows: slice,
                 config: SamplingConfig, fp32_head: bool, offset: int) -> None:
    """Feed the last drawn token through the decoder (one position, all rows) and draw the next one."""
    hidden = decoder(
        input_ids=engine.token, attention_mask=engine.mask, position_ids=engine.position, cache=engine.cache,
        use_cache=True,
    ).last_hidden_state[:, -1]
    engine.position.add_(1)
    engine.step.add_(1)
    engine.record(hidden, weight[rows], bias[rows] if bias is not None else None, config, fp32_head, offset)


def _counting_inductor(options: dict | None):
    """Inductor as ``torch.compile(mode=...)`` runs it, counting every graph it compiles."""

    def compile_graph(graph, example_inputs):
        COMPILE_STATS.compiles += 1
        return torch._inductor.compile(graph, example_inputs, options=options)

    return compile_graph


_COMPILED_STEPS: dict[str, object] = {}


def compiled_step(device_type: str):
    """The decode step compiled for ``device_type``; CUDA replays it as a CUDA graph (``reduce-overhead``)."""
    if device_type not in _COMPILED_STEPS:
        options = torch._inductor.list_mode_options("reduce-overhead") if device_type == "cuda" else None
        # Older torch releases lack the argument and keep dynamo's global limit (8).
        has_limit = "recompile_limit" in inspect.signature(torch.compile).parameters
        limit = {"recompile_limit": RECOMPILE_LIMIT} if has_limit else {}
        _COMPILED_STEPS[device_type] = torch.compile(
            _decode_step, backend=_counting_inductor(options), fullgraph=True, dynamic=False, **limit
        )
    return _COMPILED_STEPS[device_type]


#: Engines by decoder (dropped with the model) and by (bucket, steps, settings).
_ENGINES: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, Engine]]" = weakref.WeakKeyDictionary()


def _engine(decoder: nn.Module, key: tuple, capacity: int, make) -> Engine:
    """The engine for ``key``, rebuilt (and recompiled) only when the prompts outgrow its capacity."""
    engines = _ENGINES.setdefault(decoder, {})
    engine = engines.get(key)
    if engine is None or engine.capacity < capacity:
        engines.pop(key, None)  # free the old cache before allocating the larger one
        engine = engines[key] = make()
    return engine


def _precision(weight: torch.Tensor) -> tuple[torch.dtype, torch.dtype | None]:
    """The weights' dtype and the autocast dtype around the call (None without autocast): together they decide the
    dtypes inside the step, the KV cache's included."""
    device_type = weight.device.type
    return weight.dtype, torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def sample_compiled(
    model: nn.Module,
    vocab: VisualVocab,
    rows: list[list[int]],
    config: SamplingConfig,
    seeds: list[int],
    pad_id: int,
    grid: tuple[int, int],
    progress: bool = False,
    fp32_head: bool = False,
    min_bucket: int = 1,
) -> Rollout:
    """The compiled backend of :func:`policies.sampler.sample_images` (which checks the arguments).

    ``rows`` are the templated cond prompts, one per image, followed (with CFG) by as many uncond prompts.
    """
    n, (h, w) = len(seeds), grid
    steps = h * w
    use_cfg = config.uses_cfg
    decoder = decoder_of(model)
    weight, bias, head_rows = visual_head_rows(model, vocab)
    device = weight.device
    images = batch_bucket(max(n, min_bucket))
    cond, uncond = rows[:n], rows[n:]
    padded = cond + [cond[0]] * (images - n) + (uncond + [uncond[0]] * (images - n) if use_cfg else [])
    capacity = -(-max(len(r) for r in padded) // PROMPT_BLOCK) * PROMPT_BLOCK
    key = (images, use_cfg, steps, config, fp32_head, head_rows.start, _precision(weight), device,
           decoder.training)
    engine = _engine(decoder, key, capacity,
                     lambda: Engine(decoder.config, images, use_cfg, steps, capacity, device))

    input_ids, prompt_mask = left_pad(padded, pad_id, device, width=engine.capacity)
    positions = position_ids_from_mask(prompt_mask)
    engine.mask[:, : engine.capacity].copy_(prompt_mask)
    engine.position.copy_(positions[:, -1:] + 1)
    engine.step.zero_()
    engine.uniforms.copy_(row_uniforms(seeds + [0] * (images - n), steps, device))
    engine.cache.reset()
    if fp32_head and weight.dtype != torch.float32:
        if engine.head is None:
            engine.head = torch.empty((head_rows.stop - head_rows.start, weight.size(1)), dtype=torch.float32,
                                      device=device)
            torch._dynamo.mark_static_address(engine.head)
        engine.head.copy_(weight[head_rows])  # once per call, as the eager loop does
        bias = bias[head_rows].float() if bias is not None else None
        weight, head_rows = engine.head, slice(0, engine.head.size(0))

    hidden = decoder(
        input_ids=input_ids, attention_mask=engine.mask, position_ids=positions, cache=engine.cache, use_cache=True
    ).last_hidden_state[:, -1]
    engine.record(hidden, weight[head_rows], bias[head_rows] if bias is not None else None, config, fp32_head,
                  vocab.offset)
    step = compiled_step(device.type)
    with _decode_attention(decoder.config):
        for _ in tqdm(range(1, steps), desc="sampling tokens", disable=not progress, leave=False):
            before, start = COMPILE_STATS.compiles, time.perf_counter()
            step(decoder, engine, weight, bias, head_rows, config, fp32_head, vocab.offset)
            if COMPILE_STATS.compiles != before:
                COMPILE_STATS.seconds += time.perf_counter() - start

    codes = engine.codes[:n].clone()
    return Rollout(
        codes=codes.view(n, h, w),
        token_ids=codes + vocab.offset,
        logprobs=engine.logprobs[:n].clone(),
        entropy=engine.entropy[:n].clone(),
    )
