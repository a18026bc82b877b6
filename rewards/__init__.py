"""Reward registry, built-in rewards and their composition for GRPO on image policies.

Public API (used by the GRPO trainer, the CLI and plugins)::

    register_reward(name, *, required_fields=None, batch_size=None, threshold=None)  # decorator
    get_reward_class(name) -> type[Reward]
    available_rewards() -> dict[str, RewardInfo]
    build_rewards(specs, device=None, dtype=None, aggregation="sum") -> RewardSuite

Built-ins: ``clip``, ``hpsv2``, ``hpsv2.1``, ``aesthetic`` (open_clip, weights from local files;
open_clip is imported only when one is built), ``pickscore`` (a transformers CLIP folder), ``ocr``
(rapidocr, bundled models), ``geneval`` (a transformers OWLv2 folder judged by GenEval's rules),
the weight-free ``color_region``, ``object_count``, ``background``, and ``remote`` (rewards served
by ``simplear-rl rewards serve``) and ``vlm_judge`` (a vision-language model behind an
OpenAI-compatible endpoint). Plugins register through the entry-point group ``simplear_rl.rewards``.
"""

from .base import REQUIRED, FunctionReward, Reward, resolve_dtype
from .errors import (
    RewardCheckpointError,
    RewardConfigError,
    RewardError,
    RewardOutputLengthError,
    RewardScoreError,
)
from .registry import (
    ENTRY_POINT_GROUP,
    RewardInfo,
    available_rewards,
    get_reward_class,
    register_reward,
)
from .specs import build_rewards
from .suite import AGGREGATIONS, ON_ERROR, Component, Gate, RewardSuite

# Built-in rewards register themselves on import.
from . import aesthetic, clip, geneval, hps, ocr, pickscore, remote, verifiable, vlm_judge  # noqa: E402,F401  isort: skip

__all__ = [
    "AGGREGATIONS",
    "ENTRY_POINT_GROUP",
    "ON_ERROR",
    "REQUIRED",
    "Component",
    "FunctionReward",
    "Gate",
    "Reward",
    "RewardCheckpointError",
    "RewardConfigError",
    "RewardError",
    "RewardInfo",
    "RewardOutputLengthError",
    "RewardScoreError",
    "RewardSuite",
    "available_rewards",
    "build_rewards",
    "get_reward_class",
    "register_reward",
    "resolve_dtype",
]
