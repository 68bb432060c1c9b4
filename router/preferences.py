"""Preferences: whether a recipient wants a kind of notification on a channel.

A preference is one switch, ``on`` or ``off``, for a *channel* (or ``*``, every
channel) and a *scope*: one event type (``type:jobs.match.found``), one
category (``category:marketing``, the ``category`` of the event's schema or
the rule), or ``*`` (everything). Preferences live at three levels:

* **user**: set by the person (a preference centre);
* **tenant**: the tenant's defaults for all of its users;
* **global**: defaults for every tenant.

Merge order, documented in docs/routing.md: the first level that has any
switch matching the notification decides, user over tenant over global.
Within one level the most specific switch wins: event type over category over
``*``, and a named channel over ``*`` at the same scope. When no level says
anything, the notification is allowed. A rule marked ``required: true``
(security alerts) ignores preferences entirely.

:func:`resolve` is the pure decision; :class:`PreferenceStore` reads and
writes the switches in Redis (hashes, see :mod:`router.keys`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from redis import Redis

from router import keys
from schemas.errors import InputError

Level = Literal["user", "tenant", "global"]
LEVELS: tuple[Level, ...] = ("user", "tenant", "global")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,199}$")
_CHANNEL = re.compile(r"^(\*|[a-z0-9][a-z0-9_.-]*)$")


class PreferenceError(InputError):
    """A preference is malformed (unknown scope, bad channel name, value not on/off)."""


@dataclass(frozen=True, slots=True)
class Switch:
    """One preference: ``channel`` (or ``*``) x ``scope`` -> on/off."""

    channel: str
    scope: str
    on: bool

    @property
    def field(self) -> str:
        return field_name(self.channel, self.scope)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    source: str | None
    """Which switch decided (``user email/category:marketing``), None for the default."""


def field_name(channel: str, scope: str) -> str:
    """Validate and join: ``email`` + ``type:x`` -> ``email/type:x``."""
    if not _CHANNEL.match(channel):
        raise PreferenceError(f"channel {channel!r} is not a channel name or '*'")
    if scope != "*":
        kind, _, name = scope.partition(":")
        if kind not in ("type", "category") or not _NAME.match(name):
            raise PreferenceError(
                f"scope {scope!r} must be '*', 'type:<event type>' or 'category:<category>'")
    return f"{channel}/{scope}"


def parse_value(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise PreferenceError(f"preference value {value!r} must be on or off")


def resolve(channel: str, event_type: str, category: str | None,
            levels: Sequence[tuple[str, Mapping[str, str]]]) -> Verdict:
    """Decide from the switches of each level, most authoritative level first.

    ``levels`` is ``[("user", {...}), ("tenant", {...}), ("global", {...})]`` with
    fields as stored (``email/type:x`` -> ``on``/``off``).
    """
    scopes = [f"type:{event_type}"]
    if category:
        scopes.append(f"category:{category}")
    scopes.append("*")
    for level, switches in levels:
        if not switches:
            continue
        for scope in scopes:
            for ch in (channel, "*"):
                value = switches.get(f"{ch}/{scope}")
                if value is not None:
                    return Verdict(value == "on", f"{level} {ch}/{scope}")
    return Verdict(True, None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(raw: Mapping[bytes | str, bytes | str] | None) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in (raw or {}).items()}


def level_key(level: Level, tenant: str, user: str | None) -> str:
    if level == "user":
        if not user:
            raise PreferenceError("a user preference needs a user id")
        return keys.prefs(tenant, user)
    if level == "tenant":
        return keys.tenant_prefs(tenant)
    return keys.tenant_prefs(keys.GLOBAL)


class PreferenceStore:
    """Preferences in Redis: one hash per user, per tenant and one global."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def set(self, level: Level, tenant: str, user: str | None, switches: Sequence[Switch]) -> int:
        """Write every switch in one transaction (all validated first)."""
        mapping = {s.field: ("on" if s.on else "off") for s in switches}
        if not mapping:
            raise PreferenceError("nothing to set")
        key = level_key(level, tenant, user)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.execute()
        return len(mapping)

    def get(self, level: Level, tenant: str, user: str | None) -> dict[str, str]:
        return decode_hash(self.redis.hgetall(level_key(level, tenant, user)))

    def remove(self, level: Level, tenant: str, user: str | None, channel: str, scope: str) -> bool:
        return bool(self.redis.hdel(level_key(level, tenant, user), field_name(channel, scope)))

    def clear(self, level: Level, tenant: str, user: str | None) -> bool:
        return bool(self.redis.delete(level_key(level, tenant, user)))

    def effective(self, tenant: str, user: str, channel: str, event_type: str,
                  category: str | None) -> Verdict:
        """What the router would decide for this user now (for the CLI and the admin API)."""
        pipe = self.redis.pipeline(transaction=False)
        for level in LEVELS:
            pipe.hgetall(level_key(level, tenant, user))
        results = pipe.execute()
        return resolve(channel, event_type, category,
                       [(lvl, decode_hash(raw)) for lvl, raw in zip(LEVELS, results, strict=True)])
