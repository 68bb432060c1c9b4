"""Every channel, described once for the shared contract suite.

A :class:`Case` knows how to stand up the channel's far end (a real SMTP
server, the webhook receiver, or the provider sink that speaks Slack's,
Discord's, Telegram's, Teams' and Twilio's APIs), how to build the channel
pointed at it, and which address triggers each scenario there. The suite in
``test_contract.py`` then asks the same questions of every case.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis as AsyncRedis

from channels.base import Channel
from channels.discord import DiscordChannel, DiscordConfig
from channels.email import EmailChannel, EmailConfig
from channels.inapp import InAppChannel, InAppConfig
from channels.inapp.store import InboxStore
from channels.slack import SlackChannel, SlackConfig
from channels.sms import SmsChannel, SmsConfig
from channels.teams import TeamsChannel, TeamsConfig
from channels.telegram import TelegramChannel, TelegramConfig
from channels.webhook import WebhookChannel, WebhookConfig
from devstack import infra
from devstack.providers import TELEGRAM_TOKEN, TWILIO_ACCOUNT, TWILIO_TOKEN, ProviderSink
from devstack.sinks import Reply, SmtpSink, WebhookSink

SCENARIOS = ("success", "transient", "rate_limited", "permanent", "invalid_address", "timeout", "dropped", "malformed")
# Scenario -> the sink fault that provokes it on the provider sink.
FAULT = {
    "transient": "busy",
    "rate_limited": "ratelimit",
    "permanent": "refuse",
    "invalid_address": "gone",
    "timeout": "slow",
    "dropped": "drop",
    "malformed": "garble",
}
TIMEOUT = 1.0
SLOW = 2.5


@dataclass
class Harness:
    """One case's far end, running: a channel for each scenario and what arrived."""

    channel: Callable[[str], Channel]
    address: Callable[[str], str]
    received: Callable[[int], list[dict[str, Any]]]
    """Wait until at least this many records arrived (a sink records after answering); return them all."""
    secrets: tuple[str, ...]
    """Strings that must never appear in an error message."""


@dataclass(frozen=True)
class Case:
    name: str
    start: Callable[[ExitStack], Harness]
    retry_after: float | None
    """The wait the far end asks for in the rate-limited scenario."""
    provider_id: bool
    """Whether a successful send reports the provider's message id."""
    scenarios: tuple[str, ...] = SCENARIOS
    """The scenarios its far end can produce (the in-app inbox is Redis: no rate limits, no addresses)."""

    def __str__(self) -> str:
        return self.name


# ----------------------------------------------------------------- far ends


@contextmanager
def garbage_server(greeting: bytes) -> Iterator[int]:
    """A TCP server that answers every connection with ``greeting`` (not the expected protocol) and closes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.settimeout(0.2)
                    with contextlib.suppress(TimeoutError):
                        conn.recv(4096)  # an HTTP client speaks first; an SMTP client waits
                    conn.sendall(greeting)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """Accepts connections into the backlog and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# ------------------------------------------------------------------- email


