"""With REDIS_URL set, publishing is one `PUBLISH rt:ingest` per call (or
batch), taken by a cluster-mode tickwire; with no node listening, the call
retries and then says so."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from support import Socket, Tickwire

import tickwire
from tickwire.services import market_broadcaster, notification_broadcaster

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (apt-get install redis-server)",
)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    scratch = tempfile.mkdtemp(prefix="tickwire-redis-")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            scratch,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(scratch, ignore_errors=True)


def test_publishing_through_redis(redis_url: str, django_project: Any) -> None:
    server = Tickwire("--redis", redis_url).start().wait_ready()
    try:
        with override_settings(
            TICKWIRE={"REDIS_URL": redis_url, "JWT_SECRET": server.jwt_secret, "RETRY_FOR": 5}
        ):
            sock = Socket(server, "/ws/market-data/", token=tickwire.mint_token("r"))
            sock.subscribe("XRP-USD")
            notes = Socket(server, "/ws/notifications/", token=tickwire.mint_token("r"))
            notes.expect_type("unread_notifications")
            market_broadcaster.broadcast_market_update("XRP-USD", 0.52, volume=10)
            with tickwire.batch():
                market_broadcaster.broadcast_market_update("XRP-USD", 0.53)
                sent = notification_broadcaster.send_notification(
                    "r", "Via Redis", "PUBLISH rt:ingest"
                )
            got = [sock.expect_type("market_update") for _ in range(2)]
            assert [(m["price"], m["seq"]) for m in got] == [(0.52, 1), (0.53, 2)]
            assert notes.expect_type("new_notification")["notification_id"] == sent
            sock.close()
            notes.close()
    finally:
        server.close()

    # No tickwire listens on the channel any more: retried, then a clear error.
    with (
        override_settings(TICKWIRE={"REDIS_URL": redis_url, "RETRY_FOR": 0.5}),
        pytest.raises(tickwire.TickwireUnavailable, match="no tickwire node listens"),
    ):
        market_broadcaster.broadcast_market_update("XRP-USD", 0.54)
