"""Logging in through Django gives the browser the `access_token` cookie
tickwire accepts; it is renewed before it expires and deleted on logout;
the token view answers a token; the SYMBOLS hook reaches tickwire."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from django.test import Client
from support import Socket, Tickwire, log_in, set_cookie_headers
from websockets.exceptions import InvalidStatus

import tickwire


def _claims(token: str, server: Tickwire) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, server.jwt_secret, algorithms=["HS256"])
    return claims


def test_login_sets_an_httponly_lax_cookie_with_the_users_token(
    live_django: str, users: dict[str, Any], tickwire_server: Tickwire
) -> None:
    client, answer = log_in(live_django, "alice")
    (header,) = set_cookie_headers(answer, "access_token")
    attributes = [part.strip().lower() for part in header.split(";")]
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/" in attributes
    assert "secure" not in attributes, "plain HTTP: no Secure flag, or the browser would drop it"
    assert "max-age=3600" in attributes

    token = client.cookies["access_token"]
    claims = _claims(token, tickwire_server)
    assert claims["sub"] == str(users["alice"].pk)
    assert 3590 <= claims["exp"] - time.time() <= 3600
    assert "symbols" not in claims, "alice may see every symbol"

    # The next page keeps the fresh cookie: no new token on every response.
    page = client.get("/dashboard/")
    assert page.status_code == 200
    assert set_cookie_headers(page, "access_token") == []


def test_the_cookie_opens_a_websocket_and_an_anonymous_one_is_refused(
    live_django: str, tickwire_server: Tickwire
) -> None:
    client, _ = log_in(live_django, "alice")
    sock = Socket(tickwire_server, "/ws/market-data/", cookie=client.cookies["access_token"])
    sock.send({"type": "ping"})
    assert sock.expect_type("pong")["timestamp"]
    sock.close()
    with pytest.raises(InvalidStatus) as refused:
        Socket(tickwire_server, "/ws/market-data/")
    assert refused.value.response.status_code == 401


def test_the_symbols_hook_limits_what_the_token_allows(
    live_django: str, tickwire_server: Tickwire
) -> None:
    client, _ = log_in(live_django, "carol")
    token = client.cookies["access_token"]
    assert _claims(token, tickwire_server)["symbols"] == ["BTC-USD", "ETH-*"]
    sock = Socket(tickwire_server, "/ws/market-data/", cookie=token)
    sock.subscribe("BTC-USD", "ETH-EUR")
    sock.send({"type": "subscribe", "symbols": ["SOL-USD"]})
    refused = sock.expect(lambda m: m.get("type") in ("subscribed", "error"))
    assert refused["type"] == "error"
    assert refused["code"] == "forbidden"
    sock.close()


def test_over_https_the_cookie_is_secure(users: dict[str, Any]) -> None:
    client = Client()
    client.force_login(users["bob"])
    response = client.get("/dashboard/", secure=True)
    assert response.status_code == 200
    cookie = response.cookies["access_token"]
    assert cookie["secure"] is True
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


def test_a_token_past_half_its_life_is_renewed(
    users: dict[str, Any], tickwire_server: Tickwire
) -> None:
    client = Client()
    client.force_login(users["bob"])
    old = tickwire.mint_token(users["bob"], ttl=600)  # TOKEN_TTL is 3600: less than half left
    client.cookies["access_token"] = old
    response = client.get("/dashboard/")
    renewed = response.cookies["access_token"].value
    assert renewed != old
    claims = _claims(renewed, tickwire_server)
    assert claims["sub"] == str(users["bob"].pk)
    assert claims["exp"] - time.time() > 3500


def test_a_cookie_of_another_user_is_replaced(
    users: dict[str, Any], tickwire_server: Tickwire
) -> None:
    client = Client()
    client.force_login(users["bob"])
    client.cookies["access_token"] = tickwire.mint_token(users["alice"])
    response = client.get("/dashboard/")
    assert _claims(response.cookies["access_token"].value, tickwire_server)["sub"] == str(
        users["bob"].pk
    )


def test_logout_deletes_the_cookie(live_django: str) -> None:
    client, _ = log_in(live_django, "bob")
    page = client.get("/dashboard/")
    csrf = client.cookies["csrftoken"]
    answer = client.post("/logout/", data={"csrfmiddlewaretoken": csrf})
    assert page.status_code == 200
    (header,) = set_cookie_headers(answer, "access_token")
    assert header.startswith('access_token="";') or header.startswith("access_token=;")
    assert "max-age=0" in header.lower()
    assert "access_token" not in client.cookies


def test_anonymous_visitors_get_no_cookie(live_django: str) -> None:
    import httpx

    answer = httpx.get(live_django + "/")
    assert answer.status_code == 200
    assert set_cookie_headers(answer, "access_token") == []


def test_the_token_view(live_django: str, users: dict[str, Any], tickwire_server: Tickwire) -> None:
    import httpx

    anonymous = httpx.get(live_django + "/tickwire/token/")
    assert anonymous.status_code == 401
    assert anonymous.json() == {"error": "not logged in"}

    client, _ = log_in(live_django, "alice")
    answer = client.get("/tickwire/token/")
    assert answer.status_code == 200
    assert "no-store" in answer.headers["cache-control"]
    token = answer.json()["token"]
    assert _claims(token, tickwire_server)["sub"] == str(users["alice"].pk)
    # A token function's token works as a query parameter, from any origin.
    sock = Socket(
        tickwire_server, "/ws/notifications/", token=token, origin="https://elsewhere.example"
    )
    assert isinstance(sock.expect_type("unread_notifications")["notifications"], list)
    sock.close()


def test_the_cookie_is_refused_from_a_foreign_origin(
    live_django: str, tickwire_server: Tickwire
) -> None:
    """Why tickwire goes behind the Django host: a cookie from a page of
    another origin (cross-site WebSocket hijacking) is refused."""
    client, _ = log_in(live_django, "alice")
    with pytest.raises(InvalidStatus) as refused:
        Socket(
            tickwire_server,
            "/ws/notifications/",
            cookie=client.cookies["access_token"],
            origin="https://evil.example",
        )
    assert refused.value.response.status_code == 403


def test_under_asgi_too(users: dict[str, Any], tickwire_server: Tickwire) -> None:
    """Channels deployments run Django under ASGI: the middleware works there."""
    import asyncio

    from django.test import AsyncClient

    async def visit() -> Any:
        client = AsyncClient()
        await client.aforce_login(users["alice"])
        return await client.get("/dashboard/")

    response = asyncio.run(visit())
    assert response.status_code == 200
    token = response.cookies["access_token"].value
    assert _claims(token, tickwire_server)["sub"] == str(users["alice"].pk)
