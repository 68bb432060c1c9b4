"""The consume loop's pause-and-resume machinery on a real broker.

A handler that raises RetryBatch makes the loop pause every partition and keep
polling (never sleeping); ``hold`` pauses one partition until a given time while
the others flow; nothing is skipped or processed out of order.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, Message, Producer, TopicPartition

from consumers.kafka import BatchProducer, ProduceError, coordinates, next_offsets
from consumers.loop import YOUNG_GC_THRESHOLD, ConsumerLoop, RetryBatch
from consumers.settings import Settings
from consumers.topics import create_topics
from devstack.infra import free_port
from schemas import Catalog

pytestmark = pytest.mark.integration


class Recorder(ConsumerLoop):
    role = "test"

    def __init__(self, settings: Settings, topic: str, fail_batches: int = 0,
                 hold_first: dict[int, float] | None = None) -> None:
        super().__init__(settings, Catalog.load(), settings.group("loop"), [topic])
        self.fail_batches = fail_batches
        self.hold_first = dict(hold_first or {})  # partition -> seconds to hold its first record
        self.seen: list[tuple[int, int, float]] = []  # (partition, offset, monotonic time)
        self.polls_while_failing = 0
        self.lock = threading.Lock()

    def poll_once(self) -> None:
        if self.fail_batches <= 0 and self._hold_all_until > time.monotonic():
            self.polls_while_failing += 1
        super().poll_once()

    def handle(self, messages: list[Message]) -> list[TopicPartition]:
        if self.fail_batches > 0:
            self.fail_batches -= 1
            raise RetryBatch("test", backoff=0.3)
        done: list[Message] = []
        blocked: set[int] = set()
        for m in messages:
            _, partition, offset = coordinates(m)
            if partition in blocked:
                continue
            wait = self.hold_first.pop(partition, None)
            if wait is not None:
                self.hold(m.topic() or "", partition, offset, time.monotonic() + wait)
                blocked.add(partition)
                continue
            with self.lock:
                self.seen.append((partition, offset, time.monotonic()))
            done.append(m)
        return next_offsets(done)


@pytest.fixture
def topic_settings(kafka_bootstrap: str, unique: str) -> Iterator[tuple[Settings, str]]:
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"t{unique}.", group_prefix=f"g{unique}-",
                        partitions=2, poll_timeout=0.2, metrics_port=-1, redis_url="redis://127.0.0.1:1/0")
    create_topics(settings, [])
    yield settings, settings.input_topic


def produce(settings: Settings, topic: str, per_partition: int) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(per_partition):
        for p in (0, 1):
            producer.produce(topic, value=f"{p}-{i}".encode(), partition=p)
    assert producer.flush(30) == 0


@contextmanager
def running(loop: ConsumerLoop, wake: tuple[Producer, str] | None = None) -> Iterator[threading.Thread]:
    """Run ``loop`` in a thread for the ``with`` block, then stop it and wait for the thread.

    ``wake`` (a producer and the topic): with an hour-long poll timeout the stop is only seen
    after the next record, so one is sent.
    """
    thread = threading.Thread(target=loop.run, kwargs={"health_port": -1}, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        loop.request_stop()
        if wake is not None:
            producer, topic = wake
            producer.produce(topic, value=b"wake", partition=1)
            producer.flush(30)
        thread.join(60)


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def committed(settings: Settings, topic: str, group: str) -> list[int]:
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        return [tp.offset for tp in probe.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)]
    finally:
        probe.close()


def test_a_failing_batch_pauses_fetching_keeps_polling_and_is_processed_once(
        topic_settings: tuple[Settings, str]) -> None:
    settings, topic = topic_settings
    produce(settings, topic, 20)
    loop = Recorder(settings, topic, fail_batches=3)
    with running(loop):
        wait_for(lambda: len(loop.seen) == 40)
        time.sleep(1.0)
        assert len(loop.seen) == 40
        for p in (0, 1):
            assert [o for part, o, _ in loop.seen if part == p] == list(range(20))
        # Between failures the loop kept polling (paused, not asleep).
        assert loop.polls_while_failing >= 2
    assert committed(settings, topic, loop.group) == [20, 20]


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_heap_built_at_start_is_frozen_after_collecting_its_garbage(
        topic_settings: tuple[Settings, str]) -> None:
    settings, topic = topic_settings
    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    garbage = _Cycle()
    gone = weakref.ref(garbage)
    del garbage  # only a collection frees a reference cycle
    gc.disable()  # no automatic collection may free it before the loop's
    loop = Recorder(settings, topic)
    try:
        assert gc.get_freeze_count() == 0 and gone() is not None
        with running(loop):
            wait_for(lambda: gc.get_freeze_count() > 0)
            assert gone() is None  # collected before the freeze, not frozen with the rest
            # young collections spaced out; the older generations keep their thresholds
            assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 10, 10)
    finally:
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_holding_one_partition_lets_the_other_flow(topic_settings: tuple[Settings, str]) -> None:
    settings, topic = topic_settings
    produce(settings, topic, 10)
    loop = Recorder(settings, topic, hold_first={0: 3.0})
    started = time.monotonic()
    with running(loop):
        wait_for(lambda: len(loop.seen) == 20)
        first_of = {p: min(t for part, _, t in loop.seen if part == p) for p in (0, 1)}
        # partition 1 was served while partition 0 waited for its head record to be due
        assert first_of[1] < first_of[0]
        assert first_of[0] - started >= 3.0
        assert [o for part, o, _ in loop.seen if part == 0] == list(range(10))
        assert loop.held() == {}
    assert committed(settings, topic, loop.group) == [10, 10]


@pytest.mark.timeout(120)
def test_a_poll_hands_on_what_has_arrived_without_waiting_for_a_full_batch(
        topic_settings: tuple[Settings, str]) -> None:
    # With an hour-long poll timeout and a batch of 500, three records must still be
    # handled at once (consume(500, timeout) alone would sit out the timeout).
    settings, topic = topic_settings
    settings = settings.model_copy(update={"poll_timeout": 3600.0, "batch_size": 500})
    loop = Recorder(settings, topic)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    with running(loop, wake=(producer, topic)) as thread:
        wait_for(lambda: loop.health.ready(), timeout=60)
        for p in (0, 1, 0):
            producer.produce(topic, value=b"x", partition=p)
        assert producer.flush(30) == 0
        wait_for(lambda: len(loop.seen) == 3, timeout=60)
    assert not thread.is_alive()


class Batches(Recorder):
    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(settings, topic)
        self.sizes: list[int] = []

    def handle(self, messages: list[Message]) -> list[TopicPartition]:
        self.sizes.append(len(messages))
        return super().handle(messages)


def test_a_batch_linger_gathers_what_arrives_soon_after_the_first_record(
        topic_settings: tuple[Settings, str]) -> None:
    settings, topic = topic_settings
    settings = settings.model_copy(update={"poll_timeout": 3600.0, "batch_size": 500, "batch_linger": 3.0})
    loop = Batches(settings, topic)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    with running(loop, wake=(producer, topic)) as thread:
        wait_for(lambda: loop.health.ready(), timeout=60)
        producer.produce(topic, value=b"first", partition=0)
        assert producer.flush(30) == 0
        time.sleep(0.3)  # well inside the linger
        producer.produce(topic, value=b"second", partition=1)
        assert producer.flush(30) == 0
        wait_for(lambda: len(loop.seen) == 2, timeout=60)
        assert loop.sizes == [2]  # one batch, handed on after the linger, not the hour-long poll timeout
    assert not thread.is_alive()


class KeepBack(Recorder):
    """Returns no offsets from ``handle``; hands them over in ``flush_pending`` (when allowed)."""

    def __init__(self, settings: Settings, topic: str, flush_when_idle: bool) -> None:
        super().__init__(settings, topic)
        self.flush_when_idle = flush_when_idle
        self.kept: list[TopicPartition] = []
        self.flushes = 0

    def handle(self, messages: list[Message]) -> list[TopicPartition]:
        self.kept += super().handle(messages)
        return []

    def flush_pending(self) -> list[TopicPartition]:
        if not self.flush_when_idle and not self.stop_event.is_set():
            return []
        self.flushes += 1
        kept, self.kept = self.kept, []
        return kept


def test_offsets_kept_back_are_stored_after_an_empty_poll(topic_settings: tuple[Settings, str]) -> None:
    settings, topic = topic_settings
    produce(settings, topic, 10)
    loop = KeepBack(settings, topic, flush_when_idle=True)
    with running(loop):
        wait_for(lambda: len(loop.seen) == 20)
        wait_for(lambda: committed(settings, topic, loop.group) == [10, 10])  # while it runs: auto-commit
        assert loop.flushes >= 1


def test_offsets_kept_back_are_stored_at_shutdown(topic_settings: tuple[Settings, str]) -> None:
    settings, topic = topic_settings
    produce(settings, topic, 10)
    loop = KeepBack(settings, topic, flush_when_idle=False)
    with running(loop) as thread:
        wait_for(lambda: len(loop.seen) == 20)
        time.sleep(1.5)  # past an auto-commit interval: nothing was stored to commit
        assert committed(settings, topic, loop.group) == [OFFSET_INVALID, OFFSET_INVALID]
    assert not thread.is_alive()
    assert committed(settings, topic, loop.group) == [10, 10]


class Forwarder(ConsumerLoop):
    """Copies each record to another topic and stores its offset once the copy is acknowledged."""

    role = "test"

    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(settings, Catalog.load(), settings.group("loop"), [topic])
        self.failed_batches = 0

    def handle(self, messages: list[Message]) -> list[TopicPartition]:
        for m in messages:
            self.producer.send(f"{m.topic()}.copy", m.value() or b"")
        try:
            self.producer.commit_point()
        except ProduceError as exc:
            self.failed_batches += 1
            raise RetryBatch("produce", backoff=0.3) from exc
        return next_offsets(messages)


@pytest.mark.timeout(120)
def test_a_consumer_stopped_with_its_output_unacknowledged_stores_nothing_and_its_input_is_read_again(
        topic_settings: tuple[Settings, str]) -> None:
    settings, topic = topic_settings
    settings = settings.model_copy(update={"shutdown_timeout": 1.0})
    produce(settings, topic, 5)
    loop = Forwarder(settings, topic)
    # Its output goes to a port nobody listens on: nothing it produces is ever acknowledged.
    unreachable = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    loop.producer = BatchProducer.create(unreachable)
    loop.producer.flush_timeout = 0.5
    with running(loop) as thread:
        wait_for(lambda: loop.failed_batches >= 2)
    assert not thread.is_alive()  # the close dropped the unacknowledged copies instead of waiting for them
    assert committed(settings, topic, loop.group) == [OFFSET_INVALID, OFFSET_INVALID]

    again = Recorder(settings, topic)  # the same group: the next owner of the partitions
    with running(again):
        wait_for(lambda: len(again.seen) == 10)
    assert sorted((part, offset) for part, offset, _ in again.seen) == [(p, o) for p in (0, 1) for o in range(5)]
