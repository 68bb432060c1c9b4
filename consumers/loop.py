"""The consume loop every Tidings process runs.

One thread polls Kafka in batches and hands each batch to ``handle``. The
handler returns the offsets that may be stored (those whose outcome is
durable); the loop stores them, and librdkafka's auto-commit commits what was
stored. If the handler raises :class:`RetryBatch` (Redis unreachable, Kafka
refusing our output), the batch is rewound (each partition seeks back to its
first record) and every assigned partition is paused for a backoff that doubles
up to 30 s: the consumer stops fetching, keeps polling (so the group keeps it
and rebalances are served), then resumes and processes the batch again. Nothing
is skipped and no offset moves past an unprocessed record.

A handler may keep a batch's offsets back while part of its work is pending
(the router sends a batch's Redis writes with the next batch's round trip).
The loop asks it to finish (:meth:`ConsumerLoop.flush_pending`) after a poll
that brought nothing, before partitions are revoked and before the consumer
closes, and stores what that returns; partitions lost or abandoned have their
kept-back offsets dropped (:meth:`ConsumerLoop.forget_pending`), so their next
owner processes those records again.

Handlers can also hold one partition until a given time (:meth:`ConsumerLoop.hold`):
the retry tiers use it when the head record of a retry topic is not yet due.
The poll loop never sleeps; a held partition is paused and resumed when due.
Holds are forgotten when partitions are assigned, revoked or lost.

Shutdown (SIGTERM or SIGINT): stop fetching, let the current batch finish,
store its offsets, close the consumer (which commits the stored offsets and
leaves the group), flush the producer. The Kubernetes grace period must exceed
``TIDINGS_SHUTDOWN_TIMEOUT`` plus one batch.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter as PromCounter

from consumers import metrics
from consumers.health import Health, HealthServer
from consumers.kafka import BatchProducer, batch_starts, consumer_config, dlq_headers
from consumers.settings import Settings
from schemas import Catalog, Status
from schemas.models import event_key

log = logging.getLogger(__name__)


YOUNG_GC_THRESHOLD = 20_000
"""Allocations (net of frees) of container objects between two young collections; Python's default is 700."""


