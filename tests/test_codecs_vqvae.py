"""The VQ-VAE codec read out of Janus and Emu3 checkpoint folders (tiny random ones)."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText

from policies.codecs import VQVAECodec, build_codec, build_codec_for, build_recorded_codec, codec_record
from policies.tiny import tiny_qwen2_config
from policies.tiny_families import save_tiny_emu3, save_tiny_janus

FAMILIES = ("janus", "emu3")
DOWNSAMPLE = {"janus": 16, "emu3": 8}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {
        "janus": save_tiny_janus(tmp_path_factory.mktemp("janus")),
        "emu3": save_tiny_emu3(tmp_path_factory.mktemp("emu3")),
    }


@pytest.fixture(scope="module")
def models(folders):
    return {name: AutoModelForImageTextToText.from_pretrained(folder).eval() for name, folder in folders.items()}


def random_codes(*shape, seed=0):
    return torch.randint(0, 64, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_comes_from_the_checkpoint(folders, family):
    codec = build_codec("vqvae", path=folders[family])
    assert isinstance(codec, VQVAECodec)
    assert (codec.model_type, codec.codebook_size, codec.downsample) == (family, 64, DOWNSAMPLE[family])
    assert codec.resolution_for((4, 4)) == (4 * DOWNSAMPLE[family],) * 2


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_vq_weights_are_loaded_and_they_are_the_models(folders, models, family):
    codec = build_codec("vqvae", path=folders[family])
    ours, theirs = codec.vq.state_dict(), models[family].model.vqmodel.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not any(p.requires_grad for p in codec.vq.parameters())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_decode_shape_and_range(folders, family, grid):
    codec = build_codec("vqvae", path=folders[family])
    pixels = codec.decode(random_codes(2, *grid))
    assert pixels.shape == (2, 3, grid[0] * DOWNSAMPLE[family], grid[1] * DOWNSAMPLE[family])
    assert pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert pixels.std() > 0


def test_janus_decode_equals_decode_image_tokens(folders, models):
    codec = build_codec("vqvae", path=folders["janus"])
    codes = random_codes(2, 4, 4, seed=1)
    with torch.no_grad():
        reference = models["janus"].decode_image_tokens(codes.flatten(1))  # [B, H, W, 3]
    assert torch.equal(codec.decode(codes), reference.permute(0, 3, 1, 2).clamp(-1, 1))


def test_janus_decode_of_another_grid_leaves_the_checkpoint_grid(folders):
    codec = build_codec("vqvae", path=folders["janus"])
    codec.decode(random_codes(1, 3, 5))
    assert codec.vq.quantize.quant_state_dims == [4, 4]


def test_emu3_decode_equals_decode_image_tokens(folders, models):
    model = models["emu3"]
    codec = build_codec("vqvae", path=folders["emu3"])
    h, w = 3, 5
    codes = random_codes(2, h, w, seed=2)
    vocab = model.config.vocabulary_map
    # the token layout Emu3 generates: each row of codes ends with EOL, then EOF, EOI, EOS close the image
    ids = codes + vocab["<|visual token 000000|>"]
    ids = torch.cat([ids, torch.full((2, h, 1), vocab["<|extra_200|>"])], -1).flatten(1)
    tail = torch.tensor([vocab["<|extra_201|>"], vocab["<|image end|>"], vocab["<|extra_204|>"]])
    sequences = torch.cat([ids, tail.expand(2, 3)], 1)
    with torch.no_grad():
        reference = model.decode_image_tokens(image_tokens=sequences, height=h, width=w)
        direct = model.model.vqmodel.decode(codes)
    assert torch.equal(reference, direct)
    assert torch.equal(codec.decode(codes), reference.clamp(-1, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_gives_in_range_codes_on_the_grid(folders, family):
    codec = build_codec("vqvae", path=folders[family])
    d = DOWNSAMPLE[family]
    pixels = torch.rand(2, 3, 3 * d, 5 * d, generator=torch.Generator().manual_seed(3)) * 2 - 1
    codes = codec.encode(pixels)
    assert codes.shape == (2, 3, 5) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 64
    assert codec.decode(codes).shape == pixels.shape


def test_emu3_encode_equals_the_models_encode(folders, models):
    codec = build_codec("vqvae", path=folders["emu3"])
    pixels = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        reference = models["emu3"].model.vqmodel.encode(pixels, [(24, 40)] * 2).image_tokens
    assert torch.equal(codec.encode(pixels), torch.stack(reference))


def test_janus_encode_is_cosine_nearest_and_matches_transformers_on_a_unit_codebook(folders):
    codec = build_codec("vqvae", path=folders["janus"])
    pixels = torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(5)) * 2 - 1
    before = codec.encode(pixels)
    embedding = codec.vq.quantize.embedding.weight
    with torch.no_grad():  # scaling codebook rows changes plain-L2 nearest codes but not cosine-nearest ones
        embedding.mul_(torch.linspace(0.5, 2.0, embedding.shape[0])[:, None])
    assert torch.equal(codec.encode(pixels), before)
    with torch.no_grad():
        assert not torch.equal(codec.vq.encode(pixels).image_tokens.view(2, 3, 5), before)
        embedding.copy_(torch.nn.functional.normalize(embedding, dim=-1))
        theirs = codec.vq.encode(pixels).image_tokens.view(2, 3, 5)
    assert torch.equal(codec.encode(pixels), theirs)
    assert torch.equal(theirs, before)


def test_bf16_codec_decodes_to_float32(folders):
    codec = build_codec("vqvae", path=folders["emu3"], dtype="bf16")
    assert next(codec.vq.parameters()).dtype == torch.bfloat16
    codes = random_codes(1, 4, 4)
    pixels = codec.decode(codes)
    assert pixels.dtype == torch.float32
    reference = codec.to(dtype=torch.float32).decode(codes)
    assert (pixels - reference).abs().max() < 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_record_round_trip(folders, family):
    codec = build_codec("vqvae", path=folders[family])
    record = json.loads(json.dumps(codec_record(codec)))
    assert record == {"name": "vqvae", "path": str(folders[family])}
    rebuilt = build_recorded_codec(record)
    codes = random_codes(1, 4, 4)
    assert torch.equal(rebuilt.decode(codes), codec.decode(codes))


def test_path_given_to_build_recorded_codec_overrides_the_recorded_one(folders):
    record = codec_record(build_codec("vqvae", path=folders["emu3"]))
    assert build_recorded_codec(record, path=folders["janus"]).model_type == "janus"


def test_build_codec_for_decodes_with_the_policy_folder_unless_a_codec_path_is_given(folders):
    """What grpo and extract-tokens build from their flags: a vqvae codec defaults to the policy's own VQ-VAE."""
    assert build_codec_for("vqvae", policy=folders["janus"]).model_type == "janus"
    assert build_codec_for("vqvae", folders["emu3"], policy=folders["janus"]).model_type == "emu3"
    with pytest.raises(ValueError, match="codec_path is required when codec: vqvae"):
        build_codec_for("vqvae")
    assert build_codec_for("palette", policy=folders["janus"], levels=2, patch=4).codebook_size == 2**3
    with pytest.raises(ValueError, match="palette is weight-free and takes no codec_path"):
        build_codec_for("palette", folders["janus"])


