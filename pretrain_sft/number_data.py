"""Synthetic number data for ``simplear-rl demo --task numbers``: pictures of 4-digit numbers.

Each picture is ``width x height`` pixels (96 x 32 by default), a number in DejaVu Sans Bold (the
font matplotlib ships) drawn dark on light and centred. The palette codec turns it into an
``height/patch x width/patch`` token grid (8 x 24 with 4-px patches), which is not square, so this
module encodes the token cache itself (``extract-tokens`` centre-crops pictures to squares).

Captions spell the digits apart (``the number 4 7 2 1``): the tiny policy's tokenizer is
word-level, so a whole unseen number would be one unknown word, while single digits are words
every caption uses. A prompt row carries the number in its ``text`` column, the target the
``ocr`` reward reads. Some numbers are held out (:func:`is_held_out`): they appear in no training
picture, caption or GRPO prompt, only in the evaluation prompts.

Run ``python -m pretrain_sft.number_data --out DIR`` to write ``meta.jsonl`` and the pictures, the
token cache ``DIR/cache`` and the GRPO prompt sets.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from policies.commands import command

DIGITS = 4
#: One number in this many is held out (see :func:`is_held_out`).
HELD_OUT_EVERY = 50


def number_text(value: int, digits: int = DIGITS) -> str:
    """``value`` as a ``digits``-long string with leading zeros."""
    return f"{value:0{digits}d}"


def is_held_out(number: str) -> bool:
    """Whether a number is reserved for evaluation (about one in :data:`HELD_OUT_EVERY`).

    A fixed multiplicative hash, so the split never depends on a seed or on how many pictures are drawn.
    """
    return (int(number) * 7919 + 13) % 10007 % HELD_OUT_EVERY == 0


def spelled(number: str) -> str:
    """The digits separated by spaces: ``"4721"`` -> ``"4 7 2 1"``."""
    return " ".join(number)


def short_caption(number: str) -> str:
    return f"the number {spelled(number)}"


def long_caption(number: str) -> str:
    return f"A picture of the number {spelled(number)} written in black on a white background."


def number_words() -> list[str]:
    """Every word a number caption can contain (for the tiny word-level tokenizer)."""
    return sorted(set((short_caption("0123") + " " + long_caption("4567 89")).lower().replace(".", " . ").split()))


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    return ImageFont.truetype(str(path), size)


def render_number(number: str, width: int = 96, height: int = 32, font_size: int = 26) -> Image.Image:
    """The number in black DejaVu Sans Bold, centred on a white ``width x height`` RGB picture."""
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    font = _font(font_size)
    left, top, right, bottom = draw.textbbox((0, 0), number, font=font)
    draw.text(((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top), number, fill="black", font=font)
    return picture


def to_pixels(picture: Image.Image) -> torch.Tensor:
    """A PIL RGB picture as ``[3,H,W]`` floats in ``[-1,1]`` (the codec's input)."""
    return torch.from_numpy(np.asarray(picture, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1


def prompt_row(number: str) -> dict:
    """A GRPO / evaluation prompt row: ``prompt``, ``long_prompt``, ``text`` (the OCR target)."""
    return {"prompt": short_caption(number), "long_prompt": long_caption(number), "text": number}


def training_numbers(rng: random.Random, count: int, digits: int = DIGITS) -> list[str]:
    """``count`` random numbers (repeats allowed), none of them held out."""
    numbers = []
    while len(numbers) < count:
        number = number_text(rng.randrange(10**digits), digits)
        if not is_held_out(number):
            numbers.append(number)
    return numbers


def held_out_numbers(count: int, seed: int = 0, digits: int = DIGITS) -> list[str]:
    """``count`` distinct held-out numbers, drawn with ``seed``."""
    pool = [n for n in (number_text(v, digits) for v in range(10**digits)) if is_held_out(n)]
    if count > len(pool):
        raise ValueError(f"only {len(pool)} numbers are held out; asked for {count}")
    return sorted(random.Random(seed).sample(pool, count))


@dataclass
class NumberDataArguments:
    """``python -m pretrain_sft.number_data`` options."""

    out: str
    num_images: int = 4000
    num_train_prompts: int = 256
    num_eval_prompts: int = 64
    seed: int = 0
    width: int = 96
    height: int = 32
    font_size: int = 26
    levels: int = field(default=8, metadata={"help": "palette codec grey (colour) levels per channel"})
    patch: int = field(default=4, metadata={"help": "palette codec patch side in pixels"})
    batch_size: int = 256


def write_image_folder(args: NumberDataArguments) -> Path:
    """``images/*.png`` and ``meta.jsonl`` (training numbers only); returns the META path."""
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    with open(out / "meta.jsonl", "w") as meta:
        for i, number in enumerate(training_numbers(rng, args.num_images)):
            name = f"images/{i:06d}.png"
            render_number(number, args.width, args.height, args.font_size).save(out / name)
            meta.write(json.dumps({"image": name, "caption": long_caption(number), "short_caption": short_caption(number),
                                   "long_caption": long_caption(number), "text": number}) + "\n")
    return out / "meta.jsonl"


def write_token_cache(args: NumberDataArguments, meta: Path, cache: Path) -> Path:
    """Encode META's pictures with the palette codec into a token cache (the non-square grid)."""
    from policies.codecs import build_codec

    from .cache import CacheInfo, publish_cache, rows_to_dataset

    codec = build_codec("palette", levels=args.levels, patch=args.patch)
    if args.width % codec.downsample or args.height % codec.downsample:
        raise ValueError(f"width {args.width} and height {args.height} must be multiples of the patch {codec.downsample}")
    records = [json.loads(line) for line in meta.read_text().splitlines()]
    rows = []
    for start in range(0, len(records), args.batch_size):
        batch = records[start : start + args.batch_size]
        pixels = torch.stack([to_pixels(Image.open(meta.parent / r["image"]).convert("RGB")) for r in batch])
        for record, codes in zip(batch, codec.encode(pixels).flatten(1).tolist()):
            rows.append({"id": record["image"], "source": record["image"], "caption": record["caption"],
                         "short_caption": record["short_caption"], "long_caption": record["long_caption"],
                         "codes": codes, "meta": json.dumps({"text": record["text"]})})
    grid = (args.height // codec.downsample, args.width // codec.downsample)
    info = CacheInfo(codec="palette", codebook_size=int(codec.codebook_size), downsample=int(codec.downsample),
                     resolution=args.width, grid=grid, codec_kwargs={"levels": args.levels, "patch": args.patch})
    return publish_cache(rows_to_dataset(rows), info, cache, [])


def write_prompt_sets(args: NumberDataArguments) -> tuple[Path, Path]:
    """``train_prompts.jsonl`` (distinct training numbers) and ``eval_prompts.jsonl`` (held-out numbers)."""
    out = Path(args.out)
    rng = random.Random(args.seed + 1)
    train: list[str] = []
    while len(train) < args.num_train_prompts:
        number = training_numbers(rng, 1)[0]
        if number not in train:
            train.append(number)
    paths = []
    for name, numbers in (("train_prompts.jsonl", train), ("eval_prompts.jsonl", held_out_numbers(args.num_eval_prompts, args.seed))):
        path = out / name
        path.write_text("".join(json.dumps(prompt_row(n)) + "\n" for n in numbers))
        paths.append(path)
    return paths[0], paths[1]


@command("number-data")
def main(argv: list[str]) -> int:
    """Write the number pictures, their token cache and the prompt sets (``python -m pretrain_sft.number_data``)."""
    from policies.recipes import RecipeParser

    (args,) = RecipeParser(NumberDataArguments).parse_args_and_config(argv)
    meta = write_image_folder(args)
    cache = write_token_cache(args, meta, Path(args.out) / "cache")
    train, evaluation = write_prompt_sets(args)
    print(f"wrote {args.num_images} pictures, {meta} and the token cache {cache}\nwrote {train}\nwrote {evaluation}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
