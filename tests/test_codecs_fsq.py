"""FSQ index arithmetic: the mixed-radix layout Cosmos DV8x16x16 uses."""

import pytest
import torch

from policies.codecs import FSQ


def test_cosmos_levels_give_documented_basis_and_codebook():
    fsq = FSQ()
    assert fsq.levels == (8, 8, 8, 5, 5, 5)
    assert fsq.basis == (1, 8, 64, 512, 2560, 12800)
    assert fsq.codebook_size == 64000


def test_every_cosmos_index_round_trips_through_digits_and_codes():
    fsq = FSQ()
    indices = torch.arange(fsq.codebook_size)
    digits = fsq.indices_to_digits(indices)
    assert digits.shape == (64000, 6)
    assert torch.equal(fsq.digits_to_indices(digits), indices)
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(indices)), indices)
    # every digit combination appears exactly once
    assert torch.unique(digits, dim=0).shape[0] == 64000


def test_hand_computed_digits_and_codes():
    fsq = FSQ()
    # 12345 = 4*2560 + 4*512 + 0*64 + 7*8 + 1  ->  digits (1, 7, 0, 4, 4, 0)
    assert fsq.indices_to_digits(torch.tensor(12345)).tolist() == [1, 7, 0, 4, 4, 0]
    # code = (d - L//2) / (L//2): level 8 -> (d-4)/4, level 5 -> (d-2)/2
    assert fsq.indices_to_codes(torch.tensor(12345)).tolist() == [-0.75, 0.75, -1.0, 1.0, 1.0, -1.0]
    assert fsq.indices_to_codes(torch.tensor(0)).tolist() == [-1.0] * 6
    assert fsq.indices_to_codes(torch.tensor(63999)).tolist() == [0.75, 0.75, 0.75, 1.0, 1.0, 1.0]
    assert fsq.digits_to_indices(torch.tensor([4, 4, 4, 2, 2, 2])).item() == 4 + 32 + 256 + 1024 + 5120 + 25600


def test_indices_keep_their_batch_shape():
    fsq = FSQ()
    indices = torch.randint(0, fsq.codebook_size, (2, 3, 5))
    assert fsq.indices_to_codes(indices).shape == (2, 3, 5, 6)
    assert fsq.codes_to_indices(fsq.indices_to_codes(indices)).shape == (2, 3, 5)


def test_codes_are_snapped_to_the_nearest_digit():
    fsq = FSQ()
    exact = fsq.indices_to_codes(torch.tensor([777, 40000]))
    assert torch.equal(fsq.codes_to_indices(exact + 0.05), torch.tensor([777, 40000]))


@pytest.mark.parametrize("bad", [-1, 64000, 10**6])
def test_out_of_range_indices_are_refused_with_the_range(bad):
    with pytest.raises(ValueError, match=r"outside \[0, 64000\)"):
        FSQ().indices_to_codes(torch.tensor([0, bad]))


def test_float_indices_are_refused():
    with pytest.raises(TypeError, match="integer"):
        FSQ().indices_to_digits(torch.tensor([1.0]))


def test_digits_outside_their_level_are_refused():
    with pytest.raises(ValueError, match="outside their levels"):
        FSQ().digits_to_indices(torch.tensor([8, 0, 0, 0, 0, 0]))


def test_codes_beyond_the_grid_are_refused():
    # 1.0 on a level-8 channel would be digit 8: past the last digit 7 (code 0.75).
    with pytest.raises(ValueError, match="outside their levels"):
        FSQ().codes_to_indices(torch.tensor([1.0, 0, 0, 0, 0, 0]))


def test_codes_with_wrong_channel_count_are_refused():
    with pytest.raises(ValueError, match=r"\[\.\.\., 6\]"):
        FSQ().codes_to_indices(torch.zeros(4, 5))


def test_custom_levels_define_their_own_radix():
    fsq = FSQ([3, 4])
    assert fsq.basis == (1, 3) and fsq.codebook_size == 12
    assert fsq.indices_to_digits(torch.tensor(11)).tolist() == [2, 3]


@pytest.mark.parametrize("levels", [[], [8, 1]])
def test_degenerate_levels_are_refused(levels):
    with pytest.raises(ValueError, match="levels"):
        FSQ(levels)
