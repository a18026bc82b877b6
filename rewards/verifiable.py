"""Verifiable pixel rewards for the demo prompt sets: no weights, exact answers.

Each row of a demo prompt set carries::

    "background": {"color": "white", "rgb": [255, 255, 255]},
    "objects": [{"color": "red", "rgb": [255, 0, 0], "shape": "square", "region": "left",
                 "box": [x0, y0, x1, y1],   # fractions of width/height where the object must lie
                 "area": 0.25}]             # fraction of `box` the object covers when drawn correctly

Demo images are flat colour patches with levels {0, 85, 170, 255} per channel, so a pixel "has"
a colour when every channel is within ``tolerance`` (0-255 units; the default 42 is just under half
the level step, i.e. nearest level). Each reward's ``threshold`` says when a score counts as a pass
(``reward.passed(scores)``), which the demo reports as held-out accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .registry import register_reward

#: Just under half the palette step of 85: a pixel matches the nearest palette level only.
DEFAULT_TOLERANCE = 42.0


def color_mask(image: torch.Tensor, rgb: Any, tolerance: float = DEFAULT_TOLERANCE) -> torch.Tensor:
    """Boolean ``[H,W]``: pixels of ``image`` (``[3,H,W]`` in [0,1]) within ``tolerance`` of ``rgb`` (0-255)."""
    target = torch.as_tensor(rgb, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return ((image.float() * 255.0 - target).abs() <= tolerance).all(dim=0)


def box_slices(box: Any, height: int, width: int) -> tuple[slice, slice]:
    """Row and column slices of a ``[x0, y0, x1, y1]`` box given in fractions; at least one pixel."""
    x0, y0, x1, y1 = (float(v) for v in box)
    c0, r0 = round(x0 * width), round(y0 * height)
    c1, r1 = max(round(x1 * width), c0 + 1), max(round(y1 * height), r0 + 1)
    return slice(r0, r1), slice(c0, c1)


def _box_pixels(box: Any, height: int, width: int) -> int:
    rows, cols = box_slices(box, height, width)
    return (min(rows.stop, height) - rows.start) * (min(cols.stop, width) - cols.start)


@register_reward("color_region", required_fields=["objects"], threshold=0.5)
def color_region(
    images: torch.Tensor, prompts: list[str], objects: list[list[dict]], tolerance: float = DEFAULT_TOLERANCE
) -> torch.Tensor:
    """Named colour in the named region: per object, matching pixels in its box / (box size x area).

    Each object's score is clipped to 1; a row's score is the mean over its objects (0 if none).
    Passed: score >= 0.5, i.e. on average at least half of the expected pixels are there.
    """
    _, _, height, width = images.shape
    scores = torch.zeros(images.shape[0])
    for i, (image, row) in enumerate(zip(images, objects)):
        per_object = []
        for obj in row:
            rows, cols = box_slices(obj["box"], height, width)
            inside = color_mask(image[:, rows, cols], obj["rgb"], tolerance)
            fraction = inside.float().mean().item()
            per_object.append(min(1.0, fraction / max(float(obj["area"]), 1e-6)))
        scores[i] = sum(per_object) / len(per_object) if per_object else 0.0
    return scores


def count_components(masks: torch.Tensor, min_size: torch.Tensor) -> torch.Tensor:
    """Number of 4-connected components of at least ``min_size[n]`` pixels in each mask ``[N,H,W]``.

    Labels propagate as the running maximum over neighbours until nothing changes; that takes as
    many steps as the longest path inside a component, which is small for demo-size images.
    """
    n, height, width = masks.shape
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    ids = torch.arange(1, height * width + 1, device=masks.device).view(1, height, width)
    labels = torch.where(masks, ids, 0)
    while True:
        padded = F.pad(labels, (1, 1, 1, 1))
        neighbours = torch.stack(
            [labels, padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]]
        ).amax(dim=0)
        updated = torch.where(masks, neighbours, 0)
        if torch.equal(updated, labels):
            break
        labels = updated
    counts = []
    for label, minimum in zip(labels, min_size.tolist()):
        sizes = torch.bincount(label.flatten(), minlength=height * width + 1)[1:]
        counts.append(int((sizes >= max(minimum, 1)).sum()))
    return torch.tensor(counts, dtype=torch.long)


@register_reward("object_count", required_fields=["objects"], threshold=1.0)
def object_count(
    images: torch.Tensor,
    prompts: list[str],
    objects: list[list[dict]],
    tolerance: float = DEFAULT_TOLERANCE,
    min_size: float = 0.25,
) -> torch.Tensor:
    """Right number of objects per named colour, by connected components of that colour.

    A component counts when it has at least ``min_size`` x the expected pixels of the smallest
    object of its colour (box size x area), so stray pixels do not. Per colour the score is
    ``max(0, 1 - |found - expected| / expected)``; a row's score is the mean over its colours.
    Passed: score == 1, every colour has exactly the objects asked for.
    """
    _, _, height, width = images.shape
    masks, minimums, expected, owner = [], [], [], []
    for i, (image, row) in enumerate(zip(images, objects)):
        by_colour: dict[tuple[int, ...], list[dict]] = {}
        for obj in row:
            by_colour.setdefault(tuple(int(c) for c in obj["rgb"]), []).append(obj)
        for rgb, group in by_colour.items():
            masks.append(color_mask(image, rgb, tolerance))
            minimums.append(min_size * min(_box_pixels(o["box"], height, width) * float(o["area"]) for o in group))
            expected.append(len(group))
            owner.append(i)
    found = count_components(torch.stack(masks), torch.tensor(minimums)) if masks else torch.zeros(0)
    expected_t = torch.tensor(expected, dtype=torch.float32)
    per_colour = (1.0 - (found.float() - expected_t).abs() / expected_t).clamp(min=0.0)
    totals = torch.zeros(images.shape[0]).index_add_(0, torch.tensor(owner, dtype=torch.long), per_colour)
    colours = torch.zeros(images.shape[0]).index_add_(0, torch.tensor(owner, dtype=torch.long), torch.ones(len(owner)))
    return torch.where(colours > 0, totals / colours.clamp(min=1), torch.zeros(()))


@register_reward("background", required_fields=["background", "objects"], threshold=0.75)
def background(
    images: torch.Tensor,
    prompts: list[str],
    background: list[dict],
    objects: list[list[dict]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> torch.Tensor:
    """Fraction of the pixels outside every object box that have the background colour.

    Passed: score >= 0.75 (three quarters of the free area is background).
    """
    _, _, height, width = images.shape
    scores = torch.zeros(images.shape[0])
    for i, (image, bg, row) in enumerate(zip(images, background, objects)):
        free = torch.ones(height, width, dtype=torch.bool, device=image.device)
        for obj in row:
            free[box_slices(obj["box"], height, width)] = False
        free_pixels = int(free.sum())
        matches = int((color_mask(image, bg["rgb"], tolerance) & free).sum())
        scores[i] = matches / free_pixels if free_pixels else 1.0  # boxes cover the image: nothing to check
    return scores
