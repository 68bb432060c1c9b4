"""From publish to the sinks, on real Kafka, Redis, SMTP and HTTP."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
import uvloop

from channels.signing import verify
from consumers.kafka import DLQ_ATTEMPTS, DLQ_MESSAGE, DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC
from consumers.status import find_status
from schemas import CloudEvent, State, Status
from schemas.avro import SINGLE_OBJECT_MAGIC
from schemas.models import delivery_id

from .conftest import REFUSED, SECRET, Pipeline, wait_until

pytestmark = pytest.mark.integration

SOURCE = "tests/e2e"


def match(user: str, score: float = 90.0, **extra: object) -> dict[str, object]:
    return {"user_id": user, "match_id": f"m-{user}", "job_title": "Kernel Hacker",
            "company": "Penguin & Sons", "score": score, **extra}


def ada(**contacts: str) -> dict[str, object]:
    return {"id": "u-ada", "name": "Ada", "contacts": {"email": "ada@example.com",
            "webhook": "http://127.0.0.1:1/hooks/ada", **contacts}}


def publish_matches(pipeline: Pipeline, prefix: str, count: int) -> None:
    """Publish ``count`` matches for u-ada and wait until both sinks have them all."""
    for i in range(count):
        pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE,
                               id=f"{prefix}-{i}")
    pipeline.pub().flush()
    pipeline.smtp.wait_for(count, timeout=60)
    pipeline.web.wait_for(count, timeout=60)


def headers_of(msg: object) -> dict[str, str]:
    return {k: v.decode() for k, v in (msg.headers() or [])}  # type: ignore[attr-defined]


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_event_is_delivered_by_email_and_webhook_with_its_content(pipeline: Pipeline, event_loop: str) -> None:
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.reconfigure(event_loop=event_loop)  # TIDINGS_EVENT_LOOP; uvloop is the default
    pipeline.start_all()
    for name in ("email", "webhook"):
        aio = pipeline.loops[name][0].aio  # type: ignore[attr-defined]
        assert isinstance(aio, uvloop.Loop) == (event_loop == "uvloop")
    event = pipeline.pub().publish("jobs.match.found", match("u-ada", 91.4, location="Leeds", is_remote=True),
                                   subject="u-ada", source=SOURCE)
    pipeline.pub().flush()

    mail = pipeline.smtp.wait_for(1, timeout=30)[0]
    hook = pipeline.web.wait_for(1, timeout=30)[0]

    email_id = delivery_id(SOURCE, event.id, "job-match", "u-ada", "email")
    assert mail["to"] == ["ada@example.com"]
    assert mail["subject"] == "New match: Kernel Hacker at Penguin & Sons (91%)"
    assert "Hello Ada," in mail["text"] and "Location: Leeds (remote possible)" in mail["text"]
    assert "<strong>Kernel Hacker</strong> at Penguin &amp; Sons" in mail["html"]
    assert mail["delivery_id"] == email_id
    assert mail["message_id"].startswith(f"<{email_id}@")

    hook_id = delivery_id(SOURCE, event.id, "job-match", "u-ada", "webhook")
    assert hook["status"] == 200
    assert hook["delivery_id"] == hook_id
    verify(SECRET, hook["headers"], hook["raw"].encode())  # signed with the shared secret
    body = hook["body"]
    assert body["id"] == hook_id
    assert body["type"] == "jobs.match.found"
    assert body["event_id"] == event.id and body["source"] == SOURCE
    assert body["recipient"] == "u-ada" and body["rule"] == "job-match" and body["priority"] == "normal"
    assert body["title"] == mail["subject"]
    assert body["data"]["score"] == 91.4 and body["data"]["is_remote"] is True

    statuses = pipeline.read_topic(pipeline.settings.status_topic, expect=4)
    states = sorted((s.channel, s.state.value) for s in
                    (Status.decode(pipeline.catalog, m.value()) for m in statuses))
    assert states == [("email", "delivered"), ("email", "routed"),
                      ("webhook", "delivered"), ("webhook", "routed")]
    history = find_status(pipeline.settings, email_id, pipeline.catalog)
    assert [s.state for s in history] == [State.routed, State.delivered]


def test_a_duplicate_publish_is_delivered_once(pipeline: Pipeline) -> None:
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_all()
    for _ in range(2):
        pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="dup-1")
    pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="after")
    pipeline.pub().flush()
    pipeline.smtp.wait_for(2, timeout=30)
    pipeline.web.wait_for(2, timeout=30)
    time.sleep(1.0)
    assert len(pipeline.smtp.received()) == 2
    assert len(pipeline.web.received()) == 2
    history = find_status(pipeline.settings, "dup-1", pipeline.catalog)
    assert [s.reason for s in history if s.state is State.deduplicated] == ["duplicate_event"]


def test_conditions_opt_out_and_missing_contact_are_reported_not_sent(pipeline: Pipeline) -> None:
    pipeline.recipients(
        {"id": "u-opt", "contacts": {"email": "opt@example.com", "webhook": pipeline.web.url("/x")},
         "opt_out": ["webhook"]},
        {"id": "u-mailonly", "contacts": {"email": "mail@example.com"}},
    )
    pipeline.start_all()
    weak = pipeline.pub().publish("jobs.match.found", match("u-opt", 10.0), subject="u-opt", source=SOURCE)
    opted = pipeline.pub().publish("jobs.match.found", match("u-opt"), subject="u-opt", source=SOURCE)
    mailonly = pipeline.pub().publish("jobs.match.found", match("u-mailonly"), subject="u-mailonly",
                                      source=SOURCE)
    nobody = pipeline.pub().publish("jobs.match.found", match("u-ghost"), subject="u-ghost", source=SOURCE)
    pipeline.pub().flush()
    pipeline.smtp.wait_for(2, timeout=30)
    time.sleep(1.0)
    assert sorted(m["to"][0] for m in pipeline.smtp.received()) == ["mail@example.com", "opt@example.com"]
    assert pipeline.web.received() == []

    def reasons(event_id: str) -> set[str | None]:
        return {s.reason for s in find_status(pipeline.settings, event_id, pipeline.catalog)
                if s.state is State.skipped}

    assert reasons(weak.id) == {"condition_false"}
    assert reasons(opted.id) == {"opt_out"}
    assert reasons(mailonly.id) == {"no_address"}
    assert reasons(nobody.id) == {"unknown_recipient"}


def test_bad_input_is_dead_lettered_with_its_reason_and_later_events_flow(pipeline: Pipeline) -> None:
    # A rule whose template references a field the event does not have.
    broken = pipeline.config_dir / "templates" / "broken"
    broken.mkdir()
    (broken / "subject.j2").write_text("Book {{ data.title }}")
    (broken / "text.j2").write_text("Pages: {{ data.page_count }}")
    rules = pipeline.config_dir / "rules.yaml"
    rules.write_text(rules.read_text() + """
  - name: book-broken
    event_type: bookgen.job.completed
    when: "status == 'broken'"
    channels: [email]
    template: broken
