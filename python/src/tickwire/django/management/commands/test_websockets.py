"""`manage.py test_websockets`: realistic test messages through the real
broadcasters, with the flags of the command it replaces.

    python manage.py test_websockets --type market --count 10 --delay 1.0
    python manage.py test_websockets --type notifications --user alice
    python manage.py test_websockets --type all --symbol ETH-USD --user 42

Market updates walk randomly from a plausible price; signals cycle through
BUY, SELL and HOLD; notifications go to `--user` (a username or a user id
of this project's user model). Each message is printed as it is accepted.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tickwire.errors import TickwireError
from tickwire.services import market_broadcaster, notification_broadcaster, signals_broadcaster

TYPES = ("market", "signals", "notifications", "all")
BASE_PRICES = {"BTC-USD": 45000.0, "ETH-USD": 2500.0, "SOL-USD": 100.0}
NOTIFICATIONS = (
    ("Trade Executed", "BUY 0.5 {symbol} @ ${price:,.2f}", "trade", "high"),
    ("Price Alert", "{symbol} crossed ${price:,.2f}", "signal", "normal"),
    ("Risk Warning", "Margin usage above 80%", "risk", "critical"),
    ("Portfolio Update", "Daily P&L report is ready", "portfolio", "low"),
    ("System Notice", "Scheduled maintenance at 02:00 UTC", "system", "normal"),
)


class Command(BaseCommand):
    help = "Publishes test market updates, trading signals and notifications to tickwire."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--type", choices=TYPES, default="all", dest="kind", help="what to send"
        )
        parser.add_argument(
            "--count", type=int, default=10, help="messages of each type (default 10)"
        )
        parser.add_argument(
            "--delay", type=float, default=1.0, help="seconds between messages (default 1.0)"
        )
        parser.add_argument("--symbol", default="BTC-USD", help="market symbol (default BTC-USD)")
        parser.add_argument(
            "--user", help="who gets the notifications: a username or a user id (needed for them)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        kind: str = options["kind"]
        count: int = options["count"]
        delay: float = options["delay"]
        symbol: str = options["symbol"]
        if count < 1:
            raise CommandError("--count must be at least 1")
        if delay < 0:
            raise CommandError("--delay must not be negative")
        user = self._user(options["user"]) if options["user"] else None
        if kind == "notifications" and user is None:
            raise CommandError("--type notifications needs --user (a username or a user id)")
        if kind == "all" and user is None:
            self.stderr.write("no --user given: sending no notifications")

        feed = _Feed(symbol)
        senders: list[tuple[str, Callable[[], str]]] = []
        if kind in ("market", "all"):
            senders.append(("market", feed.market))
        if kind in ("signals", "all"):
            senders.append(("signals", feed.signal))
        if user is not None and kind in ("notifications", "all"):
            senders.append(("notifications", lambda: feed.notification(user)))

        sent = 0
        width = len(str(count))
        try:
            for i in range(1, count + 1):
                for _, send in senders:
                    described = send()
                    sent += 1
                    self.stdout.write(f"[{i:>{width}}/{count}] {described}")
                if i < count and delay > 0:
                    time.sleep(delay)
        except TickwireError as e:
            raise CommandError(f"after {sent} message(s): {e}") from e
        target = market_broadcaster.publisher.settings
        where = (target.redis_url and "Redis") or target.url
        self.stdout.write(self.style.SUCCESS(f"sent {sent} message(s) to tickwire at {where}"))

    def _user(self, given: str) -> Any:
        model = get_user_model()
        by_name: dict[str, Any] = {str(model.USERNAME_FIELD): given}
        found = model._default_manager.filter(**by_name).first()
        if found is None and given.isdigit():
            found = model._default_manager.filter(pk=int(given)).first()
        if found is None:
            raise CommandError(f"no user {given!r} (looked up by {model.USERNAME_FIELD} and by id)")
        return found


class _Feed:
    """A random walk of prices and the signals and notifications around it."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.price = BASE_PRICES.get(symbol, 100.0) * random.uniform(0.98, 1.02)
        self.signals = 0
        self.notifications = 0

    def market(self) -> str:
        step = random.gauss(0, 0.002)
        self.price = round(self.price * (1 + step), 2)
        change = round(step * 100, 3)
        volume = random.randint(1_000, 5_000_000)
        market_broadcaster.broadcast_market_update(
            self.symbol, self.price, change=change, volume=volume
        )
        return f"market_update {self.symbol} price={self.price:.2f} change={change:+.3f}%"

    def signal(self) -> str:
        kind = ("BUY", "SELL", "HOLD")[self.signals % 3]
        self.signals += 1
        signal_id = f"test_signal_{uuid.uuid4().hex[:12]}"
        entry = round(self.price, 2)
        up = 1 if kind != "SELL" else -1
        target = round(entry * (1 + up * random.uniform(0.02, 0.1)), 2)
        stop = round(entry * (1 - up * random.uniform(0.01, 0.05)), 2)
        confidence = random.randint(55, 95)
        strength = random.choice(("WEAK", "MODERATE", "STRONG"))
        method = {
            "BUY": signals_broadcaster.broadcast_buy_signal,
            "SELL": signals_broadcaster.broadcast_sell_signal,
            "HOLD": signals_broadcaster.broadcast_hold_signal,
        }[kind]
        method(signal_id, self.symbol, entry, target, stop, confidence, strength=strength)
        return f"new_signal {kind} {self.symbol} {signal_id} confidence={confidence} {strength}"

    def notification(self, user: Any) -> str:
        title, text, notification_type, priority = NOTIFICATIONS[
            self.notifications % len(NOTIFICATIONS)
        ]
        self.notifications += 1
        notification_id = notification_broadcaster.send_notification(
            user,
            title,
            text.format(symbol=self.symbol, price=self.price),
            notification_type=notification_type,
            priority=priority,
        )
        return f"new_notification {notification_id} to {user} {title!r} ({priority})"
