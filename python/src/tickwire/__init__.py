"""tickwire for Python: publish market updates, trading signals and
notifications to a tickwire server, and switch a Django Channels
deployment to it with a settings change.

    from tickwire.services import market_broadcaster
    market_broadcaster.broadcast_market_update("BTC-USD", 45000.5, change=2.5)

    with tickwire.batch():          # everything inside: one request
        ...

`tickwire.aio` is the asyncio twin of `tickwire.services`; `tickwire.django`
is the Django app (the access-token middleware, the token view, the
`test_websockets` command). Settings: `settings.TICKWIRE` in Django, else
TICKWIRE_URL, TICKWIRE_API_KEY and TICKWIRE_JWT_SECRET in the environment,
or `tickwire.configure(...)`.
"""

from tickwire.config import Settings, configure, current_settings
from tickwire.errors import (
    ConfigurationError,
    EntryError,
    PublishError,
    TickwireError,
    TickwireUnavailable,
)
from tickwire.publisher import Publisher, batch, default_publisher, publish
from tickwire.tokens import mint_token, read_token

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "EntryError",
    "PublishError",
    "Publisher",
    "Settings",
    "TickwireError",
    "TickwireUnavailable",
    "batch",
    "configure",
    "current_settings",
    "default_publisher",
    "mint_token",
    "publish",
    "read_token",
]
