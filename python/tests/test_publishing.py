"""How publishing behaves: a refused entry raises PublishError with the
server's words; `batch()` is one request; one kept-alive connection serves
every thread of the process."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from django.test import override_settings
from support import Relay, Socket, Tickwire

import tickwire
from tickwire.services import market_broadcaster, notification_broadcaster, signals_broadcaster


def _symbol() -> str:
    return "P" + uuid.uuid4().hex[:6].upper() + "-USD"


@pytest.fixture
def relay(tickwire_server: Tickwire, django_project: Any) -> Any:
    """The process's publisher pointed at tickwire through a counting relay."""
    counting = Relay(tickwire_server.port)
    with override_settings(TICKWIRE=tickwire_server.settings(URL=counting.url)):
        yield counting
    counting.close()


def _market_socket(server: Tickwire, *symbols: str) -> Socket:
    sock = Socket(server, "/ws/market-data/", token=tickwire.mint_token("tester"))
    sock.subscribe(*symbols)
    return sock


def test_a_bad_entry_raises_publish_error_with_the_servers_message(django_project: Any) -> None:
    with pytest.raises(tickwire.PublishError) as refused:
        signals_broadcaster.broadcast_buy_signal(
            "sig-bad", "BTC-USD", 45000, 50000, 42000, 85, strength="ENORMOUS"
        )
    error = refused.value
    assert error.status == 400
    assert error.accepted == 0
    (entry,) = error.errors
    assert (entry.index, entry.code) == (0, "invalid_field")
    assert "strength" in entry.message, entry.message
    assert entry.entry is not None
    assert entry.entry["signal_id"] == "sig-bad"
    assert entry.message in str(error), "the server's own message is in the error's text"
    assert "sig-bad" in str(error)

    with pytest.raises(tickwire.PublishError, match="invalid_field") as unknown:
        signals_broadcaster.broadcast_signal_update("no-such-signal", confidence_score=10)
    assert "signal" in unknown.value.errors[0].message


def test_a_wrong_api_key_is_a_publish_error_that_says_so(
    tickwire_server: Tickwire, django_project: Any
) -> None:
    with (
        override_settings(TICKWIRE=tickwire_server.settings(API_KEY="not-the-key")),
        pytest.raises(tickwire.PublishError, match="API key") as refused,
    ):
        market_broadcaster.broadcast_market_update("BTC-USD", 1)
    assert refused.value.status == 401


def test_a_batch_is_one_request_and_keeps_the_valid_entries(
    tickwire_server: Tickwire, relay: Relay
) -> None:
    symbol = _symbol()
    sock = _market_socket(tickwire_server, symbol)
    with tickwire.batch():
        for price in (1, 2, 3):
            market_broadcaster.broadcast_market_update(symbol, price)
        assert relay.requests == 0, "nothing is sent before the block ends"
    assert relay.requests == 1
    assert [sock.expect_type("market_update")["price"] for _ in range(3)] == [1, 2, 3]

    sent: list[str] = []

    def two_good_two_bad() -> None:
        with tickwire.batch():
            market_broadcaster.broadcast_market_update(symbol, 4)
            signals_broadcaster.broadcast_buy_signal("s-x", symbol, 1, 2, 0.5, "high")
            market_broadcaster.broadcast_market_update(symbol, 5)
            sent.append(
                notification_broadcaster.send_notification("alice", "t", "m", priority="urgent")
            )

    with pytest.raises(tickwire.PublishError) as refused:
        two_good_two_bad()
    assert relay.requests == 2
    error = refused.value
    assert error.accepted == 2
    assert [(e.index, e.code) for e in error.errors] == [(1, "invalid_field"), (3, "invalid_field")]
    assert "confidence_score" in error.errors[0].message
    assert "priority" in error.errors[1].message
    assert error.errors[1].entry is not None
    assert error.errors[1].entry["notification_id"] == sent[0]
    assert [sock.expect_type("market_update")["price"] for _ in range(2)] == [4, 5]
    sock.close()


def test_a_batch_left_by_an_exception_sends_nothing(
    tickwire_server: Tickwire, relay: Relay
) -> None:
    symbol = _symbol()
    sock = _market_socket(tickwire_server, symbol)

    def failing_view() -> None:
        with tickwire.batch():
            market_broadcaster.broadcast_market_update(symbol, 1)
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError):
        failing_view()
    with tickwire.batch():
        market_broadcaster.broadcast_market_update(symbol, 2)
        with tickwire.batch():  # joins the outer one
            market_broadcaster.broadcast_market_update(symbol, 3)
    assert relay.requests == 1
    assert [sock.expect_type("market_update")["price"] for _ in range(2)] == [2, 3]
    sock.close()


def test_every_thread_shares_one_kept_alive_connection(
    tickwire_server: Tickwire, relay: Relay
) -> None:
    symbols = [_symbol() for _ in range(6)]
    sock = _market_socket(tickwire_server, *symbols)
    per_thread = 20
    failures: list[BaseException] = []

    def publish(symbol: str) -> None:
        try:
            for price in range(1, per_thread + 1):
                market_broadcaster.broadcast_market_update(symbol, price)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=publish, args=(s,)) for s in symbols]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert relay.requests == len(symbols) * per_thread
    assert relay.connections == 1, "one connection for the whole process"
    assert len(set(relay.idempotency_keys)) == relay.requests, "each request has its own key"

    got: dict[str, list[int]] = {s: [] for s in symbols}
    for _ in range(len(symbols) * per_thread):
        message = sock.expect_type("market_update")
        got[message["symbol"]].append(message["price"])
    assert all(prices == list(range(1, per_thread + 1)) for prices in got.values()), got
    sock.close()


def test_none_fields_are_left_out_and_reserved_ones_refused(django_project: Any) -> None:
    from tickwire import messages

    built = messages.market_update("BTC-USD", 1, change=None, volume=None, venue=None)
    assert built == {"type": "market_update", "symbol": "BTC-USD", "price": 1}
    with pytest.raises(TypeError, match="type"):
        market_broadcaster.broadcast_market_update("BTC-USD", 1, type="new_signal")
