"""Settings: from settings.TICKWIRE, else the environment; a missing one
is named in the error; outside Django the environment is enough."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from django.core import checks
from django.test import override_settings
from support import Socket, Tickwire

import tickwire
from tickwire.services import market_broadcaster

_NO_ENV = ("TICKWIRE_URL", "TICKWIRE_API_KEY", "TICKWIRE_JWT_SECRET")


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _NO_ENV:
        monkeypatch.delenv(name, raising=False)
    tickwire.config.reset()


@pytest.mark.usefixtures("django_project", "bare_env")
@pytest.mark.parametrize("missing", ["URL", "API_KEY"])
def test_a_missing_setting_is_named(tickwire_server: Tickwire, missing: str) -> None:
    given = {k: v for k, v in tickwire_server.settings().items() if k != missing}
    with (
        override_settings(TICKWIRE=given),
        pytest.raises(tickwire.ConfigurationError) as error,
    ):
        market_broadcaster.broadcast_market_update("BTC-USD", 1)
    text = str(error.value)
    assert f"'{missing}' to settings.TICKWIRE" in text
    assert f"TICKWIRE_{missing}" in text


@pytest.mark.usefixtures("django_project", "bare_env")
def test_a_missing_jwt_secret_is_named() -> None:
    with (
        override_settings(TICKWIRE={}),
        pytest.raises(tickwire.ConfigurationError, match="JWT_SECRET"),
    ):
        tickwire.mint_token("alice")


@pytest.mark.usefixtures("django_project")
def test_an_unknown_key_is_refused_by_name() -> None:
    with (
        override_settings(TICKWIRE={"URL": "http://127.0.0.1:1", "API_KEYS": ["x"]}),
        pytest.raises(tickwire.ConfigurationError, match=r"unknown key.*API_KEYS"),
    ):
        market_broadcaster.broadcast_market_update("BTC-USD", 1)


@pytest.mark.usefixtures("django_project")
def test_system_checks_name_the_problem() -> None:
    assert [m for m in checks.run_checks() if m.id.startswith("tickwire.")] == []
    with override_settings(TICKWIRE={"TIMEOUT": "soon"}):
        (problem,) = [m for m in checks.run_checks() if m.id.startswith("tickwire.")]
        assert problem.id == "tickwire.E001"
        assert "TIMEOUT" in problem.msg
    from django.conf import settings

    wrong_order = [m for m in settings.MIDDLEWARE if "AccessToken" not in m]
    wrong_order.insert(1, "tickwire.django.middleware.AccessTokenMiddleware")
    with override_settings(MIDDLEWARE=wrong_order):
        ids = [m.id for m in checks.run_checks() if m.id.startswith("tickwire.")]
        assert ids == ["tickwire.E002"]


def _outside_django(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in env.items() if not k.startswith(("TICKWIRE_", "DJANGO_"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_outside_django_the_environment_is_enough(tickwire_server: Tickwire) -> None:
    import os

    sock = Socket(tickwire_server, "/ws/market-data/", token=_token(tickwire_server, "script"))
    sock.subscribe("ADA-USD")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TICKWIRE_", "DJANGO_"))}
    env = {
        **base,
        "TICKWIRE_URL": tickwire_server.url,
        "TICKWIRE_API_KEY": tickwire_server.api_key,
    }
    done = _outside_django(
        env,
        "from tickwire.services import market_broadcaster\n"
        "market_broadcaster.broadcast_market_update('ADA-USD', 0.45, change=-1.5)\n",
    )
    assert done.returncode == 0, done.stderr
    got = sock.expect_type("market_update")
    assert (got["symbol"], got["price"], got["change"]) == ("ADA-USD", 0.45, -1.5)
    sock.close()

    del env["TICKWIRE_API_KEY"]
    done = _outside_django(
        env,
        "from tickwire.services import market_broadcaster\n"
        "market_broadcaster.broadcast_market_update('ADA-USD', 0.46)\n",
    )
    assert done.returncode != 0
    assert (
        "ConfigurationError: tickwire setting API_KEY is missing: set TICKWIRE_API_KEY"
        in done.stderr
    )


def _token(server: Tickwire, sub: str) -> str:
    settings = tickwire.Settings.from_mapping({"JWT_SECRET": server.jwt_secret}, environ={})
    return tickwire.mint_token(sub, settings=settings)


def test_configure_in_code(tickwire_server: Tickwire, bare_env: None) -> None:
    try:
        tickwire.configure(url=tickwire_server.url, api_key=tickwire_server.api_key, retry_for=0)
        assert tickwire.current_settings().retry_for == 0
        market_broadcaster.broadcast_market_update("DOT-USD", 7)
    finally:
        tickwire.configure()


def test_settings_values_are_checked(django_project: Any) -> None:
    with pytest.raises(tickwire.ConfigurationError, match=r"URL.*http"):
        tickwire.Settings.from_mapping({"URL": "127.0.0.1:8000"})
    with pytest.raises(tickwire.ConfigurationError, match=r"TOKEN_TTL.*positive"):
        tickwire.Settings.from_mapping({"TOKEN_TTL": -5})
    with pytest.raises(tickwire.ConfigurationError, match=r"USER_ID.*cannot import"):
        tickwire.Settings.from_mapping({"USER_ID": "nowhere.at_all"})


@pytest.mark.usefixtures("bare_env")
def test_the_user_id_hook_names_users_for_tokens_and_notifications(
    tickwire_server: Tickwire, users: dict[str, Any]
) -> None:
    from django.conf import settings
    from django.test import Client

    from tickwire.services import notification_broadcaster

    hooked = {
        **settings.TICKWIRE,
        **tickwire_server.settings(),
        "USER_ID": lambda u: u.get_username(),
    }
    with override_settings(TICKWIRE=hooked):
        client = Client()
        client.force_login(users["carol"])
        cookie = client.get("/dashboard/").cookies["access_token"].value
        assert tickwire.read_token(cookie) is not None
        assert tickwire.read_token(cookie)["sub"] == "carol"  # type: ignore[index]
        sock = Socket(tickwire_server, "/ws/notifications/", cookie=cookie)
        sock.expect_type("unread_notifications")
        sent = notification_broadcaster.send_notification(users["carol"], "Hi", "by username")
        assert sock.expect_type("new_notification")["notification_id"] == sent
        sock.close()
