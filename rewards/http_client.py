"""JSON over HTTP for rewards that call another process: timeouts, retries, and memory of a dead server.

Standard library only (``urllib``). Every attempt has a deadline, so a call never hangs: it ends
after at most ``timeout * (retries + 1)`` seconds plus the short backoff between attempts.
Connection errors, timeouts, HTTP 5xx and 429 are transient and retried; any other HTTP error is the
server refusing the request and is raised at once with the server's own message. A 503 or 429 that
says ``Retry-After: S`` is asked again after S seconds instead of the backoff (at most ``timeout``
seconds), so a server over its capacity is waited for within the same retries.

``https://`` URLs are verified against the system's certificate authorities, or against the PEM
bundle ``ca_bundle`` (e.g. a self-signed server certificate); a certificate that does not verify is
not retried.

After a call has failed every attempt, calls in the next :data:`DEAD_SERVER_COOLDOWN_S` seconds
fail at once: when a batch fails, the reward suite asks again row by row to find the culprit rows,
and without this memory a dead server would cost every row the full timeout again.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .errors import RewardConfigError

#: Seconds before the first retry; doubled for each further one, capped at MAX_BACKOFF_S.
BACKOFF_S = 0.25
MAX_BACKOFF_S = 2.0
#: Seconds during which a server that failed every attempt is not asked again.
DEAD_SERVER_COOLDOWN_S = 5.0
_READ_CHUNK = 1 << 16


class ServiceError(Exception):
    """A call failed. ``status`` is the HTTP status (None if none came back); ``transient`` says
    whether another attempt might succeed."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.retry_after = retry_after


def check_base_url(url: Any, what: str) -> str:
    """``url`` without a trailing slash if it is an ``http(s)://host[:port][/path]`` URL, else ``ValueError``."""
    text = str(url).strip() if url is not None else ""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{what}: url must look like http://host:port (optionally with a path), got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{what}: url {url!r} has a bad port: {exc}") from exc
    return text.rstrip("/")


