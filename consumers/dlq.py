"""Dead-letter topics: read them, explain a record, replay records after a fix.

::

    tidings dlq list CHANNEL|router [--reason R] [--since T] [--limit N]
    tidings dlq show CHANNEL|router PARTITION:OFFSET|ID
    tidings dlq replay CHANNEL|router [--reason R] [--since T] [--limit N] [--id ID] [--dry-run]

A DLQ is append-only: nothing here deletes or rewrites a record. Replay
produces a copy of each selected record to the topic it should be processed
from (a channel's main delivery topic; the router's input topic) with the DLQ
and retry headers removed, so attempts start again at one, and a
``tidings_replayed_from`` header naming the DLQ coordinates. Each replayed
record gets a ``retrying`` status event with reason ``replayed`` on
``tidings.status``. Replaying twice is harmless: a delivery that was sent in
the meantime has a sent mark and is skipped; a router event routed by the
first replay is seen as a duplicate by the second.

Reading uses no consumer group (nothing is committed): the topic is read
from its start to the end offsets taken when the command began.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from consumers.kafka import (
    DLQ_ATTEMPTS,
    DLQ_FIRST_FAILURE,
    DLQ_GROUP,
    DLQ_HEADERS,
    DLQ_LAST_FAILURE,
    DLQ_MESSAGE,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TIMESTAMP,
    DLQ_TOPIC,
    BatchProducer,
    client_config,
    coordinates,
    headers_of,
)
from consumers.retry import strip_retry_headers
from consumers.settings import Settings
from schemas import Catalog, CloudEvent, Delivery, State, Status
from schemas.errors import DecodeError, InputError
from schemas.models import event_key

REPLAYED_FROM = "tidings_replayed_from"
ROUTER = "router"
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class DlqRecord:
    """One dead letter: where it sits in the DLQ, its original bytes and its DLQ headers."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def header(self, name: str) -> str:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return ""

    @property
    def where(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return self.header(DLQ_REASON)

    @property
    def last_failure(self) -> datetime | None:
        return parse_time(self.header(DLQ_LAST_FAILURE))

    @property
    def ident(self) -> str:
        """The delivery id (channel DLQ) or the CloudEvents id (router DLQ), if any."""
        return self.header("tidings_delivery_id") or self.header("ce_id")

    def summary(self) -> str:
        last = self.header(DLQ_LAST_FAILURE) or "-"
        message = self.header(DLQ_MESSAGE).replace("\n", " ")
        if len(message) > 90:
            message = message[:87] + "..."
        return (f"{self.where:>10}  {last:24}  {self.reason:22}  attempts={self.header(DLQ_ATTEMPTS) or '?':3}"
                f"  {self.ident or '-'}  {message}")


def parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an RFC 3339 time, or a duration back from now (``30m``, ``2h``, ``7d``)."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(text.strip())
    if m:
        return now - timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])
    parsed = parse_time(text.strip())
    if parsed is None:
        raise InputError(f"--since {text!r}: give an RFC 3339 time (2026-01-05T12:00:00Z) or a duration (30m, 2h, 7d)")
    return parsed


def dlq_topic(settings: Settings, target: str) -> str:
    return settings.router_dlq_topic if target == ROUTER else settings.channel_dlq_topic(target)


