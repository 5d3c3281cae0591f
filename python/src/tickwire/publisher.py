"""Sending messages to tickwire: `POST /api/publish`, or `PUBLISH rt:ingest`.

A `Publisher` owns one transport for the process: an `httpx.Client` holding
one kept-alive HTTP connection (httpx's pool is thread-safe; with one
connection, concurrent threads take turns on it), or a Redis client when
`REDIS_URL` is set. It is made at first use, made again after a fork (a
child never shares its parent's socket) and when the settings change.

Every send is bounded: each connect, write and read ends within `TIMEOUT`;
a failure to reach tickwire (refused, reset, closed before answering,
Redis down or no tickwire node listening) is retried with exponential
backoff until `RETRY_FOR` has passed, then raised as `TickwireUnavailable`.
A request tickwire answered is never retried: its verdict is final
(`PublishError` for what it refused), except the answers that say nothing
was decided yet (Redis unreachable or slow in cluster mode, an earlier
attempt still in progress). Every request carries an `Idempotency-Key`,
the same on each of its attempts: a server that remembers keys
(`idempotency_window_secs`) publishes a retried request once; to one that
does not, a retry after a lost answer may publish it twice. A read timeout
is not retried: the server may still be working on the request.

`batch()` collects what is published inside it (in this thread, or this
asyncio task) and sends it as one request when the block ends.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from tickwire import messages as msgs
from tickwire.config import Settings, current_settings
from tickwire.errors import ConfigurationError, EntryError, PublishError, TickwireUnavailable

if TYPE_CHECKING:
    from tickwire.aio import AsyncPublisher

log = logging.getLogger("tickwire")

USER_AGENT = "tickwire-python/0.1"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Backoff between attempts: doubling from the first delay up to the cap,
# each delay drawn between half and all of it (jitter, so that the workers
# of a restarted deployment do not retry in step).
FIRST_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 1.0


def new_idempotency_key() -> str:
    """One key per request, kept by all its attempts."""
    return "tw-" + uuid.uuid4().hex


class Retryable(Exception):
    """An attempt that did not reach tickwire; `reason` says why.
    `maybe_published`: the request was sent before the connection dropped,
    so the server may have taken it."""

    def __init__(self, reason: str, *, maybe_published: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_published = maybe_published


class RetryWindow:
    """Attempts until a deadline, with the delays between them. Time is a
    parameter (`now`), so that tests can drive it."""

    def __init__(self, retry_for: float, now: float) -> None:
        self.started = now
        self.deadline = now + retry_for
        self.attempts = 0
        self.maybe_published = False
        self._delay = FIRST_DELAY_SECONDS

    def next_delay(self, failure: Retryable, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None when the window is over."""
        self.maybe_published |= failure.maybe_published
        if now >= self.deadline:
            return None
        delay = min(self._delay * random.uniform(0.5, 1.0), self.deadline - now)  # noqa: S311
        self._delay = min(self._delay * 2, MAX_DELAY_SECONDS)
        return delay

    def give_up(self, target: str, last: Retryable, now: float) -> TickwireUnavailable:
        elapsed = now - self.started
        outcome = (
            "an attempt that lost its answer may have been published"
            if self.maybe_published
            else "nothing was published"
        )
        error = TickwireUnavailable(
            f"tickwire at {target} could not be reached: {last.reason} "
            f"({self.attempts} attempt{'s' if self.attempts != 1 else ''} in {elapsed:.1f} s; "
            f"{outcome})",
            attempts=self.attempts,
            elapsed=elapsed,
        )
        error.__cause__ = last.__cause__
        return error