def reward_service(reward: str, url: Any, timeout: Any, retries: Any, ca_bundle: Any = None) -> JsonService:
    """The service behind a reward's ``url`` / ``timeout`` / ``retries`` / ``ca_bundle`` parameters, checked
    first: :class:`~rewards.errors.RewardConfigError` names the reward and the parameter that is wrong."""
    try:
        base_url = check_base_url(url, f"reward {reward!r}")
    except ValueError as exc:
        raise RewardConfigError(str(exc)) from None
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise RewardConfigError(f"reward {reward!r}: timeout must be a positive number of seconds, got {timeout!r}")
    if not (isinstance(retries, int) and retries >= 0):
        raise RewardConfigError(f"reward {reward!r}: retries must be an integer >= 0, got {retries!r}")
    if ca_bundle is not None:
        if not urllib.parse.urlsplit(base_url).scheme == "https":
            raise RewardConfigError(f"reward {reward!r}: ca_bundle is for an https:// url, and url is {base_url}")
        try:
            tls_context(ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise RewardConfigError(
                f"reward {reward!r}: cannot load ca_bundle {ca_bundle}: {exc}; give a PEM file holding the "
                "certificate authority (or the self-signed certificate) of the server"
            ) from None
    return JsonService(base_url, timeout=timeout, retries=retries, ca_bundle=ca_bundle)


def tls_context(ca_bundle: Any = None) -> ssl.SSLContext:
    """A client TLS context that verifies the server's certificate and host name: against ``ca_bundle``
    (a PEM file) when given, else against the system's certificate authorities."""
    return ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle is not None else None)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header as seconds from now (it may be a number or an HTTP date), None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if seconds == seconds else None


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.x.x.x, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _detail(body: bytes) -> str:
    """The server's error message: FastAPI's ``{"detail": ...}``, an OpenAI ``{"error": {"message"}}`` or the text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "detail" in data:
            return str(data["detail"])
    return text[:500]


class JsonService:
    """One HTTP endpoint that takes and returns JSON: ``get(path)`` and ``post(path, payload)``.

    ``timeout``: seconds per attempt (connecting, waiting for and reading the answer);
    ``retries``: further attempts after a transient failure; ``headers``: sent with every request
    (e.g. ``Authorization``: never part of an error message); ``ca_bundle``: PEM file of the
    certificate authorities an ``https://`` server's certificate must verify against (default: the
    system's). Safe to share between threads.
    """

    def __init__(self, base_url: str, *, timeout: float, retries: int, headers: dict[str, str] | None = None,
                 ca_bundle: Any = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.headers = dict(headers or {})
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        # Proxy variables are for the internet; a server on this machine is always reached directly.
        handlers: list[Any] = [urllib.request.ProxyHandler({})] if is_loopback(host) else []
        if urllib.parse.urlsplit(self.base_url).scheme == "https":
            handlers.append(urllib.request.HTTPSHandler(context=tls_context(ca_bundle)))
        self._opener = urllib.request.build_opener(*handlers)
        self._failed_at: float | None = None
        self._failure = ""

    def get(self, path: str) -> Any:
        """GET ``base_url + path``; the decoded JSON answer."""
        return self._call("GET", path, None)

    def post(self, path: str, payload: Any) -> Any:
        """POST ``payload`` as JSON to ``base_url + path``; the decoded JSON answer."""
        try:
            body = json.dumps(payload, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ServiceError(f"cannot send the request to {self.base_url + path} as JSON: {exc}") from exc
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: bytes | None) -> Any:
        url = self.base_url + path
        if self._failed_at is not None:
            ago = time.monotonic() - self._failed_at
            if ago < DEAD_SERVER_COOLDOWN_S:
                raise ServiceError(
                    f"{self._failure} (not asked again: it failed {ago:.1f} s ago)", transient=True
                )
        last: ServiceError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._wait(attempt, last))
            try:
                answer = self._once(method, url, body)
            except ServiceError as err:
                if not err.transient:
                    raise
                last = err
                continue
            self._failed_at = None
            return answer
        assert last is not None
        tries = f"{self.retries + 1} attempts" if self.retries else "1 attempt"
        self._failure = f"{last} ({tries}, timeout {self.timeout:g} s each)"
        self._failed_at = time.monotonic()
        raise ServiceError(self._failure, status=last.status, transient=True)

    def _wait(self, attempt: int, last: ServiceError | None) -> float:
        """Seconds before attempt number ``attempt``: the server's Retry-After (at most ``timeout``), else the backoff."""
        backoff = min(BACKOFF_S * 2 ** (attempt - 1), MAX_BACKOFF_S)
        if last is not None and last.retry_after is not None:
            return min(max(last.retry_after, backoff), self.timeout)
        return backoff

    def _once(self, method: str, url: str, body: bytes | None) -> Any:
        headers = {"Accept": "application/json", **self.headers}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                # The socket timeout bounds each wait; the deadline bounds a server that trickles bytes.
                chunks = []
                while chunk := response.read(_READ_CHUNK):
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise TimeoutError("the answer took longer than the timeout to arrive")
        except urllib.error.HTTPError as err:
            status = err.code
            detail = _detail(err.read())
            transient = status >= 500 or status == 429
            message = f"{method} {url} answered HTTP {status}: {detail}"
            retry_after = retry_after_seconds(err.headers.get("Retry-After")) if err.headers else None
            raise ServiceError(message, status=status, transient=transient, retry_after=retry_after) from None
        except (TimeoutError, socket.timeout) as err:
            raise ServiceError(f"{method} {url} timed out after {self.timeout:g} s ({err})", transient=True) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise ServiceError(
                    f"the certificate of {url} does not verify ({reason.verify_message}); give the reward the "
                    "certificate authority that signed it (or the server's self-signed certificate) as `ca_bundle:`"
                ) from None
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise ServiceError(f"{method} {url} timed out after {self.timeout:g} s", transient=True) from None
            raise ServiceError(f"cannot reach {url}: {reason}", transient=True) from None
        except (ConnectionError, http.client.HTTPException, OSError) as err:
            raise ServiceError(f"cannot reach {url}: {type(err).__name__}: {err}", transient=True) from None
        try:
            return json.loads(b"".join(chunks))
        except ValueError as exc:
            raise ServiceError(f"{method} {url} answered something that is not JSON: {exc}") from None
