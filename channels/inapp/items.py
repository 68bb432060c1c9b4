"""What one inbox entry holds, and how a Delivery becomes one (pure functions).

An :class:`InboxItem` is written once and never changed: whether it was read
lives beside it in the store, so marking read touches one set member, not the
item. Its fields come from the Delivery:

================  ===================================================================
field             from
================  ===================================================================
``id``            the delivery id (so a redelivery lands on the same entry)
``title``         the rendered subject
``body``          the rendered text
``action_url``    ``metadata["action_url"]``, else the event data's ``action_url``
``action_label``  ``metadata["action_label"]``, else the event data's ``action_label``
``category``      ``metadata["category"]``, else the event data's ``category``, else
                  the event type
``expires_at``    ``metadata["expires_at"]``, else the event data's ``expires_at``
                  (ISO 8601; without an offset it is UTC); never later than
                  ``created_at`` + the inbox's maximum age, which is also the default
================  ===================================================================

The event data is read from the JSON ``payload`` the router attaches to every
non-email delivery (``{"data": {...}}``). An action URL must be ``http(s)://``
or a path starting with ``/``; anything else (``javascript:``, ``data:``...)
is left out of the item, and :func:`item_from_delivery` says why in its notes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from schemas import Delivery

__all__ = ["Conversion", "InboxItem", "item_from_delivery", "parse_time", "safe_action_url"]

MAX_TITLE = 300
MAX_BODY = 4000
MAX_LABEL = 100
MAX_URL = 2000


class InboxItem(BaseModel):
    """One notification in a user's inbox, as stored and as the API returns it (plus ``read``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    title: str
    body: str
    event_type: str
    event_id: str
    rule: str
    priority: str
    category: str
    created_at: datetime
    expires_at: datetime
    action_url: str | None = None
    action_label: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> InboxItem:
        return cls.model_validate_json(raw)


@dataclass(frozen=True)
class Conversion:
    item: InboxItem
    notes: list[str] = field(default_factory=list)
    """Fields that were present but unusable, and why (for the delivery's status detail)."""


def safe_action_url(url: str) -> str | None:
    """The URL if a browser may follow it from the inbox page, else None."""
    url = url.strip()
    if not url or len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        return None
    if url.startswith("/") and not url.startswith("//"):
        return url
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        return url
    return None


def parse_time(value: str) -> datetime | None:
    """An ISO 8601 instant (``Z`` accepted); naive values are UTC. None if unparseable."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _event_data(delivery: Delivery) -> dict[str, Any]:
    if not delivery.payload:
        return {}
    try:
        doc = json.loads(delivery.payload)
    except ValueError:
        return {}
    data = doc.get("data") if isinstance(doc, dict) else None
    return data if isinstance(data, dict) else {}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def item_from_delivery(delivery: Delivery, now: datetime, max_age: timedelta) -> Conversion:
    """The inbox item for ``delivery`` received at ``now``; expiry capped at ``now + max_age``."""
    data = _event_data(delivery)
    notes: list[str] = []

    def pick(name: str) -> str | None:
        value = delivery.metadata.get(name)
        if value is None:
            raw = data.get(name)
            value = raw if isinstance(raw, str) else None
        return value.strip() if value is not None and value.strip() else None

    latest = now + max_age
    expires_at = latest
    raw_expiry = pick("expires_at")
    if raw_expiry is not None:
        parsed = parse_time(raw_expiry)
        if parsed is None:
            notes.append(f"expires_at {raw_expiry[:40]!r} is not an ISO 8601 time; using the default")
        else:
            expires_at = min(parsed, latest)

    action_url = None
    raw_url = pick("action_url")
    if raw_url is not None:
        action_url = safe_action_url(raw_url)
        if action_url is None:
            notes.append("action_url left out: only http(s) URLs and paths starting with '/' are linked")
    label = pick("action_label")
    item = InboxItem(
        id=delivery.delivery_id,
        title=_clip(delivery.subject, MAX_TITLE),
        body=_clip(delivery.text, MAX_BODY),
        event_type=delivery.event_type,
        event_id=delivery.event_id,
        rule=delivery.rule,
        priority=str(delivery.priority),
        category=pick("category") or delivery.event_type,
        created_at=now,
        expires_at=expires_at,
        action_url=action_url,
        action_label=_clip(label, MAX_LABEL) if label and action_url else None,
    )
    return Conversion(item, notes)
