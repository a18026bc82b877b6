"""Verifiable pixel rewards against hand-built demo pictures with known answers."""

from __future__ import annotations

import pytest
import torch
from rewards_helpers import BLACK, BLUE, RED, WHITE, canvas, demo_object, paint

from rewards import build_rewards
from rewards.verifiable import background, color_region, count_components, object_count

LEFT = [0.0, 0.0, 0.5, 1.0]  # 32 x 64 px on a 64 px canvas
RIGHT = [0.5, 0.0, 1.0, 1.0]


def _score(reward, images, **metadata):
    return reward(torch.stack(images), ["prompt"] * len(images), **metadata)


def test_color_region_full_marks_when_the_object_covers_its_expected_area_in_its_box():
    red_left = demo_object(RED, LEFT, area=0.25)  # expects 512 red pixels in the left half
    exact = paint(canvas(), slice(0, 32), slice(0, 16), RED)  # 512 px
    half = paint(canvas(), slice(0, 16), slice(0, 16), RED)  # 256 px
    wrong_side = paint(canvas(), slice(0, 32), slice(48, 64), RED)
    bigger = paint(canvas(), slice(0, 64), slice(0, 32), RED)
    scores = _score(color_region, [exact, half, wrong_side, bigger], objects=[[red_left]] * 4)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.5, 0.0, 1.0]))
    assert color_region.passed(scores).tolist() == [True, True, False, True]


def test_color_region_averages_objects_and_matches_nearest_palette_level():
    objects = [demo_object(RED, LEFT, 0.25), demo_object(BLUE, RIGHT, 0.25, color="blue", region="right")]
    image = paint(canvas(), slice(0, 32), slice(0, 16), (250, 10, 5))  # noisy red still counts
    paint(image, slice(0, 32), slice(32, 48), (0, 0, 170))  # a darker blue level does not
    assert _score(color_region, [image], objects=[objects]).item() == pytest.approx(0.5)


def test_count_components_uses_four_connectivity_and_a_minimum_size():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 0:2, 0:2] = True  # 4 px
    mask[0, 2, 2] = True  # touches the first block only diagonally: separate, 1 px
    mask[0, 5:8, 5:8] = True  # 9 px
    assert count_components(mask, torch.tensor([1])).tolist() == [3]
    assert count_components(mask, torch.tensor([4])).tolist() == [2]


def test_object_count_rewards_the_right_number_of_objects_per_colour():
    reds = [demo_object(RED, LEFT, 0.125), demo_object(RED, RIGHT, 0.125, region="right")]
    two = paint(paint(canvas(), slice(8, 24), slice(8, 24), RED), slice(8, 24), slice(40, 56), RED)
    paint(two, slice(60, 61), slice(30, 31), RED)  # a stray pixel is not an object
    merged = paint(canvas(), slice(8, 24), slice(8, 56), RED)
    none = canvas()
    scores = _score(object_count, [two, merged, none], objects=[reds] * 3)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.5, 0.0]))
    assert object_count.passed(scores).tolist() == [True, False, False]


def test_object_count_averages_over_colours():
    objects = [demo_object(RED, LEFT, 0.125), demo_object(BLUE, RIGHT, 0.125, color="blue")]
    only_red = paint(canvas(), slice(8, 24), slice(8, 24), RED)
    assert _score(object_count, [only_red], objects=[objects]).item() == pytest.approx(0.5)


def test_background_is_the_fraction_of_free_pixels_with_the_background_colour():
    objects = [[demo_object(RED, LEFT, 0.25)]] * 2
    clean = paint(canvas(WHITE), slice(0, 32), slice(0, 16), RED)
    half_dark = paint(clean.clone(), slice(0, 32), slice(32, 64), BLACK)
    bg = [{"color": "white", "rgb": list(WHITE)}] * 2
    scores = _score(background, [clean, half_dark], background=bg, objects=objects)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.5]))
    assert background.passed(scores).tolist() == [True, False]


def test_verifiable_rewards_build_from_specs_and_declare_their_columns():
    suite = build_rewards(["color_region", {"name": "object_count", "min_size": 0.5}, "background"])
    assert suite.required_fields == ["background", "objects"]
    image = paint(canvas(), slice(0, 32), slice(0, 16), RED)
    scores = suite.score(
        image[None], ["a red square on the left"],
        objects=[[demo_object(RED, LEFT, 0.25)]], background=[{"color": "white", "rgb": list(WHITE)}],
    )
    assert {k: round(v.item(), 4) for k, v in scores.items()} == {"color_region": 1.0, "object_count": 1.0, "background": 1.0}
