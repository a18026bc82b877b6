"""Group diversity of GRPO samples: how different the G images of one prompt are.

``diversity/codes``: for each group, the mean over pairs of samples of the fraction of grid positions whose
codes differ (0: every sample identical; 1: no two samples share a code at any position), averaged over groups.
``diversity/embedding``: the mean pairwise cosine distance ``1 - cos(e_i, e_j)`` of image embeddings a reward
already computed (clip, hpsv2, pickscore, aesthetic), averaged over groups.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _groups(rows: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rows`` ``[N*G, ...]`` as ``[N, G, features]``."""
    if group_size < 2 or rows.shape[0] % group_size:
        raise ValueError(f"{rows.shape[0]} rows cannot be split into groups of {group_size} (need >= 2 per group)")
    return rows.reshape(rows.shape[0] // group_size, group_size, -1)


def _pair_mean(matrix: torch.Tensor) -> torch.Tensor:
    """Mean over the pairs ``i < j`` of each ``[G, G]`` matrix of ``[N, G, G]``: one value per group."""
    g = matrix.shape[-1]
    upper = torch.triu(torch.ones(g, g, dtype=torch.bool, device=matrix.device), diagonal=1)
    return matrix[:, upper].mean(dim=-1)


def code_diversity(codes: torch.Tensor, group_size: int) -> float:
    """Mean pairwise fraction of differing codes within groups of ``group_size`` consecutive rows of ``codes``
    (``[N*G, h, w]`` or ``[N*G, L]``), averaged over the N groups."""
    grouped = _groups(codes, group_size)
    per_group = []
    for group in grouped:  # one [G, G, L] comparison at a time keeps memory at G*G*L booleans
        differ = (group[:, None, :] != group[None, :, :]).float().mean(dim=-1)
        per_group.append(_pair_mean(differ[None])[0])
    return float(torch.stack(per_group).mean())


def embedding_diversity(embeddings: torch.Tensor, group_size: int) -> float:
    """Mean pairwise cosine distance of ``embeddings`` (``[N*G, D]``) within groups of ``group_size`` rows,
    averaged over groups; NaN rows (a dropped reward) are left out of their group."""
    grouped = _groups(embeddings.float(), group_size)
    values = []
    for group in grouped:
        group = group[torch.isfinite(group).all(dim=-1)]
        if group.shape[0] < 2:
            continue
        unit = F.normalize(group, dim=-1)
        values.append(_pair_mean((1.0 - unit @ unit.T)[None])[0])
    return float(torch.stack(values).mean()) if values else math.nan