def test_sharded_checkpoint_and_legacy_vqmodel_prefix(folders, models, tmp_path):
    sharded = tmp_path / "sharded"
    models["janus"].save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    codes = random_codes(1, 4, 4)
    expected = build_codec("vqvae", path=folders["janus"]).decode(codes)
    assert torch.equal(build_codec("vqvae", path=sharded).decode(codes), expected)

    legacy = tmp_path / "legacy"  # older-layout Emu3 checkpoints use "vqmodel.*" keys
    legacy.mkdir()
    (legacy / "config.json").write_text((folders["emu3"] / "config.json").read_text())
    state = models["emu3"].model.vqmodel.state_dict()
    save_file({f"vqmodel.{k}": v.contiguous() for k, v in state.items()}, str(legacy / "model.safetensors"))
    expected = build_codec("vqvae", path=folders["emu3"]).decode(codes)
    assert torch.equal(build_codec("vqvae", path=legacy).decode(codes), expected)


def test_missing_path_and_missing_folder_are_explained(tmp_path):
    with pytest.raises(ValueError, match="codec_path is required when codec: vqvae.*emu3, janus"):
        build_codec("vqvae")
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        build_codec("vqvae", path=tmp_path / "nowhere")


def test_a_qwen2_folder_has_no_vq_and_the_supported_types_are_named(tmp_path):
    tiny_qwen2_config(vocab_size=32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'qwen2' checkpoint, which has no VQ-VAE.*model types emu3, janus"):
        build_codec("vqvae", path=tmp_path)
