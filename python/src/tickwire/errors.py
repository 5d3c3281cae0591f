"""What can go wrong when publishing, one class per cause.

- ConfigurationError: a setting is missing or wrong; it names the setting.
- PublishError: tickwire answered and refused something (a bad entry, a bad
  API key, a body too large, the key's rate). Sending it again will not help.
- TickwireUnavailable: tickwire could not be reached, or did not answer in
  time, for as long as the retry window allowed. Sending it later may help.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class TickwireError(Exception):
    """Base of every error this package raises."""


class ConfigurationError(TickwireError):
    """A missing or invalid setting. The message names it."""


@dataclass(frozen=True)
class EntryError:
    """The server's verdict on one refused entry of a publish request.

    `index` is the entry's position in the request (in a `batch()`, the
    position of the call inside the block); `entry` is the message itself.
    """

    index: int
    code: str
    message: str
    entry: Mapping[str, Any] | None = None

    def describe(self) -> str:
        what = ""
        if self.entry is not None:
            kind = self.entry.get("type", "?")
            key = next(
                (
                    f" {k}={self.entry[k]}"
                    for k in ("signal_id", "notification_id", "symbol")
                    if k in self.entry
                ),
                "",
            )
            what = f" ({kind}{key})"
        return f"[{self.index}] {self.code}: {self.message}{what}"


class PublishError(TickwireError):
    """tickwire refused a publish request, or some entries of it.

    `status` is the HTTP status (400 for refused entries; 401 a wrong API
    key; 413 a body over `max_publish_bytes`; 429 over the key's rate;
    503 when the server stayed overloaded). `accepted` entries of the same
    request were published all the same; `errors` lists the others, with the
    server's code and message for each.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        accepted: int = 0,
        errors: Sequence[EntryError] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.accepted = accepted
        self.errors: list[EntryError] = list(errors)


class TickwireUnavailable(TickwireError, ConnectionError):
    """tickwire could not be reached within the retry window.

    `attempts` is how many times the request was tried and `elapsed` how
    long that took in seconds; `__cause__` is the last underlying error.
    """

    def __init__(self, message: str, *, attempts: int, elapsed: float) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.elapsed = elapsed
