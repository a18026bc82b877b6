"""``build_rewards``: recipe specs -> a :class:`~rewards.suite.RewardSuite`.

A spec is ``{"name": ..., "weight": 1.0, "as": alias, "clip": [lo, hi], "gate": {"reward": other,
"threshold": t}, **reward parameters}``. Everything is checked (names, parameters, gates, checkpoint
files) before the first model loads, so a bad recipe fails in seconds, naming what to fix.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from .base import REQUIRED, Reward, describe_parameters
from .errors import RewardCheckpointError, RewardConfigError
from .registry import get_reward_class
from .suite import (
    AGGREGATIONS,
    Component,
    Gate,
    RewardSuite,
    check_choice,
    evaluation_order,
)

#: Keys of a spec that configure the suite rather than the reward.
SPEC_KEYS = ("name", "weight", "as", "clip", "gate")


@dataclass
class _Plan:
    """One spec resolved and checked, nothing loaded yet."""

    name: str
    cls: type[Reward]
    kwargs: dict[str, Any]
    weight: float
    clip: tuple[float | None, float | None] | None
    gate: Gate | None


def _number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise RewardConfigError(f"{what} must be a finite number, got {value!r}")
    return number


def _parse_clip(value: Any, label: str) -> tuple[float | None, float | None] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or value[0] is None and value[1] is None:
        raise RewardConfigError(f"{label}: clip must be [lo, hi] (one side may be null), got {value!r}")
    lo, hi = (None if v is None else _number(v, f"{label}: clip bound") for v in value)
    if lo is not None and hi is not None and lo > hi:
        raise RewardConfigError(f"{label}: clip lower bound {lo} is above upper bound {hi}")
    return lo, hi


def _parse_gate(value: Any, label: str) -> Gate | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"reward", "threshold"}:
        raise RewardConfigError(f"{label}: gate must be {{reward: <other reward name>, threshold: <number>}}, got {value!r}")
    return Gate(reward=str(value["reward"]), threshold=_number(value["threshold"], f"{label}: gate threshold"))


def _plan(index: int, spec: Any, device: Any, dtype: Any) -> _Plan:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise RewardConfigError(f"rewards[{index}] must be a mapping with a 'name', got {spec!r}")
    kwargs = dict(spec)
    ref = kwargs.pop("name")
    label = f"reward {ref!r} (rewards[{index}])"
    alias = kwargs.pop("as", None)
    weight = _number(kwargs.pop("weight", 1.0), f"{label}: weight")
    clip = _parse_clip(kwargs.pop("clip", None), label)
    gate = _parse_gate(kwargs.pop("gate", None), label)
    cls = get_reward_class(ref)
    accepted = cls.parameters()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise RewardConfigError(
            f"{label} got unknown parameter(s) {unknown}. It accepts: {describe_parameters(accepted)}; "
            f"every entry also takes {list(SPEC_KEYS)}."
        )
    for key, default in (("device", device), ("dtype", dtype)):
        if default is not None and key in accepted:
            kwargs.setdefault(key, default)
    missing = [k for k, v in accepted.items() if v is REQUIRED and k not in kwargs]
    if missing:
        raise RewardConfigError(f"{label} needs parameter(s) {missing}. It accepts: {describe_parameters(accepted)}")
    # A dotted path is named after the object; a registered name is its own metric name.
    name = str(alias or (cls.name if ":" in ref else ref))
    return _Plan(name=name, cls=cls, kwargs=kwargs, weight=weight, clip=clip, gate=gate)


def _check_files(plan: _Plan) -> None:
    for key in plan.cls.path_parameters:
        path = plan.kwargs.get(key)
        if path is not None and not os.path.isfile(path):
            problem = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
            raise RewardCheckpointError(
                f"reward {plan.name!r}: {key} {os.fspath(path)!r} {problem}. Set `{key}:` in its recipe entry to a "
                "local weights file (nothing is downloaded)."
            )


def build_rewards(
    specs: Sequence[Mapping[str, Any] | str],
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    aggregation: str = "sum",
) -> RewardSuite:
    """Build the rewards a recipe names, in order, into a :class:`RewardSuite`.

    ``name`` is a registered name, an entry-point name or a dotted path ``pkg.mod:Obj``; ``as``
    gives a second instance a distinct metric name. ``device`` / ``dtype`` apply to rewards that take
    them and whose spec does not set them. Unknown parameters, missing required ones, duplicate
    names, bad gates and missing checkpoint files all fail here, before any model loads.
    ``aggregation``: ``"sum"`` (weighted sum) or ``"normalize_then_sum"``.
    """
    if isinstance(specs, (str, Mapping)) or not specs:
        raise RewardConfigError(f"rewards must be a non-empty list of reward specs, got {specs!r}")
    check_choice(aggregation, AGGREGATIONS, "reward aggregation")
    plans = [_plan(i, spec, device, dtype) for i, spec in enumerate(specs)]
    seen: dict[str, int] = {}
    for i, plan in enumerate(plans):
        if plan.name in seen:
            raise RewardConfigError(
                f"two rewards are named {plan.name!r} (rewards[{seen[plan.name]}] and rewards[{i}]); "
                f"give one a distinct metric name with `as: {plan.name}_2`"
            )
        seen[plan.name] = i
    evaluation_order({plan.name: plan.gate for plan in plans})
    for plan in plans:
        _check_files(plan)
    components = []
    for plan in plans:
        reward = plan.cls(**plan.kwargs)
        reward.name = plan.name
        components.append(Component(plan.name, reward, plan.weight, plan.clip, plan.gate))
    return RewardSuite(components, aggregation)
