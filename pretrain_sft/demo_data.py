"""Synthetic demo data: coloured shapes on plain backgrounds, with captions and reward metadata.

Pictures are ``size x size`` pixels (64 by default) drawn on a grid of ``patch``-pixel cells
(8 by default, the palette codec's patch), in colours whose channels are all in
``{0, 85, 170, 255}``, so a palette codec with ``levels=4, patch=8`` round-trips them exactly.

Every scene carries the metadata a verifiable reward reads, in this schema::

    {"prompt": "a red square on the left",
     "long_prompt": "A picture with a white background. On the left side there is one red square.",
     "background": {"color": "white", "rgb": [255, 255, 255]},
     "objects": [{"color": "red", "rgb": [255, 0, 0], "shape": "square", "region": "left",
                  "box": [x0, y0, x1, y1],  # the named region, as fractions of image width/height
                  "area": 0.125}]}          # fraction of `box` the object covers when drawn correctly

Some (colour, shape, region) combinations are held out of every training image and training
prompt and appear only in the evaluation prompts (:func:`is_held_out`).

Run ``python -m pretrain_sft.demo_data --out DIR`` to write an image folder with ``meta.jsonl``
(for ``extract-tokens``) and the GRPO prompt sets.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from policies.commands import command

#: Object colours (channels in {0, 85, 170, 255}).
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (170, 0, 255),
    "orange": (255, 170, 0),
    "cyan": (0, 255, 255),
    "pink": (255, 85, 170),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (170, 170, 170),
}
#: Shapes as filled cells ``(row, col)`` of a small patch grid; each is distinct at patch level.
SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "square": ((0, 0), (0, 1), (1, 0), (1, 1)),
    "bar": ((0, 0), (0, 1), (0, 2)),  # horizontal
    "column": ((0, 0), (1, 0), (2, 0)),  # vertical
    "cross": ((0, 1), (1, 0), (1, 1), (1, 2), (2, 1)),
}
PLURALS = {"square": "squares", "bar": "bars", "column": "columns", "cross": "crosses"}
#: Regions as image fractions ``(x0, y0, x1, y1)``.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
}
SHORT_PLACE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom", "center": "in the center"}
LONG_PLACE = {"left": "On the left side", "right": "On the right side", "top": "At the top", "bottom": "At the bottom", "center": "In the center"}
#: Regions two different objects can occupy without overlapping.
OPPOSITE_PAIRS = (("left", "right"), ("top", "bottom"))
#: Regions large enough for two copies of any shape with a gap between them.
PAIR_REGIONS = ("left", "right", "top", "bottom")


def demo_words() -> list[str]:
    """Every word a demo caption can contain (for the tiny word-level tokenizer)."""
    glue = "a picture with background side there is are one two and on in at the . ,".split()
    places = [w for phrase in (*SHORT_PLACE.values(), *LONG_PLACE.values()) for w in phrase.lower().split()]
    words = [*glue, *places, *OBJECT_COLORS, *BACKGROUND_COLORS, *SHAPES, *PLURALS.values()]
    return sorted(set(words))


def is_held_out(color: str, shape: str, region: str) -> bool:
    """Whether a (colour, shape, region) combination is reserved for evaluation prompts.

    One region per (colour, shape) pair at most, so every colour, shape and region is still seen
    in training, only not in every combination.
    """
    c, s, r = list(OBJECT_COLORS).index(color), list(SHAPES).index(shape), list(REGIONS).index(region)
    return (c + 3 * s + 5 * r) % 8 == 0


@dataclass(frozen=True)
class PlacedObject:
    """An object and the top-left cell where it is drawn."""

    color: str
    shape: str
    region: str
    row: int
    col: int

    def cells(self) -> list[tuple[int, int]]:
        return [(self.row + r, self.col + c) for r, c in SHAPES[self.shape]]


@dataclass(frozen=True)
class Scene:
    """A background and 1-2 placed objects on a ``grid x grid`` cell layout."""

    background: str
    objects: tuple[PlacedObject, ...]
    grid: int = 8

    # ---------------------------------------------------------------- captions
    def _groups(self) -> list[tuple[PlacedObject, int]]:
        """Objects grouped by (colour, shape, region) with their count, in drawing order."""
        groups: list[tuple[PlacedObject, int]] = []
        for obj in self.objects:
            for i, (first, count) in enumerate(groups):
                if (first.color, first.shape, first.region) == (obj.color, obj.shape, obj.region):
                    groups[i] = (first, count + 1)
                    break
            else:
                groups.append((obj, 1))
        return groups

    def short_caption(self) -> str:
        parts = []
        for obj, count in self._groups():
            noun = f"{obj.color} {obj.shape}" if count == 1 else f"{obj.color} {PLURALS[obj.shape]}"
            parts.append(f"{'a' if count == 1 else 'two'} {noun} {SHORT_PLACE[obj.region]}")
        return " and ".join(parts)

    def long_caption(self) -> str:
        sentences = [f"A picture with a {self.background} background."]
        for obj, count in self._groups():
            if count == 1:
                sentences.append(f"{LONG_PLACE[obj.region]} there is one {obj.color} {obj.shape}.")
            else:
                sentences.append(f"{LONG_PLACE[obj.region]} there are two {obj.color} {PLURALS[obj.shape]}.")
        return " ".join(sentences)

    # ---------------------------------------------------------------- metadata
    def region_cells(self, region: str) -> int:
        r0, c0, rows, cols = region_cell_box(region, self.grid)
        return rows * cols

    def prompt_row(self) -> dict:
        """The GRPO prompt row: ``prompt``, ``long_prompt``, ``background``, ``objects``."""
        return {
            "prompt": self.short_caption(),
            "long_prompt": self.long_caption(),
            "background": {"color": self.background, "rgb": list(BACKGROUND_COLORS[self.background])},
            "objects": [
                {
                    "color": o.color,
                    "rgb": list(OBJECT_COLORS[o.color]),
                    "shape": o.shape,
                    "region": o.region,
                    "box": list(REGIONS[o.region]),
                    "area": len(SHAPES[o.shape]) / self.region_cells(o.region),
                }
                for o in self.objects
            ],
        }

    # ----------------------------------------------------------------- drawing
    def render(self, patch: int = 8) -> Image.Image:
        """The picture, ``grid * patch`` pixels square, every cell one flat colour."""
        side = self.grid * patch
        pixels = np.empty((side, side, 3), dtype=np.uint8)
        pixels[:] = BACKGROUND_COLORS[self.background]
        for obj in self.objects:
            for r, c in obj.cells():
                pixels[r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = OBJECT_COLORS[obj.color]
        return Image.fromarray(pixels)


def region_cell_box(region: str, grid: int) -> tuple[int, int, int, int]:
    """``(row0, col0, rows, cols)`` of a region on a ``grid x grid`` cell layout."""
    x0, y0, x1, y1 = REGIONS[region]
    r0, c0 = round(y0 * grid), round(x0 * grid)
    return r0, c0, round(y1 * grid) - r0, round(x1 * grid) - c0


def _shape_size(shape: str) -> tuple[int, int]:
    cells = SHAPES[shape]
    return max(r for r, _ in cells) + 1, max(c for _, c in cells) + 1


def _place(rng: random.Random, color: str, shape: str, region: str, grid: int) -> PlacedObject:
    r0, c0, rows, cols = region_cell_box(region, grid)
    h, w = _shape_size(shape)
    return PlacedObject(color, shape, region, r0 + rng.randint(0, rows - h), c0 + rng.randint(0, cols - w))


def _apart(a: PlacedObject, b: PlacedObject) -> bool:
    """True when the bounding boxes of two objects are separated by at least one empty cell."""
    (ah, aw), (bh, bw) = _shape_size(a.shape), _shape_size(b.shape)
    return a.row + ah < b.row or b.row + bh < a.row or a.col + aw < b.col or b.col + bw < a.col


def _allowed(color: str, shape: str, region: str, split: str) -> bool:
    return split == "eval" or not is_held_out(color, shape, region)


def _random_objects(rng: random.Random, split: str, grid: int) -> tuple[PlacedObject, ...]:
    colors, shapes = list(OBJECT_COLORS), list(SHAPES)
    kind = rng.choices(("one", "pair", "two"), weights=(0.45, 0.2, 0.35))[0]
    while True:
        if kind == "one":
            combo = (rng.choice(colors), rng.choice(shapes), rng.choice(list(REGIONS)))
            if _allowed(*combo, split):
                return (_place(rng, *combo, grid),)
        elif kind == "pair":
            combo = (rng.choice(colors), rng.choice(shapes), rng.choice(PAIR_REGIONS))
            if _allowed(*combo, split):
                for _ in range(50):
                    a, b = _place(rng, *combo, grid), _place(rng, *combo, grid)
                    if _apart(a, b):
                        return tuple(sorted((a, b), key=lambda o: (o.row, o.col)))
        else:
            regions = rng.choice(OPPOSITE_PAIRS)
            first, second = rng.sample(colors, 2)
            combos = [(first, rng.choice(shapes), regions[0]), (second, rng.choice(shapes), regions[1])]
            if all(_allowed(*c, split) for c in combos):
                return tuple(_place(rng, *c, grid) for c in combos)


def random_scene(rng: random.Random, split: str = "train", grid: int = 8) -> Scene:
    """A random scene. ``split="train"`` never uses a held-out combination; ``"eval"`` always does."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    while True:
        scene = Scene(rng.choice(list(BACKGROUND_COLORS)), _random_objects(rng, split, grid), grid)
        if split == "train" or any(is_held_out(o.color, o.shape, o.region) for o in scene.objects):
            return scene


