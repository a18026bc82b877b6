"""Composition maths, clipping, gating, required columns, bad reward output, the TRL adapter."""

from __future__ import annotations

import math

import pytest
import torch
from rewards_helpers import isolated_registry  # noqa: F401  (fixture)

from rewards import (
    RewardConfigError,
    RewardOutputLengthError,
    RewardScoreError,
    build_rewards,
    register_reward,
)

CALLS: list[int] = []  # batch sizes seen by t_value


@pytest.fixture(autouse=True)
def test_rewards(isolated_registry):
    """Rewards whose output the test controls through the metadata columns."""

    @register_reward("t_value", required_fields=["value"])
    def value(images, prompts, value):
        CALLS.append(len(prompts))
        return torch.tensor(value, dtype=torch.float32)

    @register_reward("t_other", required_fields=["other"])
    def other(images, prompts, other):
        return torch.tensor(other, dtype=torch.float32)

    @register_reward("t_explodes")
    def explodes(images, prompts):
        if any("boom" in p for p in prompts):
            raise ValueError("cannot score this")
        return torch.ones(len(prompts))

    @register_reward("t_too_many")
    def too_many(images, prompts):
        return torch.zeros(len(prompts) + 1)

    CALLS.clear()
    yield


def _images(n: int) -> torch.Tensor:
    return torch.zeros(n, 3, 4, 4)


def test_weights_names_and_sum_total():
    suite = build_rewards([{"name": "t_value", "weight": 2.0}, {"name": "t_other", "weight": -0.5}])
    assert (suite.names, suite.weights, suite.aggregation) == (["t_value", "t_other"], [2.0, -0.5], "sum")
    total = suite.total(_images(3), ["a", "b", "c"], value=[1.0, 2.0, 3.0], other=[4.0, 0.0, 2.0])
    torch.testing.assert_close(total, torch.tensor([0.0, 4.0, 5.0]))


def test_normalize_then_sum_normalises_each_reward_within_groups_then_weights():
    suite = build_rewards(
        [{"name": "t_value", "weight": 1.0}, {"name": "t_other", "weight": 3.0}], aggregation="normalize_then_sum"
    )
    value, other = [0.0, 1.0, 10.0, 30.0], [5.0, 5.0, 0.0, 2.0]
    total = suite.total(_images(4), list("abcd"), group_size=2, value=value, other=other)

    def normalised(xs):
        groups = torch.tensor(xs).view(2, 2)
        return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).flatten()

    torch.testing.assert_close(total, normalised(value) + 3.0 * normalised(other))
    # A hard reward with tiny spread counts as much as an easy one with a large spread.
    assert total[2].item() == pytest.approx(-(2 ** -0.5) - 3 * 2 ** -0.5, rel=1e-3)


def test_clip_bounds_a_component_before_it_is_summed():
    suite = build_rewards([{"name": "t_value", "clip": [0.0, 1.0]}, {"name": "t_other", "clip": [None, 0.5]}])
    scores = suite.score(_images(3), list("abc"), value=[-2.0, 0.5, 7.0], other=[-1.0, 0.2, 0.9])
    assert scores["t_value"].tolist() == [0.0, 0.5, 1.0]
    torch.testing.assert_close(scores["t_other"], torch.tensor([-1.0, 0.2, 0.5]))


def test_gate_zeroes_a_reward_where_the_gating_reward_misses_its_threshold():
    suite = build_rewards(
        [{"name": "t_other", "gate": {"reward": "t_value", "threshold": 0.5}}, {"name": "t_value", "weight": 0.0}]
    )
    scores = suite.score(_images(3), list("abc"), value=[0.2, 0.5, 0.9], other=[3.0, 4.0, 5.0])
    assert scores["t_other"].tolist() == [0.0, 4.0, 5.0]
    assert list(scores) == ["t_other", "t_value"]


def test_gate_errors_are_found_at_build_time():
    with pytest.raises(RewardConfigError, match="gated by 't_missing', which is not in the recipe"):
        build_rewards([{"name": "t_value", "gate": {"reward": "t_missing", "threshold": 0}}])
    with pytest.raises(RewardConfigError, match="cannot gate itself"):
        build_rewards([{"name": "t_value", "gate": {"reward": "t_value", "threshold": 0}}])
    with pytest.raises(RewardConfigError, match="cycle: t_value -> t_other -> t_value"):
        build_rewards(
            [
                {"name": "t_value", "gate": {"reward": "t_other", "threshold": 0}},
                {"name": "t_other", "gate": {"reward": "t_value", "threshold": 0}},
            ]
        )
    with pytest.raises(RewardConfigError, match="gate must be"):
        build_rewards([{"name": "t_value", "gate": {"reward": "t_other"}}])


def test_required_fields_are_the_union_and_missing_columns_fail_naming_reward_and_column():
    suite = build_rewards(["t_value", "t_other", "color_region"])
    assert suite.required_fields == ["objects", "other", "value"]
    suite.validate_columns({"value", "other", "objects", "prompt"})
    with pytest.raises(RewardConfigError) as info:
        suite.validate_columns({"prompt", "value"})
    message = str(info.value)
    assert "reward 't_other' needs metadata column 'other'" in message
    assert "reward 'color_region' needs metadata column 'objects'" in message
    assert "remove those rewards" in message
    with pytest.raises(RewardConfigError, match="'t_other' needs metadata column 'other'"):
        suite.score(_images(1), ["a"], value=[1.0], objects=[[]])


