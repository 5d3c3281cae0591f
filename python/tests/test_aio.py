"""The asyncio twin: the same broadcasters awaited, `async with batch()`
as one request, the same errors."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from django.test import override_settings
from support import Relay, Socket, Tickwire

import tickwire
from tickwire import aio


def test_async_broadcasters_publish_and_batch(
    tickwire_server: Tickwire, django_project: Any
) -> None:
    symbol = "A" + uuid.uuid4().hex[:6].upper() + "-USD"
    sock = Socket(tickwire_server, "/ws/market-data/", token=tickwire.mint_token("async"))
    sock.subscribe(symbol)
    notes = Socket(tickwire_server, "/ws/notifications/", token=tickwire.mint_token("async-user"))
    notes.expect_type("unread_notifications")
    relay = Relay(tickwire_server.port)

    async def main() -> str:
        await aio.market_broadcaster.broadcast_market_update(symbol, 1.5, change=0.1)
        async with tickwire.batch():
            await aio.market_broadcaster.broadcast_market_update(symbol, 2.5)
            await aio.signals_broadcaster.broadcast_sell_signal("as-1", symbol, 2.5, 2.0, 2.7, 66)
            sent: str = await aio.notification_broadcaster.send_notification(
                "async-user", "Async", "from a coroutine"
            )
        with pytest.raises(tickwire.PublishError, match="strength"):
            await aio.signals_broadcaster.broadcast_hold_signal(
                "as-2", symbol, 1, 1, 1, 50, strength="MEH"
            )
        await aio.default_publisher().aclose()
        return sent

    with override_settings(TICKWIRE=tickwire_server.settings(URL=relay.url)):
        sent = asyncio.run(main())
    assert relay.requests == 3, "one, then the batch as one, then the refused one"
    assert [sock.expect_type("market_update")["price"] for _ in range(2)] == [1.5, 2.5]
    assert notes.expect_type("new_notification")["notification_id"] == sent
    relay.close()
    sock.close()
    notes.close()


def test_a_sync_batch_refuses_async_publishes(django_project: Any) -> None:
    async def main() -> None:
        with tickwire.batch():
            await aio.market_broadcaster.broadcast_market_update("BTC-USD", 1)

    with pytest.raises(TypeError, match="async with"):
        asyncio.run(main())
