"""Refuse the dependency versions under which the sampler would be silently wrong.

pip's resolver enforces setup.cfg's bounds only when it installs; a ``--no-deps`` or ``--target``
install, a ``PYTHONPATH`` or a preinstalled environment skips it. The worst case is transformers
before 5.24: its decoders take ``cache=`` into ``**kwargs`` and ignore it, so the sampler runs with
no KV cache and no error, and every figure is wrong. So on the first rollout (:func:`ensure_supported`):

1. the installed transformers and trl are checked against the bounds the project tested
   (:data:`TESTED`, the same as setup.cfg's; a test keeps the two equal);
2. a one-time functional self-check runs a 2-layer random decoder: one cached decode step must equal
   a no-cache recompute of the same sequence (:func:`check_kv_cache`).

Either failing raises :class:`UnsupportedVersion`, a bad-input error (exit 2) of one line naming the
version found, the bound and the fix. ``SIMPLEAR_RL_SKIP_VERSION_CHECK=1`` skips both, for people
trying a new release.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from typing import Mapping

from .commands import BadInput

logger = logging.getLogger(__name__)

SKIP_ENV = "SIMPLEAR_RL_SKIP_VERSION_CHECK"
#: package -> (the bound the project tested, why it matters). Must equal setup.cfg's install_requires.
TESTED: dict[str, tuple[str, str]] = {
    "transformers": (
        ">=5.24,<5.25",
        "5.24 is the first release whose decoders take the `cache=` keyword the sampler passes (older ones ignore "
        "it: no KV cache, no error) and 5.24.x the newest the test suite passed",
    ),
    "trl": ("==1.16.0", "rl/ overrides private methods of trl 1.16.0's GRPOTrainer"),
}
_FIX = "pip install -c constraints.txt -e . (or `pip install '{name}{bound}'`)"


class UnsupportedVersion(BadInput):
    """A dependency outside the tested bounds, or a decoder whose KV cache does not work."""


def installed_version(name: str) -> str | None:
    """The version of ``name`` this process runs: the imported module's ``__version__`` if it is imported,
    else the installed distribution's (without importing it); None if it is not installed."""
    module = sys.modules.get(name)
    if module is not None and isinstance(getattr(module, "__version__", None), str):
        return module.__version__
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _message(name: str, found: str, problem: str) -> str:
    bound, why = TESTED[name]
    return (
        f"{name} {found} is installed but simplear-rl needs {name}{bound} ({why}){problem}; fix: "
        f"{_FIX.format(name=name, bound=bound)}, or set {SKIP_ENV}=1 to run an untested release anyway"
    )


def check_versions(found: Mapping[str, str | None] | None = None) -> None:
    """Raise :class:`UnsupportedVersion` for the first package of :data:`TESTED` outside its bound.

    ``found`` maps package -> version (default: :func:`installed_version`); a package that is not
    installed is not checked here (the import that needs it fails on its own).
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    for name, (bound, _) in TESTED.items():
        version = installed_version(name) if found is None else found.get(name)
        if version is None:
            continue
        try:
            ok = Version(version) in SpecifierSet(bound)
        except InvalidVersion:
            ok = False
        if not ok:
            raise UnsupportedVersion(_message(name, version, ""))


def check_kv_cache(model=None) -> None:
    """Raise :class:`UnsupportedVersion` unless one cached decode step equals a no-cache recompute.

    ``model`` defaults to a 2-layer random Qwen2 built here (without touching the global RNG). It is
    called the way the sampler calls it: ``cache=`` with a ``DynamicCache``, explicit positions.
    """
    import torch
    from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 initializer_range=0.5, tie_word_embeddings=True, use_sliding_window=False)
            model = Qwen2ForCausalLM(config).eval()
    ids = torch.tensor([[3, 17, 42, 8, 25, 61]])
    positions = torch.arange(ids.size(1))[None]
    mask = torch.ones_like(ids)
    # The first rollout may call this inside its bf16 autocast region: the comparison is made in fp32.
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1]
        cache = DynamicCache()
        model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], cache=cache,
              use_cache=True)
        filled = cache.get_seq_length()
        step = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], cache=cache,
                     use_cache=True).logits[:, -1]
    gap = (step.float().log_softmax(-1) - full.float().log_softmax(-1)).abs().max().item()
    if filled != ids.size(1) - 1 or not gap <= 1e-4:
        problem = (f": its decoder's KV cache fails a self-check (the prompt filled {filled} of "
                   f"{ids.size(1) - 1} cache positions; one cached step differs from a no-cache recompute by "
                   f"{gap:.2g} nats)")
        raise UnsupportedVersion(_message("transformers", installed_version("transformers") or "?", problem))


_checked = False


def ensure_supported() -> None:
    """:func:`check_versions` and :func:`check_kv_cache`, once per process (skipped with ``SKIP_ENV=1``)."""
    global _checked
    if _checked:
        return
    if os.environ.get(SKIP_ENV, "").lower() in ("1", "true", "yes"):
        logger.warning("%s is set: transformers/trl versions and the KV cache are not checked", SKIP_ENV)
    else:
        check_versions()
        check_kv_cache()
    _checked = True
