"""The asyncio twin of `tickwire.services`, for async views and consumers.

    from tickwire.aio import market_broadcaster, notification_broadcaster
    await market_broadcaster.broadcast_market_update("BTC-USD", 45000.5)
    async with tickwire.batch():
        await market_broadcaster.broadcast_market_update(...)  # queued
        ...                                                    # one request here

The same classes, methods and arguments as the sync module, awaited. The
same settings, retries and errors as `tickwire.publisher`. An
`httpx.AsyncClient` (one kept-alive connection) is made per event loop,
since a connection belongs to the loop that opened it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tickwire import messages as msgs
from tickwire.config import Settings, current_settings
from tickwire.errors import TickwireUnavailable
from tickwire.publisher import (
    IDEMPOTENCY_HEADER,
    Retryable,
    RetryWindow,
    _headers,
    _import_redis,
    _masked,
    _no_answer,
    current_batch,
    http_failure,
    log,
    new_idempotency_key,
    recorded,
    verdict,
)

__all__ = [
    "AsyncPublisher",
    "MarketDataBroadcaster",
    "NotificationBroadcaster",
    "RealTimeBroadcaster",
    "TradingSignalsBroadcaster",
    "market_broadcaster",
    "notification_broadcaster",
    "signals_broadcaster",
]


class _AsyncHttpTransport:
    def __init__(self, settings: Settings) -> None:
        self.target = settings.require_url()
        self._client = httpx.AsyncClient(
            base_url=self.target,
            headers=_headers(settings),
            timeout=httpx.Timeout(settings.timeout),
            limits=httpx.Limits(
                max_connections=1, max_keepalive_connections=1, keepalive_expiry=30.0
            ),
            trust_env=False,
        )

    async def attempt(self, body: bytes, sent: Sequence[Mapping[str, Any]], key: str) -> int:
        try:
            response = await self._client.post(
                "/api/publish", content=body, headers={IDEMPOTENCY_HEADER: key}
            )
        except httpx.HTTPError as e:
            retry = http_failure(e)
            if retry is None:
                raise _no_answer(self.target, e) from e
            raise retry from e
        return verdict(response.status_code, response.content, sent)

    async def aclose(self) -> None:
        await self._client.aclose()


class _AsyncRedisTransport:
    def __init__(self, settings: Settings) -> None:
        redis = _import_redis(settings)
        url = settings.redis_url or ""
        self.target = f"{_masked(url)} channel {settings.ingest_channel}"
        self._channel = settings.ingest_channel
        self._errors: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
        self._redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=settings.timeout, socket_connect_timeout=settings.timeout
        )

    async def attempt(self, body: bytes, sent: Sequence[Mapping[str, Any]], key: str) -> int:
        try:
            listeners = await self._redis.publish(self._channel, body)
        except self._errors as e:
            r = Retryable(f"Redis: {e}")
            r.__cause__ = e
            raise r from e
        if not listeners:
            raise Retryable("no tickwire node listens on the channel (is it started with --redis?)")
        return len(sent)

    async def aclose(self) -> None:
        await self._redis.aclose()


_Transport = _AsyncHttpTransport | _AsyncRedisTransport


class AsyncPublisher:
    """Publishes to tickwire from asyncio code; see `tickwire.publisher.Publisher`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._fixed = settings
        # Guards the per-loop table (loops of several threads may share this
        # publisher); held for a dict look-up, never across an await.
        self._lock = threading.Lock()
        self._transports: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[_Transport, Settings]
        ] = weakref.WeakKeyDictionary()

    @property
    def settings(self) -> Settings:
        return self._fixed if self._fixed is not None else current_settings()

    async def publish(self, message: Mapping[str, Any]) -> None:
        """Sends one message, or adds it to the current `batch()`."""
        current = current_batch()
        if current is not None:
            current.add(self, message)
            return
        await self.send([message])

    async def send(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """Sends messages as one request now; returns how many were accepted."""
        if not messages:
            return 0
        if recorded(messages):
            return len(messages)
        body = msgs.encode(messages)
        transport, settings = await self._current_transport()
        window = RetryWindow(settings.retry_for, time.monotonic())
        key = new_idempotency_key()
        while True:
            window.attempts += 1
            try:
                return await transport.attempt(body, messages, key)
            except TickwireUnavailable as no_answer:
                no_answer.attempts = window.attempts
                no_answer.elapsed = time.monotonic() - window.started
                raise
            except Retryable as failure:
                delay = window.next_delay(failure, time.monotonic())
                if delay is None:
                    raise window.give_up(transport.target, failure, time.monotonic()) from None
                log.warning(
                    "tickwire at %s: %s; retrying in %.2f s (attempt %d)",
                    transport.target,
                    failure.reason,
                    delay,
                    window.attempts,
                )
                await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Closes this event loop's connection."""
        loop = asyncio.get_running_loop()
        with self._lock:
            held = self._transports.pop(loop, None)
        if held is not None:
            await held[0].aclose()

    async def _current_transport(self) -> tuple[_Transport, Settings]:
        settings = self.settings
        loop = asyncio.get_running_loop()
        stale: _Transport | None = None
        with self._lock:
            held = self._transports.get(loop)
            if held is None or held[1] is not settings:
                stale = held[0] if held is not None else None
                fresh: _Transport = (
                    _AsyncRedisTransport(settings)
                    if settings.redis_url
                    else _AsyncHttpTransport(settings)
                )
                held = (fresh, settings)
                self._transports[loop] = held
        if stale is not None:
            await stale.aclose()
        return held


_default: AsyncPublisher | None = None
_default_lock = threading.Lock()


def default_publisher() -> AsyncPublisher:
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = AsyncPublisher()
    return _default


async def publish(message: Mapping[str, Any]) -> None:
    """Publishes one message with the process's asyncio publisher."""
    await default_publisher().publish(message)


class RealTimeBroadcaster:
    """Base of the asyncio broadcasters: publishes through an AsyncPublisher."""

    def __init__(self, publisher: AsyncPublisher | None = None) -> None:
        self._publisher = publisher

    @property
    def publisher(self) -> AsyncPublisher:
        return self._publisher if self._publisher is not None else default_publisher()

    async def publish(self, message: Mapping[str, Any]) -> None:
        await self.publisher.publish(message)


class MarketDataBroadcaster(RealTimeBroadcaster):
    async def broadcast_market_update(
        self,
        symbol: str,
        price: Any,
        change: Any = None,
        volume: Any = None,
        timestamp: Any = None,
        **fields: Any,
    ) -> None:
        await self.publish(msgs.market_update(symbol, price, change, volume, timestamp, **fields))


class TradingSignalsBroadcaster(RealTimeBroadcaster):
    async def broadcast_buy_signal(
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
        await self.publish(
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

    async def broadcast_sell_signal(
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
        await self.publish(
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

    async def broadcast_hold_signal(
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
        await self.publish(
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

    async def broadcast_signal_update(self, signal_id: Any, **changed_fields: Any) -> None:
        await self.publish(msgs.signal_update(signal_id, **changed_fields))


class NotificationBroadcaster(RealTimeBroadcaster):
    async def send_notification(
        self,
        user_id: Any,
        title: str,
        message: str,
        notification_type: str = "system",
        priority: str = "normal",
        notification_id: Any = None,
        **fields: Any,
    ) -> Any:
        """Returns the notification's id (a fresh unique one when none is given)."""
        built = msgs.new_notification(
            msgs.user_id_of(user_id, self.publisher.settings.user_id),
            title,
            message,
            notification_type,
            priority,
            notification_id,
            **fields,
        )
        await self.publish(built)
        return built["notification_id"]


market_broadcaster = MarketDataBroadcaster()
signals_broadcaster = TradingSignalsBroadcaster()
notification_broadcaster = NotificationBroadcaster()
