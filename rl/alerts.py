"""Alert rules over the metrics stream: see reward hacking and collapse while the run goes.

A rule looks at the records logged so far (``metrics.jsonl``: one dict per logging step) and says which of its
conditions hold at the newest step. A condition *fires* when it starts to hold (it re-arms once it stops
holding), printing one line and appending one JSON object to ``<output_dir>/alerts.jsonl``; with
``stop_on_alert: true`` the run saves a checkpoint and stops (exit 0).

Rules and their defaults (override any parameter, or switch a rule off, with the recipe's ``alerts:`` mapping,
e.g. ``alerts: {kl_spike: {factor: 3}, diversity_floor: false}``):

- ``reward_divergence``: the trained ``reward`` rises by more than ``rise`` (relative) over the last ``window``
  steps while a monitor reward (``monitor/<name>/mean``) or a held-out reward (``heldout/<name>/mean``) falls by
  more than ``drop``. A change over a window is the mean of its later half minus the mean of its earlier half,
  relative to the earlier half's magnitude.
- ``diversity_floor``: ``diversity/codes`` below ``codes_floor`` or ``diversity/embedding`` below
  ``embedding_floor``.
- ``diversity_drop``: a diversity metric's mean over its last ``window`` points fell by more than ``fraction`` of
  its mean over the run's first ``window`` points.
- ``entropy_collapse``: the same test on the sampler's entropy (``entropy/visual_sampler``).
- ``kl_spike``: ``kl`` above ``factor`` times the median of the previous ``window`` steps' values and above
  ``min_kl``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from transformers import TrainerCallback

from .curves import read_metrics, series

ALERTS_FILE = "alerts.jsonl"
DIVERSITY_KEYS = ("diversity/codes", "diversity/embedding")
SAMPLER_ENTROPY = "entropy/visual_sampler"

#: Every rule's parameters and their defaults.
DEFAULT_RULES: dict[str, dict[str, float]] = {
    "reward_divergence": {"window": 50, "rise": 0.02, "drop": 0.05},
    "diversity_floor": {"codes_floor": 0.05, "embedding_floor": 0.01},
    "diversity_drop": {"window": 10, "fraction": 0.5},
    "entropy_collapse": {"window": 10, "fraction": 0.5},
    "kl_spike": {"window": 20, "factor": 5.0, "min_kl": 0.01},
}


@dataclass
class Alert:
    """One firing: the rule, the step, the metric it concerns, a one-line message and the numbers."""

    rule: str
    step: int
    metric: str
    message: str
    values: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return f"alert: {self.rule} at step {self.step}: {self.message}"


def resolve_rules(overrides: Any = None) -> dict[str, dict[str, float]]:
    """The active rules with their parameters: the defaults, updated by ``overrides`` (a mapping, or its YAML/JSON
    text) of ``rule -> {param: value} | true | false``. Unknown rules or parameters raise ``ValueError``."""
    if isinstance(overrides, str):
        overrides = yaml.safe_load(overrides) if overrides.strip() else None
    rules = {name: dict(params) for name, params in DEFAULT_RULES.items()}
    if overrides is None:
        return rules
    if not isinstance(overrides, dict):
        raise ValueError(f"alerts must be a mapping rule -> {{parameter: value}} | false, got {overrides!r}")
    for name, value in overrides.items():
        if name not in DEFAULT_RULES:
            raise ValueError(f"alerts: unknown rule {name!r}; rules are {', '.join(DEFAULT_RULES)}")
        if value is False or value is None:
            del rules[name]
        elif value is True:
            continue
        elif isinstance(value, dict):
            unknown = sorted(set(value) - set(DEFAULT_RULES[name]))
            if unknown:
                raise ValueError(f"alerts: rule {name!r} has no parameter(s) {unknown}; it takes "
                                 + ", ".join(f"{k} (default {v})" for k, v in DEFAULT_RULES[name].items()))
            for key, number in value.items():
                try:
                    rules[name][key] = float(number)
                except (TypeError, ValueError):
                    raise ValueError(f"alerts: {name}.{key} must be a number, got {number!r}") from None
        else:
            raise ValueError(f"alerts: rule {name!r} takes a mapping of parameters, true or false; got {value!r}")
    return rules


# ----------------------------------------------------------------------------- helpers
def _window(records: list[dict], key: str, step: int, window: float) -> list[float]:
    steps, values = series(records, key)
    return [v for s, v in zip(steps, values) if step - window <= s <= step]


def _halves_change(values: list[float]) -> tuple[float, float, float] | None:
    """``(earlier mean, later mean, relative change)`` of a window's halves; None below two points."""
    k = len(values) // 2
    if k == 0:
        return None
    early, late = sum(values[:k]) / k, sum(values[-k:]) / k
    return early, late, (late - early) / max(abs(early), 1e-6)


def _at(records: list[dict], key: str, step: int) -> float | None:
    value = records[-1].get(key) if records and records[-1].get("step") == step else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _fall(records: list[dict], key: str, step: int, window: int, fraction: float, rule: str) -> Alert | None:
    """``key``'s mean over its last ``window`` points below ``1 - fraction`` of its mean over its first."""
    steps, values = series(records, key)
    window = max(1, int(window))
    if len(values) < 2 * window or steps[-1] != step:
        return None
    base, now = sum(values[:window]) / window, sum(values[-window:]) / window
    if base > 0 and now < (1.0 - fraction) * base:
        return Alert(rule, step, key, f"{key} {now:.4g} (mean of the last {window} points) is {100 * (1 - now / base):.0f}% "
                     f"below its start {base:.4g} (limit {100 * fraction:.0f}%)", {"start": base, "now": now})
    return None


