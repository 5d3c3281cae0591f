"""For an app's own tests: what its code publishes, without a server.

    from tickwire.testing import captured

    def test_a_trade_notifies_the_trader(client, user):
        client.force_login(user)
        with captured() as sent:
            client.post("/orders/", {...})
        assert sent[0]["type"] == "new_notification"
        assert sent[0]["user_id"] == str(user.pk)

Inside `captured()`, every publish of the process (sync and asyncio,
batched or not, from any thread) is appended to the list, as the JSON
objects that would go on the wire, and nothing is sent: no URL or API key
is needed. It takes the place of Channels' in-memory channel layer in such
tests. Captures nest; the innermost gets the messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tickwire.publisher import _recorders, _recorders_lock


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    recorder: list[dict[str, Any]] = []
    with _recorders_lock:
        _recorders.append(recorder)
    try:
        yield recorder
    finally:
        with _recorders_lock:
            for i in range(len(_recorders) - 1, -1, -1):
                if _recorders[i] is recorder:
                    del _recorders[i]
                    break
