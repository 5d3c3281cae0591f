"""What the broadcasters publish reaches the browsers of a Django login:
market updates to the subscribers of the symbol, signals to the signal
sockets, a notification to its user's sockets and no one else's."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from support import Socket, Tickwire, log_in

from tickwire.services import market_broadcaster, notification_broadcaster, signals_broadcaster


def _symbol() -> str:
    return "T" + uuid.uuid4().hex[:6].upper() + "-USD"


@pytest.fixture
def alice_cookie(live_django: str) -> str:
    client, _ = log_in(live_django, "alice")
    return client.cookies["access_token"]


def test_market_updates_reach_the_subscribers_of_the_symbol(
    tickwire_server: Tickwire, alice_cookie: str
) -> None:
    mine, other = _symbol(), _symbol()
    sock = Socket(tickwire_server, "/ws/market-data/", cookie=alice_cookie)
    sock.subscribe(mine)

    market_broadcaster.broadcast_market_update(other, 1.0)
    market_broadcaster.broadcast_market_update(
        mine,
        Decimal("45000.50"),
        change=2.5,
        volume=1_000_000,
        timestamp=datetime(2024, 1, 15, 10, 30, tzinfo=timezone.utc),
    )
    market_broadcaster.broadcast_market_update(mine, 45001, venue="XNAS")

    first = sock.expect_type("market_update")
    assert first["symbol"] == mine, "only the subscribed symbol arrives"
    assert first["price"] == 45000.5
    assert first["change"] == 2.5
    assert first["volume"] == 1_000_000
    assert first["timestamp"] == "2024-01-15T10:30:00Z"
    assert first["seq"] == 1

    second = sock.expect_type("market_update")
    assert second["price"] == 45001
    assert isinstance(second["price"], int), "an integer stays an integer"
    assert second["venue"] == "XNAS", "extra fields are forwarded"
    assert "change" not in second, "an argument left None is not sent (not even as null)"
    assert "volume" not in second
    assert second["timestamp"], "the server fills in the timestamp"
    assert second["seq"] == 2
    sock.close()


def test_signals_reach_the_signal_sockets(tickwire_server: Tickwire, alice_cookie: str) -> None:
    symbol = _symbol()
    sock = Socket(tickwire_server, "/ws/trading-signals/", cookie=alice_cookie)
    sock.send({"type": "filter", "symbol": symbol, "signal_type": None})
    sock.expect_type("filtered")

    sid = "signal_" + uuid.uuid4().hex[:8]
    signals_broadcaster.broadcast_buy_signal(sid, symbol, 45000.0, 50000.0, 42000.0, 85)
    signals_broadcaster.broadcast_sell_signal(
        sid + "s", symbol, 45000, 40000, 47000, 70, strength="WEAK"
    )
    signals_broadcaster.broadcast_hold_signal(
        sid + "h", symbol, 45000, 45500, 44000, 55, "MODERATE"
    )
    signals_broadcaster.broadcast_signal_update(sid, confidence_score=90, target_price=51000.0)

    buy = sock.expect_type("new_signal")
    assert buy == {
        "type": "new_signal",
        "signal_id": sid,
        "symbol": symbol,
        "signal_type": "BUY",
        "strength": "STRONG",
        "confidence_score": 85,
        "entry_price": 45000.0,
        "target_price": 50000.0,
        "stop_loss": 42000.0,
        "timestamp": buy["timestamp"],
        "seq": buy["seq"],
    }
    sell = sock.expect_type("new_signal")
    assert (sell["signal_type"], sell["strength"]) == ("SELL", "WEAK")
    hold = sock.expect_type("new_signal")
    assert (hold["signal_type"], hold["strength"]) == ("HOLD", "MODERATE")
    update = sock.expect_type("signal_update")
    assert update["signal_id"] == sid
    assert update["confidence_score"] == 90
    assert update["target_price"] == 51000.0
    assert update["symbol"] == symbol, "tickwire completes an update from the signal's state"
    assert update["signal_type"] == "BUY"
    assert [buy["seq"], sell["seq"], hold["seq"], update["seq"]] == list(
        range(buy["seq"], buy["seq"] + 4)
    )
    sock.close()


def test_a_notification_reaches_its_user_and_no_one_else(
    live_django: str, tickwire_server: Tickwire, users: dict[str, Any]
) -> None:
    alice_client, _ = log_in(live_django, "alice")
    bob_client, _ = log_in(live_django, "bob")
    alice = Socket(
        tickwire_server, "/ws/notifications/", cookie=alice_client.cookies["access_token"]
    )
    alice_tab2 = Socket(
        tickwire_server, "/ws/notifications/", cookie=alice_client.cookies["access_token"]
    )
    bob = Socket(tickwire_server, "/ws/notifications/", cookie=bob_client.cookies["access_token"])
    for sock in (alice, alice_tab2, bob):
        sock.expect_type("unread_notifications")

    returned = notification_broadcaster.send_notification(
        users["alice"], "Trade Executed", "BUY 100 BTC-USD @ $45000", "trade", "high"
    )
    assert returned.startswith("notif_")
    for sock in (alice, alice_tab2):
        got = sock.expect_type("new_notification")
        assert got["notification_id"] == returned
        assert got["title"] == "Trade Executed"
        assert got["message"] == "BUY 100 BTC-USD @ $45000"
        assert got["notification_type"] == "trade"
        assert got["priority"] == "high"
        assert "user_id" not in got, "the user id never reaches a browser"

    # By the user's id too (an int, as the replaced code may pass it), with
    # an id of the caller's. Bob's own notification is sent after Alice's
    # arrived: had Bob's socket been sent hers, it would come first.
    mine = notification_broadcaster.send_notification(
        users["bob"].pk, "Margin Call", "Add funds", notification_id="n-bob-1", priority="critical"
    )
    assert mine == "n-bob-1"
    got = bob.expect(lambda m: m.get("type") == "new_notification")
    assert got["notification_id"] == "n-bob-1"
    assert got["notification_type"] == "system", "the default type"
    assert [m for m in bob.seen if m.get("type") == "new_notification"] == [got]
    for sock in (alice, alice_tab2, bob):
        sock.close()


def test_services_star_import_gives_the_replaced_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from tickwire.services import *", namespace)  # noqa: S102 -- the line an app's services.py becomes
    assert {
        "market_broadcaster",
        "signals_broadcaster",
        "notification_broadcaster",
        "RealTimeBroadcaster",
        "MarketDataBroadcaster",
        "TradingSignalsBroadcaster",
        "NotificationBroadcaster",
    } <= set(namespace)
    assert isinstance(namespace["market_broadcaster"], namespace["MarketDataBroadcaster"])
    assert isinstance(namespace["signals_broadcaster"], namespace["TradingSignalsBroadcaster"])
    assert isinstance(namespace["notification_broadcaster"], namespace["RealTimeBroadcaster"])
