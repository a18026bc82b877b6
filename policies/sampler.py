"""The CFG rollout sampler: prompts in, image code grids and their log-probs out.

Cond and uncond rows run in ONE batched forward per step sharing one KV cache; logits are taken
only over the visual rows of the head; guidance is applied on log-softmaxes before temperature,
top-k and top-p; every row draws from its own seeded stream, so a row's sample does not depend on
which other rows share the batch.

Two backends return the same samples: ``eager`` (this module: the readable reference loop over a
growing cache) and ``compiled`` (:mod:`policies.static_sampler`: a static KV cache and one compiled
fixed-shape decode step). Both draw each token with :func:`draw_from_logits`: the eager loop calls it on the
head's visual logits, the compiled step through :func:`draw` (the visual head matmul, then the same draw).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache

from .guidance import (
    SamplingConfig,
    entropy_from_logprobs,
    sample_from_logprobs,
    sampling_logprobs,
)
from .families import family_of, visual_head
from .heads import head_forward, position_ids_from_mask, visual_logits
from .sharding import is_sharded
from .versions import ensure_supported
from .vocab import VisualVocab

#: Rollout backends by name; ``auto`` is ``compiled`` on CUDA and ``eager`` elsewhere (see README, Performance).
ROLLOUT_BACKENDS = ("eager", "compiled", "auto")


@dataclass
class Rollout:
    """What the sampler returns, one row per sampled image."""

    codes: torch.Tensor  #: long ``[N, h, w]`` visual codes
    token_ids: torch.Tensor  #: long ``[N, L]`` completion ids (offset + code; forced row ends where the layout has them)
    logprobs: torch.Tensor  #: float32 ``[N, L]`` log-prob of each token under the sampled distribution (0 if forced)
    entropy: torch.Tensor  #: float32 ``[N, L]`` entropy of the sampled distribution at each step (0 if forced)


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device | str | None = None,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(input_ids, attention_mask)`` of ``width`` columns (default: the longest row)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt must have at least one token")
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def row_uniforms(seeds: list[int], steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[N, steps]`` uniforms, row ``i`` drawn from a CPU generator seeded with ``seeds[i]``."""
    rows = [torch.rand(steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=torch.float32)


def resolve_backend(backend: str, device: torch.device | str, eager_only: str | None = None) -> str:
    """``eager`` or ``compiled`` for a backend name; ``auto`` is ``compiled`` on CUDA and ``eager`` elsewhere.

    ``eager_only`` names why only the eager backend can serve (sharded weights under FSDP2 / ZeRO-3,
    whose every step must be a forward of the root module; a family whose head is not a slice of the LM
    head or that forces structural tokens): ``auto`` then picks eager and an explicit ``compiled`` is refused.
    """
    if backend not in ROLLOUT_BACKENDS:
        raise ValueError(f"unknown rollout backend {backend!r}; use one of {', '.join(ROLLOUT_BACKENDS)}")
    if eager_only is not None:
        if backend == "compiled":
            raise ValueError(
                f"rollout_backend: compiled does not serve {eager_only}; use rollout_backend: eager (or auto, "
                "which picks it)"
            )
        return "eager"
    if backend == "auto":
        # On CPU the compiled step is faster per token only for small models and its compilation (tens of
        # seconds) outweighs the gain for a typical run; measured in bench/RESULTS.md.
        return "compiled" if torch.device(device).type == "cuda" else "eager"
    return backend


def eager_only_reason(model: nn.Module) -> str | None:
    """Why only the eager backend can sample from ``model`` (None when the compiled one can too)."""
    if is_sharded(model):
        return "sharded weights (FSDP2 / DeepSpeed ZeRO-3), which need whole weights for a compiled step"
    family = family_of(model)
    if not family.compiled_rollouts:
        return f"the {family.name} policy family"
    return None


def draw_from_logits(
    logits: torch.Tensor, n: int, config: SamplingConfig, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token for ``n`` images from visual logits: ``(code, logprob, entropy)``, each ``[n]``.

    ``logits`` (float32) holds the ``n`` cond rows, then (with CFG) the ``n`` uncond rows;
    ``uniforms`` holds one pre-drawn uniform per image.
    """
    cond, uncond = (logits[:n], logits[n:]) if config.uses_cfg else (logits, None)
    lp = sampling_logprobs(cond, uncond, config)
    code = sample_from_logprobs(lp, uniforms)
    return code, lp.gather(-1, code[:, None]).squeeze(-1), entropy_from_logprobs(lp)


def draw(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    config: SamplingConfig,
    uniforms: torch.Tensor,
    fp32_head: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`draw_from_logits` from final hidden states and the visual head rows (the compiled step's form)."""
    return draw_from_logits(visual_logits(hidden, weight, bias, fp32=fp32_head), n, config, uniforms)


@torch.no_grad()
def sample_images(
    model: nn.Module,
    vocab: VisualVocab,
    prompt_ids: list[list[int]],
    uncond_ids: list[int] | list[list[int]] | None,
    config: SamplingConfig,
    seeds: list[int],
    pad_id: int = 0,
    grid: tuple[int, int] | None = None,
    progress: bool = False,
    fp32_head: bool = False,
    backend: str = "eager",
    min_bucket: int = 1,
) -> Rollout:
    """Sample one image per prompt row (repeat a prompt G times for G samples).

    Args:
        model: a policy model of a supported family (plain or PEFT-wrapped) whose vocabulary follows ``vocab``.
        prompt_ids: templated conditional prompts, one token list per output row.
        uncond_ids: the unconditional prompt: one token list shared by all rows, or one per row
            (``Policy.uncond_prompts``); needed when ``config.cfg_scale != 1``, ignored otherwise.
        seeds: one seed per row.
        grid: ``(h, w)`` to sample; defaults to ``vocab.grid``.
        fp32_head: compute the visual head in float32 even under bf16 weights or autocast (the
            float32 copy of its rows is made once per call).
        backend: ``eager``, ``compiled`` or ``auto`` (see :func:`resolve_backend`); both return the
            same codes and log-probs for the same seeds.
        min_bucket: compiled backend only: pad the batch to at least this many images, so that a
            last, smaller batch reuses the graph compiled for full ones.

    With ``vocab.row_end_id`` set, the row-end token follows every row of ``w`` codes in the
    completion: fed to the model but never drawn (log-prob and entropy 0 there).
    """
    ensure_supported()  # once per process: a transformers that ignores `cache=` would sample wrong, silently
    n = len(prompt_ids)
    if len(seeds) != n:
        raise ValueError(f"need one seed per prompt row: got {len(seeds)} seeds for {n} rows")
    use_cfg = config.uses_cfg
    if use_cfg and not uncond_ids:
        raise ValueError(f"cfg_scale={config.cfg_scale} needs the unconditional prompt ids (uncond_ids)")
    h, w = grid or vocab.grid
    if use_cfg:
        per_row = isinstance(uncond_ids[0], (list, tuple))
        uncond_rows = [list(u) for u in uncond_ids] if per_row else [list(uncond_ids)] * n
        if len(uncond_rows) != n:
            raise ValueError(f"need one unconditional prompt per row: got {len(uncond_rows)} for {n} rows")
    rows = list(prompt_ids) + (uncond_rows if use_cfg else [])
    device = next(model.parameters()).device
    if resolve_backend(backend, device, eager_only_reason(model)) == "compiled":
        from .static_sampler import sample_compiled  # it builds on this module's helpers

        return sample_compiled(model, vocab, rows, config, seeds, pad_id, (h, w), progress, fp32_head, min_bucket)
    steps = h * w
    row_end = vocab.row_end_id
    length = vocab.with_grid((h, w)).completion_length
    # Every step is a forward of the outermost module whose head computes only the last position's visual
    # logits: sharding engines (FSDP2) see an ordinary forward and gather what it needs.
    head = visual_head(model, vocab, fp32=fp32_head, frozen=True)

    def next_logits(hidden: torch.Tensor) -> torch.Tensor:
        return head.visual_logits(hidden[:, -1])

    input_ids, mask = left_pad(rows, pad_id, device)
    positions = position_ids_from_mask(mask)
    uniforms = row_uniforms(seeds, steps, device)
    cache = DynamicCache()

    codes = torch.empty((n, steps), dtype=torch.long, device=device)
    token_ids = torch.full((n, length), row_end if row_end is not None else 0, dtype=torch.long, device=device)
    logprobs = torch.zeros((n, length), dtype=torch.float32, device=device)
    entropy = torch.zeros((n, length), dtype=torch.float32, device=device)

    def feed(token: torch.Tensor) -> torch.Tensor:
        nonlocal mask, next_pos
        token = token[:, None]
        if use_cfg:
            token = torch.cat([token, token])  # the uncond row follows the image its cond row draws
        mask = torch.cat([mask, mask.new_ones((mask.size(0), 1))], dim=1)
        out = head_forward(model, next_logits, token, mask, next_pos, keep=1, cache=cache, use_cache=True)
        next_pos = next_pos + 1
        return out

    logits = head_forward(model, next_logits, input_ids, mask, positions, keep=1, cache=cache, use_cache=True)
    next_pos = positions[:, -1:] + 1
    for t in tqdm(range(steps), desc="sampling tokens", disable=not progress, leave=False):
        code, lp, ent = draw_from_logits(logits, n, config, uniforms[:, t])
        j = t + (t // w if row_end is not None else 0)  # completion position of draw t
        codes[:, t], token_ids[:, j], logprobs[:, j], entropy[:, j] = code, code + vocab.offset, lp, ent
        if t == steps - 1:
            break
        logits = feed(code + vocab.offset)
        if row_end is not None and (t + 1) % w == 0:  # a row is complete: its end token is forced, not drawn
            logits = feed(torch.full_like(code, row_end))

    return Rollout(codes=codes.view(n, h, w), token_ids=token_ids, logprobs=logprobs, entropy=entropy)
