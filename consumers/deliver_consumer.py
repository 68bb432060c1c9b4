"""A channel consumer: Delivery records in, provider calls out, every outcome recorded.

Per batch: decode (undecodable records are dead-lettered), skip deliveries
already marked sent in Redis (one round trip), drop stale ones, send the rest
concurrently under the channel's in-flight limit, retrying transient failures
in place a few times, then mark the sent ones in Redis (one round trip),
produce status events and dead letters, wait for Kafka's acknowledgement, and
only then store the offsets.

Duplicate window: a crash after the provider accepted a message and before
the sent mark is written re-sends it on restart. Receivers get the delivery id
(``webhook-id``, ``Message-ID``) to close that window on their side.

On shutdown, deliveries that failed transiently are handed back instead of
retried in place: offsets are stored only up to the first unfinished record
of each partition, and the next owner re-reads from there (sent marks turn the
finished ones after it into no-ops).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message, TopicPartition
from redis.asyncio import Redis
from redis.exceptions import RedisError

from channels.base import Channel, Sent
from consumers import metrics
from consumers.kafka import ProduceError, coordinates, now_text
from consumers.loop import ConsumerLoop, RetryBatch
from consumers.settings import Settings
from router import keys
from schemas import Catalog, Delivery, State, Status
from schemas.errors import DecodeError, DeliveryError, PermanentError, RateLimitedError, TransientError

log = logging.getLogger(__name__)


@dataclass
class _Item:
    msg: Message
    delivery: Delivery | None = None
    error: Exception | None = None
    attempts: int = 0
    first_failure: str | None = None
    outcome: str = "pending"  # delivered | already_sent | dead_lettered | stale | handed_back
    sent: Sent | None = None
    done: bool = False


class DeliverConsumer(ConsumerLoop):
    role = "deliver"

    def __init__(self, settings: Settings, catalog: Catalog, channel: Channel, redis: Redis,
                 lane: str | None = None, **kwargs: Any) -> None:
        self.channel_name = channel.name
        # Priority lanes (router/lanes.py): lane None reads both topics; "urgent" gets its own group.
        lanes = ["normal", "urgent"] if lane is None else [lane]
        group = f"deliver-{channel.name}" + ("-urgent" if lane == "urgent" else "")
        super().__init__(settings, catalog, settings.group(group),
                         [settings.deliver_topic(channel.name, ln) for ln in lanes], **kwargs)
        self.channel = channel
        self.redis = redis
        self.dlq_topic = settings.channel_dlq_topic(channel.name)
        self.aio = asyncio.new_event_loop()
        limit = min(settings.max_in_flight, channel.max_in_flight())
        self.semaphore = asyncio.Semaphore(limit)

    def handle(self, messages: list[Message]) -> list[TopicPartition]:
        return self.aio.run_until_complete(self.process(messages))

    def on_close(self) -> None:
        self.aio.run_until_complete(self.channel.aclose())
        self.aio.run_until_complete(self.redis.aclose())
        self.aio.close()

    # -- one batch ------------------------------------------------------------

    async def process(self, messages: list[Message]) -> list[TopicPartition]:
        items = [_Item(m) for m in messages]
        for item in items:
            try:
                item.delivery = Delivery.decode(self.catalog, item.msg.value())
            except DecodeError as exc:
                item.error = exc
                item.attempts = 1
                item.outcome = "dead_lettered"

        live = [i for i in items if i.delivery is not None]
        try:
            marks = await self._sent_marks(live)
        except RedisError as exc:
            raise RetryBatch("redis", backoff=0.5) from exc
        seen: set[str] = set()
        todo: list[_Item] = []
        now = datetime.now(UTC)
        for item, marked in zip(live, marks, strict=True):
            d = item.delivery
            assert d is not None
            if marked:
                item.outcome = "already_sent"
            elif d.delivery_id in seen:
                item.outcome = "duplicate"  # a second copy in this batch: the first one decides
            elif d.deadline is not None and d.deadline < now:
                item.outcome = "stale"
            else:
                todo.append(item)
            seen.add(d.delivery_id)

        await asyncio.gather(*(self._deliver(i) for i in todo))

        delivered = [i for i in todo if i.outcome == "delivered"]
        if delivered:
            try:
                await self._mark_sent(delivered)
            except RedisError as exc:
                # The sends happened; without the mark a retry would repeat them. Keep
                # trying the mark, not the sends.
                await self._mark_sent_until_ok(delivered, exc)

        for item in items:
            self._record(item)
        try:
            self.producer.commit_point()
        except ProduceError as exc:
            # Sent marks are written, so re-processing the batch sends nothing twice.
            raise RetryBatch("produce", backoff=1.0) from exc
        return _storable(items)

    async def _sent_marks(self, items: list[_Item]) -> list[bool]:
        if not items:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i in items:
            d = i.delivery
            assert d is not None
            pipe.exists(keys.sent(d.tenant, d.recipient_id, d.delivery_id))
        return [bool(x) for x in await pipe.execute()]

    async def _mark_sent(self, items: list[_Item]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for i in items:
            d = i.delivery
            assert d is not None
            value = (i.sent.provider_id if i.sent else None) or "1"
            pipe.set(keys.sent(d.tenant, d.recipient_id, d.delivery_id), value,
                     ex=self.settings.sent_ttl_seconds)
        await pipe.execute()

    async def _mark_sent_until_ok(self, items: list[_Item], first: RedisError) -> None:
        log.error("writing %d sent mark(s) failed (%s); retrying until Redis answers", len(items), first)
        delay = 0.2
        while True:
            await asyncio.sleep(delay)
            try:
                await self._mark_sent(items)
                return
            except RedisError as exc:
                delay = min(delay * 2, 5.0)
                log.error("sent marks still failing: %s", exc)
            self.health.tick()

    async def _deliver(self, item: _Item) -> None:
        d = item.delivery
        assert d is not None
        attempts = self.settings.send_attempts
        for attempt in range(1, attempts + 1):
            item.attempts = attempt
            started = time.perf_counter()
            try:
                async with self.semaphore:
                    item.sent = await self.channel.send(d)
            except PermanentError as exc:
                self._failed(item, exc, started)
                item.outcome = "dead_lettered"
                return
            except (TransientError, DeliveryError, Exception) as exc:
                # Unknown exceptions from a channel are bugs or unmapped provider answers:
                # treat them as transient so the delivery is retried, then dead-lettered.
                self._failed(item, exc, started)
                if not isinstance(exc, DeliveryError):
                    log.exception("%s channel raised an unexpected error", self.channel_name)
                if self.stop_event.is_set():
                    item.outcome = "handed_back"
                    return
                wait = self._backoff(exc, attempt)
                if attempt == attempts or wait is None:
                    item.outcome = "dead_lettered"
                    return
                metrics.DELIVERIES.labels(self.channel_name, "retried_in_place").inc()
                await self._pause(wait)
                if self.stop_event.is_set():
                    item.outcome = "handed_back"
                    return
                continue
            metrics.SEND_LATENCY.labels(self.channel_name).observe(time.perf_counter() - started)
            metrics.END_TO_END_LATENCY.labels(self.channel_name).observe(
                max(0.0, (datetime.now(UTC) - d.event_time).total_seconds()))
            item.outcome = "delivered"
            return

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake early when shutdown begins."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))

    def _failed(self, item: _Item, exc: Exception, started: float) -> None:
        metrics.SEND_LATENCY.labels(self.channel_name).observe(time.perf_counter() - started)
        item.error = exc
        item.first_failure = item.first_failure or now_text()

    def _backoff(self, exc: Exception, attempt: int) -> float | None:
        """Seconds to wait before the next attempt in place, or None to give up now."""
        base = float(self.settings.retry_backoff * 2.0 ** (attempt - 1))
        if isinstance(exc, RateLimitedError) and exc.retry_after is not None:
            if exc.retry_after > self.settings.max_retry_after:
                return None
            return max(base, float(exc.retry_after))
        return float(base)

    # -- outcomes -----------------------------------------------------------------

    def _record(self, item: _Item) -> None:
        d = item.delivery
        if item.outcome == "handed_back":
            return
        item.done = True
        self.count(metrics.DELIVERIES, self.channel_name, item.outcome)
        if item.outcome in ("already_sent", "duplicate"):
            return
        if item.outcome == "dead_lettered":
            exc = item.error or DecodeError("unknown failure")
            reason = type(exc).__name__
            message = str(exc) or reason
            if isinstance(exc, TransientError) or not isinstance(exc, DeliveryError):
                message = f"gave up after {item.attempts} attempt(s): {message}"
            self.dead_letter(item.msg, self.dlq_topic, reason, message, item.attempts, item.first_failure)
            if d is not None:
                self.publish_status(Status.for_delivery(d, State.dead_lettered, reason=reason,
                                                 detail=message[:500], attempt=item.attempts))
            return
        assert d is not None
        if item.outcome == "stale":
            self.publish_status(Status.for_delivery(d, State.failed, reason="stale",
                                             detail=f"deadline {d.deadline} passed before sending"))
        elif item.outcome == "delivered":
            self.publish_status(Status.for_delivery(
                d, State.delivered, attempt=item.attempts,
                provider_id=item.sent.provider_id if item.sent else None))



def _storable(items: list[_Item]) -> list[TopicPartition]:
    """Per partition: the offset after the last record before the first unfinished one."""
    out: dict[tuple[str, int], int] = {}
    blocked: set[tuple[str, int]] = set()
    for item in items:
        topic, partition, offset = coordinates(item.msg)
        key = (topic, partition)
        if key in blocked:
            continue
        if not item.done:
            blocked.add(key)
            continue
        out[key] = offset + 1
    return [TopicPartition(t, p, o) for (t, p), o in out.items()]
