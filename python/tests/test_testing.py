"""tickwire.testing.captured(): an app's view tested without a server, as
Channels' in-memory layer allowed; the messages are the wire's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import Client, override_settings

from tickwire import aio
from tickwire.services import market_broadcaster
from tickwire.testing import captured


def test_a_view_is_tested_without_a_server(
    users: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TICKWIRE_URL", "TICKWIRE_API_KEY"):
        monkeypatch.delenv(name)
    client = Client()
    client.force_login(users["alice"])
    with override_settings(TICKWIRE={}), captured() as sent:  # no URL, no key: nothing is sent
        answer = client.post("/trade/", {"symbol": "ETH-USD", "price": "2500.50"})
    assert answer.status_code == 201
    market, note = sent
    assert market == {"type": "market_update", "symbol": "ETH-USD", "price": 2500.5}
    assert note["type"] == "new_notification"
    assert note["user_id"] == str(users["alice"].pk)
    assert note["message"] == "BUY 1 ETH-USD @ $2500.50"
    assert note["notification_id"].startswith("notif_")


def test_captures_nest_and_take_asyncio_publishes() -> None:
    with captured() as outer:
        market_broadcaster.broadcast_market_update("A-USD", 1)
        with captured() as inner:
            asyncio.run(aio.market_broadcaster.broadcast_market_update("B-USD", 2))
        market_broadcaster.broadcast_market_update("C-USD", 3)
    assert [m["symbol"] for m in outer] == ["A-USD", "C-USD"]
    assert [m["symbol"] for m in inner] == ["B-USD"]
