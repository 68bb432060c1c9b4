"""Every Redis key Tidings uses, in one place.

Keys carry a hash tag in braces so that the keys a multi-key operation touches
hash to one slot on Redis Cluster: per recipient ``{tenant:user}``, per event
``{ev:<event key>}``.

======================================================  =========  ================================
key                                                     type       what
======================================================  =========  ================================
``tidings:{<tenant>:<user>}:recipient``                 string     recipient document (JSON)
``tidings:recipients:<tenant>``                         set        user ids known in a tenant
``tidings:{ev:<event key>}:claim``                      string     dedup claim: owner coordinates
``tidings:{<tenant>:<user>}:sent:<delivery id>``        string     sent mark: provider id or "1"
``tidings:{<tenant>:<user>}:prefs``                     hash       user preferences, field -> on/off
``tidings:prefs:<tenant>``                              hash       tenant default preferences
``tidings:prefs:*``                                     hash       global default preferences
``tidings:{<tenant>:<user>}:subs``                      set        topics the user subscribes to
``tidings:subs:<tenant>:<topic>``                       zset       subscribers of a topic (score 0,
                                                                   ordered by id for paging)
``tidings:{ev:<event key>}:fanout:<rule>``              string     fan-out checkpoint: last id done
``tidings:{<tenant>:<user>}:dedup:<rule>:<hash>``       string     key+window / once-ever claim
``tidings:{<tenant>:<user>}:content:<rule>:<ch>:<h>``   string     content hash last sent
``tidings:{<tenant>:<user>}:cap:<ch>:<cat>:<window>``   string     frequency-cap counter per window
``tidings:{held}:due:<kind>``                           zset       held items (scheduled, quiet_hours)
                                                                   and digest buckets by due time (ms)
``tidings:{held}:lease:<member>``                       string     a release in progress (PX lease)
``tidings:{held}:item:<id>``                            string     one held delivery (JSON)
``tidings:{held}:digest:<bucket>``                      list       items waiting for a digest
``tidings:{held}:due:unread_fallback``                  zset       in-app delivery ids whose unread
                                                                   fallback is due at the score (ms)
``tidings:{held}:unread:<delivery id>``                 string     that fallback step (JSON)
``tidings:{held}:lease:unread:<delivery id>``           string     its release in progress (PX lease)
======================================================  =========  ================================

Held items and digests share one hash tag (``{held}``) so that the release
script touches one slot; on Redis Cluster they live on one shard.

The event key is :func:`schemas.models.event_key` of ``(ce_source, ce_id)``.
"""

from __future__ import annotations

PREFIX = "tidings"


def _tag(tenant: str, user: str) -> str:
    return "{" + f"{tenant}:{user}" + "}"


def recipient(tenant: str, user: str) -> str:
    return f"{PREFIX}:{_tag(tenant, user)}:recipient"


def recipient_index(tenant: str) -> str:
    return f"{PREFIX}:recipients:{tenant}"


def claim(event_key: str) -> str:
    return f"{PREFIX}:{{ev:{event_key}}}:claim"


def sent(tenant: str, user: str, delivery_id: str) -> str:
    return f"{PREFIX}:{_tag(tenant, user)}:sent:{delivery_id}"


GLOBAL = "*"
"""The tenant name of the global preference level."""


def prefs(tenant: str, user: str) -> str:
    return f"{PREFIX}:{_tag(tenant, user)}:prefs"


def tenant_prefs(tenant: str) -> str:
    """Tenant defaults; ``tenant_prefs(GLOBAL)`` holds the global defaults."""
    return f"{PREFIX}:prefs:{tenant}"


def user_subs(tenant: str, user: str) -> str:
    return f"{PREFIX}:{_tag(tenant, user)}:subs"


def subscribers(tenant: str, topic: str) -> str:
    return f"{PREFIX}:subs:{tenant}:{topic}"


def fanout(event_key: str, rule: str) -> str:
    return f"{PREFIX}:{{ev:{event_key}}}:fanout:{rule}"


def dedup(tenant: str, user: str, rule: str, digest: str) -> str:
    return f"{PREFIX}:{_tag(tenant, user)}:dedup:{rule}:{digest}"


def content(tenant: str, user: str, rule: str, channel: str, digest: str) -> str:
    return f"{PREFIX}:{_tag(tenant, user)}:content:{rule}:{channel}:{digest}"


def cap(tenant: str, user: str, channel: str, category: str, window: str) -> str:
    return f"{PREFIX}:{_tag(tenant, user)}:cap:{channel}:{category}:{window}"


HELD_KINDS = ("scheduled", "quiet_hours", "digest")


def held_due(kind: str) -> str:
    return f"{PREFIX}:{{held}}:due:{kind}"


def held_lease(member: str) -> str:
    return f"{PREFIX}:{{held}}:lease:{member}"


def held_item(item_id: str) -> str:
    return f"{PREFIX}:{{held}}:item:{item_id}"


def digest_items(bucket: str) -> str:
    return f"{PREFIX}:{{held}}:digest:{bucket}"


def unread_due() -> str:
    """Unread fallbacks by due time (router/fallback.py); not one of ``HELD_KINDS``: the in-app
    consumer releases them, since only it reads the inbox."""
    return f"{PREFIX}:{{held}}:due:unread_fallback"


def unread_item(delivery_id: str) -> str:
    return f"{PREFIX}:{{held}}:unread:{delivery_id}"


def unread_lease(delivery_id: str) -> str:
    return f"{PREFIX}:{{held}}:lease:unread:{delivery_id}"