""")
    pipeline.recipients(
        ada(webhook=pipeline.web.url("/hooks/ada")),
        {"id": "u-badmail", "contacts": {"email": "bad@no-dot-domain"}},
        {"id": "u-refused", "contacts": {"email": REFUSED}},
        {"id": "u-gone", "contacts": {"webhook": pipeline.web.url("/gone")}},
    )
    pipeline.start_all()
    pub = pipeline.pub()
    topic = pipeline.settings.input_topic
    catalog = pipeline.catalog

    def ce(kind: str, type_: str = "jobs.match.found", subject: str | None = "u-ada") -> CloudEvent:
        return CloudEvent.new(type_, source=SOURCE, subject=subject, id=kind)

    good = catalog.encode(catalog.for_type("jobs.match.found"), match("u-ada"))
    alert = catalog.encode(catalog.for_type("system.alert"),
                           {"severity": "critical", "component": "c", "message": "m"})
    key = "default:u-ada"  # one partition: the bad records sit in front of the good one
    pub.send_raw(topic, os.urandom(40), ce("random-bytes").to_headers(), key=key)
    pub.send_raw(topic, SINGLE_OBJECT_MAGIC + b"\x01" * 8 + good[10:], ce("unknown-fp").to_headers(), key=key)
    pub.send_raw(topic, good, [("ce_type", b"jobs.match.found"), ("ce_source", SOURCE.encode())], key=key)
    pub.send_raw(topic, alert, ce("wrong-schema").to_headers(), key=key)
    pub.send_raw(topic, good[:15], ce("truncated").to_headers(), key=key)
    pub.send_raw(topic, good, ce("no-subject", subject=None).to_headers(), key=key)
    pub.publish("bookgen.job.completed", {"user_id": "u-ada", "job_id": "j", "title": "T", "status": "broken"},
                subject="u-ada", source=SOURCE, id="bad-template", key=key)
    pub.publish("jobs.match.found", match("u-badmail"), subject="u-badmail", source=SOURCE, id="bad-address")
    pub.publish("jobs.match.found", match("u-refused"), subject="u-refused", source=SOURCE, id="refused")
    pub.publish("jobs.match.found", match("u-gone"), subject="u-gone", source=SOURCE, id="gone")
    pub.publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="good-after", key=key)
    pub.flush()

    router_dlq = pipeline.read_topic(pipeline.settings.router_dlq_topic, expect=7)
    reasons = {}
    for m in router_dlq:
        h = headers_of(m)
        reasons[h.get("ce_id", "(no id)")] = (h[DLQ_REASON], h[DLQ_MESSAGE])
        assert h[DLQ_TOPIC] == topic and int(h[DLQ_OFFSET]) >= 0 and h[DLQ_ATTEMPTS] == "1"
    assert {k: v[0] for k, v in reasons.items()} == {
        "random-bytes": "DecodeError",
        "unknown-fp": "DecodeError",
        "(no id)": "MissingHeaderError",
        "wrong-schema": "SchemaMismatchError",
        "truncated": "DecodeError",
        "no-subject": "MissingHeaderError",
        "bad-template": "TemplateError",
    }
    assert "unknown schema fingerprint 0101010101010101" in reasons["unknown-fp"][1]
    assert "ce_id" in reasons["(no id)"][1] and "ce_specversion" in reasons["(no id)"][1]
    assert "page_count" in reasons["bad-template"][1] and "broken/text.j2" in reasons["bad-template"][1]

    email_dlq = pipeline.read_topic(pipeline.settings.channel_dlq_topic("email"), expect=2)
    by_reason = sorted(headers_of(m)[DLQ_REASON] for m in email_dlq)
    assert by_reason == ["InvalidAddressError", "InvalidAddressError"]
    assert all("example.com" not in headers_of(m)[DLQ_MESSAGE].split("@")[0] for m in email_dlq)
    webhook_dlq = pipeline.read_topic(pipeline.settings.channel_dlq_topic("webhook"), expect=1)
    assert [headers_of(m)[DLQ_REASON] for m in webhook_dlq] == ["InvalidAddressError"]
    assert "410" in headers_of(webhook_dlq[0])[DLQ_MESSAGE]

    # The good events after the bad ones still arrive, exactly once each.
    mails = pipeline.smtp.wait_for(1, timeout=30)
    assert [m["to"] for m in mails] == [["ada@example.com"]]
    hooks = pipeline.web.wait_for(lambda rs: any(r["path"] == "/hooks/ada" for r in rs), timeout=30)
    assert sorted((r["path"], r["status"]) for r in hooks) == [("/gone", 410), ("/hooks/ada", 200)]


def test_transient_failures_are_retried_through_the_tiers_then_dead_lettered(pipeline: Pipeline) -> None:
    pipeline.recipients({"id": "u-busy", "contacts": {"webhook": pipeline.web.url("/busy")}})
    pipeline.start_all()
    pipeline.pub().publish("system.alert", {"severity": "critical", "component": "db", "message": "down"},
                           subject="u-busy", source=SOURCE, id="busy-1")
    pipeline.pub().flush()
    dlq = pipeline.read_topic(pipeline.settings.channel_dlq_topic("webhook"), expect=1)
    h = headers_of(dlq[0])
    assert h[DLQ_REASON] == "TransientError"
    assert h[DLQ_ATTEMPTS] == "2" and "gave up after 2 attempt(s)" in h[DLQ_MESSAGE]
    assert [r["status"] for r in pipeline.web.received()] == [503, 503]


def test_a_transient_failure_that_recovers_is_delivered(pipeline: Pipeline) -> None:
    from devstack.sinks import Reply

    pipeline.web.replies["/flaky"] = Reply(503)
    pipeline.recipients({"id": "u-flaky", "contacts": {"webhook": pipeline.web.url("/flaky")}})
    pipeline.reconfigure(retry_max_attempts=5)
    pipeline.start_channel("webhook")
    pipeline.start_router()
    pipeline.pub().publish("system.alert", {"severity": "critical", "component": "db", "message": "x"},
                           subject="u-flaky", source=SOURCE)
    pipeline.pub().flush()
    pipeline.web.wait_for(1, timeout=30)
    pipeline.web.replies["/flaky"] = Reply(200)
    records = pipeline.web.wait_for(lambda rs: any(r["status"] == 200 for r in rs), timeout=30)
    assert records[0]["status"] == 503 and records[-1]["status"] == 200
    assert len({r["delivery_id"] for r in records}) == 1


def test_router_reprocessing_after_a_crash_sends_nothing_twice(pipeline: Pipeline) -> None:
    """Invariant 2: the same records routed again yield the same delivery ids, sent once."""
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_all()
    publish_matches(pipeline, "r", 20)
    pipeline.stop("router")
    # Forget the router's committed offsets, as if it had crashed before committing anything.
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": pipeline.settings.kafka_bootstrap})
    admin.delete_consumer_groups([pipeline.settings.group("router")])[pipeline.settings.group("router")].result()
    pipeline.start_router()
    deliveries = pipeline.read_topic(pipeline.settings.deliver_topic("email"), expect=40)
    assert len(deliveries) == 40  # every event routed twice, with the same ids
    assert len({m.headers()[0][1] for m in deliveries}) == 20
    time.sleep(2.0)
    assert len(pipeline.smtp.received()) == 20
    assert len(pipeline.web.received()) == 20
    dedup = [s for s in find_status(pipeline.settings, "r-0", pipeline.catalog) if s.state is State.deduplicated]
    assert dedup == []  # the owner's own claim is not a duplicate


def test_a_redelivered_record_is_a_no_op(pipeline: Pipeline) -> None:
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_router()
    pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="once")
    pipeline.pub().flush()
    [record] = pipeline.read_topic(pipeline.settings.deliver_topic("email"), expect=1)
    # The same Delivery record written again, as a retried produce or a replay would.
    pipeline.pub().send_raw(pipeline.settings.deliver_topic("email"), record.value(),
                            [(k, v) for k, v in record.headers() or []], key=record.key().decode())
    pipeline.pub().flush()
    pipeline.start_channel("email")
    pipeline.smtp.wait_for(1, timeout=30)
    statuses = pipeline.read_topic(pipeline.settings.status_topic, expect=3)
    delivered = [s for s in (Status.decode(pipeline.catalog, m.value()) for m in statuses)
                 if s.state is State.delivered]
    time.sleep(1.0)
    assert len(pipeline.smtp.received()) == 1
    assert len(delivered) == 1


def test_stop_finishes_the_batch_and_commits(pipeline: Pipeline) -> None:
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_all()
    publish_matches(pipeline, "s", 50)
    pipeline.stop_all()
    # Restarted consumers find nothing left to do: offsets were committed on the way out.
    pipeline.start_all()
    time.sleep(3.0)
    assert len(pipeline.smtp.received()) == 50
    assert len(pipeline.web.received()) == 50
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": pipeline.settings.kafka_bootstrap,
                  "group.id": pipeline.settings.group("router")})
    try:
        tps = [TopicPartition(pipeline.settings.input_topic, p) for p in range(2)]
        committed = c.committed(tps, timeout=10)
        ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        assert [max(tp.offset, 0) for tp in committed] == ends  # an empty partition has no commit
    finally:
        c.close()


def test_recipient_store_is_read_by_the_router_as_loaded(pipeline: Pipeline, tmp_path: Path) -> None:
    doc = tmp_path / "people.json"
    doc.write_text(json.dumps([{"id": "u-json", "locale": "de", "contacts": {"email": "j@example.com"}}]))
    from router.recipients import RecipientStore

    assert RecipientStore(pipeline.redis).load_file(doc) == 1
    pipeline.start_router()
    pipeline.start_channel("email")
    pipeline.pub().publish("jobs.match.found", match("u-json"), subject="u-json", source=SOURCE,
                           id=str(uuid.uuid4()))
    pipeline.pub().flush()
    [mail] = pipeline.smtp.wait_for(1, timeout=30)
    assert mail["subject"].startswith("Neuer Treffer: Kernel Hacker")


def test_wait_until_helper_fails_loudly() -> None:
    with pytest.raises(AssertionError, match="waiting for nothing"):
        wait_until(lambda: False, timeout=0.1, what="nothing")


def test_an_unexpected_error_dead_letters_the_event_and_the_partition_moves_on(pipeline: Pipeline) -> None:
    from collections.abc import Mapping
    from typing import Any

    from router.templates import Rendered, Renderer

    class Buggy(Renderer):
        def render(self, name: str, context: Mapping[str, Any], locale: str | None = None) -> Rendered:
            if context["event"]["id"] == "trips-the-bug":
                raise RuntimeError("a bug in our own code")
            return super().render(name, context, locale)

    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_router(renderer=Buggy(pipeline.settings.template_dir))
    pipeline.start_channel("email")
    for ident in ("trips-the-bug", "fine"):
        pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id=ident,
                               key="default:u-ada")
    pipeline.pub().flush()
    [dead] = pipeline.read_topic(pipeline.settings.router_dlq_topic, expect=1)
    h = headers_of(dead)
    assert h[DLQ_REASON] == "UnexpectedError" and "RuntimeError: a bug in our own code" in h[DLQ_MESSAGE]
    [mail] = pipeline.smtp.wait_for(1, timeout=30)
    assert mail["delivery_id"] == delivery_id(SOURCE, "fine", "job-match", "u-ada", "email")


def test_a_delivery_waiting_in_a_retry_tier_survives_a_restart(pipeline: Pipeline) -> None:
    from devstack.sinks import Reply

    pipeline.web.replies["/later"] = Reply(503)
    pipeline.recipients({"id": "u-later", "contacts": {"webhook": pipeline.web.url("/later")}})
    pipeline.reconfigure(retry_tiers="4s", retry_max_attempts=10)
    pipeline.start_router()
    pipeline.start_channel("webhook")
    pipeline.pub().publish("system.alert", {"severity": "critical", "component": "db", "message": "x"},
                           subject="u-later", source=SOURCE, id="later-1")
    pipeline.pub().flush()
    pipeline.web.wait_for(1, timeout=30)
    failed_at = started = time.monotonic()
    pipeline.stop("webhook")  # while its retry waits 4 s in the tier topic: the stop does not wait for it
    assert time.monotonic() - started < 3.0
    statuses = [Status.decode(pipeline.catalog, m.value())
                for m in pipeline.read_topic(pipeline.settings.status_topic, expect=3)]
    # Two producers write this delivery's statuses: the consumer's can land on the partition
    # before the router's, whose flush is still going through its other partitions. Their time
    # orders them (docs/operations.md), as `tidings status` does.
    webhook = sorted((s for s in statuses if s.channel == "webhook"), key=lambda s: s.at)
    assert [s.state for s in webhook] == [State.routed, State.retrying]
    pipeline.web.replies["/later"] = Reply(200)
    pipeline.start_channel("webhook")
    records = pipeline.web.wait_for(lambda rs: any(r["status"] == 200 for r in rs), timeout=30)
    assert [r["status"] for r in records] == [503, 200]
    assert time.monotonic() - failed_at >= 4.0  # not sooner than its tier's delay