def test_rewards_are_called_in_batches_of_their_batch_size():
    suite = build_rewards([{"name": "t_value", "batch_size": 2}])
    scores = suite.score(_images(5), list("abcde"), value=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert CALLS == [2, 2, 1]
    assert scores["t_value"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_images_of_different_sizes_are_scored_in_groups_and_put_back_in_order():
    @register_reward("t_width")
    def width(images, prompts):
        return torch.full((len(prompts),), float(images.shape[-1]))

    suite = build_rewards(["t_width"])
    images = [torch.zeros(3, 4, 4), torch.zeros(3, 4, 8), torch.zeros(3, 4, 4)]
    assert suite.score(images, list("abc"))["t_width"].tolist() == [4.0, 8.0, 4.0]


def test_a_reward_that_raises_fails_naming_reward_and_prompt():
    suite = build_rewards(["t_explodes"])
    with pytest.raises(RewardScoreError, match=r"reward 't_explodes' raised on prompt 'a boom' \(row 1\): ValueError"):
        suite.score(_images(3), ["fine", "a boom", "fine too"])


def test_a_reward_that_raises_is_dropped_only_for_the_affected_rows_when_asked():
    suite = build_rewards(["t_explodes"])
    scores = suite.score(_images(3), ["fine", "a boom", "fine too"], on_error="drop")["t_explodes"]
    assert scores[0].item() == 1.0 and math.isnan(scores[1].item()) and scores[2].item() == 1.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_fails_naming_reward_and_prompt(bad):
    suite = build_rewards(["t_value"])
    with pytest.raises(RewardScoreError, match=rf"reward 't_value' returned {bad} for prompt 'second' \(row 1\)"):
        suite.score(_images(2), ["first", "second"], value=[1.0, bad])


def test_wrong_length_always_fails_naming_reward_expected_and_actual():
    suite = build_rewards(["t_too_many"])
    for on_error in ("fail", "drop"):
        with pytest.raises(RewardOutputLengthError, match=r"'t_too_many' returned 4 values for a batch of 3 images \(expected 3"):
            suite.score(_images(3), list("abc"), on_error=on_error)


def test_prompt_image_and_column_count_mismatches_are_refused():
    suite = build_rewards(["t_value"])
    with pytest.raises(RewardScoreError, match="got 2 images but 3 prompts"):
        suite.score(_images(2), list("abc"), value=[1.0, 2.0, 3.0])
    with pytest.raises(RewardScoreError, match="column 'value' must hold one value per prompt"):
        suite.score(_images(3), list("abc"), value=[1.0])
    with pytest.raises(RewardScoreError, match=r"image 0 must be a float \[3,H,W\] tensor"):
        suite.score([torch.zeros(3, 4, 4, dtype=torch.uint8)], ["a"], value=[1.0])


# ------------------------------------------------------------------ TRL adapter
def _trl_call(func, images, prompts, metrics, **columns):
    """Call a reward function the way TRL 1.16's _calculate_rewards does."""
    return func(
        prompts=prompts,
        completions=["" for _ in prompts],
        completion_ids=[[1] for _ in prompts],
        images=images,
        trainer_state=object(),
        log_extra=lambda column, values: None,
        log_metric=lambda name, value: metrics.append((name, value)),
        **columns,
    )


def test_trl_functions_are_named_after_components_and_score_each_batch_once():
    suite = build_rewards(
        [{"name": "t_value"}, {"name": "t_other", "as": "gated", "gate": {"reward": "t_value", "threshold": 1.5}}]
    )
    funcs = suite.trl_reward_funcs()
    assert [f.__name__ for f in funcs] == ["t_value", "gated"]
    images, prompts, metrics = list(_images(2)), ["a", "b"], []
    columns = {"value": [1.0, 2.0], "other": [7.0, 8.0], "objects": [[], []]}
    outputs = [_trl_call(f, images, prompts, metrics, **columns) for f in funcs]
    assert outputs == [[1.0, 2.0], [0.0, 8.0]]
    assert CALLS == [2]  # scored once for both functions
    assert metrics == [("rewards/gated/gate_pass", 0.5)]
    _trl_call(funcs[0], list(_images(2)), ["c", "d"], metrics, **columns)
    assert CALLS == [2, 2]  # a new batch is scored afresh


def test_trl_drop_mode_returns_none_and_logs_the_dropped_count():
    suite = build_rewards(["t_value", "t_explodes"])
    funcs = suite.trl_reward_funcs(on_error="drop")
    images, prompts, metrics = list(_images(3)), ["boom", "ok", "ok"], []
    outputs = [_trl_call(f, images, prompts, metrics, value=[1.0, float("nan"), 3.0]) for f in funcs]
    assert outputs == [[1.0, None, 3.0], [None, 1.0, 1.0]]
    assert metrics == [("rewards/t_value/dropped", 1.0), ("rewards/t_explodes/dropped", 1.0)]


def test_trl_fail_mode_raises_naming_reward_and_prompt():
    (func,) = build_rewards(["t_explodes"]).trl_reward_funcs(on_error="fail")
    with pytest.raises(RewardScoreError, match="'t_explodes' raised on prompt 'boom'"):
        _trl_call(func, list(_images(2)), ["ok", "boom"], [])


def test_trl_on_error_must_be_fail_or_drop():
    with pytest.raises(RewardConfigError, match="on_error must be one of"):
        build_rewards(["t_value"]).trl_reward_funcs(on_error="ignore")


def test_gate_on_a_dropped_row_drops_the_gated_reward_too():
    suite = build_rewards(["t_value", {"name": "t_other", "gate": {"reward": "t_value", "threshold": 0.0}}])
    scores = suite.score(_images(2), ["a", "b"], on_error="drop", value=[float("nan"), 1.0], other=[5.0, 6.0])
    assert math.isnan(scores["t_other"][0].item()) and scores["t_other"][1].item() == 6.0
    torch.testing.assert_close(suite.combine(scores), torch.tensor([float("nan"), 7.0]), equal_nan=True)