def _email(stack: ExitStack) -> Harness:
    sink = stack.enter_context(
        SmtpSink(
            refuse={"gone@example.com"},
            defer={"busy@example.com"},
            throttle={"ratelimit@example.com"},
            reject={"refuse@example.com"},
        )
    )
    silent = stack.enter_context(silent_server())
    garbage = stack.enter_context(garbage_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
    closed = _closed_port()
    ports = {"timeout": silent, "malformed": garbage, "dropped": closed}

    def channel(scenario: str) -> Channel:
        port = ports.get(scenario, sink.port)
        return EmailChannel(EmailConfig(host="127.0.0.1", port=port, timeout=TIMEOUT, local_hostname="client.test"))

    def address(scenario: str) -> str:
        local = FAULT.get(scenario, "ok") if scenario not in ports else "ok"
        return f"{local}@example.com"

    return Harness(channel, address, sink.wait_for, secrets=("ratelimit@", "gone@", "refuse@", "busy@"))


# ----------------------------------------------------------------- webhook

_WEBHOOK_PATHS = {
    "success": "/hooks/ok",
    "transient": "/busy",
    "rate_limited": "/slow-down",
    "permanent": "/teapot",
    "invalid_address": "/gone",
    "timeout": "/slow",
    "dropped": "/drop",
}


def _webhook(stack: ExitStack) -> Harness:
    sink = stack.enter_context(
        WebhookSink(
            statuses={
                "/busy": 503,
                "/slow-down": (429, {"Retry-After": "2"}),
                "/teapot": Reply(418, body="no coffee here"),
                "/gone": Reply(410, body='{"error": "endpoint removed"}'),
                "/slow": Reply(200, delay=SLOW),
                "/drop": Reply(drop=True),
            }
        )
    )
    garbage = stack.enter_context(garbage_server(b"\x00\x13garbage, not HTTP\r\n\r\n"))
    config = WebhookConfig(timeout=TIMEOUT, connect_timeout=TIMEOUT, trust_env=False, **_LOOPBACK_ALLOWED)

    def address(scenario: str) -> str:
        if scenario == "malformed":
            return f"http://127.0.0.1:{garbage}/hooks/ok"
        return sink.url(_WEBHOOK_PATHS[scenario])

    return Harness(lambda scenario: WebhookChannel(config), address, sink.wait_for, secrets=())


_LOOPBACK_ALLOWED: dict[str, Any] = {"allow_networks": ("127.0.0.0/8",)}
"""The SSRF guard refuses loopback: the suite's receivers are allow-listed explicitly."""


# ------------------------------------------------------------------ in-app


def _inapp(stack: ExitStack) -> Harness:
    """A private redis-server holds the inbox; RESP-speaking stand-ins give the failures."""
    state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="contract-redis-")))
    redis = infra.start_redis(state, infra.free_port())
    stack.callback(redis.stop)
    loading = stack.enter_context(garbage_server(b"-LOADING Redis is loading the dataset in memory\r\n"))
    garbage = stack.enter_context(garbage_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
    silent = stack.enter_context(silent_server())
    ports = {"transient": loading, "malformed": garbage, "timeout": silent, "dropped": _closed_port()}

    def channel(scenario: str) -> Channel:
        port = ports.get(scenario, redis.port)
        return InAppChannel(InAppConfig(redis_url=SecretStr(f"redis://127.0.0.1:{port}/0")))

    def received(count: int) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            client = AsyncRedis(port=redis.port)
            try:
                deadline = time.monotonic() + 10
                while True:
                    page = await InboxStore(client).page("acme", "user-42", datetime.now(UTC))
                    if len(page.entries) >= count or time.monotonic() > deadline:
                        return [entry.item.model_dump() for entry in page.entries]
                    await asyncio.sleep(0.05)
            finally:
                await client.aclose()

        return asyncio.run(read())

    return Harness(channel, lambda scenario: "user-42", received, secrets=())


# ------------------------------------------------------------- providers


def _provider(
    build: Callable[[str], Channel],
    address: Callable[[str], str],
    target: Callable[[str], str],
    secrets: tuple[str, ...],
) -> Callable[[ExitStack], Harness]:
    def start(stack: ExitStack) -> Harness:
        faults = {target(scenario): fault for scenario, fault in FAULT.items()}
        sink = stack.enter_context(ProviderSink(faults=faults, slow_delay=SLOW))
        return Harness(lambda scenario: build(sink.url()), address, sink.wait_for, secrets)

    return start


def _common(base_url: str) -> dict[str, Any]:
    return {"base_url": base_url, "timeout": TIMEOUT, "connect_timeout": TIMEOUT, "trust_env": False}


SLACK_SECRET = "xoxSECRETpart"
DISCORD_TOKEN_PREFIX = "tok-"
PHONES = {scenario: f"+1555010{index:04d}" for index, scenario in enumerate(SCENARIOS)}


CASES = [
    Case("email", _email, retry_after=None, provider_id=True),
    Case("webhook", _webhook, retry_after=2.0, provider_id=True),
    Case("inapp", _inapp, retry_after=None, provider_id=True,
         scenarios=("success", "transient", "timeout", "dropped", "malformed")),
    Case(
        "slack",
        _provider(
            lambda url: SlackChannel(SlackConfig(**_common(url))),
            lambda s: f"https://hooks.slack.com/services/T0001/B0001/{SLACK_SECRET}{FAULT.get(s, 'ok')}",
            lambda s: f"{SLACK_SECRET}{FAULT.get(s, 'ok')}",
            secrets=(SLACK_SECRET,),
        ),
        retry_after=1.0,
        provider_id=False,
    ),
    Case(
        "discord",
        _provider(
            lambda url: DiscordChannel(DiscordConfig(**_common(url))),
            lambda s: f"https://discord.com/api/webhooks/4242/{DISCORD_TOKEN_PREFIX}{FAULT.get(s, 'ok')}",
            lambda s: f"{DISCORD_TOKEN_PREFIX}{FAULT.get(s, 'ok')}",
            secrets=(DISCORD_TOKEN_PREFIX,),
        ),
        retry_after=0.35,
        provider_id=True,
    ),
    Case(
        "telegram",
        _provider(
            lambda url: TelegramChannel(TelegramConfig(bot_token=TELEGRAM_TOKEN, **_common(url))),
            lambda s: f"@chat_{FAULT.get(s, 'ok')}",
            lambda s: f"chat_{FAULT.get(s, 'ok')}",
            secrets=(TELEGRAM_TOKEN, TELEGRAM_TOKEN.split(":")[1]),
        ),
        retry_after=2.0,
        provider_id=True,
    ),
    Case(
        "teams",
        _provider(
            lambda url: TeamsChannel(TeamsConfig(**_common(url))),
            lambda s: f"https://acme.webhook.office.com/webhookb2/abc@def/IncomingWebhook/x{FAULT.get(s, 'ok')}",
            lambda s: f"x{FAULT.get(s, 'ok')}",
            secrets=("IncomingWebhook/x",),
        ),
        retry_after=1.0,
        provider_id=False,
    ),
    Case(
        "sms",
        _provider(
            lambda url: SmsChannel(
                SmsConfig(
                    account_sid=TWILIO_ACCOUNT,
                    auth_token=TWILIO_TOKEN,
                    from_number="+15550009999",
                    **_common(url),
                )
            ),
            lambda s: PHONES[s],
            lambda s: PHONES[s],
            secrets=(TWILIO_TOKEN, *PHONES.values()),
        ),
        retry_after=None,
        provider_id=True,
    ),
]
