"""``simplear-rl rewards serve``: registered rewards in their own process behind a small HTTP API.

Any reward a recipe can name (built-in, plugin, dotted path) is built once from a spec's
``rewards:`` list and served on FastAPI + uvicorn (``pip install -e ".[serve]"``); the ``remote``
reward is the client. Bodies are JSON; images travel as base64-encoded 8-bit PNG.

``GET /health`` (always open) ->
    ``{"status": "ok", "rewards": [{"name", "required_fields", "threshold"}, ...],
    "max_batch", "max_body_bytes", "max_pixels", "max_concurrent", "auth": "bearer" | "none", "admitted"}``
    (``required_fields``: the metadata columns a request for that reward must carry; ``admitted``:
    the ``/score`` requests being scored or waiting now.)

``GET /auth`` -> ``{"status": "ok"}`` when the request's bearer token is accepted (how a client
checks its token before training).

``POST /score`` with
    ``{"rewards": [names] (optional, default all), "prompts": [B captions],
    "images": [B base64 PNG], "metadata": {column: [B values]}}``
    -> ``{"scores": {name: [B floats]}, "rows": B, "seconds": float}``

Scores are the rewards' own values after the spec's ``clip`` and ``gate`` (a gate's reward is
computed too when needed); ``weight`` is ignored, the caller's recipe weighs. Requests are scored
one at a time, in order; at most ``max_concurrent`` are admitted at once (being scored or waiting).

With a token, every endpoint but ``/health`` wants ``Authorization: Bearer <token>``; the check
comes before the body is looked at, so a refused request costs no model time.

Errors are ``{"detail": "<what and how to fix>"}`` (one line): 400 a malformed request (not JSON,
unknown key or reward, count mismatch, bad image, missing metadata column), 401 a missing or wrong
token, 413 too many rows, too large a body or image, 422 a reward raised or returned NaN/inf on the
batch (the caller's suite then finds the culprit rows), 503 over capacity (with ``Retry-After``
seconds), 500 a bug in the server.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (fastapi.Request)
# at definition time, from this module where fastapi is imported lazily.
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .errors import RewardConfigError, RewardScoreError
from .http_client import is_loopback
from .png import ImageTooLarge, from_base64_png
from .suite import RewardSuite
from .tokens import bearer_matches

logger = logging.getLogger(__name__)

REQUEST_KEYS = ("rewards", "prompts", "images", "metadata")


@dataclass(frozen=True)
class Limits:
    """What one ``POST /score`` may carry."""

    max_batch: int = 256
    max_body_bytes: int = 512 * 2**20
    max_pixels: int = 4096 * 4096
    #: ``/score`` requests admitted at once (scored one at a time); more get 503 + Retry-After.
    max_concurrent: int = 32


class RequestError(Exception):
    """A request the server refuses: the HTTP status, the message sent back as ``detail`` and any headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


def require_serving_packages() -> tuple[Any, Any]:
    """``(fastapi, uvicorn)``, or a ``ModuleNotFoundError`` that says how to install them."""
    try:
        import fastapi
        import uvicorn
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"serving rewards needs FastAPI and uvicorn, and {exc.name or 'one of them'} is not installed: "
            'pip install -e ".[serve]"',
            name=exc.name,
        ) from exc
    return fastapi, uvicorn


