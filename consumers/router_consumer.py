"""The router's consumer: domain events in, Delivery records and status events out.

Per batch: decode every record (bad ones are dead-lettered at once), one Redis
round trip for dedup claims and recipients, the pure decision per event, then
produce deliveries, statuses and dead letters and wait for Kafka to
acknowledge all of them before the input offsets are stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Message, TopicPartition
from redis import Redis
from redis.exceptions import RedisError

from consumers import metrics
from consumers.kafka import ProduceError, coordinates, headers_of, next_offsets
from consumers.loop import ConsumerLoop, RetryBatch
from consumers.settings import Settings
from router.decision import Event, route
from router.rules import RuleSet
from router.state import RouterState
from router.templates import Renderer
from schemas import Catalog, CloudEvent, State, Status
from schemas.errors import InputError
from schemas.models import event_key

log = logging.getLogger(__name__)


@dataclass
class _Parsed:
    msg: Message
    event: Event
    key: str
    owner: str


def decode_event(catalog: Catalog, msg: Message) -> Event:
    """CloudEvents headers plus an Avro body that matches the declared type, or an InputError."""
    ce = CloudEvent.from_headers(headers_of(msg))
    schema, data = catalog.decode(msg.value(), reader=catalog.for_type(ce.type))
    return Event(ce=ce, data=data, category=schema.category)


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
                 redis: Redis, **kwargs: Any) -> None:
        super().__init__(settings, catalog, settings.group("router"), [settings.input_topic], **kwargs)
        self.rules = rules
        self.renderer = renderer
        self.state = RouterState(redis, settings.dedup_ttl_seconds)
        self.deadline = timedelta(seconds=settings.delivery_deadline_seconds)

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

        refs: set[tuple[str, str]] = {
            (p.event.ce.tenant, p.event.ce.subject) for p in parsed
            if p.event.ce.subject is not None and self.rules.for_type(p.event.ce.type)
        }
        try:
            snapshot = self.state.load([(p.key, p.owner) for p in parsed], refs)
        except RedisError as exc:
            raise RetryBatch("redis", backoff=0.5) from exc

        now = datetime.now(UTC)
        for p in parsed:
            ce = p.event.ce
            ref = (ce.tenant, ce.subject or "")
            try:
                decision = route(
                    p.event, self.rules.for_type(ce.type), snapshot.claim(p.key, p.owner),
                    snapshot.recipients.get(ref), self.renderer, now, self.deadline,
                    snapshot.problems.get(ref),
                )
            except InputError as exc:
                dead.append((p.msg, exc))
                release.append((p.key, p.owner))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must not stall the partition
                dead.append((p.msg, _unexpected(exc)))
                release.append((p.key, p.owner))
                continue
            for delivery in decision.deliveries:
                self.producer.send(
                    self.settings.deliver_topic(delivery.channel),
                    delivery.encode(self.catalog),
                    key=f"{delivery.tenant}:{delivery.recipient_id}",
                    headers=[("tidings_delivery_id", delivery.delivery_id.encode())],
                )
            for status in decision.statuses:
                self.publish_status(status)
                self.count(metrics.ROUTER_DECISIONS, status.state.value, status.reason or "")

        for msg, error in dead:
            self._dead_letter(msg, error)
        try:
            self.producer.commit_point()
        except ProduceError as err:
            raise RetryBatch("produce", backoff=1.0) from err
        if release:
            try:
                self.state.release(release)
            except RedisError:
                log.warning("could not release %d dedup claim(s); a replay may be seen as duplicate",
                            len(release))
        return next_offsets(messages)

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


