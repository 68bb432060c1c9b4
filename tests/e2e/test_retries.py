"""Retry tiers, Retry-After and the circuit breaker on real Kafka, Redis and HTTP."""

from __future__ import annotations

import time

import pytest

from consumers import metrics
from consumers.kafka import DLQ_ATTEMPTS, DLQ_REASON
from consumers.retry import ATTEMPTS, FIRST_FAILURE
from devstack.sinks import Reply

from .conftest import Pipeline, wait_until
from .test_pipeline import SOURCE, headers_of

pytestmark = pytest.mark.integration
ALERT = {"severity": "critical", "component": "db", "message": "x"}


def alert(pipeline: Pipeline, subject: str, ident: str) -> None:
    pipeline.pub().publish("system.alert", ALERT, subject=subject, source=SOURCE, id=ident)
    pipeline.pub().flush()


def hits(pipeline: Pipeline, path: str) -> list[int | None]:
    return [r["status"] for r in pipeline.web.received() if r["path"] == path]


def value(metric: object, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())  # type: ignore[attr-defined]


def test_a_long_tier_never_holds_up_a_short_one_or_fresh_deliveries(pipeline: Pipeline) -> None:
    pipeline.web.replies["/a"] = Reply(503)
    pipeline.web.replies["/b"] = Reply(503)
    pipeline.recipients({"id": "u-a", "contacts": {"webhook": pipeline.web.url("/a")}},
                        {"id": "u-b", "contacts": {"webhook": pipeline.web.url("/b")}},
                        {"id": "u-c", "contacts": {"webhook": pipeline.web.url("/c")}})
    pipeline.reconfigure(retry_tiers="1s,60s", retry_max_attempts=5)
    pipeline.start_router()
    loop = pipeline.start_channel("webhook")
    alert(pipeline, "u-a", "a-1")
    pipeline.web.wait_for(lambda rs: len(hits(pipeline, "/a")) >= 2, timeout=30)
    # a-1 now waits in the 60 s tier; its partition of that tier is paused, the loop polls on.
    retry60 = pipeline.settings.retry_topic("webhook", "60s")
    wait_until(lambda: any(topic == retry60 for topic, _ in loop.held()), timeout=30, what="a held 60s tier")
    alert(pipeline, "u-c", "c-1")
    pipeline.web.wait_for(lambda rs: hits(pipeline, "/c") == [200], timeout=30)
    alert(pipeline, "u-b", "b-1")
    pipeline.web.wait_for(lambda rs: len(hits(pipeline, "/b")) >= 1, timeout=30)
    pipeline.web.replies["/b"] = Reply(200)
    pipeline.web.wait_for(lambda rs: hits(pipeline, "/b") == [503, 200], timeout=30)
    assert hits(pipeline, "/a") == [503, 503]  # still waiting its minute
    statuses = [s for s in pipeline.read_topic(pipeline.settings.retry_topic("webhook", "1s"), expect=2)]
    first = {headers_of(m)[ATTEMPTS] for m in statuses}
    assert first == {"1"} and all(headers_of(m)[FIRST_FAILURE] for m in statuses)


def test_retry_after_is_honoured_through_the_first_tier_long_enough(pipeline: Pipeline) -> None:
    pipeline.web.replies["/limited"] = Reply(429, {"Retry-After": "3"})
    pipeline.recipients({"id": "u-l", "contacts": {"webhook": pipeline.web.url("/limited")}})
    pipeline.reconfigure(retry_tiers="1s,4s,30s", retry_max_attempts=5)
    before = value(metrics.RETRIES, "webhook", "4s", "rate_limited")
    pipeline.start_router()
    pipeline.start_channel("webhook")
    alert(pipeline, "u-l", "l-1")
    pipeline.web.wait_for(lambda rs: len(hits(pipeline, "/limited")) >= 1, timeout=30)
    limited_at = time.monotonic()
    pipeline.web.replies["/limited"] = Reply(200)
    pipeline.web.wait_for(lambda rs: hits(pipeline, "/limited") == [429, 200], timeout=30)
    assert time.monotonic() - limited_at >= 3.0
    assert value(metrics.RETRIES, "webhook", "4s", "rate_limited") - before == 1


def test_attempts_used_up_dead_letter_with_the_count(pipeline: Pipeline) -> None:
    pipeline.web.replies["/down"] = Reply(503)
    pipeline.recipients({"id": "u-d", "contacts": {"webhook": pipeline.web.url("/down")}})
    pipeline.reconfigure(retry_tiers="200ms,400ms", retry_max_attempts=3)
    pipeline.start_router()
    pipeline.start_channel("webhook")
    alert(pipeline, "u-d", "d-1")
    [dead] = pipeline.read_topic(pipeline.settings.channel_dlq_topic("webhook"), expect=1)
    h = headers_of(dead)
    assert h[DLQ_REASON] == "TransientError" and h[DLQ_ATTEMPTS] == "3"
    assert hits(pipeline, "/down") == [503, 503, 503]


def test_an_open_circuit_stops_calling_the_endpoint_and_probes_it(pipeline: Pipeline) -> None:
    pipeline.web.replies["/flaky"] = Reply(503)
    pipeline.recipients(*({"id": f"u-{i}", "contacts": {"webhook": pipeline.web.url("/flaky")}} for i in range(10)))
    pipeline.reconfigure(retry_tiers="500ms", retry_max_attempts=100, breaker_threshold=3, breaker_cooldown=2.0)
    opened = value(metrics.CIRCUIT_TRANSITIONS, "webhook", "open")
    closed = value(metrics.CIRCUIT_TRANSITIONS, "webhook", "closed")
    short_circuited = value(metrics.RETRIES, "webhook", "500ms", "circuit_open")
    pipeline.start_router()
    pipeline.start_channel("webhook")
    for i in range(10):
        pipeline.pub().publish("system.alert", ALERT, subject=f"u-{i}", source=SOURCE, id=f"f-{i}")
    pipeline.pub().flush()
    pipeline.web.wait_for(lambda rs: len(hits(pipeline, "/flaky")) >= 3, timeout=30)
    time.sleep(6.0)
    # Ten deliveries retried every half second would make over a hundred calls in six
    # seconds; with the breaker open only the first failures and one probe per cooldown go out.
    calls_while_down = len(hits(pipeline, "/flaky"))
    assert calls_while_down <= 10 + 6
    assert value(metrics.CIRCUIT_TRANSITIONS, "webhook", "open") > opened
    assert value(metrics.RETRIES, "webhook", "500ms", "circuit_open") > short_circuited
    pipeline.web.replies["/flaky"] = Reply(200)
    records = pipeline.web.wait_for(
        lambda rs: len({r["delivery_id"] for r in rs if r["status"] == 200}) == 10, timeout=60)
    time.sleep(1.0)
    assert len([r for r in pipeline.web.received() if r["status"] == 200]) == 10
    assert len({r["delivery_id"] for r in records}) == 10
    assert value(metrics.CIRCUIT_TRANSITIONS, "webhook", "closed") > closed
