"""A recipe's rewards scored together: clipping, gating, bad-output handling, totals, TRL adapter.

Per batch, every component is scored once, in gate order (a gated reward after the reward that
gates it); TRL's per-reward functions (:meth:`RewardSuite.trl_reward_funcs`) all read that one
result. The total that drives training is computed by TRL from ``reward_weights`` and
``multi_objective_aggregation``; :meth:`RewardSuite.combine` reproduces it for offline scoring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .base import Reward, check_columns
from .errors import RewardConfigError, RewardOutputLengthError, RewardScoreError

AGGREGATIONS = ("sum", "normalize_then_sum")
ON_ERROR = ("fail", "drop")
#: Keyword arguments TRL passes to reward functions that are not dataset columns.
TRL_ARGUMENTS = frozenset({"trainer_state", "log_extra", "log_metric", "environments"})
#: TRL's epsilon in per-group normalisation.
NORMALIZE_EPS = 1e-4


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``choices``, else a :class:`RewardConfigError` listing them."""
    if value not in choices:
        raise RewardConfigError(f"{what} must be one of {list(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Gate:
    """The gated reward counts only where reward ``reward`` scores at least ``threshold`` (else 0)."""

    reward: str
    threshold: float


@dataclass
class Component:
    """One reward of a suite with its recipe-level settings."""

    name: str
    reward: Reward
    weight: float = 1.0
    clip: tuple[float | None, float | None] | None = None
    gate: Gate | None = None


@dataclass
class ScoredBatch:
    """Components of one batch (NaN where dropped), how many rows each dropped, gate pass rates."""

    values: dict[str, torch.Tensor]
    dropped: dict[str, int] = field(default_factory=dict)
    gate_pass: dict[str, float] = field(default_factory=dict)


def evaluation_order(gates: Mapping[str, Gate | None]) -> list[str]:
    """Names ordered so that a gating reward comes before the rewards it gates.

    Raises :class:`RewardConfigError` for a gate on an unknown reward, on itself, or a cycle.
    """
    for name, gate in gates.items():
        if gate is None:
            continue
        if gate.reward == name:
            raise RewardConfigError(f"reward {name!r} cannot gate itself")
        if gate.reward not in gates:
            raise RewardConfigError(
                f"reward {name!r} is gated by {gate.reward!r}, which is not in the recipe's rewards "
                f"({sorted(gates)}); add it (with weight 0 to use it only as a gate)"
            )
    order: list[str] = []

    def visit(name: str, chain: list[str]) -> None:
        if name in order:
            return
        if name in chain:
            raise RewardConfigError(f"reward gates form a cycle: {' -> '.join(chain + [name])}")
        gate = gates[name]
        if gate is not None:
            visit(gate.reward, chain + [name])
        order.append(name)

    for name in gates:
        visit(name, [])
    return order


def _nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Standard deviation ignoring NaN, with Bessel's correction (NaN below two values), as TRL."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * count / (count - 1)
    return torch.where(count > 1, variance, torch.full_like(variance, float("nan"))).sqrt()


def _image_groups(images: Any, n: int) -> list[tuple[list[int], torch.Tensor]]:
    """Rows grouped by image size, each group stacked: ``[(row indices, [b,3,H,W]), ...]``."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        items: Sequence[Any] = images
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        raise RewardScoreError(
            f"images must be a float tensor [B,3,H,W] or a list of [3,H,W] tensors in [0,1], got {type(images).__name__}"
        )
    if len(items) != n:
        raise RewardScoreError(f"got {len(items)} images but {n} prompts; there must be one image per prompt")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(items):
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            what = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise RewardScoreError(f"image {i} must be a float [3,H,W] tensor in [0,1], got {what}")
        by_shape.setdefault(tuple(image.shape), []).append(i)
    if len(by_shape) == 1 and isinstance(images, torch.Tensor):
        return [(list(range(n)), images)]
    return [(rows, torch.stack([items[i] for i in rows])) for rows in by_shape.values()]


class RewardSuite:
    """The rewards of a recipe: their names, weights, aggregation, required columns and scoring."""

    def __init__(self, components: Sequence[Component], aggregation: str = "sum"):
        if not components:
            raise RewardConfigError("a reward suite needs at least one reward")
        self.aggregation = check_choice(aggregation, AGGREGATIONS, "reward aggregation")
        self._components = {c.name: c for c in components}
        if len(self._components) != len(components):
            raise RewardConfigError(f"reward names must be unique, got {[c.name for c in components]}")
        self._order = evaluation_order({c.name: c.gate for c in components})

    # ------------------------------------------------------------ what it is
    @property
    def names(self) -> list[str]:
        """Component names in recipe order (TRL metric ``rewards/<name>/mean``)."""
        return list(self._components)

    @property
    def weights(self) -> list[float]:
        """Component weights in recipe order (TRL's ``reward_weights``)."""
        return [c.weight for c in self._components.values()]

    @property
    def rewards(self) -> dict[str, Reward]:
        """Name -> reward object (e.g. for ``suite.rewards["color_region"].passed(scores)``)."""
        return {name: c.reward for name, c in self._components.items()}

    @property
    def components(self) -> list[Component]:
        return list(self._components.values())

    @property
    def required_fields(self) -> list[str]:
        """Every metadata column some reward reads, sorted."""
        return sorted({f for c in self._components.values() for f in c.reward.required_fields})

    def validate_columns(self, columns: set[str] | Sequence[str]) -> None:
        """Fail at start-up, naming the reward, the missing column and the fix, if a column is missing."""
        available = set(columns)
        problems = [
            f"reward {c.name!r} needs metadata column {f!r}"
            for c in self._components.values()
            for f in c.reward.required_fields
            if f not in available
        ]
        if problems:
            raise RewardConfigError(
                f"{'; '.join(problems)}, but the prompt set has only {sorted(available)}. Use a prompt set "
                "that carries these columns, or remove those rewards from the recipe's `rewards:` list."
            )

    def __repr__(self) -> str:
        parts = ", ".join(f"{c.name}*{c.weight:g}" for c in self._components.values())
        return f"RewardSuite([{parts}], aggregation={self.aggregation!r})"

    # --------------------------------------------------------------- scoring
    def score(self, images: Any, prompts: Sequence[str], on_error: str = "fail", **metadata: Any) -> dict[str, torch.Tensor]:
        """Every component for ``B`` rows (after clip and gate): ``{name: float32 [B]}``.

        ``images``: float ``[B,3,H,W]`` or a list of ``[3,H,W]`` tensors in ``[0,1]`` (sizes may
        differ between rows). ``on_error="fail"`` raises on a reward that raises or returns NaN/inf,
        naming it and the prompt; ``"drop"`` leaves NaN in those rows.
        """
        return self.evaluate(images, prompts, metadata, on_error).values

    def evaluate(self, images: Any, prompts: Sequence[str], metadata: Mapping[str, Any], on_error: str = "fail") -> ScoredBatch:
        """Like :meth:`score`, also reporting dropped rows and gate pass rates per component."""
        check_choice(on_error, ON_ERROR, "on_error")
        prompts = list(prompts)
        n = len(prompts)
        self.validate_columns(set(metadata))
        check_columns(metadata, n)
        groups = [
            (rows, batch, [prompts[i] for i in rows], {k: [v[i] for i in rows] for k, v in metadata.items()})
            for rows, batch in _image_groups(images, n)
        ]
        result = ScoredBatch(values={})
        for name in self._order:
            component = self._components[name]
            values = torch.full((n,), float("nan"))
            for rows, batch, group_prompts, columns in groups:
                values[rows] = self._run(component.reward, batch, group_prompts, columns, rows, on_error)
            bad = ~torch.isfinite(values)
            if bad.any():
                if on_error == "fail":
                    row = int(bad.nonzero()[0])
                    raise RewardScoreError(
                        f"reward {name!r} returned {values[row].item()} for prompt {prompts[row]!r} (row {row}); "
                        "fix the reward, or set the reward on_error option to 'drop' to skip such rows."
                    )
                values[bad] = float("nan")
            if component.clip is not None:
                values = values.clamp(*component.clip)
            if component.gate is not None:
                gate_values = result.values[component.gate.reward]
                passes = gate_values >= component.gate.threshold
                # Where the gating reward was dropped the gate cannot be decided: drop this row too.
                values = torch.where(passes, values, torch.where(torch.isnan(gate_values), float("nan"), 0.0))
                result.gate_pass[name] = passes.float().mean().item()
            result.values[name] = values
            result.dropped[name] = int(torch.isnan(values).sum())
        result.values = {name: result.values[name] for name in self.names}
        return result

    def _run(
        self,
        reward: Reward,
        images: torch.Tensor,
        prompts: list[str],
        columns: dict[str, list[Any]],
        rows: list[int],
        on_error: str,
    ) -> torch.Tensor:
        """Score one same-size group; if it raises, rescore row by row to find the culprits."""
        try:
            return reward(images, prompts, **columns)
        except RewardOutputLengthError:
            raise
        except Exception as batch_exc:
            values = torch.full((len(prompts),), float("nan"))
            for j, prompt in enumerate(prompts):
                try:
                    values[j : j + 1] = reward(images[j : j + 1], [prompt], **{k: v[j : j + 1] for k, v in columns.items()})
                except RewardOutputLengthError:
                    raise
                except Exception as exc:
                    if on_error == "fail":
                        raise RewardScoreError(
                            f"reward {reward.name!r} raised on prompt {prompt!r} (row {rows[j]}): "
                            f"{type(exc).__name__}: {exc}. Fix the reward, or set the reward on_error option "
                            "to 'drop' to skip such rows."
                        ) from exc
            if on_error == "fail":
                raise RewardScoreError(
                    f"reward {reward.name!r} raised on a batch of {len(prompts)} rows starting with prompt "
                    f"{prompts[0]!r} (row {rows[0]}), though each row alone scores: "
                    f"{type(batch_exc).__name__}: {batch_exc}. Lower its batch_size."
                ) from batch_exc
            return values

    # ---------------------------------------------------------- composition
    def combine(self, scores: Mapping[str, torch.Tensor], group_size: int | None = None) -> torch.Tensor:
        """The total reward from components, as TRL computes it before advantages.

        ``sum``: weighted sum. ``normalize_then_sum``: each component normalised within groups of
        ``group_size`` consecutive rows (``(x - mean) / (std + 1e-4)``; default: all rows are one
        group), then the weighted sum. NaN components are skipped; a row with none is NaN.
        """
        stacked = torch.stack([torch.as_tensor(scores[name], dtype=torch.float32) for name in self.names], dim=1)
        if self.aggregation == "normalize_then_sum":
            rows = stacked.shape[0]
            size = group_size or rows
            if rows % size:
                raise RewardConfigError(f"{rows} rows cannot be split into groups of {size}")
            grouped = stacked.view(-1, size, stacked.shape[1])
            std = _nanstd(grouped, dim=1) if size > 1 else torch.zeros_like(grouped[:, :1])
            stacked = ((grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (std + NORMALIZE_EPS)).view(rows, -1)
        total = (stacked * torch.tensor(self.weights)).nansum(dim=1)
        return total.masked_fill(torch.isnan(stacked).all(dim=1), float("nan"))

    def total(self, images: Any, prompts: Sequence[str], group_size: int | None = None, on_error: str = "fail", **metadata: Any) -> torch.Tensor:
        """Score and :meth:`combine` in one call (offline scoring)."""
        return self.combine(self.score(images, prompts, on_error=on_error, **metadata), group_size)

    # ------------------------------------------------------------ TRL adapter
    def trl_reward_funcs(self, on_error: str = "fail") -> list[Callable[..., list[float | None]]]:
        """One TRL reward function per component, ``__name__`` = component name.

        Signature ``f(prompts, completions, completion_ids, images, log_metric=None, **kwargs)``;
        ``images`` is the list of ``[3,H,W]`` tensors the trainer puts in ``extra_fields``, the
        kwargs carry the metadata columns. The first function called for a batch scores every
        component; the others read that result. ``on_error="drop"`` returns ``None`` for dropped
        rows and logs ``rewards/<name>/dropped``; gated components also log
        ``rewards/<name>/gate_pass``.
        """
        return _TRLAdapter(self, check_choice(on_error, ON_ERROR, "on_error")).functions()


class _TRLAdapter:
    """Scores a batch once for all components; holds the batch so its identity stays valid."""

    def __init__(self, suite: RewardSuite, on_error: str):
        self.suite = suite
        self.on_error = on_error
        self._batch: tuple[Any, Any] | None = None
        self._result: ScoredBatch | None = None
        self._unserved: set[str] = set()

    def functions(self) -> list[Callable[..., list[float | None]]]:
        return [self._function(name) for name in self.suite.names]

    def _scored(self, images: Any, prompts: Sequence[str], kwargs: dict[str, Any]) -> ScoredBatch:
        if self._batch is None or self._batch[0] is not images or self._batch[1] is not prompts:
            n = len(prompts)
            metadata = {
                k: v
                for k, v in kwargs.items()
                if k not in TRL_ARGUMENTS and isinstance(v, (list, tuple)) and len(v) == n
            }
            self._result = self.suite.evaluate(images, prompts, metadata, self.on_error)
            self._batch = (images, prompts)
            self._unserved = set(self.suite.names)
        assert self._result is not None
        return self._result

    def _function(self, name: str) -> Callable[..., list[float | None]]:
        def reward_func(prompts, completions=None, completion_ids=None, images=None, log_metric=None, **kwargs):
            if images is None:
                raise RewardScoreError(
                    f"reward {name!r} got no images: the trainer must put the decoded images in extra_fields['images']"
                )
            result = self._scored(images, prompts, kwargs)
            self._unserved.discard(name)
            if not self._unserved:  # every component has read this batch: let it go
                self._batch = self._result = None
            if log_metric is not None:
                if self.on_error == "drop":
                    log_metric(f"rewards/{name}/dropped", float(result.dropped[name]))
                if name in result.gate_pass:
                    log_metric(f"rewards/{name}/gate_pass", result.gate_pass[name])
            return [None if math.isnan(v) else v for v in result.values[name].tolist()]

        reward_func.__name__ = reward_func.__qualname__ = name
        return reward_func
