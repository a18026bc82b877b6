"""Group diversity against hand computations (issue 20)."""

import math

import pytest
import torch

from rl.diversity import code_diversity, embedding_diversity


def test_a_group_of_identical_grids_has_code_diversity_0():
    grid = torch.randint(0, 64, (4, 4))
    assert code_diversity(grid.expand(4, 4, 4).clone(), group_size=4) == 0.0


def test_grids_that_differ_at_every_position_have_code_diversity_1():
    codes = torch.stack([torch.full((3, 3), k) for k in range(4)])  # four grids, no code shared anywhere
    assert code_diversity(codes, group_size=4) == 1.0


def test_code_diversity_equals_the_hand_computed_mean_over_pairs_and_groups():
    a = torch.tensor([0, 0, 0, 0])
    b = torch.tensor([0, 0, 1, 1])  # differs from a at 2/4 positions
    c = torch.tensor([1, 1, 1, 1])  # differs from a at 4/4, from b at 2/4
    group1 = torch.stack([a, b, c])  # pairs: 0.5, 1.0, 0.5 -> 2/3
    group2 = torch.stack([a, a, a])  # 0
    assert code_diversity(torch.cat([group1, group2]), group_size=3) == pytest.approx((2 / 3 + 0) / 2)


def test_embedding_diversity_is_0_for_equal_1_for_orthogonal_and_ignores_scale():
    same = torch.tensor([[1.0, 2.0], [2.0, 4.0]])  # same direction, other length
    orthogonal = torch.eye(3)
    assert embedding_diversity(same, 2) == pytest.approx(0.0, abs=1e-7)
    assert embedding_diversity(orthogonal, 3) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert embedding_diversity(opposite, 2) == pytest.approx(2.0)


def test_embedding_diversity_leaves_dropped_rows_out_of_their_group():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [float("nan"), float("nan")]])
    assert embedding_diversity(rows, 3) == pytest.approx(1.0)
    assert math.isnan(embedding_diversity(torch.full((2, 2), float("nan")), 2))


def test_rows_that_do_not_split_into_groups_are_refused():
    with pytest.raises(ValueError, match="groups of 4"):
        code_diversity(torch.zeros(6, 2, 2, dtype=torch.long), group_size=4)
