"""The reward contract: ``reward(images, prompts, **metadata) -> Tensor[B]``.

``images`` are float ``[B,3,H,W]`` in ``[0,1]``; ``prompts`` the B captions without template tokens;
``metadata`` per-row lists keyed by prompt-set column. A reward has a unique ``name`` (its metric is
``rewards/<name>/mean``), a ``batch_size``, a ``device`` and the ``required_fields`` it reads.

Write a class (subclass :class:`Reward`, implement :meth:`Reward.score_batch`) when the reward loads a
model once and keeps it; write a function and decorate it with ``@register_reward`` otherwise (it is
wrapped in a :class:`FunctionReward`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Sequence

import torch

from policies.dtypes import named_dtype

from .errors import RewardConfigError, RewardOutputLengthError, RewardScoreError

#: Marks a parameter without default in :meth:`Reward.parameters`.
REQUIRED = inspect.Parameter.empty


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``None`` -> float32; accepts a torch dtype or a name such as ``"bf16"`` / ``"float16"``
    (:data:`policies.dtypes.DTYPE_NAMES`)."""
    return torch.float32 if dtype is None else named_dtype(dtype, error=RewardConfigError)


def _own_parameters(func: Callable, skip: int) -> tuple[dict[str, Any], bool]:
    """Keyword-passable parameters of ``func`` after the first ``skip``, and whether it has ``**kw``."""
    params = list(inspect.signature(func).parameters.values())[skip:]
    named = {
        p.name: p.default
        for p in params
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def check_columns(metadata: dict[str, Any], n: int, where: str = "") -> None:
    """Every metadata column must hold one value per prompt; the message names the column."""
    for key, column in metadata.items():
        rows = len(column) if hasattr(column, "__len__") else None
        if rows != n:
            raise RewardScoreError(
                f"{where}metadata column {key!r} must hold one value per prompt ({n} rows), "
                f"got {rows if rows is not None else type(column).__name__}"
            )


class Reward:
    """Base class of every reward. Subclasses implement :meth:`score_batch` for one batch.

    Class attributes a subclass may set:
        name: registered name (set by ``@register_reward``); an instance may carry an alias.
        required_fields: metadata columns the reward reads; a prompt set without them is refused
            at start-up.
        default_batch_size: rows per :meth:`score_batch` call unless the recipe sets ``batch_size``.
        path_parameters: constructor parameters naming files that must exist; checked for every
            reward of a recipe before any model loads.
        threshold: a score at or above it counts as "passed" (see :meth:`passed`); None if the
            reward has no notion of accuracy.
    """

    name: ClassVar[str] = ""
    required_fields: ClassVar[tuple[str, ...]] = ()
    default_batch_size: ClassVar[int] = 64
    path_parameters: ClassVar[tuple[str, ...]] = ()
    threshold: ClassVar[float | None] = None

    def __init__(self, *, batch_size: int | None = None, device: str | torch.device | None = None):
        batch_size = self.default_batch_size if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise RewardConfigError(f"reward {self.name!r}: batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    # ------------------------------------------------------------------ scoring
    def score_batch(self, images: torch.Tensor, prompts: list[str], **metadata: Any) -> torch.Tensor:
        """Score one batch (at most ``batch_size`` rows, already on ``self.device``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_batch")

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **metadata: Any) -> torch.Tensor:
        """Score ``B`` rows in batches of ``batch_size``; returns float32 ``[B]`` on the CPU."""
        n = len(prompts)
        self._check_inputs(images, n, metadata)
        out = []
        for start in range(0, n, self.batch_size):
            rows = slice(start, start + self.batch_size)
            chunk = images[rows].to(self.device)
            with torch.no_grad():
                values = self.score_batch(chunk, list(prompts[rows]), **{k: v[rows] for k, v in metadata.items()})
            values = torch.as_tensor(values).detach().to("cpu", torch.float32).reshape(-1)
            if values.numel() != chunk.shape[0]:
                raise RewardOutputLengthError(
                    f"reward {self.name!r} returned {values.numel()} values for a batch of "
                    f"{chunk.shape[0]} images (expected {chunk.shape[0]}, one per image)."
                )
            out.append(values)
        return torch.cat(out) if out else torch.zeros(0)

    def _check_inputs(self, images: torch.Tensor, n: int, metadata: dict[str, Any]) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise RewardScoreError(f"reward {self.name!r} needs images as a float tensor [B,3,H,W], got {shape}")
        if not images.is_floating_point():
            raise RewardScoreError(
                f"reward {self.name!r} needs float images in [0,1], got {images.dtype}; divide uint8 pixels by 255."
            )
        if images.shape[0] != n:
            raise RewardScoreError(f"reward {self.name!r} got {images.shape[0]} images but {n} prompts")
        check_columns(metadata, n, f"reward {self.name!r}: ")

    def passed(self, scores: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B]``: which scores count as correct (for held-out accuracy)."""
        if self.threshold is None:
            raise RewardConfigError(f"reward {self.name!r} defines no pass threshold, so it has no accuracy")
        return torch.as_tensor(scores) >= self.threshold

    # ------------------------------------------------------------ introspection
    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Constructor parameters and their defaults (:data:`REQUIRED` where there is none).

        Follows ``**kwargs`` up the class hierarchy, so a subclass that forwards them to
        ``super().__init__`` also lists ``batch_size`` and ``device``.
        """
        merged: dict[str, Any] = {}
        for klass in cls.__mro__:
            if "__init__" not in vars(klass) or klass is object:
                continue
            named, forwards = _own_parameters(vars(klass)["__init__"], skip=1)
            for key, default in named.items():
                merged.setdefault(key, default)
            if not forwards:
                break
        if merged.get("batch_size", REQUIRED) is None:
            merged["batch_size"] = cls.default_batch_size  # what None means, shown in `rewards list`
        return merged

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, batch_size={self.batch_size}, device={str(self.device)!r})"


class FunctionReward(Reward):
    """A reward written as a function ``fn(images, prompts, <required fields>, <parameters>)``.

    Parameters of ``fn`` after ``images`` and ``prompts`` that are listed in ``required_fields``
    receive those metadata columns; the others are build parameters (set from the recipe spec).
    Further metadata columns are passed only if ``fn`` takes ``**kwargs``.
    ``@register_reward`` makes one subclass per function, with ``fn`` set.
    """

    fn: ClassVar[Callable[..., Any]]

    def __init__(self, *, batch_size: int | None = None, device: str | torch.device | None = None, **params: Any):
        super().__init__(batch_size=batch_size, device=device)
        self.params = params
        self._named, self._takes_all = self._signature()

    @classmethod
    def _signature(cls) -> tuple[dict[str, Any], bool]:
        return _own_parameters(cls.fn, skip=2)

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        named, _ = cls._signature()
        params = {k: v for k, v in named.items() if k not in cls.required_fields}
        return {**params, **super().parameters()}

    def score_batch(self, images: torch.Tensor, prompts: list[str], **metadata: Any) -> torch.Tensor:
        columns = {
            k: v
            for k, v in metadata.items()
            if k in self.required_fields or (self._takes_all and k not in self._named)
        }
        return self.fn(images, prompts, **columns, **self.params)


def describe_parameters(params: dict[str, Any]) -> str:
    """``checkpoint (required), arch='ViT-H-14', ...`` for messages and ``rewards list``."""
    if not params:
        return "(none)"
    return ", ".join(f"{k} (required)" if v is REQUIRED else f"{k}={v!r}" for k, v in params.items())
