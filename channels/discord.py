"""Discord: one embed per delivery through a channel webhook.

Address: the webhook URL, ``https://discord.com/api/webhooks/<id>/<token>``
(``discordapp.com`` and ``/api/v10/`` forms accepted), or ``<id>/<token>``.
The request goes to ``base_url`` + ``/api/webhooks/<id>/<token>?wait=true``,
so Discord answers with the created message and its id. The token is the
credential: errors show the webhook id only.

Body: one embed (title = subject, description = text, colour by priority, a
link when ``metadata["action_url"]`` is set, the event time as timestamp) and
``allowed_mentions: {"parse": []}``, so nothing in a rendered text can ping
``@everyone`` or a role.

=========================================  ======================================
``200`` with the message JSON, or ``204``   :class:`~channels.base.Sent` (message id)
``429``                                     :class:`RateLimitedError`, ``retry_after``
                                            from the body (seconds, fractional),
                                            else from ``Retry-After``; the webhook
                                            (or, when ``global``, every webhook) is
                                            paused for that long
``401``, ``403``, ``404`` (Unknown Webhook) :class:`InvalidAddressError`
other ``4xx``                               :class:`PermanentError` with Discord's
                                            ``code`` and ``message``
``5xx``, timeout, connection error          :class:`TransientError`
``200`` that is not a message               :class:`TransientError`
=========================================  ======================================

Limits: Discord publishes its buckets in headers rather than numbers; the
default bucket is 5 requests per 2 seconds per webhook, and an answer with
``X-RateLimit-Remaining: 0`` pauses the webhook for ``X-RateLimit-Reset-After``.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

import httpx

from channels.base import ChannelConfig, Limits, Sent
from channels.http import (
    Answer,
    HttpChannel,
    ProviderConfig,
    action,
    excerpt,
    parse_retry_after,
    seconds,
    status_error,
    truncate,
)
from channels.ratelimit import Rate
from schemas import Delivery, Priority
from schemas.errors import InvalidAddressError, TransientError

__all__ = ["DiscordChannel", "DiscordConfig", "discord_body"]

_HOSTS = ("discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com")
_PATH = re.compile(r"^/api/(?:v\d+/)?webhooks/(?P<id>\d{1,25})/(?P<token>[A-Za-z0-9_.-]{1,100})/?$")
_SHORT = re.compile(r"^(?P<id>\d{1,25})/(?P<token>[A-Za-z0-9_.-]{1,100})$")
COLOURS = {Priority.low: 0x95A5A6, Priority.normal: 0x3498DB, Priority.high: 0xE67E22, Priority.urgent: 0xE74C3C}
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
GLOBAL = "discord:global"


class DiscordConfig(ProviderConfig):
    base_url: str = "https://discord.com"
    username: str | None = None
    """Name shown as the author instead of the webhook's own."""


def discord_body(delivery: Delivery, username: str | None = None) -> dict[str, Any]:
    embed: dict[str, Any] = {
        "title": truncate(" ".join(delivery.subject.split()) or delivery.event_type, TITLE_LIMIT),
        "description": truncate(delivery.text, DESCRIPTION_LIMIT),
        "color": COLOURS.get(delivery.priority, COLOURS[Priority.normal]),
        "timestamp": delivery.event_time.isoformat(),
        "footer": {"text": truncate(delivery.event_type, 100)},
    }
    link = action(delivery)
    if link is not None:
        embed["url"] = link[1]
    body: dict[str, Any] = {"embeds": [embed], "allowed_mentions": {"parse": []}}
    if username:
        body["username"] = username
    return body


class DiscordChannel(HttpChannel):
    name: ClassVar[str] = "discord"
    config_model: ClassVar[type[ChannelConfig]] = DiscordConfig
    limits: ClassVar[Limits] = Limits(max_in_flight=16, per_second=2.5)
    default_rate: ClassVar[Rate] = Rate(per_second=2.5, burst=5.0)
    config: DiscordConfig

    def webhook(self, address: str) -> tuple[str, str]:
        """``(id, token)`` of a Discord webhook address, or :class:`InvalidAddressError`."""
        address = address.strip()
        short = _SHORT.match(address)
        if short:
            return short["id"], short["token"]
        try:
            url = httpx.URL(address)
        except (httpx.InvalidURL, ValueError) as exc:
            raise InvalidAddressError("discord address is not a webhook URL or '<id>/<token>'") from exc
        match = _PATH.match(url.path)
        base_host = httpx.URL(self.base_url).host
        if match is None or (url.host not in _HOSTS and url.host != base_host):
            raise InvalidAddressError(
                f"discord address on {url.host or '?'!r} is not a webhook URL (https://discord.com/api/webhooks/…)"
            )
        return match["id"], match["token"]

    async def send(self, delivery: Delivery) -> Sent:
        webhook_id, token = self.webhook(delivery.address)
        where = f"discord webhook {webhook_id}"
        key = f"discord:{webhook_id}"
        body = json.dumps(discord_body(delivery, self.config.username), ensure_ascii=False).encode()
        answer = await self.post(
            f"{self.base_url}/api/webhooks/{webhook_id}/{token}?wait=true",
            where,
            {key: self.rate, GLOBAL: Rate(50.0, 50.0)},
            content=body,
            headers={"content-type": "application/json"},
            delivery_id=delivery.delivery_id,
        )
        self._follow_headers(key, answer)
        document = answer.json()
        if answer.status == 204:
            return Sent()
        if answer.ok:
            if isinstance(document, dict) and isinstance(document.get("id"), str):
                return Sent(provider_id=document["id"])
            raise TransientError(f"{where} answered {answer.status} without a message: {excerpt(answer.body)!r}")
        info = document if isinstance(document, dict) else {}
        detail = _describe(info) or excerpt(answer.body)
        if answer.status == 429:
            retry_after = seconds(info.get("retry_after"))
            if retry_after is None:
                retry_after = parse_retry_after(answer.headers.get("retry-after"))
            self.limiter.block(GLOBAL if info.get("global") is True else key, retry_after or 1.0)
            raise status_error(429, where, detail, retry_after)
        if answer.status in (401, 403, 404):
            raise InvalidAddressError(f"{where} answered {answer.status}: {detail}")
        raise status_error(answer.status, where, detail)

    def _follow_headers(self, key: str, answer: Answer) -> None:
        """Discord says how long the bucket needs when it is empty: wait that long before the next send."""
        if answer.headers.get("x-ratelimit-remaining") == "0":
            try:
                reset_after = float(answer.headers.get("x-ratelimit-reset-after", ""))
            except ValueError:
                return
            self.limiter.block(key, reset_after)


def _describe(info: dict[str, Any]) -> str:
    message = info.get("message")
    code = info.get("code")
    if not isinstance(message, str):
        return ""
    return f"{message} (code {code})" if isinstance(code, int) and code else message
