"""Registry: decorator, function wrapping, dotted paths, spec checking before anything loads."""

from __future__ import annotations

import textwrap

import pytest
import torch
from rewards_helpers import isolated_registry  # noqa: F401  (fixture)

import rewards
from rewards import (
    FunctionReward,
    Reward,
    RewardConfigError,
    available_rewards,
    build_rewards,
    get_reward_class,
    register_reward,
)
from rewards.base import REQUIRED

pytestmark = pytest.mark.usefixtures("isolated_registry")

BUILTINS = {"clip", "hpsv2", "hpsv2.1", "color_region", "object_count", "background"}


def test_builtins_are_registered_with_source_builtin():
    infos = available_rewards()
    assert BUILTINS <= set(infos)
    assert {infos[name].source for name in BUILTINS} == {"builtin"}
    assert infos["clip"].parameters["checkpoint"] is REQUIRED
    assert infos["clip"].parameters["preprocess"] == "simplear"
    assert infos["color_region"].required_fields == ("objects",)


def test_importing_rewards_does_not_import_open_clip():
    import subprocess
    import sys

    code = "import sys, rewards; rewards.available_rewards(); print('open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_decorated_function_becomes_a_reward_with_name_batch_size_device_and_fields():
    @register_reward("t_mean_of", required_fields=["values"], batch_size=3)
    def mean_of(images, prompts, values, scale: float = 1.0):
        return torch.tensor([scale * sum(v) for v in values])

    assert isinstance(mean_of, FunctionReward)
    assert (mean_of.name, mean_of.batch_size, str(mean_of.device), mean_of.required_fields) == ("t_mean_of", 3, "cpu", ("values",))
    got = mean_of(torch.zeros(4, 3, 2, 2), ["a"] * 4, values=[[1], [2, 3], [4], [5]])
    assert got.tolist() == [1.0, 5.0, 4.0, 5.0]
    cls = get_reward_class("t_mean_of")
    assert issubclass(cls, FunctionReward)
    assert cls.parameters() == {"scale": 1.0, "batch_size": 3, "device": None}
    assert available_rewards()["t_mean_of"].source == f"decorator ({__name__})"


def test_function_parameters_are_set_from_the_spec():
    @register_reward("t_scaled", required_fields=["values"])
    def scaled(images, prompts, values, scale: float = 1.0):
        return torch.tensor(values, dtype=torch.float32) * scale

    suite = build_rewards([{"name": "t_scaled", "scale": 3.0}])
    assert suite.score(torch.zeros(2, 3, 4, 4), ["a", "b"], values=[1.0, 2.0])["t_scaled"].tolist() == [3.0, 6.0]


def test_registered_class_is_returned_unchanged_and_built_with_its_parameters():
    @register_reward("t_const")
    class Const(Reward):
        def __init__(self, value: float = 0.5, **kwargs):
            super().__init__(**kwargs)
            self.value = value

        def score_batch(self, images, prompts, **metadata):
            return torch.full((len(prompts),), self.value)

    assert get_reward_class("t_const") is Const and Const.name == "t_const"
    suite = build_rewards([{"name": "t_const", "value": 2.0, "batch_size": 1, "device": "cpu"}])
    assert suite.score(torch.zeros(3, 3, 2, 2), ["a", "b", "c"])["t_const"].tolist() == [2.0, 2.0, 2.0]


def test_a_name_taken_by_another_reward_is_refused_naming_both():
    with pytest.raises(RewardConfigError, match=r"'color_region' is already registered by rewards\.verifiable"):

        @register_reward("color_region")
        def impostor(images, prompts):
            return torch.zeros(len(prompts))


def test_a_class_that_is_not_a_reward_is_refused():
    with pytest.raises(RewardConfigError, match="must subclass rewards.Reward"):

        @register_reward("t_plain_class")
        class Plain:
            pass


def test_required_field_without_parameter_is_refused_at_registration():
    with pytest.raises(RewardConfigError, match=r"declares required_fields \['objects'\]"):

        @register_reward("t_bad_fields", required_fields=["objects"])
        def bad(images, prompts):
            return torch.zeros(len(prompts))