def verdict(status: int, body: bytes, sent: Sequence[Mapping[str, Any]]) -> int:
    """What an answer of `POST /api/publish` means: the number of entries
    accepted, a `PublishError`, or `Retryable` when nothing was published
    and a later attempt may succeed (cluster mode without Redis)."""
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    accepted = data.get("accepted", 0) if isinstance(data.get("accepted"), int) else 0
    if status == 202:
        return accepted
    errors = []
    for e in data.get("errors", []):
        if not isinstance(e, dict):
            continue
        index = e.get("index")
        known = isinstance(index, int) and 0 <= index < len(sent)
        errors.append(
            EntryError(
                index=index if isinstance(index, int) else -1,
                code=str(e.get("code", "?")),
                message=str(e.get("message", "")),
                entry=sent[index] if known and isinstance(index, int) else None,
            )
        )
    server_says = str(data.get("error", "")) or body.decode(errors="replace")[:200]
    if status == 503 and data.get("unavailable"):
        raise Retryable(f"503 {server_says}")
    if status == 503 and data.get("unknown"):
        raise Retryable(f"503 {server_says}", maybe_published=True)
    if status == 409 and data.get("in_progress"):
        raise Retryable(f"409 {server_says}", maybe_published=True)
    if status == 400 and errors:
        listed = "; ".join(e.describe() for e in errors)
        raise PublishError(
            f"tickwire refused {len(errors)} of {len(sent)} message(s): {listed}",
            status=status,
            accepted=accepted,
            errors=errors,
        )
    reasons = {
        401: "the API key was refused (check API_KEY against the server's api_keys)",
        404: "no publish endpoint there (does URL point at tickwire?)",
        413: "the request is over the server's max_publish_bytes (publish in smaller batches)",
        429: "this API key publishes faster than the server's limit",
        503: f"the server stayed overloaded: {data.get('overloaded', '?')} message(s) not taken",
    }
    reason = reasons.get(status, "unexpected answer")
    raise PublishError(
        f"tickwire answered {status}: {reason}: {server_says}".rstrip(": "),
        status=status,
        accepted=accepted,
        errors=errors,
    )


def http_failure(e: httpx.HTTPError) -> Retryable | None:
    """The transport errors after which nothing can have been published, or
    the server went away before answering: worth another attempt."""
    what = str(e) or type(e).__name__
    if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        r = Retryable(f"cannot connect ({what})")
    elif isinstance(e, httpx.WriteError):
        r = Retryable(f"the connection dropped while sending ({what})")
    elif isinstance(e, httpx.RemoteProtocolError | httpx.ReadError):
        r = Retryable(f"the connection dropped before an answer ({what})", maybe_published=True)
    else:
        return None
    r.__cause__ = e
    return r


class _HttpTransport:
    def __init__(self, settings: Settings) -> None:
        self.target = settings.require_url()
        self._client = httpx.Client(
            base_url=self.target,
            headers=_headers(settings),
            timeout=httpx.Timeout(settings.timeout),
            limits=httpx.Limits(
                max_connections=1, max_keepalive_connections=1, keepalive_expiry=30.0
            ),
            trust_env=False,
        )
        # Whose turn it is on the one connection. httpx's pool would queue
        # threads by itself, but when they share one connection it now and
        # then hands a thread a socket another thread is closing (EBADF;
        # seen with httpx 0.29 and httpcore 1.0.9, 8 threads). Held for the
        # request, which is what waiting for the connection means anyway;
        # the wait is bounded by TIMEOUT, as the pool's own would be.
        self._turn = threading.Lock()
        self._wait_seconds = settings.timeout

    def attempt(self, body: bytes, sent: Sequence[Mapping[str, Any]], key: str) -> int:
        if not self._turn.acquire(timeout=self._wait_seconds):
            raise Retryable("the connection stayed busy with other threads' publishes")
        try:
            response = self._client.post(
                "/api/publish", content=body, headers={IDEMPOTENCY_HEADER: key}
            )
        except httpx.HTTPError as e:
            retry = http_failure(e)
            if retry is None:
                raise _no_answer(self.target, e) from e
            raise retry from e
        finally:
            self._turn.release()
        return verdict(response.status_code, response.content, sent)

    def close(self) -> None:
        with self._turn:
            self._client.close()


