"""The reward registry: names -> reward classes, filled by decorator, entry point or dotted path.

- ``@register_reward("name")`` on a :class:`~rewards.base.Reward` subclass or on a function.
- Entry points in the group ``simplear_rl.rewards`` (a separately installed package adds rewards
  without touching this code). An entry point's value is a reward function or class (registered
  under the entry point's name unless it is already decorated) or a module that registers its
  rewards on import. Entry points are loaded lazily (on :func:`available_rewards` or when a name is
  not found) and a broken one only produces a warning naming it.
- A dotted path ``pkg.module:Object`` in place of a name.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import types
import warnings
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any, Callable, Iterator

from .base import FunctionReward, Reward
from .errors import RewardConfigError

#: Entry-point group plugins declare their rewards in.
ENTRY_POINT_GROUP = "simplear_rl.rewards"
BUILTIN = "builtin"


@dataclass(frozen=True)
class RewardInfo:
    """What ``simplear-rl rewards list`` shows about one registered reward."""

    name: str
    cls: type[Reward]
    source: str  # "builtin", "entry point <name> (<distribution>)", "dotted path <path>", "decorator (<module>)"
    parameters: dict[str, Any]
    required_fields: tuple[str, ...]
    threshold: float | None
    summary: str


_REGISTRY: dict[str, tuple[type[Reward], str]] = {}
_LOADED_ENTRY_POINTS: set[tuple[str, str]] = set()
#: entry-point name -> why it failed to load (shown when a missing name is asked for).
_FAILED_ENTRY_POINTS: dict[str, str] = {}
#: Source recorded for registrations made while an entry point or dotted path is being imported.
_LOADING_SOURCE: ContextVar[str | None] = ContextVar("_LOADING_SOURCE", default=None)


@contextlib.contextmanager
def _loading_as(source: str) -> Iterator[None]:
    token = _LOADING_SOURCE.set(source)
    try:
        yield
    finally:
        _LOADING_SOURCE.reset(token)


def _default_source(obj: Any) -> str:
    loading = _LOADING_SOURCE.get()
    if loading is not None:
        return loading
    module = getattr(obj, "__module__", "") or ""
    return BUILTIN if module == "rewards" or module.startswith("rewards.") else f"decorator ({module})"


def _function_reward_class(fn: Callable[..., Any], name: str, required_fields: tuple[str, ...]) -> type[FunctionReward]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2 or any(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[:2]):
        raise RewardConfigError(
            f"reward function {fn.__qualname__!r} must take (images, prompts, ...) as its first two parameters"
        )
    names = {p.name for p in params}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    missing = [f for f in required_fields if f not in names and not takes_all]
    if missing:
        raise RewardConfigError(
            f"reward function {fn.__qualname__!r} declares required_fields {missing} but has no parameter of "
            "that name (and no **kwargs) to receive them"
        )
    return types.new_class(
        f"{fn.__name__}_reward",
        (FunctionReward,),
        exec_body=lambda ns: ns.update(
            fn=staticmethod(fn),
            __doc__=fn.__doc__,
            __module__=fn.__module__,
            __qualname__=f"{fn.__qualname__}_reward",
        ),
    )


def _add(name: str, cls: type[Reward], source: str) -> None:
    existing = _REGISTRY.get(name)
    if existing is not None and not _same_definition(existing[0], cls):
        raise RewardConfigError(
            f"reward name {name!r} is already registered by {_describe(existing[0])} ({existing[1]}); "
            f"{_describe(cls)} ({source}) cannot take it. Pick another name, or use `as:` in the recipe "
            "for a second instance of the same reward."
        )
    _REGISTRY[name] = (cls, source)


def _same_definition(a: type, b: type) -> bool:
    # A module imported twice (e.g. by path and by entry point) re-registers the same definition.
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _describe(cls: type) -> str:
    fn = getattr(cls, "fn", None)
    target = fn if fn is not None else cls
    return f"{target.__module__}.{target.__qualname__}"


def register_reward(
    name: str,
    *,
    required_fields: list[str] | tuple[str, ...] | None = None,
    batch_size: int | None = None,
    threshold: float | None = None,
) -> Callable[[Any], Any]:
    """Register a reward under ``name`` (its metric becomes ``rewards/<name>/mean``).

    On a :class:`Reward` subclass: registers the class and returns it. On a function
    ``fn(images, prompts, ...)``: wraps it in a :class:`FunctionReward` subclass and returns an
    instance with default parameters, so the decorated name is still callable as
    ``fn(images, prompts, **metadata)`` and carries ``name``, ``batch_size``, ``device`` and
    ``required_fields``. ``required_fields``, ``batch_size`` (default rows per call) and ``threshold``
    (pass mark for accuracy) override the class attributes of the same names.
    """
    if not isinstance(name, str) or not name or name != name.strip() or ":" in name:
        raise RewardConfigError(f"reward name must be a non-empty string without ':' or outer spaces, got {name!r}")

    def decorate(obj: Any) -> Any:
        if inspect.isclass(obj):
            if not issubclass(obj, Reward):
                raise RewardConfigError(
                    f"{obj.__qualname__} cannot be registered as reward {name!r}: a reward class must "
                    "subclass rewards.Reward (or write the reward as a function)"
                )
            cls = obj
        elif callable(obj):
            cls = _function_reward_class(obj, name, tuple(required_fields or ()))
        else:
            raise RewardConfigError(f"cannot register {obj!r} as reward {name!r}: not a class or function")
        _add(name, cls, _default_source(obj))  # refuses a taken name before the class is touched
        cls.name = name
        if required_fields is not None:
            cls.required_fields = tuple(required_fields)
        if batch_size is not None:
            cls.default_batch_size = int(batch_size)
        if threshold is not None:
            cls.threshold = float(threshold)
        return cls if cls is obj else cls()

    return decorate


# ------------------------------------------------------------------ lookups
def _as_reward_class(obj: Any, name: str, source: str) -> type[Reward]:
    """Register ``obj`` (a reward class, a decorated or a plain function) and return its class.

    An object that carries a reward name keeps it; a plain one is registered under ``name``.
    """
    cls = type(obj) if isinstance(obj, Reward) else obj if inspect.isclass(obj) and issubclass(obj, Reward) else None
    if cls is not None and vars(cls).get("name"):  # its own name, not one inherited from a registered parent
        _add(cls.name, cls, source)
        return cls
    with _loading_as(source):
        wrapped = register_reward(name, required_fields=getattr(obj, "required_fields", None))(obj)
    return wrapped if inspect.isclass(wrapped) else type(wrapped)


def _load_entry_points() -> None:
    """Import entry points not yet loaded; a failure warns, naming the plugin, and is remembered."""
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in _LOADED_ENTRY_POINTS:
            continue
        _LOADED_ENTRY_POINTS.add(key)
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
        source = f"entry point {ep.name} ({dist})"
        try:
            with _loading_as(source):
                obj = ep.load()
            if isinstance(obj, types.ModuleType):
                # Its rewards registered on import (or earlier, if it was imported before): label them.
                for name, (cls, _) in list(_REGISTRY.items()):
                    if cls.__module__ == obj.__name__ or cls.__module__.startswith(obj.__name__ + "."):
                        _REGISTRY[name] = (cls, source)
            else:
                cls = _as_reward_class(obj, ep.name, source)
                if cls.name != ep.name:  # a decorated object under another entry-point name: both work
                    _add(ep.name, cls, source)
        except Exception as exc:  # a broken plugin must not take `rewards list` down with it
            reason = f"{type(exc).__name__}: {exc}"
            _FAILED_ENTRY_POINTS[ep.name] = f"{ep.value} from {dist}: {reason}"
            warnings.warn(
                f"reward plugin {ep.name!r} ({ep.value} from {dist}) failed to load and is skipped: {reason}",
                RuntimeWarning,
                stacklevel=2,
            )


def _import_dotted(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise RewardConfigError(f"dotted reward path {path!r} must look like 'package.module:Object'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise RewardConfigError(f"cannot import reward {path!r}: {type(exc).__name__}: {exc}") from exc
    return obj


def get_reward_class(name: str) -> type[Reward]:
    """The reward class for a registered name, an entry-point name or a dotted path ``pkg.mod:Obj``."""
    if name in _REGISTRY:
        return _REGISTRY[name][0]
    if ":" in name:
        source = f"dotted path {name}"
        with _loading_as(source):
            obj = _import_dotted(name)
        return _as_reward_class(obj, name.rpartition(":")[2].rpartition(".")[2], source)
    _load_entry_points()
    if name in _REGISTRY:
        return _REGISTRY[name][0]
    failed = "".join(f"\n  plugin {ep!r} failed to load: {why}" for ep, why in sorted(_FAILED_ENTRY_POINTS.items()))
    raise RewardConfigError(
        f"unknown reward {name!r}. Registered rewards: {sorted(_REGISTRY)}.{failed}\n"
        "Use one of those names, install the package whose entry point provides it, or give a dotted "
        "path 'package.module:Object'."
    )


def available_rewards() -> dict[str, RewardInfo]:
    """Every registered reward (built-ins, entry points, decorated and dotted), sorted by name."""
    _load_entry_points()
    infos = {}
    for name in sorted(_REGISTRY):
        cls, source = _REGISTRY[name]
        doc = inspect.getdoc(cls) or ""
        infos[name] = RewardInfo(
            name=name,
            cls=cls,
            source=source,
            parameters=cls.parameters(),
            required_fields=tuple(cls.required_fields),
            threshold=cls.threshold,
            summary=doc.strip().splitlines()[0] if doc.strip() else "",
        )
    return infos
