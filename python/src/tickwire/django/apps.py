"""The app's configuration: settings re-read when a test overrides them,
and system checks that name what is wrong in settings.TICKWIRE or in the
middleware order."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.signals import setting_changed

from tickwire import config
from tickwire.errors import ConfigurationError

MIDDLEWARE = "tickwire.django.middleware.AccessTokenMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


class TickwireConfig(AppConfig):
    name = "tickwire.django"
    label = "tickwire"
    verbose_name = "tickwire"

    def ready(self) -> None:
        setting_changed.connect(_settings_changed, dispatch_uid="tickwire-settings-changed")
        register(check_settings)


def _settings_changed(*, setting: str, **_: Any) -> None:
    if setting == "TICKWIRE":
        config.reset()


def check_settings(app_configs: Any = None, **_: Any) -> list[CheckMessage]:
    from django.conf import settings

    problems: list[CheckMessage] = []
    try:
        current = config.current_settings()
    except ConfigurationError as e:
        return [Error(str(e), id="tickwire.E001")]
    middleware = list(getattr(settings, "MIDDLEWARE", []) or [])
    if MIDDLEWARE in middleware:
        if AUTH_MIDDLEWARE not in middleware or middleware.index(
            AUTH_MIDDLEWARE
        ) > middleware.index(MIDDLEWARE):
            problems.append(
                Error(
                    f"{MIDDLEWARE} must come after {AUTH_MIDDLEWARE} in MIDDLEWARE",
                    id="tickwire.E002",
                )
            )
        if current.jwt_secret is None:
            problems.append(
                Warning(
                    "AccessTokenMiddleware is installed but no JWT secret is set: "
                    "add 'JWT_SECRET' to settings.TICKWIRE or set TICKWIRE_JWT_SECRET",
                    id="tickwire.W001",
                )
            )
    return problems
