"""Entry-point plugins: the documented example package (docs/rewards.md) installed with pip, broken plugins, modules."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from rewards_helpers import (  # noqa: F401
    RED,
    canvas,
    demo_object,
    isolated_registry,
    paint,
    write_plugin_dist,
)

from rewards import RewardConfigError, available_rewards, build_rewards, cli

PLUGIN_SOURCE = Path(__file__).parent / "plugins" / "simplear_rl_example_plugin"
DIST = "simplear-rl-example-plugin"


@pytest.fixture(scope="module")
def installed_example_plugin(tmp_path_factory):
    """pip-installs the example plugin (offline, no deps) into a fresh target put on sys.path."""
    build = tmp_path_factory.mktemp("plugin_src") / "src"
    shutil.copytree(PLUGIN_SOURCE, build)  # pip builds in the source tree; keep tests/ clean
    target = tmp_path_factory.mktemp("plugin_site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(build)],
        check=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("simplear_rl_example_plugin", None)


def test_installed_plugin_rewards_build_by_name_and_score(installed_example_plugin, isolated_registry):
    suite = build_rewards(
        [
            {"name": "example_brightness", "target": 0.25, "weight": 0.5},
            {"name": "example_palette", "min_fraction": 0.05},
        ]
    )
    assert suite.names == ["example_brightness", "example_palette"]
    assert suite.required_fields == ["objects"]
    red_square = paint(canvas(), slice(0, 32), slice(0, 32), RED)  # 25% red
    images = torch.stack([red_square, canvas()])
    objects = [[demo_object(RED, [0, 0, 0.5, 0.5], 1.0)]] * 2
    scores = suite.score(images, ["a red square", "a red square"], objects=objects)
    expected_brightness = 1.0 - (images.mean(dim=(1, 2, 3)) - 0.25).abs()
    torch.testing.assert_close(scores["example_brightness"], expected_brightness)
    assert scores["example_palette"].tolist() == [1.0, 0.0]
    assert suite.rewards["example_palette"].batch_size == 16
    infos = available_rewards()
    assert infos["example_brightness"].source == f"entry point example_brightness ({DIST})"
    assert infos["example_palette"].parameters == {"min_fraction": 0.01, "tolerance": 42.0, "batch_size": 16, "device": None}


def test_rewards_list_shows_plugin_rewards_with_their_source(installed_example_plugin, isolated_registry, capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"example_palette  [entry point example_palette ({DIST})]" in out
    assert "parameters: min_fraction=0.01, tolerance=42.0, batch_size=16, device=None" in out


def test_broken_plugin_warns_naming_it_and_rewards_list_still_works(tmp_path, monkeypatch, isolated_registry, capsys):
    write_plugin_dist(tmp_path, "broken_plugin", {"t_broken": "t_no_such_module:reward"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"reward plugin 't_broken' \(t_no_such_module:reward from broken_plugin\) failed"):
        assert cli.main(["list"]) == 0
    assert "color_region  [builtin]" in capsys.readouterr().out
    with pytest.raises(RewardConfigError, match=r"plugin 't_broken' failed to load: .*ModuleNotFoundError"):
        build_rewards(["t_broken"])


def test_module_entry_point_registers_on_import_and_plain_function_entry_point_is_wrapped(
    tmp_path, monkeypatch, isolated_registry
):
    (tmp_path / "t_module_plugin.py").write_text(
        textwrap.dedent(
            """
            import torch
            from rewards import register_reward

            @register_reward("t_from_module")
            def from_module(images, prompts):
                return torch.full((len(prompts),), 2.0)

            def plain(images, prompts, bonus: float = 0.0):
                return torch.full((len(prompts),), 1.0 + bonus)
            """
        )
    )
    write_plugin_dist(tmp_path, "module_plugin", {"t_mod": "t_module_plugin", "t_plain": "t_module_plugin:plain"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy plugin loads without warnings
        suite = build_rewards(["t_from_module", {"name": "t_plain", "bonus": 1.0}])
    assert {k: v.tolist() for k, v in suite.score(torch.zeros(1, 3, 2, 2), ["a"]).items()} == {
        "t_from_module": [2.0],
        "t_plain": [2.0],
    }
    infos = available_rewards()
    assert infos["t_from_module"].source == "entry point t_mod (module_plugin)"
    assert infos["t_plain"].source == "entry point t_plain (module_plugin)"
    sys.modules.pop("t_module_plugin", None)
