"""Channel fallback through the real router and channel consumers, on real Kafka, Redis, SMTP and HTTP.

A webhook receiver that answers 410 makes the notification arrive by email once, with the
dead letter and the status events; an in-app notification left unread past its ``after``
arrives by email once, and one read in time does not.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis as AsyncRedis

from channels.inapp.store import InboxStore
from consumers import metrics
from consumers.status import find_status
from consumers.topics import create_topics
from devstack.providers import TWILIO_ACCOUNT, TWILIO_TOKEN, ProviderSink
from router import keys
from schemas import State, Status
from schemas.models import delivery_id

from .conftest import Pipeline, wait_until
from .test_pipeline import SOURCE, match

pytestmark = pytest.mark.integration


def set_rule(config_dir: Path, **fields: Any) -> None:
    """Give the demo's job-match rule these fields."""
    path = config_dir / "rules.yaml"
    doc = yaml.safe_load(path.read_text())
    for rule in doc["rules"]:
        if rule["name"] == "job-match":
            rule.update(fields)
    path.write_text(yaml.safe_dump(doc))


def statuses(pipeline: Pipeline, ident: str) -> list[tuple[str, str | None]]:
    return [(s.state.value, s.reason) for s in find_status(pipeline.settings, ident, pipeline.catalog)]


def fallback_count(channel: str, to: str, trigger: str, outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value("tidings_fallbacks_total", {
        "channel": channel, "to": to, "trigger": trigger, "outcome": outcome})
    return value or 0.0


def test_a_webhook_gone_for_good_is_delivered_by_email_once(pipeline: Pipeline) -> None:
    set_rule(pipeline.config_dir, channels=["webhook"], fallback={"webhook": ["email"]})
    pipeline.recipients({"id": "u-ada", "name": "Ada",
                         "contacts": {"email": "ada@example.com", "webhook": pipeline.web.url("/gone")}})
    before = fallback_count("webhook", "email", "failed", "sent")
    pipeline.start_all()
    event = pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="fb-1")
    pipeline.pub().flush()

    [mail] = pipeline.smtp.wait_for(1, timeout=60)
    email_id = delivery_id(SOURCE, event.id, "job-match", "u-ada", "email")
    hook_id = delivery_id(SOURCE, event.id, "job-match", "u-ada", "webhook")
    assert mail["to"] == ["ada@example.com"] and mail["delivery_id"] == email_id
    assert mail["subject"] == "New match: Kernel Hacker at Penguin & Sons (90%)"
    # The webhook receiver was asked once (410 is permanent), and its dead letter is the record.
    assert [r["status"] for r in pipeline.web.received()] == [410]
    [dead] = pipeline.read_topic(pipeline.settings.channel_dlq_topic("webhook"), expect=1)
    assert dict(dead.headers() or [])["tidings_dlq_reason"] == b"InvalidAddressError"
    wait_until(lambda: ("delivered", None) in statuses(pipeline, email_id), what="the email's delivered status")
    assert statuses(pipeline, hook_id) == [("routed", None), ("dead_lettered", "InvalidAddressError")]
    assert statuses(pipeline, email_id) == [("routed", "fallback"), ("delivered", None)]
    [fell] = [s for s in find_status(pipeline.settings, email_id, pipeline.catalog) if s.reason == "fallback"]
    assert fell.detail is not None and hook_id in fell.detail and "webhook" in fell.detail
    assert fallback_count("webhook", "email", "failed", "sent") == before + 1

    # Exactly once: a webhook consumer that reads the topic again (its offsets lost) dead-letters
    # the delivery again and produces the same fallback id, which the email sent mark stops.
    pipeline.stop("webhook")
    pipeline.settings = pipeline.settings.model_copy(update={"group_prefix": pipeline.settings.group_prefix + "again-"})
    pipeline.start_channel("webhook")
    wait_until(lambda: len(pipeline.web.received()) == 2, what="the second webhook attempt")
    wait_until(lambda: statuses(pipeline, hook_id).count(("dead_lettered", "InvalidAddressError")) == 2,
               what="the second dead letter")
    time.sleep(2.0)  # give a second email every chance to arrive
    assert len(pipeline.smtp.received()) == 1
    assert pipeline.redis.exists(keys.sent("default", "u-ada", email_id)) == 1


