"""tickwire going away: a call retries with backoff for RETRY_FOR, then
raises a clear TickwireUnavailable; a server that comes back within the
window gets the message (once); no call hangs on a server that never answers."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from typing import Any

import pytest
from django.test import override_settings
from support import TICKWIRE_BIN, Relay, SilentServer, Socket, Tickwire

import tickwire
from tickwire.services import market_broadcaster


def _remembers_idempotency_keys() -> bool:
    if not TICKWIRE_BIN.exists():
        return False
    usage = subprocess.run([TICKWIRE_BIN, "--help"], capture_output=True, text=True, check=False)
    return "idempotency" in usage.stdout.lower()


class _Retries(logging.Handler):
    """Counts the publisher's retry warnings, so a test can wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.count += 1
            self.first.set()


@pytest.fixture
def retries() -> Any:
    handler = _Retries()
    logger = logging.getLogger("tickwire")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_stopped_for_good_gives_a_bounded_retry_then_a_clear_error(
    own_tickwire: Tickwire, django_project: Any, retries: _Retries
) -> None:
    with override_settings(TICKWIRE=own_tickwire.settings(RETRY_FOR=1.5, TIMEOUT=2)):
        market_broadcaster.broadcast_market_update("BTC-USD", 1)  # the kept-alive connection
        own_tickwire.stop()
        started = time.monotonic()
        with pytest.raises(tickwire.TickwireUnavailable) as gone:
            market_broadcaster.broadcast_market_update("BTC-USD", 2)
        elapsed = time.monotonic() - started
    error = gone.value
    assert 1.5 <= elapsed < 3.5, f"bounded by RETRY_FOR (took {elapsed:.2f} s)"
    assert error.attempts >= 4, "retried with backoff, not once"
    assert retries.count == error.attempts - 1
    text = str(error)
    assert own_tickwire.url in text
    assert "could not be reached" in text
    assert "nothing was published" in text
    assert f"{error.attempts} attempts" in text
    assert isinstance(error, ConnectionError)


def test_stopped_mid_call_then_back_the_message_arrives_once(
    own_tickwire: Tickwire, django_project: Any, retries: _Retries
) -> None:
    with override_settings(TICKWIRE=own_tickwire.settings(RETRY_FOR=20, TIMEOUT=10)):
        market_broadcaster.broadcast_market_update("ETH-USD", 1)  # the kept-alive connection
        own_tickwire.pause()  # the next request is sent and waits for an answer...
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                market_broadcaster.broadcast_market_update("ETH-USD", 2)
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.3)  # the request is on its way into the stopped server's socket
        own_tickwire.kill()  # ...that dies without answering
        assert retries.first.wait(5), "the dropped connection is retried"
        assert outcome == [], "still retrying while the server is down"

        own_tickwire.start()  # back, on the same port
        sock = Socket(own_tickwire, "/ws/market-data/", token=tickwire.mint_token("t"))
        sock.subscribe("ETH-USD")
        caller.join(25)
        assert outcome == [None], f"the call succeeded once the server was back: {outcome}"
        got = sock.expect_type("market_update")
        assert got["price"] == 2
        assert got["seq"] == 1, "published once, on the new server"
        sock.send({"type": "ping"})
        assert sock.expect(lambda m: m["type"] in ("pong", "market_update"))["type"] == "pong"
        sock.close()


def test_a_server_that_never_answers_ends_the_call_by_its_timeout(django_project: Any) -> None:
    silent = SilentServer()
    try:
        with override_settings(TICKWIRE={"URL": silent.url, "API_KEY": "k" * 16, "TIMEOUT": 0.5}):
            started = time.monotonic()
            with pytest.raises(tickwire.TickwireUnavailable, match="did not answer in time"):
                market_broadcaster.broadcast_market_update("BTC-USD", 1)
            assert time.monotonic() - started < 2.0
    finally:
        silent.close()


@pytest.mark.skipif(
    not _remembers_idempotency_keys(), reason="this tickwire does not remember Idempotency-Keys"
)
def test_a_lost_answer_is_retried_and_published_once(
    tickwire_server: Tickwire, django_project: Any, retries: _Retries
) -> None:
    symbol = "L" + str(time.monotonic_ns())[-6:] + "-USD"
    sock = Socket(tickwire_server, "/ws/market-data/", token=tickwire.mint_token("t"))
    sock.subscribe(symbol)
    relay = Relay(tickwire_server.port, drop_answers=1)
    try:
        with override_settings(TICKWIRE=tickwire_server.settings(URL=relay.url)):
            market_broadcaster.broadcast_market_update(symbol, 7)  # published; its answer lost
            market_broadcaster.broadcast_market_update(symbol, 8)
    finally:
        relay.close()
    assert retries.count == 1
    assert relay.requests == 3
    first_key, retried_key, second_key = relay.idempotency_keys
    assert first_key == retried_key != second_key, "a retry keeps its request's key"
    got = [sock.expect_type("market_update") for _ in range(2)]
    assert [m["price"] for m in got] == [7, 8], "published once, not twice"
    assert got[1]["seq"] == got[0]["seq"] + 1
    sock.close()
