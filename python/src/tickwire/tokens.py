"""Subscriber tokens: the HS256 JWTs tickwire checks on every handshake
(PROTOCOL.md 1.1). `sub` is the user's id as `send_notification` sends it,
`exp` the end of its life, `symbols` (when the SYMBOLS hook gives a list)
the symbol patterns it allows; no `symbols` claim allows every symbol.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jwt

from tickwire.config import Settings, current_settings
from tickwire.messages import user_id_of

_UNSET: Any = object()


def mint_token(
    user: Any,
    *,
    ttl: float | None = None,
    symbols: Sequence[str] | None = _UNSET,
    settings: Settings | None = None,
    now: float | None = None,
) -> str:
    """A token for `user` (a Django user, an int or a str), valid for `ttl`
    seconds (TOKEN_TTL by default). `symbols` defaults to the SYMBOLS hook's
    answer for a user object, and to every symbol for a bare id."""
    s = settings if settings is not None else current_settings()
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": user_id_of(user, s.user_id),
        "iat": int(issued),
        "exp": int(issued + (s.token_ttl if ttl is None else ttl)),
    }
    if symbols is _UNSET:
        symbols = symbols_for(user, s)
    if symbols is not None:
        claims["symbols"] = list(symbols)
    return jwt.encode(claims, s.require_jwt_secret(), algorithm="HS256")


def symbols_for(user: Any, settings: Settings) -> list[str] | None:
    """The SYMBOLS hook's answer for a user object (None: every symbol)."""
    if settings.symbols is None or isinstance(user, str | int):
        return None
    allowed = settings.symbols(user)
    return None if allowed is None else [str(s) for s in allowed]


def read_token(token: str, *, settings: Settings | None = None) -> dict[str, Any] | None:
    """The claims of a token signed with JWT_SECRET and not expired, else None."""
    s = settings if settings is not None else current_settings()
    try:
        claims: dict[str, Any] = jwt.decode(
            token, s.require_jwt_secret(), algorithms=["HS256"], options={"require": ["sub", "exp"]}
        )
    except jwt.PyJWTError:
        return None
    return claims
