"""Version guards: a transformers/trl outside the tested bounds, or a decoder that drops its KV cache, stops the
sampler with one line naming the version, the bound and the fix (exit 2 from a command); an env var opts out."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from packaging.requirements import Requirement
from transformers import Qwen2Config, Qwen2ForCausalLM

from policies import versions
from policies.versions import SKIP_ENV, TESTED, UnsupportedVersion, check_kv_cache, check_versions
from rl.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


class CacheDroppingQwen2(Qwen2ForCausalLM):
    """What transformers before 5.24 does with ``cache=``: takes it into ``**kwargs`` and ignores it."""

    def forward(self, *args, cache=None, **kwargs):
        return super().forward(*args, **kwargs)


@pytest.fixture
def unchecked(monkeypatch):
    """A process in which the once-per-process check has not run yet (restored afterwards)."""
    monkeypatch.setattr(versions, "_checked", False)
    monkeypatch.delenv(SKIP_ENV, raising=False)


def test_the_installed_versions_pass_and_a_cached_step_equals_a_recompute():
    check_versions()
    check_kv_cache()


def test_transformers_below_the_bound_is_refused_naming_version_bound_and_fix():
    with pytest.raises(UnsupportedVersion) as err:
        check_versions({"transformers": "5.17.0", "trl": "1.16.0"})
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith("transformers 5.17.0 is installed but simplear-rl needs transformers>=5.24,<5.25")
    assert "pip install -c constraints.txt -e ." in line and f"{SKIP_ENV}=1" in line


@pytest.mark.parametrize("found", ["1.15.0", "1.17.0", "not-a-version"])
def test_trl_other_than_the_pinned_release_is_refused(found):
    with pytest.raises(UnsupportedVersion, match=rf"^trl {found} is installed but simplear-rl needs trl==1.16.0"):
        check_versions({"transformers": "5.24.0", "trl": found})


def test_a_decoder_that_drops_the_kv_cache_fails_the_self_check():
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5)
    model = CacheDroppingQwen2(config).eval()
    with pytest.raises(UnsupportedVersion) as err:
        check_kv_cache(model)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"transformers {transformers.__version__} is installed but simplear-rl needs "
                           "transformers>=5.24,<5.25")
    assert "the prompt filled 0 of 5 cache positions" in line and "fix: pip install" in line


def test_generate_with_a_fake_old_transformers_exits_2_with_the_one_line(unchecked, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    code = cli_main(["generate", "--prompts", "a red square", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("simplear-rl generate: error: transformers 5.17.0 is installed but simplear-rl needs "
                              "transformers>=5.24,<5.25")
    assert not list((tmp_path / "out").glob("*.png"))


def test_the_opt_out_variable_lets_an_untested_version_sample(unchecked, monkeypatch, tmp_path):
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    monkeypatch.setenv(SKIP_ENV, "1")
    assert cli_main(["generate", "--prompts", "a red square", "--out", str(tmp_path / "out")]) == 0
    assert list((tmp_path / "out").glob("*.png"))


def test_tested_bounds_equal_setup_cfg_install_requires():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    requires = {Requirement(line).name: str(Requirement(line).specifier)
                for line in parser["options"]["install_requires"].split("\n") if line.strip()}
    for name, (bound, _) in TESTED.items():
        assert requires[name] == str(Requirement(f"{name}{bound}").specifier), name


def test_grpo_path_imports_without_the_heavy_optional_packages():
    """The GPU kit brings none of wandb, open_clip, deepspeed, rapidocr, fastapi, torchvision: the check's modules
    must import where they are absent (hidden here from a fresh interpreter, as on the GPU image)."""
    code = (
        "import sys, importlib.abc\n"
        "from importlib.machinery import PathFinder\n"
        "HIDDEN = {'wandb', 'open_clip', 'deepspeed', 'rapidocr_onnxruntime', 'fastapi', 'uvicorn', 'torchvision'}\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        return None if name.split('.')[0] in HIDDEN else PathFinder.find_spec(name, path, target)\n"
        "    find_distributions = staticmethod(PathFinder.find_distributions)\n"
        "sys.meta_path = [Hide() if f is PathFinder else f for f in sys.meta_path]\n"
        "import rl.grpo, rl.trainer, rl.cli, policies.generate, policies.static_sampler, rewards, rewards.verifiable\n"
        "print('imported')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "imported"


def test_setup_cfg_lower_bounds_are_the_oldest_tested_versions():
    """Every runtime requirement is met by the lock and by the GPU image plus its kit (or is one the GPU check never
    imports), and each `>=` bound is the oldest of those tested versions: nothing older is claimed."""
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_kit import LEFT_OUT, ROOTS, read_pins
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lock, image = read_pins(REPO / "constraints.txt"), read_pins(REPO / "bench" / "gpu_image.txt")
    kit_roots = {canonicalize_name(n) for n in ROOTS}
    left_out = {canonicalize_name(n) for n in LEFT_OUT}
    for line in filter(None, (x.strip() for x in parser["options"]["install_requires"].split("\n"))):
        req = Requirement(line)
        name = canonicalize_name(req.name)
        tested = [lock[name]]
        assert req.specifier.contains(lock[name]), f"the lock's {name} {lock[name]} is outside {line}"
        if name in kit_roots:
            tested.append(lock[name])  # the kit brings the lock's version
        elif name in image:
            assert req.specifier.contains(image[name]), f"the GPU image's {name} {image[name]} is outside {line}"
            tested.append(image[name])
        else:
            assert name in left_out, f"{name} is neither on the GPU image, nor in the kit, nor left out on purpose"
        for spec in req.specifier:
            if spec.operator == ">=":
                assert Version(spec.version) == min(map(Version, tested)), f"{line}: tested {tested}"


def test_the_self_check_holds_inside_a_bf16_autocast_region():
    """The first rollout of a GRPO run calls the guards inside its bf16 autocast region."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_kv_cache()