def write_image_folder(out_dir: str | Path, num_images: int = 2000, seed: int = 0, size: int = 64, patch: int = 8) -> Path:
    """Write ``images/*.png`` and ``meta.jsonl`` (training split only); return the META path.

    Each META row has ``image`` (relative path), ``caption`` (the long caption),
    ``short_caption``, ``long_caption``, and the reward metadata ``background`` and ``objects``.
    """
    if size % patch:
        raise ValueError(f"size {size} must be a multiple of patch {patch}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    meta_path = out / "meta.jsonl"
    with open(meta_path, "w") as meta:
        for i in range(num_images):
            scene = random_scene(rng, "train", grid=size // patch)
            name = f"images/{i:06d}.png"
            scene.render(patch).save(out / name)
            row = scene.prompt_row()
            meta.write(json.dumps({
                "image": name,
                "caption": row["long_prompt"],
                "short_caption": row["prompt"],
                "long_caption": row["long_prompt"],
                "background": row["background"],
                "objects": row["objects"],
            }) + "\n")
    return meta_path


def _unique_rows(rng: random.Random, split: str, count: int, grid: int) -> list[dict]:
    rows: dict[tuple[str, str], dict] = {}
    for _ in range(count * 50):
        if len(rows) == count:
            break
        row = random_scene(rng, split, grid).prompt_row()
        rows.setdefault((row["prompt"], row["long_prompt"]), row)
    return list(rows.values())


def write_prompt_sets(
    out_dir: str | Path, num_train: int = 256, num_eval: int = 64, seed: int = 0, grid: int = 8
) -> tuple[Path, Path]:
    """Write ``train_prompts.jsonl`` and ``eval_prompts.jsonl`` (unique rows); return both paths.

    Evaluation prompts each contain a held-out (colour, shape, region) combination, so none of
    their short prompts occurs in training.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    paths = []
    for name, split, count in (("train_prompts.jsonl", "train", num_train), ("eval_prompts.jsonl", "eval", num_eval)):
        path = out / name
        with open(path, "w") as f:
            for row in _unique_rows(rng, split, count, grid):
                f.write(json.dumps(row) + "\n")
        paths.append(path)
    return paths[0], paths[1]


@dataclass
class DemoDataArguments:
    """``python -m pretrain_sft.demo_data`` options."""

    out: str
    num_images: int = 2000
    num_train_prompts: int = 256
    num_eval_prompts: int = 64
    seed: int = 0
    size: int = 64
    patch: int = 8


@command("demo-data")
def main(argv: list[str]) -> int:
    """Write the demo image folder and prompt sets (``python -m pretrain_sft.demo_data``)."""
    from policies.recipes import RecipeParser

    (args,) = RecipeParser(DemoDataArguments, prog="python -m pretrain_sft.demo_data").parse_args_and_config(argv)
    meta = write_image_folder(args.out, args.num_images, args.seed, args.size, args.patch)
    train, evaluation = write_prompt_sets(args.out, args.num_train_prompts, args.num_eval_prompts, args.seed, args.size // args.patch)
    print(f"wrote {args.num_images} images and {meta}\nwrote {train}\nwrote {evaluation}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