# ------------------------------------------------------------------------------- rules
def reward_divergence(records: list[dict], step: int, p: dict) -> list[Alert]:
    # Under normalize_then_sum `reward` is group-normalised (mean ~0): the raw weighted sum is what rises.
    trained_key = "reward_weighted_sum" if any("reward_weighted_sum" in r for r in records) else "reward"
    trained = _halves_change(_window(records, trained_key, step, p["window"]))
    if trained is None or trained[2] <= p["rise"]:
        return []
    watched = sorted({k for r in records for k in r if k.startswith(("monitor/", "heldout/")) and k.endswith("/mean")})
    alerts = []
    for key in watched:
        change = _halves_change(_window(records, key, step, p["window"]))
        if change is not None and change[2] < -p["drop"]:
            alerts.append(Alert(
                "reward_divergence", step, key,
                f"{trained_key} rose {100 * trained[2]:+.1f}% ({trained[0]:.4g} -> {trained[1]:.4g}) while {key} fell "
                f"{100 * change[2]:+.1f}% ({change[0]:.4g} -> {change[1]:.4g}) over steps {max(0, step - int(p['window']))}-{step}"
                f" (limits: rise > {100 * p['rise']:.0f}%, fall > {100 * p['drop']:.0f}%)",
                {"reward_change": trained[2], "watched_change": change[2], "watched_start": change[0], "watched_now": change[1]},
            ))
    return alerts


def diversity_floor(records: list[dict], step: int, p: dict) -> list[Alert]:
    alerts = []
    for key, floor in zip(DIVERSITY_KEYS, (p["codes_floor"], p["embedding_floor"])):
        value = _at(records, key, step)
        if value is not None and value < floor:
            alerts.append(Alert("diversity_floor", step, key, f"{key} {value:.4g} < floor {floor:.4g}",
                                {"value": value, "floor": floor}))
    return alerts


def diversity_drop(records: list[dict], step: int, p: dict) -> list[Alert]:
    found = (_fall(records, key, step, p["window"], p["fraction"], "diversity_drop") for key in DIVERSITY_KEYS)
    return [a for a in found if a is not None]


def entropy_collapse(records: list[dict], step: int, p: dict) -> list[Alert]:
    alert = _fall(records, SAMPLER_ENTROPY, step, p["window"], p["fraction"], "entropy_collapse")
    return [alert] if alert else []


def kl_spike(records: list[dict], step: int, p: dict) -> list[Alert]:
    value = _at(records, "kl", step)
    if value is None:
        return []
    before = _window(records[:-1], "kl", step - 1, p["window"] - 1)
    if len(before) < 3:
        return []
    median = statistics.median(before)
    if value > p["min_kl"] and value > p["factor"] * median:
        return [Alert("kl_spike", step, "kl", f"kl {value:.4g} > {p['factor']:g} x median {median:.4g} of the previous "
                      f"{len(before)} points (and > min_kl {p['min_kl']:g})", {"value": value, "median": median})]
    return []


RULES: dict[str, Callable[[list[dict], int, dict], list[Alert]]] = {
    "reward_divergence": reward_divergence,
    "diversity_floor": diversity_floor,
    "diversity_drop": diversity_drop,
    "entropy_collapse": entropy_collapse,
    "kl_spike": kl_spike,
}


class AlertEngine:
    """Feeds records one at a time and returns the alerts that fire (a condition that starts to hold)."""

    def __init__(self, overrides: Any = None):
        self.rules = resolve_rules(overrides)
        self.records: list[dict] = []
        self._holding: set[tuple[str, str]] = set()

    def observe(self, record: dict) -> list[Alert]:
        """Add one record (with its ``step``) and return the alerts that fire at it."""
        self.records.append(record)
        step = int(record.get("step", len(self.records)))
        holding, fired = set(), []
        for name, params in self.rules.items():
            for alert in RULES[name](self.records, step, params):
                key = (alert.rule, alert.metric)
                holding.add(key)
                if key not in self._holding:
                    fired.append(alert)
        self._holding = holding
        return fired


def read_alerts(run_dir: str | Path) -> list[dict]:
    """The alerts recorded in a run folder (none when it has no ``alerts.jsonl``); cut lines are skipped."""
    path = Path(run_dir) / ALERTS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class AlertCallback(TrainerCallback):
    """Runs the rules at every log; prints and records what fires; with ``stop_on_alert`` saves and stops."""

    def __init__(self, output_dir: str | Path, overrides: Any = None, stop_on_alert: bool = False, prefix: str = "simplear-rl grpo"):
        self.output_dir = Path(output_dir)
        self.engine = AlertEngine(overrides)
        self.stop_on_alert = stop_on_alert
        self.prefix = prefix
        #: The alert that stopped the run, if one did.
        self.stopped_by: Alert | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        """On resume, replay the records already logged (silently) so windows and armed rules carry on."""
        try:
            earlier = [r for r in read_metrics(self.output_dir) if r.get("step", 0) <= state.global_step]
        except FileNotFoundError:
            return
        for record in earlier:
            self.engine.observe(record)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs:
            return
        fired = self.engine.observe({"step": state.global_step, **logs})
        if state.is_world_process_zero and fired:
            from tqdm.auto import tqdm

            with open(self.output_dir / ALERTS_FILE, "a", encoding="utf-8") as f:
                for alert in fired:
                    tqdm.write(f"{self.prefix}: {alert.line()}", file=sys.stderr)
                    f.write(json.dumps(asdict(alert)) + "\n")
        if self.stop_on_alert and _agreed(bool(fired)):
            self.stopped_by = fired[0] if fired else self.stopped_by
            control.should_save = True
            control.should_training_stop = True
        return control


def _agreed(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (they must all stop at the same step)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [flag]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])
    return flag
