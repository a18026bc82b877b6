"""Tiny random Janus and Emu3 checkpoints: they load through transformers, and our prompt strings are exactly
what the real processors build for image generation."""

import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Emu3ForConditionalGeneration,
    JanusForConditionalGeneration,
)

from policies.tiny_families import (
    EMU3_DOWNSAMPLE,
    EMU3_EOL,
    JANUS_BOI,
    JANUS_BOS,
    emu3_prompt,
    janus_prompt,
    save_tiny_emu3,
    save_tiny_janus,
)

CAPTIONS = ["a red square.", "Two blue circles on the left, one green triangle"]


@pytest.fixture(scope="module")
def janus_folder(tmp_path_factory):
    return save_tiny_janus(tmp_path_factory.mktemp("janus"))


@pytest.fixture(scope="module")
def emu3_folder(tmp_path_factory):
    return save_tiny_emu3(tmp_path_factory.mktemp("emu3"))


def loaded_both_ways(folder, model_class):
    """The checkpoint loaded by its class and by the Auto class (same class, same weights), and its tokenizer."""
    direct = model_class.from_pretrained(folder)
    auto = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(auto) is model_class
    assert_same_weights(direct, auto)
    return auto, AutoProcessor.from_pretrained(folder).tokenizer


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_janus_loads_through_the_class_and_auto(janus_folder):
    auto, tokenizer = loaded_both_ways(janus_folder, JanusForConditionalGeneration)
    config = auto.config
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.vq_config.num_embeddings == 64
    assert config.vq_config.projection_dim == config.vq_config.image_token_embed_dim == config.text_config.hidden_size
    assert auto.model.vqmodel.quantize.quant_state_dims == [4, 4]
    assert config.vision_config.num_image_tokens == 16
    generation = auto.generation_config
    assert generation.bos_token_id == tokenizer.convert_tokens_to_ids(JANUS_BOS)
    assert generation.generation_kwargs == {"boi_token_id": tokenizer.convert_tokens_to_ids(JANUS_BOI)}
    assert (generation.pad_token_id, generation.guidance_scale) == (tokenizer.pad_token_id, 5.0)


def test_emu3_loads_through_the_class_and_auto_with_visual_tokens_last(emu3_folder):
    auto, tokenizer = loaded_both_ways(emu3_folder, Emu3ForConditionalGeneration)
    vocab_size = auto.config.text_config.vocab_size
    assert vocab_size == len(tokenizer) == auto.lm_head.weight.shape[0]
    mapping = auto.vocabulary_mapping
    offset = vocab_size - 64
    assert mapping.image_tokens == list(range(offset, vocab_size))
    assert all(mapping.img2bpe[code] == offset + code for code in range(64))
    assert mapping.eol_token_id == tokenizer.convert_tokens_to_ids(EMU3_EOL)
    assert auto.model.vqmodel.spatial_scale_factor == EMU3_DOWNSAMPLE


@pytest.mark.parametrize("caption", CAPTIONS)
def test_janus_prompt_is_the_processors_image_prompt(janus_folder, caption):
    processor = AutoProcessor.from_pretrained(janus_folder)
    # what the Janus chat template renders for one user turn with add_generation_prompt=True
    chat_text = f"<|User|>: {caption}\n\n<|Assistant|>:"
    expected = processor(text=[chat_text], generation_mode="image").input_ids[0].tolist()
    ours = processor.tokenizer(janus_prompt(caption), add_special_tokens=False).input_ids
    assert ours == expected
    assert "<unk>" not in processor.tokenizer.convert_ids_to_tokens(ours)


def test_janus_prompt_tokens(janus_folder):
    tokenizer = AutoProcessor.from_pretrained(janus_folder).tokenizer
    ids = tokenizer(janus_prompt("a red square"), add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        JANUS_BOS, "<|User|>", ":", "a", "red", "square", "<|Assistant|>", ":", JANUS_BOI
    ]
    assert tokenizer("a red square").input_ids[0] == tokenizer.bos_token_id  # BOS is added on encode, like Janus's


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
@pytest.mark.parametrize("caption", CAPTIONS)
def test_emu3_prompt_is_the_processors_image_prompt(emu3_folder, caption, grid):
    processor = AutoProcessor.from_pretrained(emu3_folder)
    h, w = grid
    # Emu3Processor sizes the grid from a "width:height" ratio and a pixel area at 8 pixels per code
    encoded = processor(text=[caption], return_for_image_generation=True, ratio=f"{w}:{h}",
                        image_area=h * w * EMU3_DOWNSAMPLE**2)
    assert encoded["image_sizes"] == [[h, w]]
    ours = processor.tokenizer(emu3_prompt(caption, grid), add_special_tokens=False).input_ids
    assert ours == list(encoded.input_ids[0])
    tokens = processor.tokenizer.convert_ids_to_tokens(ours)
    assert tokens[0] == "<|extra_203|>" and tokens[-5:] == ["<|image start|>", str(h), "*", str(w), "<|image token|>"]
    assert "<unk>" not in tokens


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = Emu3ForConditionalGeneration.from_pretrained(save_tiny_emu3(tmp_path / "a", seed=3))
    b = Emu3ForConditionalGeneration.from_pretrained(save_tiny_emu3(tmp_path / "b", seed=3))
    c = Emu3ForConditionalGeneration.from_pretrained(save_tiny_emu3(tmp_path / "c", seed=4))
    assert_same_weights(a, b)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_janus_refuses_a_non_square_grid(tmp_path):
    with pytest.raises(ValueError, match=r"square grid .*\(3, 5\)"):
        save_tiny_janus(tmp_path, grid=(3, 5))
