"""Digests: many notifications for one person, sent together (seeds 002 and 003).

A rule lists its cadences per channel, so one rule can feed an hourly in-app
digest and a daily email::

    digests:
      - {channel: inapp, every: hourly}
      - {channel: email, every: daily, at: "08:00", max_items: 20, max_wait: 12h}
      - {channel: webhook, every: weekly, day: mon, at: "09:00"}
    digest_template: digest        # default; a template directory like any other

A delivery for a channel with a cadence is not sent; it is added to the
recipient's bucket ``<tenant>|<user>|<rule>|<channel>|<cadence>``. The bucket
is due at the next cadence boundary in the recipient's time zone, or earlier:
``max_wait`` after its first item, or at once when it holds ``max_items``.
Items are added by the router that consumes the event, that is the owner of
the recipient's partition, so no two routers add to one bucket at once. The
bucket lives in Redis (a hash keyed by delivery id, so a replayed event is not
added twice) and survives restarts; releasing it is an atomic claim
(:mod:`router.schedule`), so one replica sends it.

A digest for a channel other than email also carries a JSON payload
(``type: tidings.digest``, ``count``, ``title``, ``text`` and ``items``).

The digest template sees ``items`` (each with ``subject``, ``text``,
``event_type``, ``event_id``, ``time`` and ``rule``), ``count``,
``recipient``, ``rule`` and ``cadence``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from router.durations import Duration
from router.templates import Rendered, Renderer
from schemas import Delivery, delivery_id

Every = Literal["hourly", "daily", "weekly"]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
QUIET = "quiet"
"""The cadence name of a bucket that collects what quiet hours held."""
DIGEST_SOURCE = "tidings/digest"


class Cadence(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: str
    every: Every
    at: time = time(9, 0)
    day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"
    max_items: int = Field(default=50, ge=1, le=1000)
    max_wait: Duration | None = None


def next_flush(now: datetime, timezone: str, cadence: Cadence) -> datetime:
    """The next cadence boundary strictly after ``now``, in the recipient's zone."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    if cadence.every == "hourly":
        return (local.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)).astimezone(zone)
    candidate = datetime.combine(local.date(), cadence.at, tzinfo=zone)
    if cadence.every == "daily":
        return candidate if candidate > local else datetime.combine(
            local.date() + timedelta(days=1), cadence.at, tzinfo=zone)
    ahead = (DAYS.index(cadence.day) - local.weekday()) % 7
    candidate = datetime.combine(local.date() + timedelta(days=ahead), cadence.at, tzinfo=zone)
    if candidate <= local:
        candidate = datetime.combine(candidate.date() + timedelta(days=7), cadence.at, tzinfo=zone)
    return candidate


def due_at(now: datetime, timezone: str, cadence: Cadence) -> datetime:
    """When a bucket whose first item arrives now is due: the boundary or ``max_wait``."""
    boundary = next_flush(now, timezone, cadence)
    if cadence.max_wait is not None:
        return min(boundary, now + cadence.max_wait)
    return boundary


def bucket_id(tenant: str, user: str, rule: str, channel: str, every: str) -> str:
    return "|".join((tenant, user, rule, channel, every))


def parse_bucket(bucket: str) -> tuple[str, str, str, str, str]:
    tenant, user, rule, channel, every = bucket.split("|")
    return tenant, user, rule, channel, every


def build_digest(bucket: str, items: Sequence[Delivery], renderer: Renderer, template: str,
                 now: datetime, deadline: timedelta) -> Delivery:
    """One delivery that lists ``items`` (the held deliveries of one bucket)."""
    tenant, user, rule, channel, every = parse_bucket(bucket)
    ordered = sorted(items, key=lambda d: (d.event_time, d.delivery_id))
    last = ordered[-1]
    context = {
        "items": [{"subject": d.subject, "text": d.text, "event_type": d.event_type, "event_id": d.event_id,
                   "time": d.event_time.isoformat(), "rule": d.rule} for d in ordered],
        "count": len(ordered),
        "recipient": {"id": user, "locale": last.locale},
        "rule": {"name": rule},
        "cadence": every,
    }
    rendered: Rendered = renderer.render(template, context, last.locale)
    # Deterministic: the same bucket content released again (after a crash) has the same id.
    first = ordered[0].delivery_id
    ident = f"{bucket}|{first}|{len(ordered)}"
    digest_id = delivery_id(DIGEST_SOURCE, ident, rule, user, channel)
    payload = None
    if channel != "email":
        # Chat, webhook and in-app receivers get the list itself, not only the rendered text.
        payload = json.dumps({
            "id": digest_id, "type": "tidings.digest", "tenant": tenant, "recipient": user, "rule": rule,
            "cadence": every, "count": len(ordered), "title": rendered.subject, "text": rendered.text,
            "items": [{"event_id": d.event_id, "event_type": d.event_type, "time": d.event_time.isoformat(),
                       "title": d.subject, "text": d.text} for d in ordered],
        }, separators=(",", ":"), ensure_ascii=False)
    return Delivery(
        delivery_id=digest_id,
        event_id=ident, event_source=DIGEST_SOURCE, event_type="tidings.digest",
        event_time=now, tenant=tenant, rule=rule, channel=channel, recipient_id=user,
        address=last.address, locale=last.locale, priority=last.priority,
        subject=rendered.subject, text=rendered.text,
        html=rendered.html if channel == "email" else None, payload=payload,
        created_at=now, deadline=now + deadline,
        metadata={"digest_items": str(len(ordered)), "digest_cadence": every},
    )