def test_a_chain_is_followed_to_its_end_and_no_further(pipeline: Pipeline) -> None:
    # Two webhooks in a row gone: the delivery falls back from a webhook to email, whose address
    # the SMTP sink refuses (permanent), and the chain ends with two dead letters and no more.
    set_rule(pipeline.config_dir, channels=["webhook"], fallback={"webhook": ["email"]})
    pipeline.recipients({"id": "u-ada", "name": "Ada",
                         "contacts": {"email": "refused@example.com", "webhook": pipeline.web.url("/gone")}})
    pipeline.start_all()
    event = pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="fb-2")
    pipeline.pub().flush()
    email_id = delivery_id(SOURCE, event.id, "job-match", "u-ada", "email")
    wait_until(lambda: ("dead_lettered", "InvalidAddressError") in statuses(pipeline, email_id), timeout=120,
               what="the email's dead letter")
    assert pipeline.read_topic(pipeline.settings.channel_dlq_topic("email"), expect=1)
    assert statuses(pipeline, email_id) == [("routed", "fallback"), ("dead_lettered", "InvalidAddressError")]
    assert pipeline.smtp.received() == []


def test_a_chain_moves_from_a_gone_webhook_past_an_invalid_sms_number_to_email(pipeline: Pipeline) -> None:
    # webhook answers 410, the Twilio stand-in refuses the number (code 21211): two dead letters, then email.
    with ProviderSink(faults={"+15550100002": "gone"}) as twilio:
        pipeline.reconfigure(sms_base_url=twilio.url(), sms_account_sid=TWILIO_ACCOUNT, sms_auth_token=TWILIO_TOKEN,
                             sms_from="+15550009999")
        create_topics(pipeline.settings, ["sms"])
        set_rule(pipeline.config_dir, channels=["webhook"], fallback={"webhook": ["sms", "email"]})
        pipeline.recipients({"id": "u-ada", "name": "Ada",
                             "contacts": {"email": "ada@example.com", "webhook": pipeline.web.url("/gone"),
                                          "sms": "+15550100002"}})
        pipeline.start_all()
        pipeline.start_channel("sms")
        event = pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE,
                                       id="fb-3")
        pipeline.pub().flush()
        [mail] = pipeline.smtp.wait_for(1, timeout=60)
        ids = {c: delivery_id(SOURCE, event.id, "job-match", "u-ada", c) for c in ("webhook", "sms", "email")}
        assert mail["delivery_id"] == ids["email"]
        [asked] = twilio.received()
        assert asked["status"] >= 400
        wait_until(lambda: ("delivered", None) in statuses(pipeline, ids["email"]), what="the email's status")
        assert statuses(pipeline, ids["webhook"]) == [("routed", None), ("dead_lettered", "InvalidAddressError")]
        assert statuses(pipeline, ids["sms"]) == [("routed", "fallback"), ("dead_lettered", "InvalidAddressError")]
        assert statuses(pipeline, ids["email"]) == [("routed", "fallback"), ("delivered", None)]
        assert pipeline.read_topic(pipeline.settings.channel_dlq_topic("sms"), expect=1)
        time.sleep(1.0)
        assert len(pipeline.smtp.received()) == 1


def _inbox(pipeline: Pipeline) -> tuple[InboxStore, AsyncRedis]:
    client = AsyncRedis.from_url(pipeline.settings.redis_url)
    return InboxStore(client), client


