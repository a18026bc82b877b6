"""Bearer tokens for the reward server and its ``remote`` client: read from a file or an environment variable.

A token is never part of a message: errors name the file or the variable, not what they hold.
The server compares tokens in constant time (:func:`hmac.compare_digest`), so the time an answer
takes says nothing about how much of a guessed token was right.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

#: Shortest token accepted: a short one can be guessed by asking often enough.
MIN_TOKEN_CHARS = 16
HOW_TO_MAKE = "python -c 'import secrets; print(secrets.token_urlsafe(32))' > reward.token && chmod 600 reward.token"


class TokenError(ValueError):
    """A token source that is missing, unreadable or holds no usable token (the message names the source only)."""


def load_token(token_file: str | os.PathLike | None, token_env: str | None, who: str) -> str | None:
    """The token held by ``token_file`` or the environment variable ``token_env`` (at most one of them), or
    None when neither is given. ``who`` starts every error message (e.g. ``--token_file`` or ``reward 'remote'``)."""
    if token_file and token_env:
        raise TokenError(f"{who}: give the token either in a file or in an environment variable, not both")
    if token_file:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"{who}: cannot read the token file {path}: {type(exc).__name__}; make one with "
                             f"`{HOW_TO_MAKE}`") from None
        return _checked(text.strip(), f"{who}: the token file {path}")
    if token_env:
        value = os.environ.get(token_env)
        if not value:
            raise TokenError(f"{who}: the environment variable {token_env} that should hold the token is not set; "
                             "export it (the same token as the server's)")
        return _checked(value.strip(), f"{who}: the environment variable {token_env}")
    return None


def _checked(token: str, source: str) -> str:
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"{source} holds a token of {len(token)} characters; use at least {MIN_TOKEN_CHARS}, "
                         f"e.g. `{HOW_TO_MAKE}`")
    if not all(33 <= ord(c) < 127 for c in token):
        raise TokenError(f"{source} holds a token with spaces or characters outside printable ASCII; "
                         f"it travels in an HTTP header. Make one with `{HOW_TO_MAKE}`")
    return token


def readable_by_others(token_file: str | os.PathLike) -> bool:
    """Whether users other than the owner may read ``token_file`` (then the server warns: chmod 600)."""
    return bool(Path(token_file).expanduser().stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>``, compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))
