"""The AR image policy: visual vocabulary, checkpoint loading, codecs and the CFG rollout sampler."""

from .guidance import SamplingConfig
from .loading import Policy, extend_llm, extend_vocabulary, load_policy
from .sampler import Rollout, sample_images
from .vocab import SIMPLEAR_SPECIAL_TOKENS, VisualTokenError, VisualVocab

__all__ = [
    "SIMPLEAR_SPECIAL_TOKENS",
    "Policy",
    "Rollout",
    "SamplingConfig",
    "VisualTokenError",
    "VisualVocab",
    "extend_llm",
    "extend_vocabulary",
    "load_policy",
    "sample_images",
]
