"""The weight-free palette codec the demo and the tests use to see real pictures."""

import pytest
import torch

from policies.codecs import PaletteCodec


def flat_patch_picture(codec: PaletteCodec, grid: torch.Tensor) -> torch.Tensor:
    """A uint8 picture [B,3,H,W] whose patches are flat palette colours chosen by ``grid``."""
    colours = torch.tensor(codec.palette(), dtype=torch.uint8)  # [codebook, 3]
    picture = colours[grid].permute(0, 3, 1, 2)
    return picture.repeat_interleave(codec.patch, dim=2).repeat_interleave(codec.patch, dim=3)


def to_pixels(picture: torch.Tensor) -> torch.Tensor:
    return picture.float() / 127.5 - 1


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return torch.round((pixels + 1) * 127.5).to(torch.uint8)


def test_default_codec_has_64_codes_and_patch_8():
    codec = PaletteCodec()
    assert (codec.codebook_size, codec.downsample) == (64, 8)
    assert sorted({channel for colour in codec.palette() for channel in colour}) == [0, 85, 170, 255]


def test_flat_patch_picture_round_trips_exactly():
    codec = PaletteCodec()
    grid = torch.randint(0, codec.codebook_size, (3, 4, 5), generator=torch.Generator().manual_seed(0))
    picture = flat_patch_picture(codec, grid)
    codes = codec.encode(to_pixels(picture))
    assert codes.dtype == torch.int64
    assert torch.equal(codes, grid)
    assert torch.equal(to_uint8(codec.decode(codes)), picture)


def test_decode_then_encode_is_the_identity_on_codes():
    codec = PaletteCodec(levels=5, patch=4)
    grid = torch.arange(codec.codebook_size).reshape(5, 5, 5)
    pixels = codec.decode(grid)
    assert pixels.shape == (5, 3, 20, 20) and pixels.dtype == torch.float32
    assert pixels.min() == -1 and pixels.max() == 1
    assert torch.equal(codec.encode(pixels), grid)
    assert torch.equal(codec.decode(codec.encode(pixels)), pixels)


@pytest.mark.parametrize(
    "rgb, code",
    [((0, 0, 0), 0), ((0, 0, 85), 1), ((0, 85, 0), 4), ((85, 0, 0), 16), ((255, 0, 85), 49), ((255, 255, 255), 63)],
)
def test_known_colour_has_known_code(rgb, code):
    codec = PaletteCodec()
    assert codec.rgb_to_code(rgb) == code
    assert codec.code_to_rgb(code) == rgb


def test_off_palette_colour_snaps_to_nearest_level():
    assert PaletteCodec().rgb_to_code((90, 80, 160)) == 1 * 16 + 1 * 4 + 2


def test_encode_quantises_the_patch_mean_colour():
    codec = PaletteCodec(levels=4, patch=4)
    pixels = -torch.ones(1, 3, 4, 4)
    pixels[:, 0, :2, :2] = 1.0  # a quarter of the red channel white: mean 0.25 -> level 1 of 0..3
    assert codec.encode(pixels).tolist() == [[[16]]]


def test_encode_and_decode_agree_on_the_code_layout():
    codec = PaletteCodec()
    code = codec.rgb_to_code((170, 85, 255))
    picture = torch.tensor([170, 85, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    assert codec.encode(to_pixels(picture)).item() == code
    assert torch.equal(to_uint8(codec.decode(torch.tensor([[[code]]]))), picture)


def test_encoding_is_deterministic():
    codec = PaletteCodec()
    pixels = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(codec.encode(pixels), codec.encode(pixels.clone()))


def test_non_multiple_image_size_is_refused_naming_both_numbers():
    with pytest.raises(ValueError, match=r"30x32 is not a multiple of the palette codec downsample 8"):
        PaletteCodec().encode(torch.zeros(1, 3, 30, 32))


def test_wrong_pixel_layout_is_refused():
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        PaletteCodec().encode(torch.zeros(3, 16, 16))


def test_out_of_range_codes_are_refused_on_decode():
    with pytest.raises(ValueError, match=r"1 of 2 palette codes lie outside \[0, 64\)"):
        PaletteCodec().decode(torch.tensor([[[3, 64]]]))


@pytest.mark.parametrize("bad", [(256, 0, 0), (0, 0)])
def test_invalid_rgb_triple_is_refused(bad):
    with pytest.raises(ValueError, match="RGB triple"):
        PaletteCodec().rgb_to_code(bad)


def test_grid_for_uses_the_patch_size():
    codec = PaletteCodec(patch=8)
    assert codec.grid_for(64) == (8, 8)
    assert codec.resolution_for((8, 8)) == (64, 64)
