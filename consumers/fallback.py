"""Channel fallback in the channel consumers: the Kafka and Redis side of router/fallback.py.

Failed for good: when a delivery is dead-lettered (a permanent error, or its
attempts used up) and carries a ``failed`` step, :meth:`Fallbacks.after_failure`
queues the next delivery of the chain on that channel's topic and a status event
(``routed`` / ``fallback``) in the same batch as the dead letter, so both are
acknowledged by Kafka before the offset is stored. A batch processed twice
produces the same fallback delivery id twice; the next channel's sent mark keeps
it from going out twice.

Unread: when an in-app delivery with an ``unread`` step is stored in the inbox,
:meth:`Fallbacks.queue_unread` adds the step to a Redis sorted set due
``after`` later, in the same round trip as the in-app sent mark. The in-app
consumer looks for due steps about once a second (:meth:`Fallbacks.release_unread`):
one Lua script takes what is due and leases it, so another replica does not
see it; each step's in-app item is checked with ``InboxStore.is_unread``; still
unread, the delivery is produced on its channel's topic (``routed`` /
``unread_fallback``); read, dismissed or expired, a ``skipped`` status says it
was not needed (``fallback_not_needed``). Once Kafka has acknowledged, the steps
are removed. A consumer that dies in between leaves the lease to expire and the
step is released again with the same delivery id, which the sent mark turns into
a no-op. The steps live in Redis, so restarts lose nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from channels.base import Channel
from channels.inapp.store import InboxStore
from consumers import metrics
from consumers.kafka import ProduceError
from router import keys
from router.fallback import Step, next_after_failure, released, unread_step, unread_verdict
from router.lanes import lane_for
from router.scripts import PipelineScripts
from router.wire import Commands
from schemas import Delivery, State, Status
from schemas.errors import DecodeError

if TYPE_CHECKING:
    from consumers.loop import ConsumerLoop

log = logging.getLogger(__name__)

# KEYS: due zset, item. ARGV: member, due (ms), item JSON.
_QUEUE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# KEYS: due zset. ARGV: now, limit, lease score, lease ms, item prefix, lease prefix.
_CLAIM = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, m in ipairs(members) do
  redis.call('ZADD', KEYS[1], ARGV[3], m)
  redis.call('SET', ARGV[6] .. m, ARGV[3], 'PX', ARGV[4])
  out[#out + 1] = {m, redis.call('GET', ARGV[5] .. m) or ''}
end
return {out, redis.call('ZCARD', KEYS[1])}
"""

# KEYS: due zset, item, lease marker. ARGV: member, lease score.
_ACK = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@dataclass
class _Due:
    member: str
    item_id: str
    step: Step | None
    problem: str | None = None