def test_dotted_path_builds_a_plain_function_and_lists_it_as_dotted(tmp_path, monkeypatch):
    (tmp_path / "t_dotted_rewards.py").write_text(
        textwrap.dedent(
            """
            import torch

            def darkness(images, prompts, power: float = 1.0):
                return (1.0 - images.mean(dim=(1, 2, 3))) ** power
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = build_rewards([{"name": "t_dotted_rewards:darkness", "power": 2.0}])
    assert suite.names == ["darkness"]
    images = torch.full((2, 3, 4, 4), 0.25)
    torch.testing.assert_close(suite.score(images, ["a", "b"])["darkness"], torch.full((2,), 0.5625))
    assert available_rewards()["darkness"].source == "dotted path t_dotted_rewards:darkness"


def test_dotted_path_that_does_not_import_is_named():
    with pytest.raises(RewardConfigError, match="cannot import reward 'no_such_pkg.mod:Thing'"):
        build_rewards([{"name": "no_such_pkg.mod:Thing"}])


def test_unknown_reward_name_lists_the_registered_ones():
    with pytest.raises(RewardConfigError, match=r"unknown reward 'clipp'.*'clip'"):
        build_rewards([{"name": "clipp", "checkpoint": "x"}])


def test_unknown_parameter_names_the_reward_and_lists_accepted_ones():
    with pytest.raises(RewardConfigError) as info:
        build_rewards([{"name": "color_region", "tolerence": 10}])
    message = str(info.value)
    assert "'color_region'" in message and "['tolerence']" in message and "tolerance=42.0" in message


def test_missing_required_parameter_is_named():
    with pytest.raises(RewardConfigError, match=r"'clip' \(rewards\[0\]\) needs parameter\(s\) \['checkpoint'\]"):
        build_rewards(["clip"])


def test_alias_gives_a_second_instance_its_own_name_and_duplicates_are_refused():
    suite = build_rewards([{"name": "color_region"}, {"name": "color_region", "as": "color_strict", "tolerance": 5}])
    assert suite.names == ["color_region", "color_strict"]
    assert suite.rewards["color_strict"].name == "color_strict"
    assert suite.rewards["color_region"].name == "color_region"
    with pytest.raises(RewardConfigError, match="two rewards are named 'color_region'.*as: color_region_2"):
        build_rewards(["color_region", "color_region"])


def test_build_device_and_dtype_reach_rewards_that_take_them():
    suite = build_rewards([{"name": "color_region"}], device="cpu", dtype="bf16")
    assert str(suite.rewards["color_region"].device) == "cpu"
    with pytest.raises(RewardConfigError, match="unknown dtype 'float8'"):
        rewards.resolve_dtype("float8")


def test_bad_spec_shapes_are_refused():
    with pytest.raises(RewardConfigError, match="non-empty list"):
        build_rewards([])
    with pytest.raises(RewardConfigError, match=r"rewards\[0\] must be a mapping with a 'name'"):
        build_rewards([{"weight": 1.0}])
    with pytest.raises(RewardConfigError, match="weight must be a finite number"):
        build_rewards([{"name": "color_region", "weight": "heavy"}])
    with pytest.raises(RewardConfigError, match=r"clip must be \[lo, hi\]"):
        build_rewards([{"name": "color_region", "clip": 1.0}])
    with pytest.raises(RewardConfigError, match="aggregation must be one of"):
        build_rewards(["color_region"], aggregation="mean")


def test_a_class_registered_under_two_names_is_built_under_the_name_asked():
    @register_reward("t_second_name")
    @register_reward("t_first_name")
    class Twice(Reward):
        def score_batch(self, images, prompts, **metadata):
            return torch.zeros(len(prompts))

    assert build_rewards(["t_first_name", "t_second_name"]).names == ["t_first_name", "t_second_name"]


def test_a_refused_registration_leaves_the_registered_class_untouched():
    from rewards.clip import CLIPReward

    with pytest.raises(RewardConfigError, match="'color_region' is already registered"):
        register_reward("color_region", batch_size=1)(CLIPReward)
    assert (CLIPReward.name, CLIPReward.default_batch_size) == ("clip", 32)


def test_dotted_path_to_an_undecorated_subclass_of_a_builtin_gets_its_own_name(tmp_path, monkeypatch):
    (tmp_path / "t_subclass_rewards.py").write_text(
        textwrap.dedent(
            """
            import torch
            from rewards.verifiable import color_region

            class Halved(type(color_region)):
                def score_batch(self, images, prompts, **metadata):
                    return super().score_batch(images, prompts, **metadata) / 2
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = build_rewards(["t_subclass_rewards:Halved"])
    assert suite.names == ["Halved"]
    assert available_rewards()["color_region"].cls is type(rewards.verifiable.color_region)
