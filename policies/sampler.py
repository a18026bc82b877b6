"""The CFG rollout sampler: prompts in, image code grids and their log-probs out.

Cond and uncond rows run in ONE batched forward per step sharing one KV cache; logits are taken
only over the visual rows of the head; guidance is applied on log-softmaxes before temperature,
top-k and top-p; every row draws from its own seeded stream, so a row's sample does not depend on
which other rows share the batch.

Two backends return the same samples: ``eager`` (this module: the readable reference loop over a
growing cache) and ``compiled`` (:mod:`policies.static_sampler`: a static KV cache and one compiled
fixed-shape decode step). Both draw each token with :func:`policies.rollout.draw_from_logits`; what they
share lives in :mod:`policies.rollout`.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache

from .families import family_of, visual_head
from .guidance import SamplingConfig
from .heads import head_forward, position_ids_from_mask
from .rollout import Rollout, draw_from_logits, left_pad, row_uniforms
from .sharding import is_sharded
from .versions import ensure_supported
from .vocab import VisualVocab

#: Rollout backends by name; ``auto`` is ``compiled`` on CUDA and ``eager`` elsewhere (see docs/performance.md).
ROLLOUT_BACKENDS = ("eager", "compiled", "auto")


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