class Fallbacks:
    """Fallback handling for one channel consumer (``loop``), sharing its producer and Redis."""

    def __init__(self, loop: ConsumerLoop, redis: Redis, channel: Channel) -> None:
        self.loop = loop
        self.redis = redis
        store = getattr(channel, "store", None) if channel.name == "inapp" else None
        self.inbox: InboxStore | None = store if isinstance(store, InboxStore) else None
        """The in-app inbox when this consumer is the in-app one: it releases unread fallbacks."""
        self._queue = redis.register_script(_QUEUE)
        self._claim = redis.register_script(_CLAIM)
        self._ack = redis.register_script(_ACK)

    # -- failed for good ------------------------------------------------------------

    def after_failure(self, delivery: Delivery, reason: str, now: datetime) -> Delivery | None:
        """Queue the next delivery of the chain, if there is one (call after the dead letter)."""
        try:
            nxt = next_after_failure(delivery, now)
        except DecodeError as exc:
            log.error("delivery %s: fallback not readable, none sent: %s", delivery.delivery_id, exc)
            return None
        if nxt is None:
            return None
        self._send(nxt)
        self.loop.publish_status(Status.for_delivery(
            nxt, State.routed, at=now, reason="fallback",
            detail=f"fallback for {delivery.channel} delivery {delivery.delivery_id} ({reason})"[:500]))
        self.loop.count(metrics.FALLBACKS, delivery.channel, nxt.channel, "failed", "sent")
        return nxt

    def _send(self, delivery: Delivery) -> None:
        self.loop.producer.send(
            self.loop.settings.deliver_topic(delivery.channel, lane_for(delivery.priority)),
            delivery.encode(self.loop.catalog),
            key=f"{delivery.tenant}:{delivery.recipient_id}",
            headers=[("tidings_delivery_id", delivery.delivery_id.encode())],
        )

    # -- unread ------------------------------------------------------------------

    def queue_unread(self, pipe: Commands, deliveries: Sequence[Delivery], now: datetime) -> int:
        """Add the unread steps of stored in-app deliveries to ``pipe`` (the sent-mark round trip)."""
        n = 0
        scripts = PipelineScripts(pipe)
        for d in deliveries:
            try:
                step = unread_step(d)
            except DecodeError as exc:
                log.error("delivery %s: fallback not readable, no unread fallback: %s", d.delivery_id, exc)
                continue
            if step is None:
                continue
            doc = json.dumps({"item": d.delivery_id, "step": step.to_json()}, separators=(",", ":"))
            scripts(self._queue, [keys.unread_due(), keys.unread_item(d.delivery_id)],
                    [d.delivery_id, _ms(now + step.after), doc])
            n += 1
        return n

    async def release_unread(self, now: datetime, limit: int = 500,
                             lease: timedelta = timedelta(seconds=60)) -> int:
        """Send the due unread steps whose in-app item is still unread; returns how many went out."""
        if self.inbox is None:
            return 0
        lease_ms = int(lease.total_seconds() * 1000)
        lease_score = _ms(now) + lease_ms
        try:
            raw: Any = await self._claim(keys=[keys.unread_due()],
                                         args=[_ms(now), limit, lease_score, lease_ms, keys.unread_item(""),
                                               keys.unread_lease("")])
        except RedisError as exc:
            log.warning("could not look for due unread fallbacks: %s", exc)
            return 0
        entries, waiting = raw
        metrics.HELD.labels("unread_fallback").set(int(waiting))
        due = [_parse(m, payload) for m, payload in entries]
        if not due:
            return 0
        sent = 0
        for item in due:
            if item.step is None:
                log.error("unread fallback %s: %s; dropped", item.member, item.problem)
                continue
            d = item.step.delivery
            try:
                state = await self.inbox.is_unread(d.tenant, d.recipient_id, item.item_id, now)
            except (RedisError, OSError) as exc:
                log.warning("cannot read the inbox for unread fallbacks (%s); they are tried again after the "
                            "lease", exc)
                return sent
            verdict = unread_verdict(state)
            after = item.step.after.total_seconds()
            if verdict == "send":
                out = released(item.step, now)
                self._send(out)
                self.loop.publish_status(Status.for_delivery(
                    out, State.routed, at=now, reason="unread_fallback",
                    detail=f"in-app item {item.item_id} still unread after {after:g}s"))
                metrics.FALLBACKS.labels("inapp", d.channel, "unread", "sent").inc()
                sent += 1
            else:
                why = "was read" if verdict == "read" else "is no longer in the inbox (dismissed or expired)"
                self.loop.publish_status(Status.for_delivery(
                    d, State.skipped, at=now, reason="fallback_not_needed",
                    detail=f"in-app item {item.item_id} {why} within {after:g}s"))
                metrics.FALLBACKS.labels("inapp", d.channel, "unread", "not_needed").inc()
        try:
            self.loop.producer.commit_point()
        except ProduceError:
            log.warning("unread fallbacks not acknowledged by Kafka; they are released again after the lease")
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for item in due:
            await self._ack(keys=[keys.unread_due(), keys.unread_item(item.member),
                                  keys.unread_lease(item.member)],
                            args=[item.member, str(lease_score)], client=pipe)
        try:
            await pipe.execute()
        except RedisError as exc:
            log.warning("released unread fallbacks not removed (%s); the lease expiry releases them again "
                        "with the same ids", exc)
        return sent


def _parse(member: Any, payload: Any) -> _Due:
    name = member.decode() if isinstance(member, bytes) else str(member)
    try:
        doc = json.loads(payload)
        return _Due(name, str(doc["item"]), Step.from_json(doc["step"]))
    except (ValueError, KeyError, TypeError, DecodeError) as exc:
        return _Due(name, name, None, f"unreadable: {exc}")
