"""Gives logged-in browsers the `access_token` cookie tickwire reads.

On each response to a request that carries a Django session, the middleware
looks at the user:

- logged in, and the cookie is missing, belongs to someone else, carries
  other symbols than the SYMBOLS hook gives now, or has less than half of
  TOKEN_TTL left: a fresh token is set (HS256; `sub` the user's id as
  `send_notification` sends it, `exp`, `symbols`). A still-fresh cookie is
  left alone, so most responses set nothing;
- not logged in (after logout, or the session expired) and the cookie is
  there: it is deleted.

The cookie is HttpOnly (page scripts cannot read it; the browser sends it
with the WebSocket handshake to the same host), SameSite=Lax, Path=/, Secure
when the request came over HTTPS, and lives as long as the token. tickwire
accepts a cookie token only from a page of its own host or of an
`allowed_origins` entry, so put tickwire behind the Django host (a reverse
proxy sending /ws/ and /api/ to it) or list the site's origin there.

Place it after AuthenticationMiddleware. Requests without a session (static
files, anonymous visitors) are not looked at: no user is loaded for them.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

from tickwire.config import Settings, current_settings
from tickwire.messages import user_id_of
from tickwire.tokens import mint_token, read_token, symbols_for

COOKIE_NAME = "access_token"


class AccessTokenMiddleware(MiddlewareMixin):
    """Sync and async: MiddlewareMixin runs process_response in a thread
    under ASGI, where loading the user may touch the database."""

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if COOKIE_NAME in response.cookies:
            return response  # the view set (or deleted) it itself
        present = request.COOKIES.get(COOKIE_NAME)
        if present is None and not _has_session(request):
            return response
        user = getattr(request, "user", None)
        if user is None:
            raise ImproperlyConfigured(
                "AccessTokenMiddleware needs request.user: put it after "
                "django.contrib.auth.middleware.AuthenticationMiddleware in MIDDLEWARE"
            )
        s = current_settings()
        if not user.is_authenticated:
            if present is not None:
                response.delete_cookie(
                    COOKIE_NAME, path="/", domain=s.cookie_domain, samesite="Lax"
                )
            return response
        now = time.time()
        symbols = symbols_for(user, s)
        if present is not None and _still_good(
            present, user_id_of(user, s.user_id), symbols, s, now
        ):
            return response
        token = mint_token(user, symbols=symbols, settings=s, now=now)
        response.set_cookie(
            COOKIE_NAME,
            token,
            max_age=int(s.token_ttl),
            path="/",
            domain=s.cookie_domain,
            secure=request.is_secure(),
            httponly=True,
            samesite="Lax",
        )
        return response


def _has_session(request: HttpRequest) -> bool:
    """A session cookie came in, or the view started a session (login())."""
    if django_settings.SESSION_COOKIE_NAME in request.COOKIES:
        return True
    session: Any = getattr(request, "session", None)
    return getattr(session, "session_key", None) is not None


def _still_good(token: str, sub: str, symbols: list[str] | None, s: Settings, now: float) -> bool:
    claims = read_token(token, settings=s)
    if claims is None or claims.get("sub") != sub or claims.get("symbols") != symbols:
        return False
    exp = claims.get("exp")
    return isinstance(exp, int | float) and exp - now > s.token_ttl / 2
