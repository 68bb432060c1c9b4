"""Held deliveries: scheduled sends, quiet hours and digest buckets, released on time.

An event asks for a later delivery with the CloudEvents extension
``ce_deliverat`` (an RFC 3339 time) or ``ce_deliverafter`` (seconds), or a rule
delays all of its deliveries with ``delay: 15m`` (seed 001's
``scheduled_for``). The router renders the delivery at once and holds it.

Storage (all under the ``{held}`` hash tag, see :mod:`router.keys`): one
sorted set of due times per kind (``scheduled``, ``quiet_hours``,
``digest``), one string per held delivery (its JSON), one hash per digest
bucket. Everything is in Redis, so a router restart loses nothing.

Release, from any number of router replicas: every replica runs
:meth:`HeldStore.claim` about once a second. The claim is one Lua script, so
it is atomic: it takes what is due, pushes its score one lease ahead and sets
a lease marker, so no other replica sees it while the lease runs. The
replica produces the deliveries, waits for Kafka's acknowledgement and then
:meth:`HeldStore.ack` removes them. A replica that dies in between leaves its
lease to expire; another one releases the same items with the same delivery
ids, and the channel consumer's sent marks keep that from reaching anyone
twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from redis import Redis
from redis.client import Pipeline

from router import keys
from router.scripts import PipelineScripts
from router.wire import Commands
from schemas import Delivery
from schemas.cloudevents import parse_time
from schemas.errors import InputError

Kind = Literal["scheduled", "quiet_hours", "digest"]

_HOLD = """
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
return 1
"""

# KEYS: due zset, bucket hash, lease marker. ARGV: member, due, max_items, now, field, payload.
_DIGEST_ADD = """
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
local n = redis.call('HLEN', KEYS[2])
if redis.call('EXISTS', KEYS[3]) == 1 then return n end
local due = tonumber(ARGV[2])
if n >= tonumber(ARGV[3]) then due = tonumber(ARGV[4]) end
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not s) or due < tonumber(s) then redis.call('ZADD', KEYS[1], due, ARGV[1]) end
return n
"""

# KEYS: the due sets. ARGV: now, limit, lease score, lease ms, item prefix, digest prefix, lease prefix.
_CLAIM = """
local now = tonumber(ARGV[1])
local out = {}
for i, due in ipairs(KEYS) do
  local members = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
  for _, m in ipairs(members) do
    redis.call('ZADD', due, ARGV[3], m)
    redis.call('SET', ARGV[7] .. m, ARGV[3], 'PX', ARGV[4])
    local payload
    if i < #KEYS then
      payload = {redis.call('GET', ARGV[5] .. m) or ''}
    else
      payload = redis.call('HVALS', ARGV[6] .. m)
    end
    table.insert(out, {i, m, payload})
  end
end
local counts = {}
for i, due in ipairs(KEYS) do counts[i] = redis.call('ZCARD', due) end
return {out, counts}
"""

# KEYS: due zset, item key, lease marker. ARGV: member, lease score.
_ACK_ITEM = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

# KEYS: due zset, bucket hash, lease marker. ARGV: member, lease score, next due, ids...
_ACK_DIGEST = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
for i = 4, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
redis.call('DEL', KEYS[3])
if redis.call('HLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"""


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


class ScheduleError(InputError):
    """``ce_deliverat`` or ``ce_deliverafter`` is malformed."""


MAX_DELAY = timedelta(days=366)


def requested_time(deliver_at: str | None, deliver_after: str | None, event_time: datetime) -> datetime | None:
    """The delivery time an event asks for through its CloudEvents extensions, or None."""
    if deliver_at:
        try:
            return parse_time(deliver_at)
        except ValueError:
            raise ScheduleError(f"ce_deliverat {deliver_at!r} is not an RFC 3339 timestamp") from None
    if deliver_after:
        try:
            seconds = float(deliver_after)
        except ValueError:
            raise ScheduleError(f"ce_deliverafter {deliver_after!r} is not a number of seconds") from None
        if not 0 <= seconds <= MAX_DELAY.total_seconds():
            raise ScheduleError(f"ce_deliverafter {deliver_after!r} must be between 0 and {int(MAX_DELAY.days)} days")
        return event_time + timedelta(seconds=seconds)
    return None


