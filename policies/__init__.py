"""The AR image policy: visual vocabulary, model families, checkpoint loading, codecs and the CFG rollout sampler.

Names are imported on first use, so light modules of the package (``policies.commands``,
``policies.records``) load without importing torch and transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SamplingConfig": ".guidance",
    "PolicyFamily": ".families",
    "family_for_model_type": ".families",
    "Policy": ".loading",
    "extend_llm": ".loading",
    "extend_vocabulary": ".loading",
    "load_policy": ".loading",
    "Rollout": ".rollout",
    "sample_images": ".sampler",
    "SIMPLEAR_SPECIAL_TOKENS": ".vocab",
    "VisualTokenError": ".vocab",
    "VisualVocab": ".vocab",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
