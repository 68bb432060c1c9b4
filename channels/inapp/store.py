"""The inbox store: one Redis inbox per user, newest first, capped, expiring, live.

Keys (all under the user's hash tag, so every script touches one Cluster slot)::

    tidings:{<tenant>:<user>}:inbox          zset    item id, scored by arrival number (newest = highest)
    tidings:{<tenant>:<user>}:inbox:items    hash    item id -> item JSON (written once)
    tidings:{<tenant>:<user>}:inbox:unread   set     ids not read yet (its size is the unread count)
    tidings:{<tenant>:<user>}:inbox:expiry   zset    item id, scored by expires_at (Unix ms)
    tidings:{<tenant>:<user>}:inbox:seq      string  last arrival number handed out
    tidings:{<tenant>:<user>}:inbox:events   stream  what changed, for live clients (capped)

Every operation is one Lua script, so a change and the event that announces it
are written together, and each script first drops the items whose
``expires_at`` has passed (announcing an ``expired`` event when that changes
what the user sees). The keys expire with the longest-lived item in them
(a TTL of ``expires_at - now``, never shortened), so an abandoned inbox leaves
nothing behind.

Idempotence: adding an item whose id is already in the items hash changes
nothing and announces nothing, so a redelivered Delivery never shows twice.
A dismissed item stays in the hash (out of the list) until it expires, so it
does not come back either. An item pushed out by the cap is forgotten at once.

Events on the stream have the fields ``type`` (``new``, ``read``,
``read_all``, ``dismissed``, ``expired``), ``unread`` (the count after the
change) and ``id`` (``new``, ``read``, ``dismissed``), ``item`` (``new``, the
item JSON) or ``ids`` (``expired``, a JSON list) or ``count`` (``read_all``).
Stream entry ids are the SSE event ids: a client that reconnects with the last
id it saw gets exactly what it missed, or a ``reset`` when the cap on the
stream has already dropped some of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from channels.inapp.items import InboxItem

__all__ = ["AddResult", "Counts", "Entry", "Event", "InboxStore", "Page", "Replay", "inbox_keys", "parse_event_id"]

PREFIX = "tidings"
MAX_PAGE = 100

_PURGE = """
local function purge(now)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  if #gone == 0 then return end
  local visible = {}
  for _, id in ipairs(gone) do
    if redis.call('ZREM', KEYS[1], id) == 1 then visible[#visible + 1] = id end
    redis.call('HDEL', KEYS[2], id)
    redis.call('SREM', KEYS[3], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if #visible > 0 then
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*', 'type', 'expired',
               'ids', cjson.encode(visible), 'unread', redis.call('SCARD', KEYS[3]))
  end
end
"""
# Every script: KEYS = list, items, unread, expiry, events, seq; ARGV[1] = now (ms), ARGV[2] = stream length.

_ADD = _PURGE + """
purge(tonumber(ARGV[1]))
local id, doc, expires, cap = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HEXISTS', KEYS[2], id) == 1 then
  return {0, redis.call('SCARD', KEYS[3]), 0, 0}
end
if expires <= tonumber(ARGV[1]) then
  return {-1, redis.call('SCARD', KEYS[3]), 0, 0}
end
local seq = redis.call('INCR', KEYS[6])
redis.call('HSET', KEYS[2], id, doc)
redis.call('ZADD', KEYS[1], seq, id)
redis.call('SADD', KEYS[3], id)
redis.call('ZADD', KEYS[4], expires, id)
local evicted = 0
local over = redis.call('ZCARD', KEYS[1]) - cap
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #popped, 2 do
    redis.call('HDEL', KEYS[2], popped[i])
    redis.call('SREM', KEYS[3], popped[i])
    redis.call('ZREM', KEYS[4], popped[i])
    evicted = evicted + 1
  end
end
local unread = redis.call('SCARD', KEYS[3])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*', 'type', 'new', 'id', id, 'item', doc, 'unread', unread)
local ttl = expires - tonumber(ARGV[1])
for i = 1, 6 do
  if redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('PEXPIRE', KEYS[i], ttl)
  else
    redis.call('PEXPIRE', KEYS[i], ttl, 'GT')
  end
end
return {1, unread, seq, evicted}
"""

_READ = _PURGE + """
purge(tonumber(ARGV[1]))
local id = ARGV[3]
if not redis.call('ZSCORE', KEYS[1], id) then
  return {0, redis.call('SCARD', KEYS[3])}
end
if redis.call('SREM', KEYS[3], id) == 0 then
  return {2, redis.call('SCARD', KEYS[3])}
end
local unread = redis.call('SCARD', KEYS[3])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*', 'type', 'read', 'id', id, 'unread', unread)
return {1, unread}
"""

_READ_ALL = _PURGE + """
purge(tonumber(ARGV[1]))
local n = redis.call('SCARD', KEYS[3])
if n > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*', 'type', 'read_all', 'count', n, 'unread', 0)
end
return n
"""

_DISMISS = _PURGE + """
purge(tonumber(ARGV[1]))
local id = ARGV[3]
if redis.call('ZREM', KEYS[1], id) == 0 then
  return {0, redis.call('SCARD', KEYS[3])}
end
redis.call('SREM', KEYS[3], id)
local unread = redis.call('SCARD', KEYS[3])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*', 'type', 'dismissed', 'id', id, 'unread', unread)
return {1, unread}
"""

_PAGE = _PURGE + """
purge(tonumber(ARGV[1]))
local top = ARGV[3]
if top ~= '+inf' then top = '(' .. top end
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], top, '-inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
local out = {redis.call('SCARD', KEYS[3]), redis.call('ZCARD', KEYS[1])}
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i]
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], ids[i]) or ''
  out[#out + 1] = redis.call('SISMEMBER', KEYS[3], ids[i])
end
return out
"""

_COUNTS = _PURGE + """
purge(tonumber(ARGV[1]))
return {redis.call('SCARD', KEYS[3]), redis.call('ZCARD', KEYS[1])}
"""

_UNREAD = _PURGE + """
purge(tonumber(ARGV[1]))
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then return -1 end
return redis.call('SISMEMBER', KEYS[3], ARGV[3])
"""


def inbox_keys(tenant: str, user: str) -> list[str]:
    """The six keys of one inbox, in the order every script expects them."""
    base = f"{PREFIX}:{{{tenant}:{user}}}:inbox"
    return [base, f"{base}:items", f"{base}:unread", f"{base}:expiry", f"{base}:events", f"{base}:seq"]


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class AddResult:
    outcome: str
    """``added``, ``duplicate`` (already there or dismissed) or ``expired`` (expires_at already passed)."""
    unread: int
    evicted: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    item: InboxItem
    read: bool
    cursor: int
    """The item's arrival number: pass it as ``cursor`` to get the page after it."""

    def to_api(self) -> dict[str, Any]:
        doc = self.item.model_dump(mode="json")
        doc["read"] = self.read
        doc["cursor"] = self.cursor
        return doc


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    next_cursor: int | None
    unread: int
    total: int


@dataclass(frozen=True, slots=True)
class Counts:
    unread: int
    total: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change, as pushed to live clients: ``id`` is the stream entry id (the SSE id)."""

    id: str
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Replay:
    events: list[Event]
    complete: bool
    """False when some events after the given id were already trimmed: the client must reload."""


def _event(entry_id: Any, fields: dict[Any, Any]) -> Event:
    f = {_text(k): _text(v) for k, v in fields.items()}
    kind = f.get("type", "unknown")
    data: dict[str, Any] = {"unread": int(f.get("unread", "0"))}
    if "id" in f:
        data["id"] = f["id"]
    if "item" in f:
        doc = json.loads(f["item"])
        doc["read"] = False
        data["item"] = doc
    if "ids" in f:
        data["ids"] = json.loads(f["ids"])
    if "count" in f:
        data["count"] = int(f["count"])
    return Event(_text(entry_id), kind, data)


def parse_event_id(value: str) -> tuple[int, int]:
    """A stream entry id as a comparable pair; ValueError if it is not one."""
    ms, sep, seq = value.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        raise ValueError(f"{value[:40]!r} is not a stream entry id")
    return int(ms), int(seq) if sep else 0


class InboxStore:
    """Async access to every user's inbox. ``now`` is passed in so tests control time."""

    def __init__(self, redis: Redis, *, max_items: int = 200, stream_length: int = 1000) -> None:
        if max_items < 1 or stream_length < 1:
            raise ValueError("max_items and stream_length must be at least 1")
        self.redis = redis
        self.max_items = max_items
        self.stream_length = stream_length
        self._add = redis.register_script(_ADD)
        self._read = redis.register_script(_READ)
        self._read_all = redis.register_script(_READ_ALL)
        self._dismiss = redis.register_script(_DISMISS)
        self._page = redis.register_script(_PAGE)
        self._counts = redis.register_script(_COUNTS)
        self._unread = redis.register_script(_UNREAD)

    def _args(self, now: datetime, *more: Any) -> list[Any]:
        return [_ms(now), self.stream_length, *more]

    async def add(self, tenant: str, user: str, item: InboxItem, now: datetime) -> AddResult:
        status, unread, _seq, evicted = await self._add(
            keys=inbox_keys(tenant, user),
            args=self._args(now, item.id, item.to_json(), _ms(item.expires_at), self.max_items))
        outcome = {1: "added", 0: "duplicate", -1: "expired"}[int(status)]
        return AddResult(outcome, int(unread), int(evicted))

    async def page(self, tenant: str, user: str, now: datetime, cursor: int | None = None,
                   limit: int = 20) -> Page:
        """Newest first; ``cursor`` is the ``cursor`` of the last entry of the previous page."""
        limit = max(1, min(limit, MAX_PAGE))
        top = "+inf" if cursor is None else str(int(cursor))
        raw = await self._page(keys=inbox_keys(tenant, user), args=self._args(now, top, limit))
        unread, total = int(raw[0]), int(raw[1])
        entries: list[Entry] = []
        for i in range(2, len(raw), 4):
            doc = raw[i + 2]
            if not doc:
                continue  # listed but its document is gone: never written by these scripts
            entries.append(Entry(InboxItem.from_json(doc), read=not int(raw[i + 3]), cursor=int(float(raw[i + 1]))))
        shown = (len(raw) - 2) // 4
        next_cursor = entries[-1].cursor if shown == limit and entries else None
        return Page(entries, next_cursor, unread, total)

    async def counts(self, tenant: str, user: str, now: datetime) -> Counts:
        unread, total = await self._counts(keys=inbox_keys(tenant, user), args=self._args(now))
        return Counts(int(unread), int(total))

    async def mark_read(self, tenant: str, user: str, item_id: str, now: datetime) -> tuple[str, int]:
        """``(outcome, unread)``; outcome is ``read``, ``already_read`` or ``missing``."""
        status, unread = await self._read(keys=inbox_keys(tenant, user), args=self._args(now, item_id))
        return {1: "read", 2: "already_read", 0: "missing"}[int(status)], int(unread)

    async def mark_all_read(self, tenant: str, user: str, now: datetime) -> int:
        """How many items were unread (and now are read)."""
        return int(await self._read_all(keys=inbox_keys(tenant, user), args=self._args(now)))

    async def dismiss(self, tenant: str, user: str, item_id: str, now: datetime) -> tuple[bool, int]:
        """``(found, unread)``: the item leaves the list and the unread count."""
        status, unread = await self._dismiss(keys=inbox_keys(tenant, user), args=self._args(now, item_id))
        return bool(int(status)), int(unread)

    async def is_unread(self, tenant: str, user: str, item_id: str, now: datetime) -> bool | None:
        """True or False for an item in the inbox, None if it is not there (never was, dismissed, expired)."""
        status = int(await self._unread(keys=inbox_keys(tenant, user), args=self._args(now, item_id)))
        return None if status < 0 else bool(status)

    # -- live events ------------------------------------------------------------

    async def last_event_id(self, tenant: str, user: str) -> str:
        """The newest stream entry id, or ``0-0`` for an inbox that has none."""
        newest = await self.redis.xrevrange(inbox_keys(tenant, user)[4], count=1)
        return _text(newest[0][0]) if newest else "0-0"

    async def replay(self, tenant: str, user: str, after: str, limit: int = 1000) -> Replay:
        """Events after ``after`` (exclusive); ``complete`` is False if some may have been trimmed away."""
        parse_event_id(after)
        key = inbox_keys(tenant, user)[4]
        try:
            info = await self.redis.xinfo_stream(key)
        except ResponseError as exc:  # XINFO on a missing key
            if "no such key" not in str(exc).lower():
                raise
            return Replay([], complete=after == "0-0")
        position = parse_event_id(after)
        if position > parse_event_id(_text(info["last-generated-id"])):
            return Replay([], complete=False)  # an id this stream never gave out: start over
        complete = True
        if int(info["entries-added"]) > int(info["length"]):
            # Some entries were trimmed, all of them older than the first one kept. Without the
            # exact id of the last trimmed entry, only a client that saw the first kept one is safe.
            first = _text(info.get("recorded-first-entry-id") or info["first-entry"][0])
            complete = position >= parse_event_id(first)
        rows: Any = await self.redis.xrange(key, min=f"({after}", max="+", count=limit)
        events = [_event(i, f) for i, f in rows]
        if len(rows) == limit:
            complete = False  # more than we replay at once: the client reloads instead
        return Replay(events, complete)

    async def wait(self, tenant: str, user: str, after: str, block_ms: int, count: int = 100) -> list[Event]:
        """Events after ``after``, waiting up to ``block_ms`` for the first one."""
        key = inbox_keys(tenant, user)[4]
        answer: Any = await self.redis.xread({key: after}, count=count, block=block_ms)
        events: list[Event] = []
        for _stream, rows in answer or []:
            events.extend(_event(i, f) for i, f in rows)
        return events