# ------------------------------------------------------------------ the rewards served
class ServedRewards:
    """The suite a server hosts: what ``/health`` shows and how a ``/score`` request is checked and scored."""

    def __init__(self, suite: RewardSuite, limits: Limits):
        self.suite = suite
        self.limits = limits
        self._components = {c.name: c for c in suite.components}
        self._lock = threading.Lock()  # rewards hold models and are not assumed thread-safe
        self.mean_seconds = 0.0  # moving average of a request's scoring time: what Retry-After estimates from

    def _with_gates(self, names: list[str]) -> list[str]:
        """``names`` and every reward that gates one of them, in recipe order."""
        needed: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                gate = self._components[name].gate
                if gate is not None:
                    stack.append(gate.reward)
        return [name for name in self._components if name in needed]

    def health(self) -> dict[str, Any]:
        rewards = []
        for name, component in self._components.items():
            fields = {f for other in self._with_gates([name]) for f in self._components[other].reward.required_fields}
            rewards.append({"name": name, "required_fields": sorted(fields), "threshold": component.reward.threshold})
        return {
            "status": "ok",
            "rewards": rewards,
            "max_batch": self.limits.max_batch,
            "max_body_bytes": self.limits.max_body_bytes,
            "max_pixels": self.limits.max_pixels,
            "max_concurrent": self.limits.max_concurrent,
        }

    def score(self, body: bytes) -> dict[str, Any]:
        """Check and score one request body; :class:`RequestError` for anything refused."""
        names, prompts, images, metadata = self._parse(body)
        suite = RewardSuite([self._components[n] for n in self._with_gates(names)], self.suite.aggregation)
        start = time.perf_counter()
        with self._lock:
            try:
                values = suite.evaluate(images, prompts, metadata, on_error="fail").values
            except RewardConfigError as exc:  # a missing metadata column
                raise RequestError(400, str(exc)) from None
            except RewardScoreError as exc:
                raise RequestError(422, str(exc)) from None
            finally:
                seconds = time.perf_counter() - start
                self.mean_seconds = seconds if not self.mean_seconds else 0.8 * self.mean_seconds + 0.2 * seconds
        return {
            "scores": {name: values[name].tolist() for name in names},
            "rows": len(prompts),
            "seconds": round(seconds, 6),
        }

    def retry_after(self, waiting: int) -> int:
        """Whole seconds until ``waiting`` admitted requests are likely scored (at least 1)."""
        return max(1, math.ceil(self.mean_seconds * waiting))

    def _parse(self, body: bytes) -> tuple[list[str], list[str], list[Any], dict[str, list[Any]]]:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise RequestError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RequestError(400, f"the body must be a JSON object with keys {list(REQUEST_KEYS)}")
        unknown = sorted(set(data) - set(REQUEST_KEYS))
        if unknown:
            raise RequestError(400, f"unknown key(s) {unknown}; a request has {list(REQUEST_KEYS)}")
        names = data.get("rewards", list(self._components))
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise RequestError(400, f"`rewards` must be a non-empty list of reward names, got {names!r}")
        missing = [n for n in names if n not in self._components]
        if missing:
            raise RequestError(400, f"this server does not serve {missing}; it serves {list(self._components)}")
        names = list(dict.fromkeys(names))
        prompts, images = data.get("prompts"), data.get("images")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise RequestError(400, "`prompts` must be a list of strings (one caption per image)")
        if not isinstance(images, list) or len(images) != len(prompts):
            got = f"{len(images)} images" if isinstance(images, list) else f"`images` of type {type(images).__name__}"
            raise RequestError(400, f"{got} for {len(prompts)} prompts: send one base64 PNG per prompt")
        if not prompts:
            raise RequestError(400, "the request holds no rows (empty `prompts` and `images`)")
        if len(prompts) > self.limits.max_batch:
            raise RequestError(
                413, f"{len(prompts)} rows is above this server's limit of {self.limits.max_batch} per request "
                "(--max_batch); send smaller batches (the remote reward's batch_size)"
            )
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise RequestError(400, "`metadata` must be an object of columns {name: [one value per row]}")
        for key, column in metadata.items():
            if not isinstance(column, list) or len(column) != len(prompts):
                rows = len(column) if isinstance(column, list) else type(column).__name__
                raise RequestError(400, f"metadata column {key!r} must hold one value per row ({len(prompts)}), got {rows}")
        decoded = []
        for i, text in enumerate(images):
            try:
                decoded.append(from_base64_png(text, self.limits.max_pixels))
            except ImageTooLarge as exc:
                raise RequestError(413, f"image {i}: {exc} (--max_pixels)") from None
            except ValueError as exc:
                raise RequestError(400, f"image {i}: {exc}") from None
        return names, prompts, decoded, metadata