def scheduled_due(now: datetime, deliver_at: datetime | None, delay: timedelta | None) -> datetime | None:
    """When a delivery asked to be sent, or None for now (a time in the past means now)."""
    due = deliver_at
    if delay is not None:
        later = now + delay
        due = later if due is None or later > due else due
    return due if due is not None and due > now else None


@dataclass(frozen=True, slots=True)
class Hold:
    """Hold one rendered delivery until ``due``."""

    kind: Kind
    due: datetime
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class DigestAdd:
    """Add one rendered delivery to a digest bucket."""

    bucket: str
    due: datetime
    max_items: int
    delivery: Delivery


@dataclass
class Released:
    kind: Kind
    member: str
    deliveries: list[Delivery]
    lease: str


@dataclass
class ClaimResult:
    released: list[Released] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Held entries that could not be read back (kept out of the way, reported)."""


class HeldStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._hold = redis.register_script(_HOLD)
        self._digest_add = redis.register_script(_DIGEST_ADD)
        self._claim = redis.register_script(_CLAIM)
        self._ack_item = redis.register_script(_ACK_ITEM)
        self._ack_digest = redis.register_script(_ACK_DIGEST)

    def queue(self, pipe: Pipeline | Commands, holds: Iterable[Hold], digests: Iterable[DigestAdd], now: datetime,
              scripts: PipelineScripts | None = None) -> None:
        """Add the writes to ``pipe`` (the front of the router's next round trip, or a flush)."""
        run = scripts or PipelineScripts(pipe)
        for h in holds:
            member = h.delivery.delivery_id
            run(self._hold, [keys.held_due(h.kind), keys.held_item(member)],
                [member, ms(h.due), h.delivery.model_dump_json()])
        for d in digests:
            run(self._digest_add,
                [keys.held_due("digest"), keys.digest_items(d.bucket), keys.held_lease(d.bucket)],
                [d.bucket, ms(d.due), d.max_items, ms(now), d.delivery.delivery_id, d.delivery.model_dump_json()])

    def hold(self, holds: Sequence[Hold], digests: Sequence[DigestAdd], now: datetime) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.queue(pipe, holds, digests, now)
        pipe.execute()

    def claim(self, now: datetime, limit: int = 500, lease: timedelta = timedelta(seconds=60)) -> ClaimResult:
        lease_ms = int(lease.total_seconds() * 1000)
        lease_score = ms(now) + lease_ms
        raw: Any = self._claim(
            keys=[keys.held_due(k) for k in keys.HELD_KINDS],
            args=[ms(now), limit, lease_score, lease_ms, keys.held_item(""), keys.digest_items(""),
                  keys.held_lease("")])
        entries, counts = raw
        result = ClaimResult(counts={k: int(n) for k, n in zip(keys.HELD_KINDS, counts, strict=True)})
        for index, member, payloads in entries:
            kind: Kind = keys.HELD_KINDS[int(index) - 1]  # type: ignore[assignment]
            name = member.decode() if isinstance(member, bytes) else str(member)
            deliveries = []
            for payload in payloads:
                if not payload:
                    continue
                try:
                    deliveries.append(Delivery.model_validate_json(payload))
                except ValueError as exc:
                    result.problems.append(f"{kind} {name}: unreadable held delivery: {exc}")
            result.released.append(Released(kind, name, deliveries, str(lease_score)))
        return result

    def ack(self, released: Sequence[Released], next_due: dict[str, datetime] | None = None) -> int:
        """Remove what was released (only where our lease still holds)."""
        if not released:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for r in released:
            if r.kind == "digest":
                later = (next_due or {}).get(r.member) or datetime.now(UTC)
                self._ack_digest(
                    keys=[keys.held_due(r.kind), keys.digest_items(r.member), keys.held_lease(r.member)],
                    args=[r.member, r.lease, ms(later), *(d.delivery_id for d in r.deliveries)],
                    client=pipe)
            else:
                self._ack_item(keys=[keys.held_due(r.kind), keys.held_item(r.member), keys.held_lease(r.member)],
                               args=[r.member, r.lease], client=pipe)
        return sum(int(n) for n in pipe.execute())

    def pending(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for k in keys.HELD_KINDS:
            pipe.zcard(keys.held_due(k))
        return {k: int(n) for k, n in zip(keys.HELD_KINDS, pipe.execute(), strict=True)}
