"""Selecting a codec by recipe name, and the fail-fast checks of a codec against a policy layout."""

import pytest

from policies.codecs import (
    PaletteCodec,
    available_codecs,
    build_codec,
    check_codec_matches,
)


def test_available_codecs_lists_palette_and_cosmos():
    assert available_codecs() == ("cosmos", "palette", "vqvae")


def test_build_palette_passes_its_options():
    codec = build_codec("palette", levels=3, patch=4)
    assert isinstance(codec, PaletteCodec)
    assert (codec.codebook_size, codec.downsample) == (27, 4)


def test_cosmos_without_path_asks_for_codec_path():
    with pytest.raises(ValueError, match="codec_path is required when codec: cosmos"):
        build_codec("cosmos")


def test_palette_with_a_path_is_refused():
    with pytest.raises(ValueError, match="takes no codec_path"):
        build_codec("palette", path="/some/folder")


def test_unknown_codec_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown codec 'vqgan'; known codecs: cosmos, palette"):
        build_codec("vqgan")


def test_matching_layout_passes_check():
    codec = PaletteCodec(levels=4, patch=8)
    check_codec_matches(codec, codebook_size=64, grid=(8, 8), resolution=64)
    assert codec.grid_for(64) == (8, 8)


def test_codebook_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"codebook_size 64 but the policy expects 64000"):
        check_codec_matches(PaletteCodec(), codebook_size=64000, grid=(8, 8))


def test_grid_mismatch_names_grid_resolution_and_downsample():
    with pytest.raises(ValueError, match=r"grid \(4, 4\) does not match resolution 64 with codec downsample 8 .*\(8, 8\)"):
        check_codec_matches(PaletteCodec(), codebook_size=64, grid=(4, 4), resolution=64)


def test_resolution_not_multiple_of_downsample_names_both_numbers():
    with pytest.raises(ValueError, match=r"resolution 60 is not a multiple of the codec downsample 8"):
        PaletteCodec().grid_for(60)
