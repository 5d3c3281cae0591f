"""permessage-deflate with a real client (PROTOCOL.md 5.2): the
`websockets` library's own permessage-deflate, as a Python subscriber
would use it, agrees with tickwire, sends its commands compressed, and
reads compressed updates back, on a single endpoint and on `/ws/stream/`."""

from __future__ import annotations

import json
import uuid
from typing import Any

from support import Tickwire
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

import tickwire
from tickwire.services import market_broadcaster, notification_broadcaster


def _recv_type(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout=10))
        if message.get("type") == kind:
            return message


def test_websockets_negotiates_deflate_and_both_directions_work(
    tickwire_server: Tickwire, django_project: Any
) -> None:
    symbol = "Z" + uuid.uuid4().hex[:6].upper() + "-USD"
    token = tickwire.mint_token("deflater")
    url = tickwire_server.ws_url(f"/ws/market-data/?token={token}")
    # compression="deflate" is websockets' default; said here on purpose.
    with connect(url, compression="deflate", open_timeout=10) as ws:
        agreed = ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None
        assert agreed is not None
        assert agreed.startswith("permessage-deflate"), agreed
        assert "server_no_context_takeover" in agreed
        assert any(
            getattr(ext, "name", "") == "permessage-deflate" for ext in ws.protocol.extensions
        ), ws.protocol.extensions
        # websockets compresses every message it sends: this one arrives RSV1.
        ws.send(json.dumps({"type": "subscribe", "symbols": [symbol], "id": 1}))
        assert _recv_type(ws, "subscribed") == {"type": "subscribed", "symbols": [symbol], "id": 1}
        market_broadcaster.broadcast_market_update(symbol, 45000.5, change=2.5, volume=1_000_000)
        update = _recv_type(ws, "market_update")
        assert (update["price"], update["volume"], update["seq"]) == (45000.5, 1_000_000, 1)


def test_deflate_on_the_one_socket_carries_notifications(
    tickwire_server: Tickwire, django_project: Any
) -> None:
    user = "deflate-" + uuid.uuid4().hex[:6]
    token = tickwire.mint_token(user)
    url = tickwire_server.ws_url(f"/ws/stream/?token={token}&streams=notifications")
    factory = ClientPerMessageDeflateFactory(client_max_window_bits=True)
    with connect(url, extensions=[factory], compression=None, open_timeout=10) as ws:
        assert ws.response is not None
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        assert _recv_type(ws, "unread_notifications")["notifications"] == []
        long_text = "BUY 100 BTC-USD @ $45000. " * 40
        sent = notification_broadcaster.send_notification(user, "Trade Executed", long_text)
        note = _recv_type(ws, "new_notification")
        assert (note["notification_id"], note["message"]) == (sent, long_text)
        ws.send(json.dumps({"type": "mark_read", "notification_id": sent}))
        assert _recv_type(ws, "notification_read")["notification_id"] == sent
