"""``remote``: rewards computed by a ``simplear-rl rewards serve`` process (another env, GPU or machine).

A recipe entry::

    - {name: remote, as: color_region, url: http://127.0.0.1:8100, rewards: [color_region]}

``rewards`` names the served rewards this entry asks for: one name (its score is the entry's score),
a list (the entry's score is their sum) or a mapping ``{name: weight}`` (their weighted sum). One
request per batch scores all of them. For a curve per served reward, give each its own entry with
``as:`` (then each sends its own request).

At build time the server's ``GET /health`` must answer, serve every name asked for and accept
``batch_size`` rows per request; otherwise the run stops before training, naming the URL. While
scoring, a server that does not answer (after ``retries``) makes this reward raise, which the
recipe's ``reward_on_error`` turns into a stopped run (``fail``) or dropped rows (``drop``).

A server started with a token (``--token_file`` / ``--token_env``) is reached with ``token_env:``
(the name of an environment variable holding the token) or ``token_file:`` (a file holding it);
the recipe holds only that name or path, and the token itself appears in no message. The token is
checked at build time (``GET /auth``). An ``https://`` server's certificate is verified, against
``ca_bundle:`` when given (a PEM file, e.g. the server's self-signed certificate).
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from typing import Any, Mapping

import torch

from .base import Reward
from .errors import RewardConfigError, RewardScoreError
from .http_client import ServiceError, is_loopback, reward_service
from .png import to_base64_png
from .registry import register_reward
from .tokens import TokenError, load_token

logger = logging.getLogger(__name__)


def parse_requested(rewards: Any) -> dict[str, float]:
    """``rewards`` as ``{served name: weight}`` from a name, a list of names or a name -> weight mapping."""
    if isinstance(rewards, str):
        pairs = [(rewards, 1.0)]
    elif isinstance(rewards, Mapping):
        pairs = list(rewards.items())
    elif isinstance(rewards, (list, tuple)):
        pairs = [(name, 1.0) for name in rewards]
    else:
        pairs = []
    requested: dict[str, float] = {}
    for name, weight in pairs:
        if not isinstance(name, str) or not name or name in requested or not _is_number(weight):
            pairs = []
            break
        requested[name] = float(weight)
    if not pairs:
        raise RewardConfigError(
            "reward 'remote': rewards must name the served rewards to ask for: a name, a list of distinct names, "
            f"or a mapping {{name: weight}}; got {rewards!r}"
        )
    return requested


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@register_reward("remote")
class RemoteReward(Reward):
    """Served rewards from a `simplear-rl rewards serve` process: their (weighted) sum, one request per batch.

    Parameters: ``url`` (the server, e.g. ``http://127.0.0.1:8100``), ``rewards`` (served names: one,
    a list summed, or ``{name: weight}``), ``timeout`` (seconds per attempt), ``retries`` (further
    attempts after a connection error, timeout or 5xx), ``batch_size`` (rows per request; default 64,
    or the server's ``--max_batch`` if that is lower), ``token_env`` / ``token_file`` (where the
    server's bearer token is), ``ca_bundle`` (PEM file an ``https://`` server's certificate is checked
    against; default the system's certificate authorities).
    """

    default_batch_size = 64

    def __init__(
        self,
        url: str,
        rewards: Any,
        timeout: float = 60.0,
        retries: int = 2,
        batch_size: int | None = None,
        token_env: str | None = None,
        token_file: str | None = None,
        ca_bundle: str | None = None,
    ):
        super().__init__(batch_size=batch_size)
        self.service = reward_service("remote", url, timeout, retries, ca_bundle)
        self.url = self.service.base_url
        try:
            token = load_token(token_file, token_env, "reward 'remote'")
        except TokenError as exc:
            raise RewardConfigError(str(exc)) from None
        if token is not None:
            self.service.headers["Authorization"] = f"Bearer {token}"
            parts = urllib.parse.urlsplit(self.url)
            if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
                logger.warning("reward 'remote': the token for %s travels unencrypted over http; serve with "
                               "--ssl_certfile/--ssl_keyfile and use an https:// url", self.url)
        self.requested = parse_requested(rewards)
        served = self._served_rewards(batch_size_set=batch_size is not None)
        fields = sorted({f for name in self.requested for f in served[name].get("required_fields", [])})
        self.required_fields = tuple(fields)
        # One served reward at weight 1 keeps its pass mark, so accuracy reports work through the server too.
        (only, weight), *more = self.requested.items()
        self.threshold = served[only].get("threshold") if not more and weight == 1.0 else None

    def _served_rewards(self, batch_size_set: bool) -> dict[str, dict[str, Any]]:
        """``GET /health``, checked: the names asked for are served and ``batch_size`` fits (an unset one is
        lowered to the server's limit)."""
        try:
            health = self.service.get("/health")
            listed = {entry["name"]: entry for entry in health["rewards"]}
            max_batch = int(health["max_batch"])
        except ServiceError as err:
            start = (" Start it with `simplear-rl rewards serve --spec <rewards.yaml> --port <N>` or fix `url:` in the "
                     "recipe.") if err.transient else ""  # an answer that was refused (TLS, 4xx) has its own fix
            raise RewardConfigError(
                f"reward 'remote': the reward server at {self.url} did not answer GET /health: {err}.{start}"
            ) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise RewardConfigError(
                f"reward 'remote': {self.url}/health did not answer like `simplear-rl rewards serve` "
                f"({type(exc).__name__}: {exc}); is `url:` the reward server?"
            ) from None
        self._check_token(health.get("auth"))
        missing = [name for name in self.requested if name not in listed]
        if missing:
            raise RewardConfigError(
                f"reward 'remote': the reward server at {self.url} does not serve {missing}; it serves {sorted(listed)}. "
                "Fix `rewards:` in the recipe entry or add them to the server's spec."
            )
        if self.batch_size > max_batch and not batch_size_set:
            self.batch_size = max_batch
        elif self.batch_size > max_batch:
            raise RewardConfigError(
                f"reward 'remote': batch_size {self.batch_size} is above the {max_batch} rows per request the server "
                f"at {self.url} accepts; set `batch_size: {max_batch}` (or less) in the recipe entry, or start the "
                "server with a larger --max_batch."
            )
        return listed

    def _check_token(self, auth: Any) -> None:
        """A server that wants a token gets one it accepts, or the run stops here (not at the first batch)."""
        if auth != "bearer":
            return
        if "Authorization" not in self.service.headers:
            raise RewardConfigError(
                f"reward 'remote': the reward server at {self.url} requires a token; set `token_env:` (an environment "
                "variable holding it) or `token_file:` in the recipe entry"
            )
        try:
            self.service.get("/auth")
        except ServiceError as err:
            fix = "give the server's token in `token_env:` / `token_file:`" if err.status == 401 else "check the server"
            raise RewardConfigError(f"reward 'remote': {err}; {fix}") from None

    def score_batch(self, images: torch.Tensor, prompts: list[str], **metadata: Any) -> torch.Tensor:
        payload = {
            "rewards": list(self.requested),
            "prompts": list(prompts),
            "images": [to_base64_png(image) for image in images],
            "metadata": {key: _plain(metadata[key]) for key in self.required_fields},
        }
        try:
            answer = self.service.post("/score", payload)
        except ServiceError as err:
            raise RewardScoreError(f"reward server at {self.url}: {err}") from None
        total = torch.zeros(len(prompts))
        for name, weight in self.requested.items():
            total += weight * self._column(answer, name, len(prompts))
        return total

    def _column(self, answer: Any, name: str, n: int) -> torch.Tensor:
        scores = answer.get("scores") if isinstance(answer, dict) else None
        values = scores.get(name) if isinstance(scores, dict) else None
        if not isinstance(values, list) or len(values) != n:
            got = f"{len(values)} values" if isinstance(values, list) else repr(values)[:100]
            raise RewardScoreError(f"reward server at {self.url} answered {got} for {name!r}, expected {n} scores")
        # null is how JSON carries a score that is not a number; the suite's on_error decides about it.
        return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)


def _plain(column: Any) -> list[Any]:
    """A metadata column as plain Python values JSON can carry (tensors and arrays become lists)."""
    values = []
    for value in column:
        if hasattr(value, "tolist"):
            value = value.tolist()
        values.append(value)
    return values
