"""`manage.py test_websockets`, run as a user runs it (a child process of
the project's manage.py), is delivered to the browsers' sockets."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from support import PROJECT, Socket, Tickwire, log_in


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "test_websockets", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_market_count_3_delay_0_1_is_delivered(
    project_env: dict[str, str], live_django: str, tickwire_server: Tickwire
) -> None:
    client, _ = log_in(live_django, "alice")
    sock = Socket(tickwire_server, "/ws/market-data/", cookie=client.cookies["access_token"])
    sock.subscribe("BTC-USD")
    latest = httpx.get(tickwire_server.url + "/api/market/BTC-USD")
    before = latest.json()["seq"] if latest.status_code == 200 else 0
    started = time.monotonic()
    done = _manage(project_env, "--type", "market", "--count", "3", "--delay", "0.1")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 0.2, "two delays of 0.1 s between three messages"
    assert done.stdout.count("market_update BTC-USD") == 3, done.stdout
    assert "sent 3 message(s)" in done.stdout

    printed = [
        line.split("price=")[1].split()[0] for line in done.stdout.splitlines() if "price=" in line
    ]
    got = [
        sock.expect(lambda m: m["type"] == "market_update" and m["seq"] > before) for _ in range(3)
    ]
    assert [f"{m['price']:.2f}" for m in got] == printed, (
        "the printed prices are the delivered ones"
    )
    assert all(m["symbol"] == "BTC-USD" for m in got)
    assert [m["seq"] for m in got] == list(range(got[0]["seq"], got[0]["seq"] + 3))
    sock.close()


def test_all_types_with_a_user_and_a_symbol(
    project_env: dict[str, str], live_django: str, tickwire_server: Tickwire, users: dict[str, Any]
) -> None:
    client, _ = log_in(live_django, "bob")
    cookie = client.cookies["access_token"]
    market = Socket(tickwire_server, "/ws/market-data/", cookie=cookie)
    market.subscribe("ETH-USD")
    signals = Socket(tickwire_server, "/ws/trading-signals/", cookie=cookie)
    signals.send({"type": "filter", "symbol": "ETH-USD", "signal_type": None})
    signals.expect_type("filtered")
    notes = Socket(tickwire_server, "/ws/notifications/", cookie=cookie)
    notes.expect_type("unread_notifications")

    done = _manage(
        project_env,
        "--type",
        "all",
        "--count",
        "3",
        "--delay",
        "0",
        "--symbol",
        "ETH-USD",
        "--user",
        "bob",
    )
    assert done.returncode == 0, done.stderr
    assert [market.expect_type("market_update")["symbol"] for _ in range(3)] == ["ETH-USD"] * 3
    kinds = [signals.expect_type("new_signal")["signal_type"] for _ in range(3)]
    assert kinds == ["BUY", "SELL", "HOLD"]
    got = [notes.expect_type("new_notification") for _ in range(3)]
    assert all(n["notification_id"] in done.stdout for n in got)
    for sock in (market, signals, notes):
        sock.close()

    # --user by id works too.
    by_id = _manage(
        project_env, "--type", "notifications", "--count", "1", "--user", str(users["bob"].pk)
    )
    assert by_id.returncode == 0, by_id.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--type", "notifications"), "needs --user"),
        (("--type", "notifications", "--user", "nobody"), "no user 'nobody'"),
        (("--type", "weather"), "invalid choice"),
    ],
)
def test_bad_flags_say_what_is_wrong(
    project_env: dict[str, str], django_project: Any, args: tuple[str, ...], says: str
) -> None:
    done = _manage(project_env, *args, "--count", "1", "--delay", "0")
    assert done.returncode != 0
    assert says in done.stderr


def test_a_refusing_server_fails_the_command_with_its_message(
    project_env: dict[str, str], django_project: Any
) -> None:
    env = {**project_env, "TICKWIRE_API_KEY": "wrong-key-123456"}
    done = _manage(env, "--type", "market", "--count", "1", "--delay", "0")
    assert done.returncode != 0
    assert "after 0 message(s)" in done.stderr
    assert "API key" in done.stderr
