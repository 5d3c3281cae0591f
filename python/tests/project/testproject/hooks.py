"""The SYMBOLS hook of the test project: carol's plan covers BTC-USD and
the ETH pairs only; everyone else sees every symbol."""

from typing import Any


def symbols(user: Any) -> list[str] | None:
    if user.get_username() == "carol":
        return ["BTC-USD", "ETH-*"]
    return None
