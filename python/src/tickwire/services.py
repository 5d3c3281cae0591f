"""The broadcasters of the Django Channels deployment tickwire replaces,
with the same names, methods and arguments, publishing to tickwire.

An app whose `apps/core/services.py` becomes

    from tickwire.services import *

keeps calling `market_broadcaster.broadcast_market_update(...)`,
`signals_broadcaster.broadcast_buy_signal(...)` and
`notification_broadcaster.send_notification(...)` as before. Each call is
one publish request (or joins the current `tickwire.batch()`); it returns
once tickwire has accepted it, and raises `tickwire.PublishError` when
tickwire refuses it, `tickwire.TickwireUnavailable` when tickwire cannot be
reached within `RETRY_FOR`. Optional arguments left as None are left out of
the message. For asyncio code, `tickwire.aio` has the same objects with
awaitable methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tickwire import messages as msgs
from tickwire.publisher import Publisher, default_publisher

__all__ = [
    "MarketDataBroadcaster",
    "NotificationBroadcaster",
    "RealTimeBroadcaster",
    "TradingSignalsBroadcaster",
    "market_broadcaster",
    "notification_broadcaster",
    "signals_broadcaster",
]


class RealTimeBroadcaster:
    """Base of the broadcasters: publishes through a Publisher, the
    process's own unless one is given (another server, tests)."""

    def __init__(self, publisher: Publisher | None = None) -> None:
        self._publisher = publisher

    @property
    def publisher(self) -> Publisher:
        return self._publisher if self._publisher is not None else default_publisher()

    def publish(self, message: Mapping[str, Any]) -> None:
        """Publishes a message of any shape of PROTOCOL.md 1.3."""
        self.publisher.publish(message)


class MarketDataBroadcaster(RealTimeBroadcaster):
    def broadcast_market_update(
        self,
        symbol: str,
        price: Any,
        change: Any = None,
        volume: Any = None,
        timestamp: Any = None,
        **fields: Any,
    ) -> None:
        """A `market_update` to the subscribers of `symbol`."""
        self.publish(msgs.market_update(symbol, price, change, volume, timestamp, **fields))


class TradingSignalsBroadcaster(RealTimeBroadcaster):
    def broadcast_buy_signal(
        self,
        signal_id: Any,
        symbol: str,
        entry_price: Any,
        target_price: Any,
        stop_loss: Any,
        confidence_score: Any,
        strength: str = "STRONG",
        timestamp: Any = None,
        **fields: Any,
    ) -> None:
        """A `new_signal` with `signal_type` BUY."""
        self.publish(
            msgs.new_signal(
                "BUY",
                signal_id,
                symbol,
                entry_price,
                target_price,
                stop_loss,
                confidence_score,
                strength,
                timestamp,
                **fields,
            )
        )

    def broadcast_sell_signal(
        self,
        signal_id: Any,
        symbol: str,
        entry_price: Any,
        target_price: Any,
        stop_loss: Any,
        confidence_score: Any,
        strength: str = "STRONG",
        timestamp: Any = None,
        **fields: Any,
    ) -> None:
        """A `new_signal` with `signal_type` SELL."""
        self.publish(
            msgs.new_signal(
                "SELL",
                signal_id,
                symbol,
                entry_price,
                target_price,
                stop_loss,
                confidence_score,
                strength,
                timestamp,
                **fields,
            )
        )

    def broadcast_hold_signal(
        self,
        signal_id: Any,
        symbol: str,
        entry_price: Any,
        target_price: Any,
        stop_loss: Any,
        confidence_score: Any,
        strength: str = "STRONG",
        timestamp: Any = None,
        **fields: Any,
    ) -> None:
        """A `new_signal` with `signal_type` HOLD."""
        self.publish(
            msgs.new_signal(
                "HOLD",
                signal_id,
                symbol,
                entry_price,
                target_price,
                stop_loss,
                confidence_score,
                strength,
                timestamp,
                **fields,
            )
        )

    def broadcast_signal_update(self, signal_id: Any, **changed_fields: Any) -> None:
        """A `signal_update` of a signal published before: only the fields
        that changed; tickwire adds its symbol and signal_type."""
        self.publish(msgs.signal_update(signal_id, **changed_fields))


class NotificationBroadcaster(RealTimeBroadcaster):
    def send_notification(
        self,
        user_id: Any,
        title: str,
        message: str,
        notification_type: str = "system",
        priority: str = "normal",
        notification_id: Any = None,
        **fields: Any,
    ) -> Any:
        """A `new_notification` to one user's connections, and only theirs.

        `user_id` is a Django user (its id is the USER_ID hook's answer, or
        `str(user.pk)`: the `sub` of the tokens the middleware sets), an int
        or a str. Returns the notification's id: `notification_id`, or a
        fresh unique one when none is given.
        """
        built = msgs.new_notification(
            msgs.user_id_of(user_id, self.publisher.settings.user_id),
            title,
            message,
            notification_type,
            priority,
            notification_id,
            **fields,
        )
        self.publish(built)
        return built["notification_id"]


market_broadcaster = MarketDataBroadcaster()
signals_broadcaster = TradingSignalsBroadcaster()
notification_broadcaster = NotificationBroadcaster()
