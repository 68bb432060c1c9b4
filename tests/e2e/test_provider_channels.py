"""Slack, Discord, Telegram, Teams and SMS end to end: publish to Kafka, the router fans out,
each channel's own consumer (`tidings deliver <channel>`) calls the provider stand-in."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from consumers.kafka import DLQ_MESSAGE, DLQ_REASON
from consumers.settings import Settings
from consumers.topics import create_topics
from devstack.providers import TELEGRAM_TOKEN, TWILIO_ACCOUNT, TWILIO_TOKEN, ProviderSink
from devstack.sinks import SmtpSink, WebhookSink
from schemas import Catalog

from .conftest import REPO, Pipeline

pytestmark = pytest.mark.integration

PROVIDERS = ("slack", "discord", "telegram", "teams", "sms")
RULES = """
rules:
  - name: match-everywhere
    event_type: jobs.match.found
    when: "score >= 75"
    channels: [slack, discord, telegram, teams, sms]
    template: job_match
"""


def contacts(name: str, phone: str) -> dict[str, str]:
    return {
        "slack": f"https://hooks.slack.com/services/T1/B1/{name}",
        "discord": f"https://discord.com/api/webhooks/77/{name}",
        "telegram": f"@{name}_chat",
        "teams": f"https://acme.webhook.office.com/webhookb2/a@b/IncomingWebhook/{name}",
        "sms": phone,
    }


@pytest.fixture
def providers() -> Iterator[ProviderSink]:
    gone = {"gone": "gone", "gone_chat": "gone", "+15550100002": "gone"}
    with ProviderSink(faults=gone) as sink:
        yield sink


@pytest.fixture
def provider_pipeline(kafka_bootstrap: str, redis_url: str, redis_client: Redis, unique: str, tmp_path: Path,
                      providers: ProviderSink) -> Iterator[Pipeline]:
    config = tmp_path / "config"
    shutil.copytree(REPO / "config" / "templates", config / "templates")
    (config / "rules.yaml").write_text(RULES)
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=f"t{unique}.", group_prefix=f"g{unique}-",
        partitions=2, rules=config / "rules.yaml", send_attempts=1, poll_timeout=0.2, metrics_port=0,
        slack_base_url=providers.url(), discord_base_url=providers.url(), teams_base_url=providers.url(),
        telegram_base_url=providers.url(), telegram_bot_token=TELEGRAM_TOKEN,
        sms_base_url=providers.url(), sms_account_sid=TWILIO_ACCOUNT, sms_auth_token=TWILIO_TOKEN,
        sms_from="+15550009999",
    )
    create_topics(settings, PROVIDERS)
    with SmtpSink() as smtp, WebhookSink() as web:
        pipeline = Pipeline(settings, Catalog.load(), redis_client, smtp, web, config)
        try:
            yield pipeline
        finally:
            pipeline.stop_all()
            if pipeline.publisher is not None:
                pipeline.publisher.close()


def test_every_provider_channel_delivers_through_kafka(
    provider_pipeline: Pipeline, providers: ProviderSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pipeline = provider_pipeline
    pipeline.recipients(
        {"id": "u-ada", "name": "Ada", "contacts": contacts("ada", "+15550100001")},
        {"id": "u-bob", "name": "Bob", "contacts": contacts("gone", "+15550100002")},
    )
    pipeline.start_router()
    for name in PROVIDERS:
        pipeline.start_channel(name)
    for user in ("u-ada", "u-bob"):
        data = {"user_id": user, "match_id": "m-1", "job_title": "Kernel Hacker", "company": "Penguin & Sons",
                "score": 90.0}
        pipeline.pub().publish("jobs.match.found", data, subject=user, source="tests/e2e", id=f"match-{user}")
    pipeline.pub().flush()

    records = providers.wait_for(10, timeout=60)

    delivered = {r["kind"] for r in records if r["status"] in (200, 201, 202)}
    assert delivered == set(PROVIDERS)
    for record in records:
        assert "Kernel Hacker" in (record["title"] or "") or "Kernel Hacker" in str(record["body"])
    for name in PROVIDERS:
        [dead] = pipeline.read_topic(pipeline.settings.channel_dlq_topic(name), expect=1)
        reason = dict((k, v.decode()) for k, v in (dead.headers() or []))[DLQ_REASON]
        assert reason == "InvalidAddressError", f"{name}: {reason}"
        message = dict((k, v.decode()) for k, v in (dead.headers() or []))[DLQ_MESSAGE]
        assert "+15550100002" not in message and "/gone" not in message, message
    # Nothing the consumers logged, httpx's request lines included, shows a token or a full number.
    for secret in (TELEGRAM_TOKEN, TWILIO_TOKEN, "+15550100001", "+15550100002", "B1/ada", "77/ada"):
        assert secret not in caplog.text, secret
    assert "HTTP Request: POST" in caplog.text
