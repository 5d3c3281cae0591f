"""Where the package's settings come from, read once and checked once.

Inside a configured Django project: `settings.TICKWIRE`, a dict. Each of
`URL`, `API_KEY` and `JWT_SECRET` left out of it is taken from the
environment (`TICKWIRE_URL`, `TICKWIRE_API_KEY`, `TICKWIRE_JWT_SECRET`), which
is also the only source outside Django. `tickwire.configure(...)` sets them
in code and wins over both.

A value is checked when the settings are read (a wrong type or an unknown
key stops with a message naming it); a value that is absent is reported
only when something needs it, so a process that only publishes needs no
JWT secret and one that only mints tokens needs no API key.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tickwire.errors import ConfigurationError

UserIdHook = Callable[[Any], object]
SymbolsHook = Callable[[Any], Sequence[str] | None]

DEFAULT_TOKEN_TTL_SECONDS = 12 * 3600.0
DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_RETRY_FOR_SECONDS = 10.0
DEFAULT_INGEST_CHANNEL = "rt:ingest"

_FROM_ENV = {
    "URL": "TICKWIRE_URL",
    "API_KEY": "TICKWIRE_API_KEY",
    "JWT_SECRET": "TICKWIRE_JWT_SECRET",
}
KNOWN_KEYS = (
    "URL",
    "API_KEY",
    "JWT_SECRET",
    "REDIS_URL",
    "INGEST_CHANNEL",
    "TOKEN_TTL",
    "USER_ID",
    "SYMBOLS",
    "TIMEOUT",
    "RETRY_FOR",
    "COOKIE_DOMAIN",
)


@dataclass(frozen=True)
class Settings:
    """Validated settings. Build one with `Settings.from_mapping`, or let the
    package read them (`current_settings()`)."""

    url: str | None = None
    api_key: str | None = None
    jwt_secret: str | None = None
    # Publish with `PUBLISH <ingest_channel>` on this Redis instead of HTTP.
    redis_url: str | None = None
    ingest_channel: str = DEFAULT_INGEST_CHANNEL
    token_ttl: float = DEFAULT_TOKEN_TTL_SECONDS
    # user -> the `sub` of its tokens and the `user_id` of its notifications.
    user_id: UserIdHook | None = None
    # user -> the symbol patterns its token allows (None: every symbol).
    symbols: SymbolsHook | None = None
    # Each network operation (connect, write, read) ends within this many seconds...
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    # ...and a publish that cannot reach tickwire is retried for this long.
    retry_for: float = DEFAULT_RETRY_FOR_SECONDS
    cookie_domain: str | None = None
    # Where the values came from, for error messages.
    source: str = "the environment"

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        source: str = "settings.TICKWIRE",
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        unknown = sorted(str(k) for k in raw if k not in KNOWN_KEYS)
        if unknown:
            raise ConfigurationError(
                f"unknown key(s) in {source}: {', '.join(unknown)} "
                f"(known keys: {', '.join(KNOWN_KEYS)})"
            )
        env = os.environ if environ is None else environ
        values: dict[str, Any] = dict(raw)
        for key, var in _FROM_ENV.items():
            if values.get(key) in (None, "") and env.get(var):
                values[key] = env[var]

        def text(key: str) -> str | None:
            value = values.get(key)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise ConfigurationError(f"{source}['{key}'] must be a string, not {value!r}")
            return value

        url = text("URL")
        if url is not None:
            if not url.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"{source}['URL'] must start with http:// or https://, not {url!r}"
                )
            url = url.rstrip("/")
        redis_url = text("REDIS_URL")
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                f"{source}['REDIS_URL'] must start with redis://, rediss:// or unix://, "
                f"not {redis_url!r}"
            )
        return cls(
            url=url,
            api_key=text("API_KEY"),
            jwt_secret=text("JWT_SECRET"),
            redis_url=redis_url,
            ingest_channel=text("INGEST_CHANNEL") or DEFAULT_INGEST_CHANNEL,
            token_ttl=_seconds(values, "TOKEN_TTL", DEFAULT_TOKEN_TTL_SECONDS, source),
            user_id=_hook(values.get("USER_ID"), "USER_ID", source),
            symbols=_hook(values.get("SYMBOLS"), "SYMBOLS", source),
            timeout=_seconds(values, "TIMEOUT", DEFAULT_TIMEOUT_SECONDS, source),
            retry_for=_seconds(values, "RETRY_FOR", DEFAULT_RETRY_FOR_SECONDS, source, zero=True),
            cookie_domain=text("COOKIE_DOMAIN"),
            source=source,
        )

    def _missing(self, key: str) -> ConfigurationError:
        env = _FROM_ENV.get(key)
        if self.source == "the environment":
            how = f"set {env} in the environment (in Django: settings.TICKWIRE['{key}'])"
        else:
            how = f"add '{key}' to {self.source}" + (
                f", or set {env} in the environment" if env else ""
            )
        return ConfigurationError(f"tickwire setting {key} is missing: {how}")

    def require_url(self) -> str:
        if self.url is None:
            raise self._missing("URL")
        return self.url

    def require_api_key(self) -> str:
        if self.api_key is None:
            raise self._missing("API_KEY")
        return self.api_key

    def require_jwt_secret(self) -> str:
        if self.jwt_secret is None:
            raise self._missing("JWT_SECRET")
        return self.jwt_secret


def _seconds(
    values: Mapping[str, Any], key: str, default: float, source: str, *, zero: bool = False
) -> float:
    value = values.get(key)
    if value is None:
        return default
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            raise ConfigurationError(
                f"{source}['{key}'] must be a number of seconds, not {value!r}"
            ) from None
    else:
        raise ConfigurationError(f"{source}['{key}'] must be a number of seconds, not {value!r}")
    if seconds < 0 or (seconds == 0 and not zero):
        raise ConfigurationError(f"{source}['{key}'] must be positive, not {value!r}")
    return seconds


def _hook(value: Any, key: str, source: str) -> Callable[[Any], Any] | None:
    """A callable, or the dotted path of one ("myapp.realtime.user_id")."""
    if value is None:
        return None
    if isinstance(value, str):
        module_name, _, attr = value.rpartition(".")
        if not module_name:
            raise ConfigurationError(
                f"{source}['{key}'] must be a callable or a dotted path, not {value!r}"
            )
        try:
            value = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigurationError(f"{source}['{key}']: cannot import {value!r}: {e}") from e
    if not callable(value):
        raise ConfigurationError(f"{source}['{key}'] must be callable, not {value!r}")
    hook: Callable[[Any], Any] = value
    return hook


# The process's settings: read at first use, dropped by reset() (Django's
# setting_changed does that for TICKWIRE). A lock so two threads' first
# publishes read them once; held only while reading.
_lock = threading.Lock()
_current: Settings | None = None
_overrides: dict[str, Any] = {}


def current_settings() -> Settings:
    """The settings in force: tickwire.configure(), then Django's, then the environment."""
    global _current
    settings = _current
    if settings is not None:
        return settings
    with _lock:
        if _current is None:
            _current = _read()
        return _current


def _read() -> Settings:
    raw, source = _django_settings()
    if _overrides:
        merged = {**(raw or {}), **_overrides}
        return Settings.from_mapping(merged, source="tickwire.configure()")
    return Settings.from_mapping(raw or {}, source=source)


def _django_settings() -> tuple[Mapping[str, Any] | None, str]:
    try:
        from django.conf import settings
    except ImportError:
        return None, "the environment"
    if not settings.configured:
        return None, "the environment"
    raw = getattr(settings, "TICKWIRE", None)
    if raw is None:
        return {}, "settings.TICKWIRE"
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"settings.TICKWIRE must be a dict, not {type(raw).__name__}")
    return raw, "settings.TICKWIRE"


def configure(**values: Any) -> Settings:
    """Sets settings in code (keys as in settings.TICKWIRE, any case), over
    Django's and the environment's; `configure()` with no argument drops
    them. Returns the settings now in force."""
    global _overrides
    checked = {key.upper(): value for key, value in values.items()}
    Settings.from_mapping(checked, source="tickwire.configure()")
    with _lock:
        _overrides = checked
    reset()
    return current_settings()


def reset() -> None:
    """Forgets the settings read so far; the next use reads them again."""
    global _current
    with _lock:
        _current = None
