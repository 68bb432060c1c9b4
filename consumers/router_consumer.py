"""The router's consumer: domain events in, Delivery records and status events out.

Per batch: decode every record (bad ones are dead-lettered at once), match
the rules, one Redis round trip for dedup claims, recipients, preferences and
the other state the decisions read, the pure decision per event, then produce
deliveries (urgent ones on the channel's urgent lane), statuses and dead
letters and wait for Kafka to acknowledge all of them.

What the decisions changed in Redis (cap counts, content hashes, held
deliveries, digest items, claims of dead-lettered events to drop) is not
written then: it waits, with the batch's offsets, as the pending writes. The
next batch's round trip carries them at its front (Redis runs a pipeline in
order, so that batch's reads see them); once that pipeline succeeded the
offsets are returned to be stored. With no next batch (a poll that brings
nothing), before partitions are given up and at shutdown, the pending writes
are sent alone (:meth:`RouterConsumer.flush_pending`). So one consumed batch
costs one round trip. A crash before the writes went out leaves the batch's
offsets unstored: the batch is routed again with its own claims, the same
delivery ids, and its changes computed again, never applied twice.

``audience: subscribers`` rules fan out after that, page by page: read a page
of subscribers after the checkpoint, decide, produce, wait for Kafka, then
move the checkpoint. A crash resumes from the last checkpoint; the page in
flight is produced again with the same delivery ids, which the channel
consumers' sent marks turn into no-ops. A batch with a fan-out writes its
own changes (and any pending ones) before the first page, so that the pages
count caps on top of them: fan-outs keep their own round trips.

Between batches (about once a second) the consumer releases held deliveries
and digests that are due (:mod:`router.schedule`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Message, TopicPartition
from redis import Redis
from redis.exceptions import RedisError

from consumers import metrics
from consumers.kafka import ProduceError, coordinates, headers_of, next_offsets
from consumers.loop import ConsumerLoop, RetryBatch
from consumers.settings import Settings
from router import keys
from router.decision import (
    SUPPRESSION_REASONS,
    Decision,
    Event,
    add_needs,
    decide_recipient,
    event_context,
    route,
)
from router.digest import build_digest
from router.lanes import lane_for
from router.rules import CompiledRule, RuleSet
from router.schedule import requested_time
from router.state import Needs, RouterState, Writes
from router.subscriptions import SubscriptionStore
from router.templates import Renderer
from schemas import Catalog, CloudEvent, Delivery, State, Status
from schemas.errors import InputError, TemplateError
from schemas.models import event_key

DONE = "~done"
"""Fan-out checkpoint value once every subscriber is done (ids never start with '~')."""

log = logging.getLogger(__name__)


@dataclass
class _Parsed:
    msg: Message
    event: Event
    key: str
    owner: str
    matched: list[CompiledRule] | None = None
    topics: dict[str, str] = field(default_factory=dict)


@dataclass
class _Pending:
    """A batch whose Kafka output is acknowledged but whose Redis writes are not yet sent."""

    writes: Writes
    offsets: list[TopicPartition]


def _merge(*groups: list[TopicPartition]) -> list[TopicPartition]:
    """Offsets to store, the highest per partition."""
    best: dict[tuple[str, int], int] = {}
    for group in groups:
        for tp in group:
            key = (tp.topic, tp.partition)
            best[key] = max(best.get(key, tp.offset), tp.offset)
    return [TopicPartition(t, p, o) for (t, p), o in best.items()]


def decode_event(catalog: Catalog, msg: Message) -> Event:
    """CloudEvents headers plus an Avro body that matches the declared type, or an InputError."""
    headers = headers_of(msg)
    ce = CloudEvent.from_headers(headers)
    schema, data = catalog.decode(msg.value(), reader=catalog.for_type(ce.type))
    ext = {k: v.decode("utf-8", "replace") for k, v in headers if k in ("ce_deliverat", "ce_deliverafter") and v}
    deliver_at = requested_time(ext.get("ce_deliverat"), ext.get("ce_deliverafter"), ce.time)
    return Event(ce=ce, data=data, category=schema.category, deliver_at=deliver_at)


class UnexpectedError(InputError):
    """An event made our own code fail in a way it does not classify: a bug, dead-lettered
    (with the original exception's class and message) so that the partition moves on and
    the event can be replayed once the bug is fixed."""


def _unexpected(exc: Exception) -> UnexpectedError:
    log.exception("unexpected error while routing; dead-lettering the event")
    return UnexpectedError(f"{type(exc).__name__}: {exc}")


class RouterConsumer(ConsumerLoop):
    role = "router"

    def __init__(self, settings: Settings, catalog: Catalog, rules: RuleSet, renderer: Renderer,
                 redis: Redis, clock: Callable[[], datetime] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, catalog, settings.group("router"), [settings.input_topic], **kwargs)
        self.rules = rules
        self.renderer = renderer
        self.redis = redis
        self.state = RouterState(redis, settings.dedup_ttl_seconds)
        self.subscriptions = SubscriptionStore(redis)
        self.deadline = timedelta(seconds=settings.delivery_deadline_seconds)
        self.clock = clock or (lambda: datetime.now(UTC))
        self._next_release = 0.0
        self._pending: _Pending | None = None
        self._ready: list[TopicPartition] = []
        """Offsets whose batches are fully written, not yet handed to the loop (a retried batch came between)."""

    def on_close(self) -> None:
        self.state.wire.close()

    def poll_once(self) -> None:
        super().poll_once()
        if time.monotonic() >= self._next_release:
            self._next_release = time.monotonic() + self.settings.release_interval
            self.release_due()

    def _produce(self, decision: Decision) -> None:
        for delivery in decision.deliveries:
            self._send(delivery)
        for status in decision.statuses:
            self.publish_status(status)
            self.count(metrics.ROUTER_DECISIONS, status.state.value, status.reason or "")
            suppressed = SUPPRESSION_REASONS.get(status.reason or "")
            if suppressed is not None:
                self.count(metrics.SUPPRESSIONS, status.channel or "*", suppressed)

    def _send(self, delivery: Delivery) -> None:
        self.producer.send(
            self.settings.deliver_topic(delivery.channel, lane_for(delivery.priority)),
            delivery.encode(self.catalog),
            key=f"{delivery.tenant}:{delivery.recipient_id}",
            headers=[("tidings_delivery_id", delivery.delivery_id.encode())],
        )

    def handle(self, messages: list[Message]) -> list[TopicPartition]:
        parsed: list[_Parsed] = []
        dead: list[tuple[Message, InputError]] = []
        release: list[tuple[str, str]] = []
        for msg in messages:
            try:
                event = decode_event(self.catalog, msg)
            except InputError as exc:
                dead.append((msg, exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must not stall the partition
                dead.append((msg, _unexpected(exc)))
                continue
            owner = "{}:{}:{}".format(*coordinates(msg))
            parsed.append(_Parsed(msg, event, event_key(event.ce.source, event.ce.id), owner))

        now = self.clock()
        needs = Needs()
        limits = self.rules.caps
        refs: set[tuple[str, str]] = set()
        for p in parsed:
            ce = p.event.ce
            rules = self.rules.for_type(ce.type)
            if not rules:
                continue
            try:
                ectx = event_context(ce)
                ectx_matched = [r for r in rules if r.matches(p.event.data, ectx)]
                for r in ectx_matched:
                    if r.rule.audience == "subject" and ce.subject is not None:
                        add_needs(needs, p.event, r, ce.tenant, ce.subject, limits, now)
            except InputError:
                continue  # route() evaluates again and dead-letters the event with the reason
            p.matched = ectx_matched
            if ce.subject is not None and any(r.rule.audience == "subject" for r in ectx_matched):
                refs.add((ce.tenant, ce.subject))
        pending = self._pending
        try:
            snapshot = self.state.load([(p.key, p.owner) for p in parsed], refs, needs,
                                       writes=pending.writes if pending else None)
        except RedisError as exc:
            self._settle(pending)
            raise RetryBatch("redis", backoff=0.5) from exc
        self._settle(pending)

        total = Decision()
        fanouts: list[tuple[_Parsed, CompiledRule]] = []
        for p in parsed:
            ce = p.event.ce
            ref = (ce.tenant, ce.subject or "")
            try:
                decision = route(
                    p.event, self.rules.for_type(ce.type), snapshot.claim(p.key, p.owner),
                    snapshot.recipients.get(ref), self.renderer, now, self.deadline,
                    snapshot.problems.get(ref), view=snapshot.view, limits=limits, matched=p.matched,
                )
                for r in decision.fanouts:
                    p.topics[r.rule.name] = r.topic(p.event.data, event_context(ce))
            except InputError as exc:
                dead.append((p.msg, exc))
                release.append((p.key, p.owner))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must not stall the partition
                dead.append((p.msg, _unexpected(exc)))
                release.append((p.key, p.owner))
                continue
            total.merge(decision)
            fanouts.extend((p, r) for r in decision.fanouts)
        self._produce(total)

        for msg, error in dead:
            self._dead_letter(msg, error)
        try:
            self.producer.commit_point()
        except ProduceError as err:
            raise RetryBatch("produce", backoff=1.0) from err
        caps = snapshot.view.caps
        writes = Writes(now, dict(caps.taken), dict(caps.ttls), list(total.content), list(total.holds),
                        list(total.digests), releases=release)
        offsets = next_offsets(messages)
        if fanouts:
            # The pages read cap counts: they must see this batch's. Off the hot path anyway.
            if writes:
                try:
                    self.state.flush(writes)
                except RedisError as exc:
                    raise RetryBatch("redis", backoff=0.5) from exc
            for p, compiled in fanouts:
                self.fan_out(p, compiled, p.topics[compiled.rule.name], now)
        elif writes:
            self._pending = _Pending(writes, offsets)
            return self._take_ready()
        return self._take_ready(offsets)

    def _settle(self, pending: _Pending | None) -> None:
        """After a round trip that carried ``pending``: once Redis ran its writes, its offsets are ready."""
        if pending is not None and pending.writes.applied:
            self._ready = _merge(self._ready, pending.offsets)
            self._pending = None

    def _take_ready(self, offsets: list[TopicPartition] | None = None) -> list[TopicPartition]:
        out = _merge(self._ready, offsets or [])
        self._ready = []
        return out

    def flush_pending(self) -> list[TopicPartition]:
        """Send the pending writes alone (no batch to carry them); the offsets that may now be stored."""
        pending = self._pending
        if pending is not None:
            try:
                self.state.flush(pending.writes)
            except RedisError as exc:
                log.warning("pending state writes not sent (%s); they go with the next batch", exc)
            self._settle(pending)
        return self._take_ready()

    def forget_pending(self, partitions: list[TopicPartition] | None = None) -> None:
        """Partitions are gone (``None``: all of them): their offsets must not be stored by us.

        With every partition gone the pending writes go too, unsent: the next owner routes those
        records again and computes the same changes. After a revocation of some partitions whose
        flush failed, the writes stay for the partitions we keep (a cap may then count the
        revoked records' deliveries twice; holds, digests and content hashes are idempotent).
        """
        if partitions is None:
            if self._pending is not None:
                log.warning("dropping unsent state writes of a batch whose partitions were lost; "
                            "the records are routed again by their next owner")
            self._pending = None
            self._ready = []
            return
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._ready = [tp for tp in self._ready if (tp.topic, tp.partition) not in gone]
        if self._pending is not None:
            self._pending.offsets = [tp for tp in self._pending.offsets if (tp.topic, tp.partition) not in gone]

    def _dead_letter(self, msg: Message, exc: InputError) -> None:
        reason = exc.reason
        log.warning("dead-lettering %s[%d]@%d: %s: %s", *coordinates(msg), reason, exc)
        self.dead_letter(msg, self.settings.router_dlq_topic, reason, str(exc), attempts=1)
        self.count(metrics.ROUTER_DECISIONS, State.dead_lettered.value, reason)
        try:
            ce = CloudEvent.from_headers(headers_of(msg))
        except InputError:
            return  # no identity to report a status against; the DLQ record is the trace
        self.publish_status(Status(state=State.dead_lettered, event_id=ce.id, event_source=ce.source,
                            event_type=ce.type, reason=reason, detail=str(exc)[:500]))



    # -- subscribers ----------------------------------------------------------

    def fan_out(self, p: _Parsed, compiled: CompiledRule, topic: str, now: datetime) -> int:
        """Notify every subscriber of ``topic``, page by page from the checkpoint; returns how many
        subscribers were decided in this call."""
        ce = p.event.ce
        checkpoint = keys.fanout(p.key, compiled.rule.name)
        size = self.settings.fanout_page_size
        try:
            raw = self.redis.get(checkpoint)
        except RedisError as exc:
            raise RetryBatch("redis", backoff=0.5) from exc
        cursor = raw.decode() if isinstance(raw, bytes) else None
        if cursor == DONE:
            return 0
        if cursor:
            log.info("fan-out of %s/%s for rule %s resumes after %r", ce.source, ce.id, compiled.rule.name, cursor)
        done = 0
        while True:
            try:
                ids = self.subscriptions.page(ce.tenant, topic, cursor, size)
                if not ids:
                    self.redis.set(checkpoint, DONE, ex=self.settings.dedup_ttl_seconds)
                    break
                needs = Needs()
                for user in ids:
                    add_needs(needs, p.event, compiled, ce.tenant, user, self.rules.caps, now)
                snapshot = self.state.load([], [(ce.tenant, u) for u in ids], needs)
            except RedisError as exc:
                raise RetryBatch("redis", backoff=0.5) from exc
            decision = Decision()
            for user in ids:
                recipient = snapshot.recipients.get((ce.tenant, user))
                if recipient is None:
                    decision.statuses.append(Status(
                        state=State.skipped, event_id=ce.id, event_source=ce.source, event_type=ce.type,
                        reason="unknown_recipient", rule=compiled.rule.name, recipient_id=user,
                        detail=snapshot.problems.get((ce.tenant, user))
                        or f"subscriber {user!r} of {topic!r} is not a recipient"))
                    continue
                try:
                    decide_recipient(decision, p.event, compiled, recipient, self.renderer, now, self.deadline,
                                     snapshot.view, self.rules.caps)
                except Exception as exc:  # noqa: BLE001 - one subscriber must not stop the others
                    # A template over a subscriber's own fields, say: reported for that one, the rest go on.
                    error = exc if isinstance(exc, InputError) else _unexpected(exc)
                    decision.statuses.append(Status(
                        state=State.failed, event_id=ce.id, event_source=ce.source, event_type=ce.type,
                        reason=error.reason, rule=compiled.rule.name, recipient_id=user, detail=str(error)[:500]))
            self._produce(decision)
            try:
                self.producer.commit_point()
            except ProduceError as err:
                raise RetryBatch("produce", backoff=1.0) from err
            try:
                self.state.write(snapshot.view.caps, decision.content, decision.holds, decision.digests, now,
                                 extra=[(checkpoint, ids[-1])])
            except RedisError as exc:
                raise RetryBatch("redis", backoff=0.5) from exc
            done += len(ids)
            cursor = ids[-1]
        return done

    # -- held deliveries ----------------------------------------------------------

    def release_due(self) -> int:
        """Release held deliveries and digests that are due; returns how many records went out."""
        now = self.clock()
        try:
            claimed = self.state.held.claim(now, limit=self.settings.batch_size,
                                            lease=timedelta(seconds=self.settings.release_lease_seconds))
        except RedisError as exc:
            log.warning("could not look for held deliveries: %s", exc)
            return 0
        for kind, n in claimed.counts.items():
            metrics.HELD.labels(kind).set(n)
        for problem in claimed.problems:
            log.error("%s", problem)
        if not claimed.released:
            return 0
        sent = 0
        for item in claimed.released:
            if item.kind == "digest":
                if not item.deliveries:
                    continue
                sent += self._release_digest(item.member, item.deliveries, now)
                continue
            for delivery in item.deliveries:
                if delivery.deadline is not None and delivery.deadline < now:
                    self._publish(Status.for_delivery(delivery, State.skipped, at=now, reason="stale",
                                                      detail=f"held until past its deadline ({item.kind})"))
                    metrics.SUPPRESSIONS.labels(delivery.channel, "stale").inc()
                    continue
                self._send(delivery)
                self._publish(Status.for_delivery(delivery, State.routed, at=now, reason=item.kind,
                                                  detail=f"released ({item.kind})"))
                sent += 1
        try:
            self.producer.commit_point()
        except ProduceError:
            log.warning("held deliveries not acknowledged by Kafka; they are released again after the lease")
            return 0
        try:
            self.state.held.ack(claimed.released, {r.member: now for r in claimed.released})
        except RedisError as exc:
            log.warning("released deliveries not removed from Redis (%s); the lease expiry re-releases them "
                        "with the same ids", exc)
        return sent

    def _release_digest(self, bucket: str, items: list[Delivery], now: datetime) -> int:
        rule_name = items[0].rule
        rule = next((r for r in self.rules.rules if r.name == rule_name), None)
        template = rule.digest_template if rule is not None else "digest"
        live = [d for d in items if d.deadline is None or d.deadline >= now]
        for d in items:
            if d not in live:
                self._publish(Status.for_delivery(d, State.skipped, at=now, reason="stale",
                                                  detail="held in a digest past its deadline"))
                metrics.SUPPRESSIONS.labels(d.channel, "stale").inc()
        if not live:
            return 0
        try:
            digest = build_digest(bucket, live, self.renderer, template, now, self.deadline)
        except TemplateError as exc:
            log.error("digest %s cannot be rendered, its %d item(s) go out one by one: %s", bucket, len(live), exc)
            for d in live:
                self._send(d)
                self._publish(Status.for_delivery(d, State.routed, at=now, reason="digest",
                                                  detail=f"digest template failed: {exc}"[:500]))
            return len(live)
        self._send(digest)
        for d in live:
            self._publish(Status.for_delivery(d, State.routed, at=now, reason="digest",
                                              detail=f"sent in digest {digest.delivery_id}"))
        self._publish(Status.for_delivery(digest, State.routed, at=now, reason="digest",
                                          detail=f"{len(live)} item(s)"))
        return 1

    def _publish(self, status: Status) -> None:
        self.publish_status(status)
        metrics.ROUTER_DECISIONS.labels(status.state.value, status.reason or "").inc()
