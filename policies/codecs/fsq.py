"""Finite scalar quantisation (FSQ) index arithmetic: index <-> per-channel digits <-> code values.

An FSQ codebook has no learned vectors: channel ``i`` takes one of ``levels[i]`` digits and a code
index is the mixed-radix number of those digits, least significant channel first. Cosmos DV8x16x16
uses levels ``[8, 8, 8, 5, 5, 5]`` (64,000 codes, basis ``[1, 8, 64, 512, 2560, 12800]``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .checks import check_code_range

#: The FSQ levels of Cosmos-1.0-Tokenizer-DV8x16x16.
COSMOS_FSQ_LEVELS: tuple[int, ...] = (8, 8, 8, 5, 5, 5)


class FSQ:
    """Index <-> digit <-> normalised code arithmetic for FSQ ``levels``.

    Digits and codes carry the channel on the last dimension: ``indices[...]`` pairs with
    ``digits[..., len(levels)]``. Digit ``d_i = (index // basis_i) % levels_i`` and its code value is
    ``(d_i - levels_i // 2) / (levels_i // 2)``, so codes lie in ``[-1, 1]``.
    """

    def __init__(self, levels: Sequence[int] = COSMOS_FSQ_LEVELS):
        levels = tuple(int(level) for level in levels)
        if not levels or any(level < 2 for level in levels):
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {list(levels)}")
        self.levels = levels
        self.basis = tuple(math.prod(levels[:i]) for i in range(len(levels)))
        self.codebook_size = math.prod(levels)

    def __repr__(self) -> str:
        return f"FSQ(levels={list(self.levels)})"

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        levels = torch.tensor(self.levels, dtype=torch.long, device=device)
        basis = torch.tensor(self.basis, dtype=torch.long, device=device)
        return levels, basis

    def check_indices(self, indices: torch.Tensor) -> None:
        """Raise unless ``indices`` are integers in ``[0, codebook_size)``."""
        check_code_range(indices, self.codebook_size, f"FSQ indices for levels {list(self.levels)}")

    def indices_to_digits(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``[...]`` to digits ``[..., D]`` (int64, ``0 <= d_i < levels_i``)."""
        self.check_indices(indices)
        levels, basis = self._tables(indices.device)
        return torch.div(indices.long().unsqueeze(-1), basis, rounding_mode="floor") % levels

    def digits_to_indices(self, digits: torch.Tensor) -> torch.Tensor:
        """Digits ``[..., D]`` to indices ``[...]`` (int64); refuses digits outside their level."""
        if digits.is_floating_point() or digits.shape[-1:] != (len(self.levels),):
            raise ValueError(
                f"FSQ digits must be an integer tensor [..., {len(self.levels)}], "
                f"got {digits.dtype} {tuple(digits.shape)}"
            )
        levels, basis = self._tables(digits.device)
        bad = (digits < 0) | (digits >= levels)
        if bool(bad.any()):
            raise ValueError(f"{int(bad.sum())} FSQ digit(s) outside their levels {list(self.levels)}")
        return (digits.long() * basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Indices ``[...]`` to normalised code values ``[..., D]`` in ``[-1, 1]``."""
        digits = self.indices_to_digits(indices)
        half = torch.tensor([level // 2 for level in self.levels], device=indices.device)
        return ((digits - half).to(dtype)) / half.to(dtype)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Code values ``[..., D]`` to indices ``[...]``; values are rounded to the nearest digit.

        Refuses codes that round outside the grid (e.g. ``0.75`` is the largest value for level 8).
        """
        if not codes.is_floating_point() or codes.shape[-1:] != (len(self.levels),):
            raise ValueError(
                f"FSQ codes must be a floating tensor [..., {len(self.levels)}], "
                f"got {codes.dtype} {tuple(codes.shape)}"
            )
        half = torch.tensor([level // 2 for level in self.levels], device=codes.device)
        digits = torch.round(codes.float() * half + half).long()
        return self.digits_to_indices(digits)