class _RedisTransport:
    def __init__(self, settings: Settings) -> None:
        redis = _import_redis(settings)
        url = settings.redis_url or ""
        self.target = f"{_masked(url)} channel {settings.ingest_channel}"
        self._channel = settings.ingest_channel
        self._errors: tuple[type[Exception], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
        )
        self._redis = redis.Redis.from_url(
            url, socket_timeout=settings.timeout, socket_connect_timeout=settings.timeout
        )

    def attempt(self, body: bytes, sent: Sequence[Mapping[str, Any]], key: str) -> int:
        try:
            listeners = self._redis.publish(self._channel, body)
        except self._errors as e:
            r = Retryable(f"Redis: {e}")
            r.__cause__ = e
            raise r from e
        if not listeners:
            raise Retryable("no tickwire node listens on the channel (is it started with --redis?)")
        return len(sent)

    def close(self) -> None:
        self._redis.close()


def _import_redis(settings: Settings) -> Any:
    try:
        import redis
    except ImportError as e:
        raise ConfigurationError(
            f"{settings.source}['REDIS_URL'] is set, but the redis package is not installed: "
            "pip install 'tickwire[redis]'"
        ) from e
    return redis


def _headers(settings: Settings) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {settings.require_api_key()}",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


def _masked(url: str) -> str:
    """A Redis URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


def _no_answer(target: str, e: Exception) -> TickwireUnavailable:
    """A request that failed in a way a retry would not mend: a read or
    write timeout (the server may have taken it), or an HTTP-level fault."""
    what = str(e) or type(e).__name__
    if isinstance(e, httpx.TimeoutException):
        text = f"did not answer in time ({what}); the message(s) may or may not have been published"
    else:
        text = f"the request failed ({what})"
    return TickwireUnavailable(f"tickwire at {target} {text}", attempts=1, elapsed=0.0)


class Publisher:
    """Publishes to tickwire. `Publisher()` follows the process's settings;
    `Publisher(settings)` uses fixed ones (another server, tests)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._fixed = settings
        # Guards making and replacing the transport; never held while sending.
        self._lock = threading.Lock()
        self._transport: _HttpTransport | _RedisTransport | None = None
        self._transport_settings: Settings | None = None
        self._pid = os.getpid()

    @property
    def settings(self) -> Settings:
        return self._fixed if self._fixed is not None else current_settings()

    def publish(self, message: Mapping[str, Any]) -> None:
        """Sends one message, or adds it to the current `batch()`."""
        current = _batch.get()
        if current is not None:
            current.add(self, message)
            return
        self.send([message])

    def send(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """Sends messages as one request now (bypassing any batch); returns
        how many tickwire accepted. Raises PublishError or TickwireUnavailable."""
        if not messages:
            return 0
        if recorded(messages):
            return len(messages)
        body = msgs.encode(messages)
        transport, settings = self._current_transport()
        window = RetryWindow(settings.retry_for, time.monotonic())
        key = new_idempotency_key()
        while True:
            window.attempts += 1
            try:
                return transport.attempt(body, messages, key)
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
                time.sleep(delay)

    def close(self) -> None:
        """Closes the connection; the next publish opens a new one."""
        with self._lock:
            if self._transport is not None:
                self._transport.close()
            self._transport = None
            self._transport_settings = None

    def _current_transport(self) -> tuple[_HttpTransport | _RedisTransport, Settings]:
        settings = self.settings
        with self._lock:
            pid = os.getpid()
            if pid != self._pid:
                # A forked child: the socket belongs to the parent; leave it be.
                self._transport = None
                self._pid = pid
            if self._transport is None or self._transport_settings is not settings:
                if self._transport is not None:
                    self._transport.close()
                self._transport = (
                    _RedisTransport(settings) if settings.redis_url else _HttpTransport(settings)
                )
                self._transport_settings = settings
            return self._transport, settings


# tickwire.testing.captured(): while a recorder is on this stack, send()
# records messages (as they would go on the wire) instead of sending them.
# A stack, so captures nest; the lock guards it, held for an append.
_recorders: list[list[dict[str, Any]]] = []
_recorders_lock = threading.Lock()


def recorded(messages: Sequence[Mapping[str, Any]]) -> bool:
    """True when a capture took the messages (then nothing is sent)."""
    with _recorders_lock:
        if not _recorders:
            return False
        _recorders[-1].extend(json.loads(msgs.encode(messages)))
        return True


_default: Publisher | None = None
_default_lock = threading.Lock()


def default_publisher() -> Publisher:
    """The process's publisher, the one the module-level broadcasters use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Publisher()
    return _default


def publish(message: Mapping[str, Any]) -> None:
    """Publishes one message (any shape of PROTOCOL.md 1.3) with the process's publisher."""
    default_publisher().publish(message)


class batch:
    """Collects everything published inside the block and sends it as one
    request when the block ends: `with tickwire.batch(): ...`, or
    `async with tickwire.batch(): ...` for the asyncio broadcasters.

    A block that ends with an exception sends nothing. A batch inside a
    batch joins the outer one. It belongs to the thread (or asyncio task)
    that opened it: a publish from another thread is sent on its own.
    PublishError indexes count the publishes of the block, from 0.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[Publisher | AsyncPublisher, Mapping[str, Any]]] = []
        self._token: contextvars.Token[batch | None] | None = None
        self._joined: batch | None = None

    def add(self, sender: Publisher | AsyncPublisher, message: Mapping[str, Any]) -> None:
        self._entries.append((sender, message))

    def __len__(self) -> int:
        return len(self._entries)

    def _enter(self) -> batch:
        outer = _batch.get()
        if outer is not None:
            self._joined = outer
            return outer
        self._token = _batch.set(self)
        return self

    def _leave(self) -> list[tuple[Publisher | AsyncPublisher, list[Mapping[str, Any]], list[int]]]:
        if self._joined is not None:
            return []
        if self._token is not None:
            _batch.reset(self._token)
            self._token = None
        groups: dict[
            int, tuple[Publisher | AsyncPublisher, list[Mapping[str, Any]], list[int]]
        ] = {}
        for position, (sender, message) in enumerate(self._entries):
            group = groups.setdefault(id(sender), (sender, [], []))
            group[1].append(message)
            group[2].append(position)
        self._entries = []
        return list(groups.values())

    def __enter__(self) -> batch:
        return self._enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        groups = self._leave()
        if exc_type is not None:
            return
        for sender, messages, positions in groups:
            if not isinstance(sender, Publisher):
                raise TypeError(
                    "asyncio broadcasters were used in a batch: use `async with tickwire.batch()`"
                )
            try:
                sender.send(messages)
            except PublishError as e:
                raise _moved(e, positions) from None

    async def __aenter__(self) -> batch:
        return self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import asyncio

        groups = self._leave()
        if exc_type is not None:
            return
        for sender, messages, positions in groups:
            try:
                if isinstance(sender, Publisher):
                    await asyncio.to_thread(sender.send, messages)
                else:
                    await sender.send(messages)
            except PublishError as e:
                raise _moved(e, positions) from None


def _moved(e: PublishError, positions: list[int]) -> PublishError:
    """The same error with indexes counted over the whole batch."""
    if positions == list(range(len(positions))):
        return e
    moved = [
        EntryError(
            positions[x.index] if 0 <= x.index < len(positions) else x.index,
            x.code,
            x.message,
            x.entry,
        )
        for x in e.errors
    ]
    listed = "; ".join(x.describe() for x in moved)
    return PublishError(
        f"tickwire refused {len(moved)} message(s): {listed}" if moved else str(e),
        status=e.status,
        accepted=e.accepted,
        errors=moved,
    )


_batch: contextvars.ContextVar[batch | None] = contextvars.ContextVar(
    "tickwire_batch", default=None
)


def current_batch() -> batch | None:
    return _batch.get()
