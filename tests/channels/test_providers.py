"""Provider channels beyond the shared contract: what each sends, how it reads addresses,
how it honours the provider's pauses, and what it keeps out of logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from channels.base import Channel, Sent
from channels.discord import DiscordChannel, DiscordConfig
from channels.ratelimit import EndpointLimiter
from channels.slack import SlackChannel, SlackConfig
from channels.sms import SmsChannel, SmsConfig, e164, mask_phone, measure
from channels.teams import MAX_BYTES, TeamsChannel, TeamsConfig, encoded_body
from channels.telegram import TelegramChannel, TelegramConfig, chat_id, is_group
from devstack.providers import TELEGRAM_TOKEN, TWILIO_ACCOUNT, TWILIO_TOKEN, ProviderSink
from schemas import Delivery, Priority
from schemas.errors import ConfigError, DeliveryError, InvalidAddressError, RateLimitedError, TransientError

from .helpers import send_each


@pytest.fixture
def sink() -> Iterator[ProviderSink]:
    faults = {"xratelimit": "ratelimit", "tok-ratelimit": "ratelimit", "chat_ratelimit": "ratelimit",
              "xembedded": "embedded429"}
    with ProviderSink(faults=faults) as running:
        yield running


def common(sink: ProviderSink) -> dict[str, Any]:
    return {"base_url": sink.url(), "timeout": 2.0, "trust_env": False}


def run(channel: Channel, *deliveries: Delivery) -> list[Any]:
    return asyncio.run(send_each(channel, deliveries, DeliveryError))


def with_action(make_delivery: Any, **fields: Any) -> Delivery:
    metadata = {"action_url": "https://app.example.com/jobs/7", "action_label": "View job"}
    delivery: Delivery = make_delivery(metadata=metadata, priority=Priority.urgent, **fields)
    return delivery


# ------------------------------------------------------------------- slack


def test_slack_posts_blocks_with_escaped_text_and_a_button(sink: ProviderSink, make_delivery: Any) -> None:
    delivery = with_action(make_delivery, channel="slack", address="/services/T1/B1/abc",
                           subject="Match <b>found</b>", text="Score 91 & rising <@U123>")

    [sent] = run(SlackChannel(SlackConfig(**common(sink))), delivery)

    assert sent == Sent(detail="ok")
    [record] = sink.received()
    blocks = record["body"]["blocks"]
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "Match <b>found</b>", "emoji": True}}
    assert blocks[1]["text"]["text"] == "Score 91 &amp; rising &lt;@U123&gt;"  # no mention, no markup injection
    assert blocks[2]["elements"][0]["url"] == "https://app.example.com/jobs/7"
    assert record["body"]["text"].startswith("Match &lt;b&gt;found")


@pytest.mark.parametrize(
    "address",
    ["https://example.com/services/T/B/x", "http://hooks.slack.com/services/T/B/x", "/services/T/B", "not a url"],
)
def test_slack_refuses_addresses_that_are_not_its_webhooks(make_delivery: Any, address: str) -> None:
    channel = SlackChannel(SlackConfig())
    with pytest.raises(InvalidAddressError):
        channel.webhook_path(address)


def test_slack_429_pauses_that_webhook_only(sink: ProviderSink, make_delivery: Any) -> None:
    channel = SlackChannel(SlackConfig(**common(sink), max_queue_wait=0.0))
    limited = make_delivery(channel="slack", address="/services/T/B/xratelimit")
    other = make_delivery(channel="slack", address="/services/T/B/fine")

    first, second, third = run(channel, limited, limited, other)

    assert isinstance(first, RateLimitedError) and first.retry_after == 1.0
    assert isinstance(second, RateLimitedError)  # refused locally: the pause is still running
    assert isinstance(third, Sent)
    assert len(sink.received()) == 2  # the second never reached Slack


# ----------------------------------------------------------------- discord


def test_discord_sends_an_embed_that_cannot_ping(sink: ProviderSink, make_delivery: Any) -> None:
    delivery = with_action(make_delivery, channel="discord", address="https://discord.com/api/webhooks/42/tok-ok",
                           subject="S" * 300, text="@everyone look")

    [sent] = run(DiscordChannel(DiscordConfig(**common(sink), username="Tidings")), delivery)

    assert isinstance(sent, Sent) and sent.provider_id
    [record] = sink.received()
    body = record["body"]
    assert body["allowed_mentions"] == {"parse": []}
    assert body["username"] == "Tidings"
    embed = body["embeds"][0]
    assert len(embed["title"]) == 256 and embed["title"].endswith("…")
    assert embed["color"] == 0xE74C3C  # urgent
    assert embed["url"] == "https://app.example.com/jobs/7"
    assert record["path"] == "/api/webhooks/42/tok-ok"


def test_discord_reads_retry_after_from_the_body_not_the_rounded_header(
    sink: ProviderSink, make_delivery: Any
) -> None:
    channel = DiscordChannel(DiscordConfig(**common(sink)))
    [error] = run(channel, make_delivery(channel="discord", address="42/tok-ratelimit"))

    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 0.35  # the header says 1
    assert channel.limiter.blocked_for("discord:42") > 0


@pytest.mark.parametrize(
    "address", ["https://evil.example/api/webhooks/1/x", "https://discord.com/channels/1/2", "x/y"]
)
def test_discord_refuses_other_urls(address: str) -> None:
    with pytest.raises(InvalidAddressError):
        DiscordChannel(DiscordConfig()).webhook(address)


# ---------------------------------------------------------------- telegram


def test_telegram_sends_html_with_the_subject_in_bold(sink: ProviderSink, make_delivery: Any) -> None:
    delivery = with_action(make_delivery, channel="telegram", address="-1001234567890",
                           subject="Build <failed>", text="x" * 5000)

    [sent] = run(TelegramChannel(TelegramConfig(bot_token=TELEGRAM_TOKEN, **common(sink))), delivery)

    assert isinstance(sent, Sent) and sent.provider_id == "1"
    body = sink.received()[0]["body"]
    assert body["chat_id"] == -1001234567890
    assert body["parse_mode"] == "HTML"
    assert body["text"].startswith("<b>Build &lt;failed&gt;</b>\n")
    assert body["reply_markup"]["inline_keyboard"][0][0]["url"] == "https://app.example.com/jobs/7"


def test_telegram_wrong_token_is_transient_and_the_token_never_shows(
    sink: ProviderSink, make_delivery: Any, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "987654321:wrong-token-that-is-long-enough-0000"
    caplog.set_level(logging.DEBUG)
    [error] = run(TelegramChannel(TelegramConfig(bot_token=wrong, **common(sink))),
                  make_delivery(channel="telegram", address="@acme_news"))

    assert isinstance(error, TransientError) and "bot token was refused" in str(error)
    assert "wrong-token" not in str(error)
    assert "wrong-token" not in caplog.text
    assert "HTTP Request" in caplog.text  # the call was logged, masked


def test_telegram_429_uses_parameters_retry_after(sink: ProviderSink, make_delivery: Any) -> None:
    [error] = run(TelegramChannel(TelegramConfig(bot_token=TELEGRAM_TOKEN, **common(sink))),
                  make_delivery(channel="telegram", address="@chat_ratelimit"))
    assert isinstance(error, RateLimitedError) and error.retry_after == 2.0


def test_telegram_sends_at_most_20_a_minute_to_one_group_and_more_to_a_private_chat() -> None:
    channel = TelegramChannel(TelegramConfig(bot_token=TELEGRAM_TOKEN))
    assert is_group(-1001234567890) and is_group("@acme_news") and not is_group(123456789)
    now = [0.0]
    limiter = EndpointLimiter(max_wait=3600.0, clock=lambda: now[0])

    def sent_in_a_minute(chat: int | str) -> int:
        start, count = now[0], 0
        while True:
            wait = limiter.delay(channel.buckets(chat))
            if now[0] + wait >= start + 60.0:
                return count
            now[0] += wait
            count += 1

    assert sent_in_a_minute(-1001234567890) == 20
    assert sent_in_a_minute("@acme_news") == 20
    assert sent_in_a_minute(123456789) == 60  # one a second: the per-chat bucket only


def test_a_telegram_group_over_its_rate_is_rate_limited_without_calling(sink: ProviderSink,
                                                                        make_delivery: Any) -> None:
    config = TelegramConfig(bot_token=TELEGRAM_TOKEN, max_queue_wait=1.0, **common(sink))
    results = run(TelegramChannel(config), *(make_delivery(channel="telegram", address="-1009") for _ in range(2)))
    assert isinstance(results[0], Sent)
    assert isinstance(results[1], RateLimitedError) and results[1].retry_after == pytest.approx(3.0, abs=0.5)
    assert len(sink.received()) == 1


@pytest.mark.parametrize("address", ["", "@ab", "chat", "+4477", "12 34"])
def test_telegram_chat_ids(address: str) -> None:
    with pytest.raises(InvalidAddressError):
        chat_id(address)


def test_telegram_needs_a_token_shaped_like_one() -> None:
    with pytest.raises(ConfigError, match="bot_token"):
        TelegramChannel.from_config({})
    with pytest.raises(ConfigError, match="BotFather"):
        TelegramChannel.from_config({"bot_token": "nope"})
    assert chat_id("@tidings_news") == "@tidings_news"
    assert chat_id(" 42 ") == 42


# ------------------------------------------------------------------- teams


def test_teams_posts_an_adaptive_card_to_the_stand_in(sink: ProviderSink, make_delivery: Any) -> None:
    delivery = with_action(make_delivery, channel="teams",
                           address="https://acme.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d?x=1")

    [sent] = run(TeamsChannel(TeamsConfig(**common(sink))), delivery)

    assert isinstance(sent, Sent)
    [record] = sink.received()
    card = record["body"]["attachments"][0]["content"]
    assert record["body"]["type"] == "message"
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["actions"][0] == {"type": "Action.OpenUrl", "title": "View job", "url": "https://app.example.com/jobs/7"}


def test_teams_workflows_answer_202(sink: ProviderSink, make_delivery: Any) -> None:
    delivery = make_delivery(channel="teams", address="https://prod-1.westus.logic.azure.com/workflows/abc/triggers/x")
    [sent] = run(TeamsChannel(TeamsConfig(**common(sink))), delivery)
    assert sent == Sent(detail="202")


def test_teams_classic_webhook_error_in_a_200_is_read(sink: ProviderSink, make_delivery: Any) -> None:
    delivery = make_delivery(channel="teams", address="https://a.webhook.office.com/webhookb2/xembedded")
    [error] = run(TeamsChannel(TeamsConfig(**common(sink))), delivery)
    assert isinstance(error, RateLimitedError)


@pytest.mark.parametrize(
    "address",
    ["https://evil.example/webhookb2/x", "http://a.webhook.office.com/webhookb2/x", "https://webhook.office.com.evil/x"],
)
def test_teams_only_posts_to_microsoft_hosts(address: str) -> None:
    with pytest.raises(InvalidAddressError):
        TeamsChannel(TeamsConfig()).target(address)


def test_teams_without_base_url_posts_to_the_address_itself() -> None:
    url = "https://a.webhook.office.com/webhookb2/x/y?z=1"
    assert TeamsChannel(TeamsConfig()).target(url) == url


def test_teams_body_stays_under_the_size_limit(make_delivery: Any) -> None:
    body = encoded_body(make_delivery(channel="teams", text="ü" * 40_000))
    assert len(body) <= MAX_BYTES


# --------------------------------------------------------------------- sms


def sms_config(sink: ProviderSink, **extra: Any) -> SmsConfig:
    return SmsConfig(account_sid=TWILIO_ACCOUNT, auth_token=TWILIO_TOKEN, from_number="+15550009999",
                     **common(sink), **extra)


def test_sms_posts_a_form_with_basic_auth_cut_to_its_segments(sink: ProviderSink, make_delivery: Any) -> None:
    delivery = make_delivery(channel="sms", address="+44 7700 900123", subject="Job match", text="word " * 200)

    [sent] = run(SmsChannel(sms_config(sink, max_segments=2)), delivery)

    assert isinstance(sent, Sent) and sent.provider_id and sent.provider_id.startswith("SM")
    assert sent.detail == "queued"
    form = sink.received()[0]["body"]
    assert form["To"] == "+447700900123" and form["From"] == "+15550009999"
    assert form["Body"].startswith("Job match\nword ") and form["Body"].endswith("...")
    assert measure(form["Body"]).segments == 2


def test_sms_messaging_service_instead_of_a_number(sink: ProviderSink, make_delivery: Any) -> None:
    config = SmsConfig(account_sid=TWILIO_ACCOUNT, auth_token=TWILIO_TOKEN, messaging_service_sid="MG1",
                       **common(sink))
    [sent] = run(SmsChannel(config), make_delivery(channel="sms", address="+15551234567"))
    assert isinstance(sent, Sent)
    assert sink.received()[0]["body"]["MessagingServiceSid"] == "MG1"


def test_sms_wrong_credentials_are_transient(sink: ProviderSink, make_delivery: Any) -> None:
    config = SmsConfig(account_sid=TWILIO_ACCOUNT, auth_token="not-it", from_number="+15550009999", **common(sink))
    [error] = run(SmsChannel(config), make_delivery(channel="sms", address="+15551234567"))
    assert isinstance(error, TransientError) and "credentials refused" in str(error)
    assert "not-it" not in str(error)


@pytest.mark.parametrize("address", ["07700900123", "+0123456", "+1234567890123456", "call me", ""])
def test_sms_requires_e164(address: str) -> None:
    with pytest.raises(InvalidAddressError) as caught:
        e164(address)
    assert address[3:] not in str(caught.value) or len(address) < 6


def test_e164_accepts_common_spellings_and_masks() -> None:
    assert e164("+44 (0)7700-900.123".replace("(0)", "")) == "+447700900123"
    assert e164("0044 7700 900123") == "+447700900123"
    assert mask_phone("+447700900123") == "+4477***23"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"account_sid": "AC1", "auth_token": "t", "from_number": "+1555"}, "account_sid"),
        ({"account_sid": "AC" + "0" * 32, "auth_token": "t"}, "from_number or messaging_service_sid"),
        ({"account_sid": "AC" + "0" * 32, "auth_token": "t", "from_number": "+1", "max_segments": 0}, "max_segments"),
    ],
)
def test_sms_configuration_errors_are_clear(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SmsChannel.from_config(fields)