def read(settings: Settings, topic: str, timeout: float = 60.0) -> Iterator[DlqRecord]:
    """Every record of ``topic`` up to its end offsets at the start, in partition and offset order."""
    consumer = Consumer({**client_config(settings), "group.id": f"tidings-dlq-cli-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            raise InputError(f"no topic {topic!r} (run `tidings topics create`, or check the channel name)")
        ends: dict[int, int] = {}
        for pid in sorted(info.partitions):
            low, high = watermarks(consumer, TopicPartition(topic, pid))
            if high > low:
                ends[pid] = high
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending: dict[int, list[DlqRecord]] = {p: [] for p in ends}
        deadline = time.monotonic() + timeout
        left = set(ends)
        while left:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took longer than {timeout:.0f}s")
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                _, partition, offset = coordinates(msg)
                if partition not in left or offset >= ends[partition]:
                    continue
                key = msg.key()
                pending[partition].append(DlqRecord(topic, partition, offset, key if isinstance(key, bytes) else None,
                                                    msg.value() or b"", headers_of(msg)))
                if offset + 1 >= ends[partition]:
                    left.discard(partition)
        for p in sorted(pending):
            yield from pending[p]
    finally:
        consumer.close()


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float = 15.0) -> tuple[int, int]:
    """Low and high offsets, retried while the partition has no leader yet (a topic just created)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=5)
            return int(low), int(high)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def select(records: Iterator[DlqRecord], *, reason: str | None = None, since: datetime | None = None,
           limit: int | None = None, ids: Sequence[str] = ()) -> list[DlqRecord]:
    out: list[DlqRecord] = []
    for r in records:
        if reason and r.reason != reason:
            continue
        if since is not None:
            last = r.last_failure
            if last is None or last < since:
                continue
        if ids and r.ident not in ids and r.where not in ids:
            continue
        out.append(r)
        if limit is not None and len(out) >= limit:
            break
    return out


def describe(record: DlqRecord, catalog: Catalog) -> str:
    """Every DLQ header and what the value holds, for ``tidings dlq show``."""
    lines = [f"{record.topic} {record.where}"]
    names = {DLQ_REASON: "reason", DLQ_MESSAGE: "message", DLQ_TOPIC: "original topic",
             DLQ_PARTITION: "original partition", DLQ_OFFSET: "original offset",
             DLQ_TIMESTAMP: "original timestamp (ms)", DLQ_GROUP: "consumer group", DLQ_ATTEMPTS: "attempts",
             DLQ_FIRST_FAILURE: "first failure", DLQ_LAST_FAILURE: "last failure"}
    for header, label in names.items():
        lines.append(f"  {label:24} {record.header(header)}")
    others = [(k, v) for k, v in record.headers if k not in DLQ_HEADERS]
    if others:
        lines.append("  headers:")
        lines.extend(f"    {k} = {v.decode('utf-8', 'replace')[:200]}" for k, v in others)
    if record.key is not None:
        lines.append(f"  key                      {record.key.decode('utf-8', 'replace')}")
    try:
        d = Delivery.decode(catalog, record.value)
        lines.append(f"  delivery                 {d.delivery_id} {d.channel}->{d.recipient_id} "
                     f"rule={d.rule} event={d.event_source}/{d.event_id} ({d.event_type})")
        lines.append(f"  subject                  {d.subject}")
    except DecodeError:
        lines.append(f"  value                    {len(record.value)} bytes (not a Delivery record)")
    return "\n".join(lines)


@dataclass
class ReplayReport:
    selected: int = 0
    replayed: int = 0
    statuses: int = 0
    targets: dict[str, int] = field(default_factory=dict)


def replay_target(settings: Settings, target: str, record: DlqRecord) -> str:
    """Where a dead letter is processed again: the channel's main topic, or the router's input topic."""
    if target == ROUTER:
        return record.header(DLQ_TOPIC) or settings.input_topic
    return settings.deliver_topic(target)


def replay_headers(record: DlqRecord) -> list[tuple[str, bytes]]:
    kept = [(k, v) for k, v in strip_retry_headers(record.headers) if k not in DLQ_HEADERS and k != REPLAYED_FROM]
    return [*kept, (REPLAYED_FROM, f"{record.topic}:{record.partition}:{record.offset}".encode())]


def replay_status(catalog: Catalog, target: str, record: DlqRecord) -> Status | None:
    detail = f"replayed from {record.topic} {record.where} (was {record.reason})"
    if target != ROUTER:
        try:
            d = Delivery.decode(catalog, record.value)
        except DecodeError:
            return None
        return Status.for_delivery(d, State.retrying, reason="replayed", detail=detail, attempt=0)
    try:
        ce = CloudEvent.from_headers(record.headers)
    except InputError:
        return None  # no identity to report against; the replayed record carries tidings_replayed_from
    return Status(state=State.retrying, event_id=ce.id, event_source=ce.source, event_type=ce.type,
                  reason="replayed", detail=detail)


def replay(settings: Settings, target: str, records: Sequence[DlqRecord], *, dry_run: bool = False,
           catalog: Catalog | None = None, progress: TextIO | None = None,
           producer_factory: Callable[[Settings], BatchProducer] = BatchProducer.create) -> ReplayReport:
    """Produce each record to its replay target (unless ``dry_run``) with a status event each."""
    catalog = catalog or Catalog.load()
    report = ReplayReport(selected=len(records))
    for r in records:
        dest = replay_target(settings, target, r)
        report.targets[dest] = report.targets.get(dest, 0) + 1
    if dry_run or not records:
        return report
    producer = producer_factory(settings)
    step = max(1, min(1000, len(records) // 20))
    for n, r in enumerate(records, 1):
        producer.send(replay_target(settings, target, r), r.value, key=r.key, headers=replay_headers(r))
        status = replay_status(catalog, target, r)
        if status is not None:
            key = status.delivery_id or event_key(status.event_source, status.event_id)
            producer.send(settings.status_topic, status.encode(catalog), key=key)
            report.statuses += 1
        if n % step == 0 or n == len(records):
            producer.commit_point()
            report.replayed = n
            if progress is not None:
                print(f"replayed {n}/{len(records)}", file=progress, flush=True)
    producer.close()
    return report
