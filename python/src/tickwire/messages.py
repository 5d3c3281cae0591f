"""The messages tickwire takes, built from Python values (PROTOCOL.md 1.3, 2).

Pure functions, no I/O: the broadcasters in `tickwire.services` (and their
asyncio twins in `tickwire.aio`) build a message here and hand it to a
publisher. An optional argument left as None is left out of the message
rather than sent as null, so the server fills in what it fills in (the
`timestamp`) and never sees a null where it checks for a number.

Values are made JSON the way a Django app holds them: `Decimal` becomes a
JSON number (an integer when it has no fractional digits), `datetime` an
RFC 3339 UTC string (a naive one is taken as UTC), `date`, `UUID` and
other `str()`-able ids strings.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

Message = dict[str, Any]

SIGNAL_TYPES = ("BUY", "SELL", "HOLD")
# Set by the methods themselves; a caller's **fields may not override them.
_RESERVED = frozenset({"type", "seq"})


def market_update(
    symbol: str,
    price: Any,
    change: Any = None,
    volume: Any = None,
    timestamp: Any = None,
    **fields: Any,
) -> Message:
    return _build(
        "market_update",
        {"symbol": symbol, "price": price, "change": change, "volume": volume},
        timestamp,
        fields,
    )


def new_signal(
    signal_type: str,
    signal_id: Any,
    symbol: str,
    entry_price: Any,
    target_price: Any,
    stop_loss: Any,
    confidence_score: Any,
    strength: str = "STRONG",
    timestamp: Any = None,
    **fields: Any,
) -> Message:
    if signal_type not in SIGNAL_TYPES:
        raise ValueError(
            f"signal_type must be one of {', '.join(SIGNAL_TYPES)}, not {signal_type!r}"
        )
    return _build(
        "new_signal",
        {
            "signal_id": signal_id,
            "symbol": symbol,
            "signal_type": signal_type,
            "strength": strength,
            "confidence_score": confidence_score,
            "entry_price": entry_price,
            "target_price": target_price,
            "stop_loss": stop_loss,
        },
        timestamp,
        fields,
    )


def signal_update(signal_id: Any, **changed_fields: Any) -> Message:
    timestamp = changed_fields.pop("timestamp", None)
    return _build("signal_update", {"signal_id": signal_id}, timestamp, changed_fields)


def new_notification(
    user_id: str,
    title: str,
    message: str,
    notification_type: str = "system",
    priority: str = "normal",
    notification_id: Any = None,
    **fields: Any,
) -> Message:
    timestamp = fields.pop("timestamp", None)
    return _build(
        "new_notification",
        {
            "notification_id": notification_id if notification_id is not None else new_id(),
            "user_id": user_id,
            "title": title,
            "message": message,
            "notification_type": notification_type,
            "priority": priority,
        },
        timestamp,
        fields,
    )


def new_id(prefix: str = "notif_") -> str:
    """A fresh unique id, in the server's own style (`notif_...`)."""
    return prefix + uuid.uuid4().hex


def user_id_of(user: object, hook: Callable[[Any], object] | None = None) -> str:
    """The id tickwire knows a user by: a str as given, an int (or UUID) as
    its str, a Django user through the USER_ID hook or else `str(user.pk)`."""
    if isinstance(user, bool):
        raise TypeError("a user id must be a user, an int or a str, not a bool")
    if isinstance(user, str):
        if not user:
            raise ValueError("a user id must not be empty")
        return user
    if isinstance(user, int | uuid.UUID):
        return str(user)
    if hook is not None:
        return user_id_of(hook(user))
    pk = getattr(user, "pk", None)
    if pk is None:
        raise TypeError(
            f"cannot tell the user id of {user!r}: pass a saved Django user, an int or a str"
        )
    return str(pk)


def timestamp_text(value: datetime | date | str) -> str:
    """RFC 3339 in UTC for datetimes; a str is kept as it is (the server
    keeps a published timestamp verbatim)."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        text = value.astimezone(timezone.utc).isoformat()
        return text.removesuffix("+00:00") + "Z"
    return value.isoformat()


def encode(messages: Sequence[Mapping[str, Any]]) -> bytes:
    """One request body: a JSON array, in the given order."""
    return json.dumps(
        list(messages),
        default=_json_default,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def _build(
    kind: str, named: Mapping[str, Any], timestamp: Any, fields: Mapping[str, Any]
) -> Message:
    clash = _RESERVED.intersection(fields)
    if clash:
        raise TypeError(f"{', '.join(sorted(clash))} is set by tickwire, not by the caller")
    message: Message = {"type": kind}
    for key, value in named.items():
        if value is not None:
            message[key] = value
    if timestamp is not None:
        message["timestamp"] = timestamp_text(timestamp)
    for key, value in fields.items():
        if value is not None:
            message[key] = value
    return message


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} cannot be sent: JSON has no NaN or infinity")
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(value)
        return float(value)
    if isinstance(value, datetime | date):
        return timestamp_text(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} value {value!r} cannot be sent as JSON")
