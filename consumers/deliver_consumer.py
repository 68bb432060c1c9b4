"""A channel consumer: Delivery records in, provider calls out, every outcome recorded.

It reads its channel's main topic and every retry tier of it in one group.
Per batch: records of a retry partition whose head is not yet due are left
alone and the partition is held (paused) until it is; the rest are decoded
(undecodable records are dead-lettered), deliveries already marked sent in
Redis are skipped (one round trip), stale ones are dropped, and the rest are
sent once each, concurrently under the channel's in-flight limit. A transient
failure goes to the next retry tier (see :mod:`consumers.retry`), a permanent
one or the last allowed attempt to the DLQ. While an endpoint's circuit
breaker is open, its deliveries go to a retry tier without calling the
provider. Sent marks are written as sends complete (the sends that finish
together share one write to Redis, see :mod:`consumers.redisbatch`), and all
of them before the retry records, status events and dead letters are
produced, Kafka's acknowledgement is awaited, and only then are the offsets stored. A dead-lettered delivery that
carries a fallback chain queues the next channel's delivery in the same batch;
an in-app one with an unread fallback schedules it with its sent mark (see
:mod:`consumers.fallback`).

Duplicate window: a crash after the provider accepted a message and before
its sent mark is written re-sends it on restart; writing each mark as its send
completes keeps that window to the sends in flight at the crash, not the batch. Receivers get the delivery id
(``webhook-id``, ``Message-ID``) to close that window on their side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from confluent_kafka import Message, TopicPartition
from redis.asyncio import Redis
from redis.exceptions import RedisError

from channels.base import Channel, Sent
from consumers import metrics
from consumers.breaker import Breakers
from consumers.fallback import Fallbacks
from consumers.kafka import ProduceError, coordinates, headers_of, now_text
from consumers.loop import ConsumerLoop, RetryBatch
from consumers.redisbatch import BatchConnection
from consumers.retry import GiveUp, RetryPlan, RetryState, Tier, plan_retry, retry_headers
from consumers.settings import Settings
from router import keys
from router.wire import Commands
from schemas import Catalog, Delivery, State, Status
from schemas.errors import DecodeError, DeliveryError, PermanentError, RateLimitedError

log = logging.getLogger(__name__)


@dataclass
class _Item:
    msg: Message
    retry: RetryState
    delivery: Delivery | None = None
    error: Exception | None = None
    attempts: int = 0
    first_failure: str | None = None
    # delivered | already_sent | duplicate | dead_lettered | stale | retrying | waiting
    outcome: str = "pending"
    sent: Sent | None = None
    plan: RetryPlan | None = None
    cause: str = "transient"
    done: bool = False


def endpoint_of(channel: str, delivery: Delivery) -> str:
    """The provider endpoint a delivery goes to, for its circuit breaker: the scheme and
    host of a URL address (webhooks and other HTTP providers), else the channel itself
    (one relay or one provider API for every recipient, or an address that is no URL)."""
    return _endpoint(channel, delivery.address)


@lru_cache(maxsize=4096)
def _endpoint(channel: str, address: str) -> str:
    if "://" in address:
        try:
            parts = urlsplit(address)
            port = f":{parts.port}" if parts.port else ""
        except ValueError:  # a port out of range or not a number: the channel refuses the address itself
            return channel
        if parts.hostname:
            return f"{channel}:{parts.scheme}://{parts.hostname}{port}"
    return channel


def new_event_loop(kind: Literal["uvloop", "asyncio"]) -> asyncio.AbstractEventLoop:
    """The loop a channel consumer runs its batches on: ``uvloop`` or the standard library's ``asyncio``.

    The batch's sockets (HTTP, SMTP, Redis) and timers are the same on both; uvloop's loop
    does its polling, callbacks and transports in C, which took a quarter to a third of the
    webhook consumer's CPU per delivery off (B2 in docs/performance.md).
    """
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class DeliverConsumer(ConsumerLoop):
    role = "deliver"

    def __init__(self, settings: Settings, catalog: Catalog, channel: Channel, redis: Redis,
                 lane: str | None = None, **kwargs: Any) -> None:
        self.channel_name = channel.name
        # Priority lanes (router/lanes.py): lane None reads both topics; "urgent" gets its own group.
        lanes = ["normal", "urgent"] if lane is None else [lane]
        group = f"deliver-{channel.name}" + ("-urgent" if lane == "urgent" else "")
        self.ladder: tuple[Tier, ...] = settings.retry_ladder
        # The retry tiers are read with the normal lane; an urgent-lane consumer writes to them.
        self.tier_topics = ({settings.retry_topic(channel.name, t.label): t for t in self.ladder}
                            if lane in (None, "normal") else {})
        super().__init__(settings, catalog, settings.group(group),
                         [*(settings.deliver_topic(channel.name, ln) for ln in lanes), *self.tier_topics], **kwargs)
        self.channel = channel
        self.redis = redis
        self.dlq_topic = settings.channel_dlq_topic(channel.name)
        self.aio = new_event_loop(settings.event_loop)
        limit = min(settings.max_in_flight, channel.max_in_flight())
        self.semaphore = asyncio.Semaphore(limit)
        self.breakers = Breakers(settings.breaker_threshold, settings.breaker_cooldown)
        # Channel fallback (consumers/fallback.py); the in-app consumer also releases unread fallbacks.
        self.fallbacks = Fallbacks(self, redis, channel)
        self.batch = BatchConnection(redis)  # sent-mark checks and writes (consumers/redisbatch.py)
        self._next_release = 0.0

    def poll_once(self) -> None:
        super().poll_once()
        if self.fallbacks.inbox is not None and time.monotonic() >= self._next_release:
            self._next_release = time.monotonic() + self.settings.release_interval
            self.aio.run_until_complete(self.fallbacks.release_unread(
                datetime.now(UTC), limit=self.settings.batch_size,
                lease=timedelta(seconds=self.settings.release_lease_seconds)))

    def handle(self, messages: list[Message]) -> list[TopicPartition]:
        return self.aio.run_until_complete(self.process(messages))

    def on_close(self) -> None:
        self.aio.run_until_complete(self.channel.aclose())
        self.aio.run_until_complete(self.batch.aclose())
        self.aio.run_until_complete(self.redis.aclose())
        self.aio.close()

    # -- one batch ------------------------------------------------------------

    async def process(self, messages: list[Message]) -> list[TopicPartition]:
        now = datetime.now(UTC)
        items: list[_Item] = []
        waiting: set[tuple[str, int]] = set()
        for m in messages:
            topic, partition, offset = coordinates(m)
            item = _Item(m, RetryState.from_headers(headers_of(m)) if topic in self.tier_topics else RetryState())
            items.append(item)
            if (topic, partition) in waiting:
                item.outcome = "waiting"
                continue
            wait = item.retry.seconds_until_due(now)
            if wait > 0:
                # The head of this retry partition is not due: pause the partition until it is.
                self.hold(topic, partition, offset, time.monotonic() + wait)
                waiting.add((topic, partition))
                item.outcome = "waiting"
                continue
            item.attempts = item.retry.attempts
            item.first_failure = item.retry.first_failure
            try:
                item.delivery = Delivery.decode(self.catalog, m.value())
            except DecodeError as exc:
                item.error = exc
                item.attempts += 1
                item.outcome = "dead_lettered"

        live = [i for i in items if i.delivery is not None]
        try:
            marks = await self._sent_marks(live)
        except RedisError as exc:
            raise RetryBatch("redis", backoff=0.5) from exc
        seen: set[str] = set()
        todo: list[_Item] = []
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

        mark_writer = _EagerMarks(self._mark_sent)
        await asyncio.gather(*(self._deliver(i, mark_writer) for i in todo))

        delivered = [i for i in todo if i.outcome == "delivered"]
        if delivered:
            try:
                await mark_writer.finish()
            except RedisError as exc:
                # The sends happened; without the mark a retry would repeat them. Keep
                # trying the marks (all of them: writing one twice is harmless), not the sends.
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
        checks = Commands()
        for i in items:
            d = i.delivery
            assert d is not None
            checks.execute_command("EXISTS", keys.sent(d.tenant, d.recipient_id, d.delivery_id))
        return [bool(_checked(reply)) for reply in await self.batch.run(checks)]

    async def _mark_sent(self, items: list[_Item]) -> None:
        """The sent marks of ``items``, and the in-app consumer's unread fallbacks, in one lean batch."""
        marks = Commands()
        deliveries = [i.delivery for i in items if i.delivery is not None]
        for i in items:
            d = i.delivery
            assert d is not None
            marks.set(keys.sent(d.tenant, d.recipient_id, d.delivery_id),
                      (i.sent.provider_id if i.sent else None) or "1", ex=self.settings.sent_ttl_seconds)
        self.fallbacks.queue_unread(marks, deliveries, datetime.now(UTC))
        for reply in await self.batch.run(marks):
            _checked(reply)

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

    async def _deliver(self, item: _Item, mark_writer: _EagerMarks) -> None:
        """One attempt, unless the endpoint's breaker is open; then the outcome's path."""
        d = item.delivery
        assert d is not None
        endpoint = endpoint_of(self.channel_name, d)
        breaker = self.breakers.get(endpoint)
        allowed, change = breaker.allow(time.monotonic())
        self._breaker_changed(change)
        if not allowed:
            item.cause = "circuit_open"
            item.error = item.error or RuntimeError(f"circuit open for {endpoint}")
            self._plan(item, count_attempt=False)
            return
        started = time.perf_counter()
        try:
            async with self.semaphore:
                item.sent = await self.channel.send(d)
        except PermanentError as exc:
            self._failed(item, exc, started)
            self._breaker_changed(breaker.record_success())  # the endpoint answered; the message is bad
            item.attempts += 1
            item.outcome = "dead_lettered"
            return
        except Exception as exc:
            # Unknown exceptions from a channel are bugs or unmapped provider answers:
            # treat them as transient so the delivery is retried, then dead-lettered.
            self._failed(item, exc, started)
            if not isinstance(exc, DeliveryError):
                log.exception("%s channel raised an unexpected error", self.channel_name)
            self._breaker_changed(breaker.record_failure(time.monotonic()))
            item.cause = "rate_limited" if isinstance(exc, RateLimitedError) else "transient"
            self._plan(item, count_attempt=True)
            return
        self._breaker_changed(breaker.record_success())
        item.attempts += 1
        metrics.SEND_LATENCY.labels(self.channel_name).observe(time.perf_counter() - started)
        metrics.END_TO_END_LATENCY.labels(self.channel_name).observe(
            max(0.0, (datetime.now(UTC) - d.event_time).total_seconds()))
        item.outcome = "delivered"
        mark_writer.add(item)

    def _plan(self, item: _Item, *, count_attempt: bool) -> None:
        d = item.delivery
        assert d is not None and item.error is not None
        s = self.settings
        plan = plan_retry(item.error, item.attempts, self.ladder, s.retry_max_attempts, datetime.now(UTC),
                          deadline=d.deadline, jitter=s.retry_jitter, count_attempt=count_attempt)
        item.attempts = plan.attempts
        if isinstance(plan, GiveUp):
            if plan.reason == "deadline":
                item.outcome = "stale"
            else:
                item.outcome = "dead_lettered"
            return
        item.plan = plan
        item.outcome = "retrying"

    def _breaker_changed(self, state: object | None) -> None:
        if state is None:
            return
        metrics.CIRCUIT_TRANSITIONS.labels(self.channel_name, str(state)).inc()
        metrics.CIRCUIT_OPEN.labels(self.channel_name).set(self.breakers.not_closed())
        log.warning("%s: circuit breaker now %s (%d endpoint(s) not closed)",
                    self.channel_name, state, self.breakers.not_closed())

    def _failed(self, item: _Item, exc: Exception, started: float) -> None:
        metrics.SEND_LATENCY.labels(self.channel_name).observe(time.perf_counter() - started)
        item.error = exc
        item.first_failure = item.first_failure or now_text()

    # -- outcomes -----------------------------------------------------------------

    def _record(self, item: _Item) -> None:
        d = item.delivery
        if item.outcome == "waiting":
            return
        item.done = True
        self.count(metrics.DELIVERIES, self.channel_name, item.outcome)
        if item.outcome in ("already_sent", "duplicate"):
            return
        if item.outcome == "dead_lettered":
            exc = item.error or DecodeError("unknown failure")
            reason = type(exc).__name__
            message = str(exc) or reason
            if not isinstance(exc, PermanentError) and not isinstance(exc, DecodeError):
                message = f"gave up after {item.attempts} attempt(s): {message}"
            self._dead_letter(item, reason, message)
            if d is not None:
                self.publish_status(Status.for_delivery(d, State.dead_lettered, reason=reason,
                                                        detail=message[:500], attempt=item.attempts))
                self.fallbacks.after_failure(d, reason, datetime.now(UTC))
            return
        assert d is not None
        if item.outcome == "stale":
            detail = (f"deadline {d.deadline} passed before sending" if item.error is None else
                      f"next attempt would fall after the deadline {d.deadline}; last error: {item.error}")
            if self.settings.stale_to_dlq:
                self._dead_letter(item, "stale", detail)
                self.publish_status(Status.for_delivery(d, State.dead_lettered, reason="stale",
                                                        detail=detail[:500], attempt=item.attempts))
            else:
                self.publish_status(Status.for_delivery(d, State.failed, reason="stale",
                                                        detail=detail[:500], attempt=item.attempts))
        elif item.outcome == "retrying":
            plan = item.plan
            assert plan is not None and item.error is not None
            topic = self.settings.retry_topic(self.channel_name, plan.tier.label)
            headers = retry_headers(headers_of(item.msg), plan, item.first_failure or now_text(), item.error)
            self.producer.send(topic, item.msg.value() or b"", key=item.msg.key(), headers=headers)
            self.count(metrics.RETRIES, self.channel_name, plan.tier.label, item.cause)
            self.publish_status(Status.for_delivery(
                d, State.retrying, reason=type(item.error).__name__ if item.cause != "circuit_open" else item.cause,
                detail=f"next attempt at {plan.due.isoformat(timespec='seconds')} via {plan.tier.label}: "
                       f"{item.error}"[:500], attempt=item.attempts))
        elif item.outcome == "delivered":
            self.publish_status(Status.for_delivery(
                d, State.delivered, attempt=item.attempts,
                provider_id=item.sent.provider_id if item.sent else None))

    def _dead_letter(self, item: _Item, reason: str, message: str) -> None:
        self.dead_letter(item.msg, self.dlq_topic, reason, message, max(item.attempts, 1), item.first_failure)


class _EagerMarks:
    """Sent marks written while the batch's other sends are still running.

    Each completed send is queued; one writer task drains the queue, so sends
    that complete while a write is under way go together in the next pipeline.
    A failed write is remembered and raised by :meth:`finish`; the caller then
    rewrites every mark of the batch until Redis answers.
    """

    def __init__(self, write: Callable[[list[_Item]], Awaitable[None]]) -> None:
        self._write = write
        self._queue: list[_Item] = []
        self._writer: asyncio.Task[None] | None = None
        self._error: RedisError | None = None

    def add(self, item: _Item) -> None:
        self._queue.append(item)
        if self._error is None and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._queue and self._error is None:
            chunk, self._queue = self._queue, []
            try:
                await self._write(chunk)
            except RedisError as exc:
                self._error = exc

    async def finish(self) -> None:
        """Wait for the writer, write what is left; raise the first write error, if any."""
        if self._writer is not None:
            await self._writer
        await self._drain()
        if self._error is not None:
            raise self._error


def _checked(reply: Any) -> Any:
    """A reply of a lean batch, or the error Redis answered raised (a RedisError: the batch is retried)."""
    if isinstance(reply, RedisError):
        raise reply
    return reply


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
