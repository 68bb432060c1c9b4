"""Dead letters: their headers, and `tidings dlq list|show|replay` on real Kafka, Redis and HTTP."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from consumers import dlq
from consumers.cli import main
from consumers.kafka import DLQ_HEADERS
from devstack.sinks import Reply
from router.templates import Rendered, Renderer
from schemas import State, Status

from .conftest import Pipeline
from .test_pipeline import SOURCE, ada, headers_of, match

pytestmark = pytest.mark.integration


def cli_env(monkeypatch: pytest.MonkeyPatch, pipeline: Pipeline) -> None:
    s = pipeline.settings
    for name, value in {"KAFKA_BOOTSTRAP": s.kafka_bootstrap, "REDIS_URL": s.redis_url,
                        "TOPIC_PREFIX": s.topic_prefix, "GROUP_PREFIX": s.group_prefix,
                        "RULES": str(s.rules)}.items():
        monkeypatch.setenv(f"TIDINGS_{name}", value)


def end_offsets(pipeline: Pipeline, topic: str) -> int:
    c = Consumer({"bootstrap.servers": pipeline.settings.kafka_bootstrap, "group.id": "dlq-test-ends"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(pipeline.settings.partitions))
    finally:
        c.close()


def replayed_statuses(pipeline: Pipeline, expect: int) -> list[Status]:
    statuses = [Status.decode(pipeline.catalog, m.value())
                for m in pipeline.read_topic(pipeline.settings.status_topic, expect=expect)]
    return [s for s in statuses if s.reason == "replayed"]


def test_a_channel_dead_letter_is_listed_shown_and_replayed_once(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cli_env(monkeypatch, pipeline)
    pipeline.recipients(ada(webhook=pipeline.web.url("/gone")))
    pipeline.start_all()
    pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="g-1")
    pipeline.pub().flush()
    dlq_topic = pipeline.settings.channel_dlq_topic("webhook")
    [dead] = pipeline.read_topic(dlq_topic, expect=1)
    h = headers_of(dead)
    # Every documented header is there, as text.
    assert set(DLQ_HEADERS) <= set(h)
    assert h["tidings_dlq_original_topic"] == pipeline.settings.deliver_topic("webhook")
    assert int(h["tidings_dlq_original_offset"]) >= 0 and int(h["tidings_dlq_original_timestamp"]) > 0
    assert h["tidings_dlq_consumer_group"] == pipeline.settings.group("deliver-webhook")
    assert h["tidings_dlq_attempts"] == "1" and h["tidings_dlq_first_failure"].endswith("Z")
    ident = h["tidings_delivery_id"]

    assert main(["dlq", "list", "webhook"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 1 and "InvalidAddressError" in listed[0] and ident in listed[0]  # 410: gone for good
    assert main(["dlq", "list", "webhook", "--reason", "TransientError"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["dlq", "list", "webhook", "--since", "1h", "--limit", "5"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert main(["dlq", "show", "webhook", ident]) == 0
    shown = capsys.readouterr().out
    assert "consumer group" in shown and "410" in shown and "u-ada" in shown

    # A dry run changes nothing.
    before_main = end_offsets(pipeline, pipeline.settings.deliver_topic("webhook"))
    assert main(["dlq", "replay", "webhook", "--dry-run"]) == 0
    assert "would replay 1 record" in capsys.readouterr().err
    assert end_offsets(pipeline, pipeline.settings.deliver_topic("webhook")) == before_main

    # The endpoint is fixed; the replay delivers it once, and a second replay is a no-op.
    pipeline.web.replies["/gone"] = Reply(200)
    assert main(["dlq", "replay", "webhook"]) == 0
    assert "replayed 1/1" in capsys.readouterr().err
    hooks = pipeline.web.wait_for(lambda rs: any(r["status"] == 200 for r in rs), timeout=30)
    assert main(["dlq", "replay", "webhook"]) == 0
    time.sleep(3.0)
    hooks = [r for r in pipeline.web.received() if r["status"] == 200]
    assert [r["delivery_id"] for r in hooks] == [ident]
    # The DLQ is append-only; each replay is on the status topic.
    assert len(pipeline.read_topic(dlq_topic, expect=1)) == 1
    replays = replayed_statuses(pipeline, expect=6)
    assert [(s.state, s.delivery_id) for s in replays] == [(State.retrying, ident)] * 2


def test_a_router_dead_letter_is_replayed_after_the_fix(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    class Broken(Renderer):
        def render(self, name: str, context: Mapping[str, Any], locale: str | None = None) -> Rendered:
            raise RuntimeError("template bug")

    cli_env(monkeypatch, pipeline)
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_router(renderer=Broken(pipeline.settings.template_dir))
    pipeline.start_channel("email")
    pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="fixme")
    pipeline.pub().flush()
    [dead] = pipeline.read_topic(pipeline.settings.router_dlq_topic, expect=1)
    assert headers_of(dead)["tidings_dlq_reason"] == "UnexpectedError"
    assert pipeline.smtp.received() == []

    pipeline.stop("router")
    pipeline.start_router()  # the corrected template
    assert main(["dlq", "replay", "router", "--reason", "UnexpectedError"]) == 0
    assert "to " + pipeline.settings.input_topic in capsys.readouterr().err
    [mail] = pipeline.smtp.wait_for(1, timeout=30)
    assert "Kernel Hacker" in mail["subject"]
    replays = replayed_statuses(pipeline, expect=4)
    assert [(s.event_id, s.state) for s in replays] == [("fixme", State.retrying)]


def test_bad_dlq_commands_change_nothing_and_say_why(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cli_env(monkeypatch, pipeline)
    assert main(["dlq", "list", "pigeon"]) == 2
    assert "no channel 'pigeon'" in capsys.readouterr().err
    assert main(["dlq", "list", "webhook", "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err
    assert main(["dlq", "show", "webhook"]) == 2
    assert main(["dlq", "show", "webhook", "0:99"]) == 1
    assert main(["dlq", "replay", "webhook", "--limit", "0"]) == 2


def test_since_accepts_durations_and_times() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    assert dlq.parse_since("2h", now) == now - timedelta(hours=2)
    assert dlq.parse_since("2026-01-05T10:00:00Z", now) == datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