# ------------------------------------------------------------------ the HTTP app
def create_app(suite: RewardSuite, limits: Limits = Limits(), token: str | None = None):
    """The FastAPI app serving ``suite`` (see the module docstring for the API); with ``token``, every
    endpoint but ``/health`` wants ``Authorization: Bearer <token>``."""
    fastapi, _ = require_serving_packages()
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    served = ServedRewards(suite, limits)
    app = fastapi.FastAPI(title="simplear-rl rewards", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.last_active = time.monotonic()
    app.state.in_flight = 0
    app.state.admitted = 0  # /score requests being read, waiting or scored

    @app.middleware("http")
    async def track_activity(request, call_next):  # read by the idle timeout
        app.state.in_flight += 1
        try:
            return await call_next(request)
        finally:
            app.state.in_flight -= 1
            app.state.last_active = time.monotonic()

    @app.exception_handler(RequestError)
    async def refused(request, exc: RequestError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=exc.headers)

    async def authorise(request: Any) -> None:
        """401 unless the request carries the token; its body is drained, never decoded or scored."""
        if token is not None and not bearer_matches(request.headers.get("authorization"), token):
            await _drain(request, limits.max_body_bytes)
            raise RequestError(
                401, "missing or wrong bearer token: send `Authorization: Bearer <token>` (the remote reward's "
                "token_env: or token_file:) with the token the server was started with",
                {"WWW-Authenticate": "Bearer"},
            )

    @app.get("/health")
    async def health():
        return {**served.health(), "auth": "none" if token is None else "bearer", "admitted": app.state.admitted}

    @app.get("/auth")
    async def auth(request: fastapi.Request):
        await authorise(request)
        return {"status": "ok"}

    @app.post("/score")
    async def score(request: fastapi.Request):
        await authorise(request)
        if app.state.admitted >= limits.max_concurrent:
            await _drain(request, limits.max_body_bytes)
            seconds = served.retry_after(app.state.admitted)
            raise RequestError(
                503, f"the reward server is at its capacity of {limits.max_concurrent} requests at once "
                f"(--max_concurrent); retry in {seconds} s",
                {"Retry-After": str(seconds)},
            )
        app.state.admitted += 1  # no await since the check: no other request can slip in between
        try:
            body = await _read_body(request, limits.max_body_bytes)
            # Off the event loop: decoding and scoring take long, and /health must keep answering.
            return await run_in_threadpool(served.score, body)
        except RequestError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: answer 500 with its message, log the traceback
            logger.exception("scoring a request failed")
            raise RequestError(500, f"the reward server failed: {type(exc).__name__}: {exc}") from None
        finally:
            app.state.admitted -= 1

    return app


async def _drain(request: Any, limit: int) -> None:
    """Read and drop up to ``limit`` bytes of a refused request's body, so that the client, still sending,
    gets the answer rather than a reset connection; past ``limit`` the connection may be reset."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            break


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, or a 413 once it passes ``limit`` bytes.

    An oversized body is still read to its end (and thrown away): a server that stops reading
    makes the client see a reset connection instead of the 413 and its message.
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise RequestError(
            413, f"the body of {size} bytes is above this server's limit of {limit} bytes (--max_body_mb); "
            "send fewer or smaller images per request (the remote reward's batch_size)"
        )
    return b"".join(chunks)


# ------------------------------------------------------------------ the process
def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from None


def _watch(server: Any, app: Any, idle_timeout: float, parent: int | None, why: list[str]) -> None:
    """Stop ``server`` when idle for ``idle_timeout`` s or when the process that started it has gone."""
    while not server.should_exit:
        time.sleep(0.25)
        if parent is not None and os.getppid() != parent:
            why.append("the process that started it exited (--exit_with_parent)")
        elif idle_timeout and not app.state.in_flight and time.monotonic() - app.state.last_active > idle_timeout:
            why.append(f"no request for {idle_timeout:g} s (--idle_timeout)")
        else:
            continue
        server.should_exit = True


class ExposureError(ValueError):
    """Serving would let anyone who reaches the address use the rewards: refused before anything loads."""


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Refuse a non-loopback ``host`` without a token unless ``insecure`` says so explicitly."""
    if token is None and not insecure and not is_loopback(host):
        raise ExposureError(
            f"--host {host} is reachable from other machines and no token is set, so anyone reaching it could use "
            "the rewards: give one with --token_file FILE or --token_env VAR (make it with `python -c 'import "
            "secrets; print(secrets.token_urlsafe(32))' > reward.token`), or pass --insecure true on a trusted network"
        )


def exposure_warnings(host: str, has_token: bool, tls: bool) -> list[str]:
    """What a server that other machines can reach still risks: no token (``--insecure true``), or a token in clear text."""
    if is_loopback(host):
        return []
    if not has_token:
        return [f"{host} is reachable from other machines and the API has no authentication (--insecure true); "
                "anyone who can reach it can use the rewards"]
    if not tls:
        return [f"{host} is reachable from other machines and the token travels unencrypted; serve HTTPS with "
                "--ssl_certfile/--ssl_keyfile"]
    return []


def check_tls(certfile: str | None, keyfile: str | None) -> Any:
    """The server's TLS context from a PEM certificate (and key, unless the certificate file holds it),
    or None without ``certfile``; an unreadable or mismatched pair is an ``OSError`` naming the files."""
    import ssl

    if keyfile and not certfile:
        raise ExposureError("--ssl_keyfile needs --ssl_certfile (the certificate that goes with the key)")
    if not certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"cannot load the TLS certificate --ssl_certfile {certfile} / --ssl_keyfile {keyfile}: {exc}; "
                      "give PEM files (the key unencrypted)") from None
    return context


