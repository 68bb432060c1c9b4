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
======================================================  =========  ================================

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