def test_an_inapp_notification_left_unread_is_emailed_once_and_a_read_one_is_not(pipeline: Pipeline) -> None:
    set_rule(pipeline.config_dir, channels=["inapp"], unread_fallback={"after": "2s", "channel": "email"})
    create_topics(pipeline.settings, ["inapp"])
    pipeline.recipients({"id": "u-ada", "name": "Ada", "contacts": {"email": "ada@example.com", "inapp": "on"}},
                        {"id": "u-bob", "name": "Bob", "contacts": {"email": "bob@example.com", "inapp": "on"}})
    pipeline.start_router()
    pipeline.start_channel("email")
    inapp = pipeline.start_channel("inapp")
    # A second in-app consumer (the urgent lane's) looks for due fallbacks too: the lease lets one take each.
    pipeline.start_channel_lane("inapp", "urgent")
    store, client = _inbox(pipeline)
    aio = asyncio.new_event_loop()
    try:
        ada = pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="ur-1")
        bob = pipeline.pub().publish("jobs.match.found", match("u-bob"), subject="u-bob", source=SOURCE, id="ur-2")
        pipeline.pub().flush()
        ada_item = delivery_id(SOURCE, ada.id, "job-match", "u-ada", "inapp")
        bob_item = delivery_id(SOURCE, bob.id, "job-match", "u-bob", "inapp")

        def stored(user: str, item: str) -> bool:
            return aio.run_until_complete(store.is_unread("default", user, item, datetime.now(UTC))) is True

        wait_until(lambda: stored("u-ada", ada_item) and stored("u-bob", bob_item), what="both inbox items")
        # Bob reads his at once; Ada leaves hers.
        assert aio.run_until_complete(store.mark_read("default", "u-bob", bob_item, datetime.now(UTC)))[0] == "read"
        [mail] = pipeline.smtp.wait_for(1, timeout=30)
        ada_email = delivery_id(SOURCE, ada.id, "job-match", "u-ada", "email")
        bob_email = delivery_id(SOURCE, bob.id, "job-match", "u-bob", "email")
        assert mail["to"] == ["ada@example.com"] and mail["delivery_id"] == ada_email
        wait_until(lambda: ("delivered", None) in statuses(pipeline, ada_email), what="the email's delivered status")
        wait_until(lambda: statuses(pipeline, bob_email) != [], what="bob's fallback status")
        assert statuses(pipeline, ada_email) == [("routed", "unread_fallback"), ("delivered", None)]
        [not_needed] = find_status(pipeline.settings, bob_email, pipeline.catalog)
        assert (not_needed.state, not_needed.reason) == (State.skipped, "fallback_not_needed")
        assert not_needed.detail is not None and "was read" in not_needed.detail
        # Nothing is left waiting, and no second email comes however long we wait.
        wait_until(lambda: pipeline.redis.zcard(keys.unread_due()) == 0, what="the due set to empty")
        time.sleep(2.0)
        assert len(pipeline.smtp.received()) == 1
        assert inapp.fallbacks.inbox is not None
        assert [s.state for s in find_status(pipeline.settings, ada_item, pipeline.catalog)] == [
            State.routed, State.delivered]
    finally:
        aio.run_until_complete(client.aclose())
        aio.close()


def test_an_unread_fallback_waits_in_redis_across_a_restart(pipeline: Pipeline) -> None:
    # The in-app consumer stops before the fallback is due; a new one releases it, once.
    set_rule(pipeline.config_dir, channels=["inapp"], unread_fallback={"after": "4s", "channel": "email"})
    create_topics(pipeline.settings, ["inapp"])
    pipeline.recipients({"id": "u-ada", "name": "Ada", "contacts": {"email": "ada@example.com", "inapp": "on"}})
    pipeline.start_router()
    pipeline.start_channel("email")
    pipeline.start_channel("inapp")
    event = pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id="ur-3")
    pipeline.pub().flush()
    item = delivery_id(SOURCE, event.id, "job-match", "u-ada", "inapp")
    wait_until(lambda: pipeline.redis.zscore(keys.unread_due(), item) is not None, what="the scheduled fallback")
    pipeline.stop("inapp")
    assert pipeline.smtp.received() == []
    time.sleep(4.5)  # due now, but nobody is releasing
    assert pipeline.smtp.received() == []
    pipeline.start_channel("inapp")
    [mail] = pipeline.smtp.wait_for(1, timeout=30)
    assert mail["delivery_id"] == delivery_id(SOURCE, event.id, "job-match", "u-ada", "email")
    wait_until(lambda: pipeline.redis.zcard(keys.unread_due()) == 0, what="the due set to empty")
    time.sleep(1.5)
    assert len(pipeline.smtp.received()) == 1
    statuses_of = [s for s in find_status(pipeline.settings, mail["delivery_id"], pipeline.catalog)
                   if isinstance(s, Status)]
    assert [(s.state.value, s.reason) for s in statuses_of] == [("routed", "unread_fallback"), ("delivered", None)]