def serve(
    suite: RewardSuite,
    host: str = "127.0.0.1",
    port: int = 8100,
    limits: Limits = Limits(),
    idle_timeout: float = 0.0,
    exit_with_parent: bool = False,
    log_level: str = "warning",
    token: str | None = None,
    insecure: bool = False,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Serve ``suite`` until interrupted, idle for ``idle_timeout`` s (0: never) or, with
    ``exit_with_parent``, until the process that started this one exits. ``port`` 0 picks a free one;
    the URL is printed on stdout once the port is listening. ``token``: the bearer token every
    request but ``/health`` must carry (required on a non-loopback ``host`` unless ``insecure``);
    ``ssl_certfile``/``ssl_keyfile``: serve HTTPS with this PEM certificate and key."""
    _, uvicorn = require_serving_packages()
    check_exposure(host, token, insecure)
    check_tls(ssl_certfile, ssl_keyfile)
    app = create_app(suite, limits, token)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host=host, port=bound, log_level=log_level, access_log=False, lifespan="off", timeout_graceful_shutdown=5,
        ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
    )
    server = uvicorn.Server(config)
    why: list[str] = []
    parent = os.getppid() if exit_with_parent else None
    threading.Thread(target=_watch, args=(server, app, idle_timeout, parent, why), daemon=True).start()
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if ssl_certfile else "http"
    for warning in exposure_warnings(host, token is not None, scheme == "https"):
        print(f"simplear-rl rewards serve: warning: {warning}", file=sys.stderr)
    access = "bearer token required" if token is not None else "no token"
    print(
        f"simplear-rl rewards serve: serving {', '.join(suite.names)} on {scheme}://{shown}:{bound} "
        f"(GET /health, POST /score; {access}; at most {limits.max_batch} rows per request, "
        f"{limits.max_concurrent} requests at once)",
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if why:
        print(f"simplear-rl rewards serve: stopped: {why[0]}", flush=True)
