"""Kafka clients configured the one way Tidings uses them, and the DLQ record format.

Producers are idempotent with ``acks=all``; every produce is checked through
its delivery report before the input offsets are stored. Consumers use the
cooperative-sticky assignor, never auto-store offsets (we store them after the
outcome is durable) and auto-commit what was stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumers.settings import Settings

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# DLQ headers (documented in docs/operations.md); values are UTF-8 text.
DLQ_REASON = "tidings_dlq_reason"
DLQ_MESSAGE = "tidings_dlq_message"
DLQ_TOPIC = "tidings_dlq_original_topic"
DLQ_PARTITION = "tidings_dlq_original_partition"
DLQ_OFFSET = "tidings_dlq_original_offset"
DLQ_TIMESTAMP = "tidings_dlq_original_timestamp"
DLQ_GROUP = "tidings_dlq_consumer_group"
DLQ_ATTEMPTS = "tidings_dlq_attempts"
DLQ_FIRST_FAILURE = "tidings_dlq_first_failure"
DLQ_LAST_FAILURE = "tidings_dlq_last_failure"
DLQ_HEADERS = (
    DLQ_REASON, DLQ_MESSAGE, DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET, DLQ_TIMESTAMP,
    DLQ_GROUP, DLQ_ATTEMPTS, DLQ_FIRST_FAILURE, DLQ_LAST_FAILURE,
)


def client_config(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers plus the pass-through librdkafka options: the base of every client."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    conf.update(settings.librdkafka)
    return conf


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    conf = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "message.timeout.ms": 60000,
        **client_config(settings),
    }
    conf.update(overrides)
    return conf


def consumer_config(settings: Settings, group: str, **overrides: Any) -> dict[str, Any]:
    conf = {
        "group.id": group,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 45000,
        "max.poll.interval.ms": 300000,
        "fetch.wait.max.ms": 100,
        **client_config(settings),
    }
    conf.update(overrides)
    return conf


def coordinates(msg: Message) -> tuple[str, int, int]:
    """``(topic, partition, offset)`` of a consumed record (never None for one without error)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def headers_of(msg: Message) -> list[tuple[str, bytes]]:
    """A record's headers as a list of (name, bytes); values of None become empty bytes."""
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    out: list[tuple[str, bytes]] = []
    for k, v in items:
        out.append((k, v.encode() if isinstance(v, str) else (v or b"")))
    return out


class ProduceError(KafkaException):
    """One or more records of a batch were not acknowledged by Kafka."""


@dataclass
class BatchProducer:
    """A producer whose batch either fully lands (acks=all) or raises.

    ``send`` queues; ``commit_point`` flushes and raises :class:`ProduceError`
    when any record of the batch failed, so the caller does not store offsets.
    """

    producer: Producer
    flush_timeout: float = 30.0
    _errors: list[KafkaError] = field(default_factory=list)
    _closed: bool = False

    @classmethod
    def create(cls, settings: Settings, **overrides: Any) -> BatchProducer:
        errors: list[KafkaError] = []

        def report(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        # Delivery reports for failures only: no Python call per acknowledged record
        # (four per routed event). flush() still waits for every record.
        conf = producer_config(settings, **{"delivery.report.only.error": True, "on_delivery": report},
                               **overrides)
        return cls(Producer(conf), _errors=errors)

    def send(self, topic: str, value: bytes, key: str | bytes | None = None,
             headers: Sequence[tuple[str, str | bytes]] | None = None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key,
                                      headers=headers if headers is None else list(headers))
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: serve callbacks and retry

    def commit_point(self) -> None:
        """Block until every queued record is acknowledged; raise if any failed."""
        remaining = self.producer.flush(self.flush_timeout)
        if remaining or self._errors:
            errors = list(self._errors)
            self._errors.clear()  # the same list the delivery callback appends to
            first = errors[0] if errors else None
            raise ProduceError(
                f"{len(errors)} record(s) failed, {remaining} unacknowledged"
                + (f": {first.str()}" if first else "")
            )

    def close(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` for queued records, then release the client's threads and sockets.

        Returns how many records were still unacknowledged; they are dropped (librdkafka's
        own close would wait for them forever). Callers store offsets only after a
        successful :meth:`commit_point`, so those records belong to a batch whose input is
        read again. Closing twice is harmless.
        """
        if self._closed:
            return 0
        self._closed = True
        remaining: int = self.producer.flush(self.flush_timeout if timeout is None else timeout)
        if remaining:
            log.warning("closing the producer with %d record(s) unacknowledged; their input is read again",
                        remaining)
            self.producer.purge()
            self.producer.flush(0)
        self.producer.close()
        return remaining


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dlq_headers(
    msg: Message,
    *,
    group: str,
    reason: str,
    message: str,
    attempts: int,
    first_failure: str | None = None,
) -> Headers:
    """Original headers (without earlier DLQ headers) plus our text-encoded DLQ headers."""
    original = [(k, v) for k, v in headers_of(msg) if k not in DLQ_HEADERS]
    ts_type, ts = msg.timestamp()
    topic, partition, offset = coordinates(msg)
    last = now_text()
    ours = [
        (DLQ_REASON, reason),
        (DLQ_MESSAGE, message[:2000]),
        (DLQ_TOPIC, topic),
        (DLQ_PARTITION, str(partition)),
        (DLQ_OFFSET, str(offset)),
        (DLQ_TIMESTAMP, str(ts) if ts_type else ""),
        (DLQ_GROUP, group),
        (DLQ_ATTEMPTS, str(attempts)),
        (DLQ_FIRST_FAILURE, first_failure or last),
        (DLQ_LAST_FAILURE, last),
    ]
    return [*original, *((k, v.encode()) for k, v in ours)]


def batch_starts(messages: Sequence[Message]) -> list[TopicPartition]:
    """The first offset of each partition in a batch (to seek back and retry it)."""
    first: dict[tuple[str, int], int] = {}
    for m in messages:
        topic, partition, offset = coordinates(m)
        first.setdefault((topic, partition), offset)
    return [TopicPartition(t, p, o) for (t, p), o in first.items()]


def next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """Offsets to store after a batch: last offset + 1 per partition."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        topic, partition, offset = coordinates(m)
        last[(topic, partition)] = offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def rewind(consumer: Consumer, messages: Sequence[Message]) -> None:
    """Seek every partition of the batch back to its first record so it is fetched again."""
    for tp in batch_starts(messages):
        try:
            consumer.seek(tp)
        except KafkaException as exc:  # partition revoked meanwhile: its new owner re-reads it
            log.info("seek %s[%d] skipped: %s", tp.topic, tp.partition, exc)

