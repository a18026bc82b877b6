"""CosmosCodec through its real loading path, on tiny TorchScript stand-ins for encoder.jit/decoder.jit.

The stand-ins honour Cosmos DV8x16x16's I/O contract: the encoder maps a one-frame video
``[B,3,1,H,W]`` to ``(indices[B,1,H/16,W/16], codes[B,6,1,H/16,W/16], loss)`` with FSQ levels
``[8,8,8,5,5,5]``; the decoder maps ``[B,1,h,w]`` indices back to ``[B,3,1,16h,16w]`` pixels.
"""

import warnings
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F

from policies.codecs import FSQ, CosmosCodec, build_codec

LEVELS = (8, 8, 8, 5, 5, 5)
BASIS = (1, 8, 64, 512, 2560, 12800)


class FSQStandIn(torch.nn.Module):
    """A 1x1 conv plus the FSQ levels and basis as channel-wise buffers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = torch.nn.Conv2d(in_channels, out_channels, 1)
        self.register_buffer("levels", torch.tensor(LEVELS).view(1, 6, 1, 1))
        self.register_buffer("basis", torch.tensor(BASIS).view(1, 6, 1, 1))


class TinyEncoder(FSQStandIn):
    """16x16 average pool -> 1x1 conv to 6 channels -> tanh -> FSQ rounding -> mixed-radix index."""

    def __init__(self):
        super().__init__(3, 6)

    def forward(self, video: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent = torch.tanh(self.proj(F.avg_pool2d(video[:, :, 0], 16)))
        half = self.levels // 2
        digits = torch.round(latent.float() * half + half).long().clamp(min=0)
        digits = torch.minimum(digits, self.levels - 1)
        codes = ((digits - half).float() / half).to(latent.dtype)
        indices = (digits * self.basis).sum(dim=1, keepdim=True).int()  # int32, as some exports give
        return indices, codes.unsqueeze(2), torch.zeros((), dtype=latent.dtype)


class TinyDecoder(FSQStandIn):
    """Index -> FSQ code values -> 1x1 conv to 3 channels -> nearest upsample x16 -> tanh."""

    def __init__(self):
        super().__init__(6, 3)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        half = self.levels // 2
        digits = torch.div(indices.long(), self.basis, rounding_mode="floor") % self.levels
        codes = ((digits - half).float() / half).to(self.proj.weight.dtype)
        pixels = torch.tanh(self.proj(codes))
        pixels = pixels.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3)
        return pixels.unsqueeze(2)


class ConstantEncoder(torch.nn.Module):
    """Returns a bare index tensor (no tuple) filled with ``value``."""

    def __init__(self, value: int):
        super().__init__()
        self.value = value

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        batch, height, width = video.shape[0], video.shape[3] // 16, video.shape[4] // 16
        return torch.full((batch, 1, height, width), self.value, dtype=torch.long)


def save_script(module: torch.nn.Module, file) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        torch.jit.script(module).save(str(file))


def write_tokenizer(folder, encoder: torch.nn.Module, decoder: torch.nn.Module | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    save_script(encoder, folder / "encoder.jit")
    if decoder is not None:
        save_script(decoder, folder / "decoder.jit")
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    torch.manual_seed(0)
    encoder, decoder = TinyEncoder(), TinyDecoder()
    with torch.no_grad():
        encoder.proj.weight.mul_(4)  # spread the latents over many FSQ digits
    return write_tokenizer(tmp_path_factory.mktemp("cosmos") / "Cosmos-1.0-Tokenizer-DV8x16x16", encoder, decoder)


@pytest.fixture(scope="module")
def pixels():
    """Five 32x48 images whose 16x16 patches have varied mean colours (plus pixel noise)."""
    generator = torch.Generator().manual_seed(0)
    patches = torch.rand(5, 3, 2, 3, generator=generator) * 1.6 - 0.8
    noise = torch.rand(5, 3, 32, 48, generator=generator) * 0.4 - 0.2
    return patches.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3) + noise


def test_encode_returns_int64_grid_without_time_axis(tokenizer_dir, pixels):
    codes = CosmosCodec(tokenizer_dir).encode(pixels)
    assert codes.shape == (5, 2, 3)
    assert codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 64000
    assert codes.unique().numel() > 10  # the stand-in spreads patches over many codes


def test_decode_returns_float32_pixels_in_range(tokenizer_dir, pixels):
    codec = CosmosCodec(tokenizer_dir)
    decoded = codec.decode(codec.encode(pixels))
    assert decoded.shape == (5, 3, 32, 48)
    assert decoded.dtype == torch.float32
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_encode_and_decode_are_deterministic(tokenizer_dir, pixels):
    first, second = CosmosCodec(tokenizer_dir), CosmosCodec(tokenizer_dir)
    codes = first.encode(pixels)
    assert torch.equal(codes, second.encode(pixels.clone()))
    assert torch.equal(first.decode(codes), second.decode(codes))


def test_batch_size_does_not_change_results(tokenizer_dir, pixels):
    whole = CosmosCodec(tokenizer_dir, batch_size=8)
    chunked = CosmosCodec(tokenizer_dir, batch_size=2)
    codes = whole.encode(pixels)
    assert torch.equal(chunked.encode(pixels), codes)
    # float kernels may round differently per batch size; equal up to that.
    torch.testing.assert_close(chunked.decode(codes), whole.decode(codes))


def test_fsq_helper_agrees_with_encoder_indices(tokenizer_dir, pixels):
    codec = CosmosCodec(tokenizer_dir)
    indices, codes, _ = codec.encoder(pixels.unsqueeze(2))
    codes = codes[:, :, 0].permute(0, 2, 3, 1)  # [B,6,h,w] -> [B,h,w,6]
    assert torch.equal(codec.fsq.codes_to_indices(codes), indices[:, 0].long())
    assert torch.equal(codec.fsq.indices_to_codes(indices[:, 0]), codes)
    assert torch.equal(codec.fsq.codes_to_indices(codes), codec.encode(pixels))


def test_defaults_to_fp32_on_cpu(tokenizer_dir):
    codec = CosmosCodec(tokenizer_dir)
    assert codec.device == torch.device("cpu") and codec.dtype == torch.float32
    assert {p.dtype for p in codec.encoder.parameters()} == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bf16"])
def test_loads_in_bf16_on_cpu_and_still_returns_int64_and_float32(tokenizer_dir, pixels, dtype):
    codec = CosmosCodec(tokenizer_dir, device="cpu", dtype=dtype)
    assert codec.dtype == torch.bfloat16
    assert {p.dtype for p in codec.decoder.parameters()} == {torch.bfloat16}
    codes = codec.encode(pixels)
    assert codes.dtype == torch.int64 and int(codes.max()) < 64000
    assert codec.decode(codes).dtype == torch.float32


def test_to_casts_both_modules(tokenizer_dir):
    codec = CosmosCodec(tokenizer_dir).to(dtype=torch.bfloat16)
    assert codec.dtype == torch.bfloat16
    for module in (codec.encoder, codec.decoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


def test_weights_do_not_track_gradients(tokenizer_dir):
    codec = CosmosCodec(tokenizer_dir)
    assert not any(p.requires_grad for p in codec.decoder.parameters())
    assert not codec.decoder.training


def test_missing_folder_names_the_path_and_required_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*encoder\.jit and decoder\.jit"):
        CosmosCodec(missing)


def test_missing_decoder_file_is_named(tmp_path):
    folder = write_tokenizer(tmp_path / "tok", TinyEncoder())
    with pytest.raises(FileNotFoundError, match=r"missing .*tok/decoder\.jit"):
        CosmosCodec(folder)


def test_unreadable_jit_file_is_named(tmp_path, tokenizer_dir):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "encoder.jit").write_bytes(b"not a torchscript archive")
    (folder / "decoder.jit").write_bytes((tokenizer_dir / "decoder.jit").read_bytes())
    with pytest.raises(RuntimeError, match=r"could not load TorchScript file .*encoder\.jit"):
        CosmosCodec(folder)


def test_image_size_not_multiple_of_16_is_refused_naming_both_numbers(tokenizer_dir):
    with pytest.raises(ValueError, match=r"40x48 is not a multiple of the cosmos codec downsample 16"):
        CosmosCodec(tokenizer_dir).encode(torch.zeros(1, 3, 40, 48))


def test_wrong_downsample_for_the_tokenizer_is_caught_at_encode(tokenizer_dir, pixels):
    codec = CosmosCodec(tokenizer_dir, downsample=8)
    with pytest.raises(RuntimeError, match=r"shape \(5, 1, 2, 3\) but \(5, 1, 4, 6\).*downsample 8"):
        codec.encode(pixels)


def test_bare_tensor_encoder_output_is_accepted(tmp_path, tokenizer_dir):
    folder = write_tokenizer(tmp_path / "tok", ConstantEncoder(123), TinyDecoder())
    assert CosmosCodec(folder).encode(torch.zeros(2, 3, 16, 32)).tolist() == [[[123, 123]]] * 2


def test_out_of_range_encoder_indices_are_refused_with_the_count(tmp_path):
    folder = write_tokenizer(tmp_path / "tok", ConstantEncoder(64000), TinyDecoder())
    with pytest.raises(ValueError, match=r"4 of 4 indices from the Cosmos encoder lie outside \[0, 64000\)"):
        CosmosCodec(folder).encode(torch.zeros(1, 3, 32, 32))


def test_out_of_range_codes_are_refused_before_decoding(tokenizer_dir):
    with pytest.raises(ValueError, match=r"1 of 2 cosmos codes lie outside \[0, 64000\)"):
        CosmosCodec(tokenizer_dir).decode(torch.tensor([[[5, -1]]]))


def test_levels_must_agree_with_codebook_size(tokenizer_dir):
    with pytest.raises(ValueError, match=r"give 64000 codes but codebook_size is 65536"):
        CosmosCodec(tokenizer_dir, codebook_size=65536)


def test_build_codec_loads_cosmos_from_codec_path(tokenizer_dir):
    codec = build_codec("cosmos", path=str(tokenizer_dir), dtype="float32", batch_size=3)
    assert isinstance(codec, CosmosCodec)
    assert (codec.codebook_size, codec.downsample, codec.batch_size) == (64000, 16, 3)
    assert codec.fsq.levels == FSQ().levels
