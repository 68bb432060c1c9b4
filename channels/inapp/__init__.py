"""In-app notifications: a per-user inbox in Redis, an HTTP API with live updates, and a web page.

* :mod:`channels.inapp.channel` - the channel the ``inapp`` delivery consumer runs;
* :mod:`channels.inapp.store` - the inbox in Redis (keys, scripts, live event stream);
* :mod:`channels.inapp.items` - what an entry holds and how a Delivery becomes one;
* :mod:`channels.inapp.tokens` - signed user tokens for the API;
* :mod:`channels.inapp.api` - the FastAPI app: JSON API, Server-Sent Events, the page.

Importing this package does not import the web framework.
"""

from channels.inapp.channel import InAppChannel, InAppConfig
from channels.inapp.items import InboxItem, item_from_delivery
from channels.inapp.store import InboxStore

__all__ = ["InAppChannel", "InAppConfig", "InboxItem", "InboxStore", "item_from_delivery"]