def settle_heap() -> None:
    """Move everything built at start (modules, schemas, compiled templates and rules, clients)
    out of the garbage collector's sight, and collect the young generation less often.

    A full collection walks every tracked object, and a started process holds a few hundred
    thousand that live until exit: each full collection stalled the consume loop for 50 to 65 ms,
    a latency spike every few seconds at 1,000 events/s. Frozen objects are never collected; the
    objects of one batch still are, young, as before.

    Routing one event allocates a few hundred container objects (the decoded record, contexts,
    models, status events), nearly all freed by reference counting before the batch ends. At
    Python's default threshold a young collection ran every few events and walked the batch's
    live objects again each time: 6 to 14% of the router's CPU per event (B1 in
    docs/performance.md). The larger threshold leaves the old generations' thresholds (10, 10)
    as they are, so a full collection still comes after 100 young ones.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


class RetryBatch(Exception):
    """Raised by a handler: rewind this batch and process it again after ``backoff``."""

    def __init__(self, cause: str, backoff: float = 1.0) -> None:
        super().__init__(cause)
        self.cause = cause
        self.backoff = backoff


class ConsumerLoop(ABC):
    role: str = "consumer"

    def __init__(self, settings: Settings, catalog: Catalog, group: str, topics: Sequence[str],
                 consumer_overrides: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.group = group
        self.topics = list(topics)
        self.health = Health()
        self.stop_event = threading.Event()
        self.producer = BatchProducer.create(settings)
        self._failures = 0
        overrides = {"statistics.interval.ms": 5000, "stats_cb": self._on_stats,
                     "error_cb": self._on_error, **(consumer_overrides or {})}
        self._consumer_config = consumer_config(settings, group, **overrides)
        self.consumer = Consumer(self._consumer_config)
        self.lag = metrics.PartitionLag(group)
        # Paused partitions: (topic, partition) -> (offset to resume from, monotonic resume time).
        self._held: dict[tuple[str, int], tuple[int, float]] = {}
        self._hold_all_until = 0.0  # while in the future, every partition that delivers records is held
        self._tally: Counter[tuple[PromCounter, tuple[str, ...]]] = Counter()

    def count(self, metric: PromCounter, *labels: str) -> None:
        """Count an outcome once the current batch is committed (not if it is retried).

        Counts are summed per label set and applied once per batch, so the hot path
        does no per-record label lookups.
        """
        self._tally[(metric, labels)] += 1

    def publish_status(self, status: Status) -> None:
        """Queue a status event; it is durable at the batch's commit point."""
        key = status.delivery_id or event_key(status.event_source, status.event_id)
        self.producer.send(self.settings.status_topic, status.encode(self.catalog), key=key)

    def dead_letter(self, msg: Message, topic: str, reason: str, message: str, attempts: int,
                    first_failure: str | None = None) -> None:
        """Queue the original record, unchanged, on ``topic`` with the documented DLQ headers."""
        self.producer.send(topic, msg.value() or b"", key=msg.key(),
                           headers=dlq_headers(msg, group=self.group, reason=reason, message=message,
                                               attempts=attempts, first_failure=first_failure))
        self.count(metrics.DLQ_RECORDS, topic, reason)

    # -- hooks --------------------------------------------------------------

    @abstractmethod
    def handle(self, messages: list[Message]) -> list[TopicPartition]:
        """Process one batch; return the offsets to store. Raise RetryBatch to rewind."""

    def on_close(self) -> None:  # noqa: B027 - optional hook
        """Release the handler's own resources."""

    def flush_pending(self) -> list[TopicPartition]:
        """Finish work ``handle`` left pending and return the offsets that may now be stored.

        Called after a poll that brought no records, before partitions are revoked and before
        the consumer closes. A handler that returns every batch's offsets has nothing pending.
        """
        return []

    def forget_pending(self, partitions: list[TopicPartition] | None = None) -> None:  # noqa: B027 - optional hook
        """``partitions`` (``None``: all) are no longer ours: drop offsets kept back for them."""

    # -- partition holds -----------------------------------------------------

    def hold(self, topic: str, partition: int, offset: int, until: float) -> None:
        """Pause ``topic[partition]`` and fetch it again from ``offset`` at monotonic time ``until``."""
        key = (topic, partition)
        earlier = self._held.get(key)
        if earlier is not None:
            offset, until = min(offset, earlier[0]), max(until, earlier[1])
        tp = TopicPartition(topic, partition, offset)
        try:
            self.consumer.pause([tp])
            self.consumer.seek(tp)
        except KafkaException as exc:  # revoked meanwhile: its new owner reads it from the commit
            log.info("%s: hold of %s[%d] skipped: %s", self.group, topic, partition, exc)
            return
        self._held[key] = (offset, until)

    def held(self) -> dict[tuple[str, int], tuple[int, float]]:
        """The partitions on hold (a copy): ``{(topic, partition): (offset, resume time)}``."""
        return dict(self._held)

    def _resume_due(self) -> None:
        now = time.monotonic()
        for key, (offset, until) in list(self._held.items()):
            if until > now or self._hold_all_until > now:
                continue
            del self._held[key]
            tp = TopicPartition(key[0], key[1], offset)
            try:
                self.consumer.resume([tp])
                self.consumer.seek(tp)  # fetch from the held record whatever was queued before the pause
            except KafkaException as exc:
                log.info("%s: resume of %s[%d] skipped: %s", self.group, key[0], key[1], exc)

    def _next_wake(self) -> float:
        """Seconds the next poll may wait: the poll timeout, or less when a hold ends sooner."""
        timeout = self.settings.poll_timeout
        if self._held:
            soonest = max(min(until for _, until in self._held.values()), self._hold_all_until)
            timeout = min(timeout, max(soonest - time.monotonic(), 0.01))
        return timeout

    def _fetch(self, timeout: float) -> list[Message]:
        """Up to a batch of records: those already fetched, or else the first one to arrive within
        ``timeout``, plus what arrives within ``batch_linger`` after it.

        ``consume(n, poll_timeout)`` would wait for n records or the whole poll timeout, adding up
        to half a second to every record's latency whenever fewer than a batch are waiting. Here
        the wait after the first record is the linger (none by default); under load the queue
        holds a full batch and nothing waits.
        """
        size = self.settings.batch_size
        messages = self.consumer.consume(size, 0)
        if not messages:
            first = self.consumer.poll(timeout)
            if first is None:
                return []
            messages = [first]
        linger = self.settings.batch_linger
        if len(messages) < size:
            # Under a steady trickle, handing on each record at once makes every batch a batch of
            # one or two, and the per-batch work (a Redis round trip, a flush) the main cost.
            messages += self.consumer.consume(size - len(messages), linger)
        return messages

    def _forget_holds(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._held.pop((tp.topic, tp.partition), None)

    # -- rebalance and statistics callbacks --------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("%s: assigned %s", self.group, _tps(partitions))
        self.health.on_assigned()
        self.health.connected = True  # an assignment came through the group coordinator
        self.lag.assign((tp.topic, tp.partition) for tp in partitions)
        # A partition that was paused by us, revoked and assigned back starts fresh.
        self._forget_holds(partitions)
        if partitions:
            try:
                consumer.resume(partitions)
            except KafkaException as exc:
                log.debug("%s: resume on assign: %s", self.group, exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called inside poll/consume, so no batch is in flight; what the handler kept
        # pending is finished and stored here (if that fails, the records of the revoked
        # partitions go to their new owner unstored and are processed again). Ask for a
        # commit without waiting: a synchronous commit inside the rebalance callback can
        # block for as long as the coordinator is unreachable
        # (seen with a broker restart). librdkafka also commits stored offsets of
        # removed partitions itself, as auto-commit is on.
        log.info("%s: revoked %s", self.group, _tps(partitions))
        self._store(self.flush_pending())
        self.forget_pending(partitions)
        self._commit_async()
        self._forget_lag(partitions)
        self._forget_holds(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("%s: lost %s (session expired); not committing", self.group, _tps(partitions))
        self.forget_pending()
        self.health.on_lost()
        self._forget_lag(partitions)
        self._forget_holds(partitions)

    def _forget_lag(self, partitions: list[TopicPartition]) -> None:
        self.lag.revoke((tp.topic, tp.partition) for tp in partitions)

    def _on_stats(self, raw: str) -> None:
        try:
            stats = json.loads(raw)
        except ValueError:
            return
        brokers = [b for name, b in stats.get("brokers", {}).items() if not name.startswith("GroupCoordinator")]
        if brokers:
            self.health.connected = any(b.get("state") == "UP" for b in brokers)
        self.lag.update(stats)

    def _on_error(self, err: KafkaError) -> None:
        log.warning("%s: kafka: %s", self.group, err.str())
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.health.connected = False

    # -- the loop -----------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        if not self.stop_event.is_set():
            log.info("%s: stop requested; finishing the current batch", self.group)
        self.stop_event.set()
        self.health.stopping = True

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, health_port: int | None = None) -> None:
        server = None
        port = self.settings.metrics_port if health_port is None else health_port
        if port >= 0:
            try:
                server = HealthServer(self.health, self.settings.metrics_host, port).start()
                log.info("%s: /metrics /healthz /readyz on port %d", self.group, server.port)
            except OSError as exc:
                log.warning("%s: health server not started on port %d: %s", self.group, port, exc)
        self._await_topics()
        self.consumer.subscribe(self.topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        settle_heap()
        try:
            while not self.stop_event.is_set():
                self.poll_once()
                self._rejoin_if_stuck()
        finally:
            self._shutdown()
            if server:
                server.stop()

    def poll_once(self) -> None:
        self.health.tick()
        self._resume_due()
        messages = self._fetch(self._next_wake())
        self.health.tick()
        if messages:
            self.health.connected = True
        good = []
        for m in messages:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("%s: consume error: %s", self.group, err.str())
        good = self._drop_held(good)
        if not good:
            if not messages and self._hold_all_until <= time.monotonic():
                self._store(self.flush_pending())
            return
        for topic, n in Counter(m.topic() or "" for m in good).items():
            metrics.EVENTS_CONSUMED.labels(topic).inc(n)
        started = time.perf_counter()
        self._tally.clear()
        try:
            offsets = self.handle(good)
        except RetryBatch as exc:
            self._failures += 1
            metrics.BATCH_RETRIES.labels(self.role, exc.cause).inc()
            backoff = min(exc.backoff * (2 ** min(self._failures - 1, 5)), 30.0)
            log.warning("%s: batch of %d will be retried in %.1fs: %s; fetching paused meanwhile",
                        self.group, len(good), backoff, exc)
            self._hold_everything(good, backoff)
            return
        self._failures = 0
        self._store(offsets)
        for (metric, labels), n in self._tally.items():
            metric.labels(*labels).inc(n)
        self._tally.clear()
        metrics.BATCH_SECONDS.labels(self.role).observe(time.perf_counter() - started)

    def _store(self, offsets: list[TopicPartition]) -> None:
        if not offsets:
            return
        try:
            self.consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            # The partitions were taken away while the batch ran (a rebalance, or a
            # batch that outlived max.poll.interval.ms). Their new owner reads the
            # records again; dedup claims and sent marks make that harmless.
            log.warning("%s: offsets not stored, partitions no longer ours: %s", self.group, exc)

    def _drop_held(self, messages: list[Message]) -> list[Message]:
        """Leave out records of held partitions (fetched before the pause took effect);
        while everything is on hold, hold the partitions these records came from too."""
        if self._hold_all_until > time.monotonic():
            firsts = batch_starts(messages)
            for tp in firsts:
                if (tp.topic, tp.partition) not in self._held:
                    self.hold(tp.topic, tp.partition, tp.offset, self._hold_all_until)
            return []
        if not self._held:
            return messages
        return [m for m in messages if (m.topic(), m.partition()) not in self._held]

    def _hold_everything(self, batch: list[Message], seconds: float) -> None:
        """Rewind ``batch`` and pause every assigned partition for ``seconds``."""
        until = time.monotonic() + seconds
        self._hold_all_until = until
        for tp in batch_starts(batch):
            self.hold(tp.topic, tp.partition, tp.offset, until)
        try:
            assigned = self.consumer.assignment()
            positions = self.consumer.position(assigned) if assigned else []
        except KafkaException as exc:
            log.info("%s: assignment unknown while pausing: %s", self.group, exc)
            positions = []
        for tp in positions:
            if (tp.topic, tp.partition) not in self._held and tp.offset >= 0:
                self.hold(tp.topic, tp.partition, tp.offset, until)
        # A partition without a position has fetched nothing yet; if it delivers records
        # before the hold ends, _drop_held holds it then.

    def _await_topics(self, timeout: float = 30.0) -> None:
        """Wait (briefly) until every subscribed topic is in the cluster's metadata.

        A topic created moments ago may not be known yet; subscribing then makes
        librdkafka skip it until its next metadata refresh, minutes later.
        """
        deadline = time.monotonic() + timeout
        missing = list(self.topics)
        while not self.stop_event.is_set():
            for topic in list(missing):
                try:
                    found = self.consumer.list_topics(topic, timeout=5).topics.get(topic)
                except KafkaException:
                    continue
                if found is not None and found.error is None:
                    missing.remove(topic)
            if not missing or time.monotonic() > deadline:
                if missing:
                    log.warning("%s: subscribing although %s not in the metadata yet", self.group, ", ".join(missing))
                return
            self.stop_event.wait(0.2)

    REJOIN_AFTER = 60.0
    """Seconds after losing its partitions that a consumer that has not rejoined starts afresh."""

    def _rejoin_if_stuck(self) -> None:
        """Replace the Kafka consumer when the group took our partitions and never gave any back.

        Seen after a broker restart: librdkafka kept asking a group coordinator that
        never answered. A new client finds the coordinator again; nothing is lost, as
        the lost partitions were not ours to commit and nothing of theirs is stored.
        """
        lost = self.health.lost_since
        if lost is None or self.health.clock() - lost < self.REJOIN_AFTER:
            return
        log.warning("%s: partitions lost %.0fs ago and the group not rejoined; starting a new consumer",
                    self.group, self.health.clock() - lost)
        old = self.consumer
        self.forget_pending()  # before the old client's close can call back into the handler
        closer = threading.Thread(target=_close_quietly, args=(old,), daemon=True)
        closer.start()
        closer.join(10.0)  # a close that hangs on an unreachable coordinator is left behind
        self._held.clear()
        self._hold_all_until = 0.0
        self.consumer = Consumer(self._consumer_config)
        self.consumer.subscribe(self.topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.health.lost_since = self.health.clock()  # give the new client its own time to join
        metrics.CONSUMER_RESTARTS.labels(self.role).inc()

    def _commit_async(self) -> None:
        try:
            self.consumer.commit(asynchronous=True)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("%s: commit failed: %s", self.group, exc)

    def _shutdown(self) -> None:
        log.info("%s: shutting down", self.group)
        # close() revokes the assignment, commits the stored offsets (auto-commit is on)
        # and leaves the group. Work the handler left pending is finished first; if that
        # fails nothing more is stored and the next owner processes those records again.
        self._store(self.flush_pending())
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("%s: close: %s", self.group, exc)
        self.lag.clear()  # a stopped consumer reports no partitions
        self.producer.close(self.settings.shutdown_timeout)
        self.on_close()
        log.info("%s: stopped", self.group)


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as exc:
        log.info("closing the replaced consumer: %s", exc)


def _tps(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
