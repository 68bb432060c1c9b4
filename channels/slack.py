"""Slack: one message per delivery through an incoming webhook, laid out with blocks.

Address: the webhook URL Slack gave, ``https://hooks.slack.com/services/T…/B…/…``,
or just its path ``/services/T…/B…/…``. The request goes to ``base_url`` plus
that path, so a local server can stand in for Slack. The URL is the credential:
it never appears unmasked in an error or a log line.

Body: ``text`` (the notification fallback: subject and text) and ``blocks``: a
header with the subject, a section with the text (mrkdwn, escaped), and a
button when the delivery carries ``metadata["action_url"]``.

Slack answers in plain text:

============================================  ======================================
``200 ok``                                     :class:`~channels.base.Sent`
``400 invalid_payload``, ``invalid_blocks``…   :class:`PermanentError`
``403``, ``404 no_service``, ``410``           :class:`InvalidAddressError`: the webhook
                                               was revoked, or its channel is gone
``429`` with ``Retry-After``                   :class:`RateLimitedError`; the webhook is
                                               paused for that long
``5xx``, timeout, connection error             :class:`TransientError`
``2xx`` with anything but ``ok``               :class:`TransientError` (not Slack's answer)
============================================  ======================================

Limit: about one message a second per webhook, short bursts allowed (Slack's
documented rate for incoming webhooks): a bucket of 1/s with bursts of 3.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

import httpx

from channels.base import ChannelConfig, Limits, Sent, mask_url
from channels.http import HttpChannel, ProviderConfig, action, excerpt, parse_retry_after, status_error, truncate
from channels.ratelimit import Rate
from schemas import Delivery
from schemas.errors import InvalidAddressError, TransientError

__all__ = ["SlackChannel", "SlackConfig", "slack_body"]

_PATH = re.compile(r"^/services/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+$")
_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")
HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FALLBACK_LIMIT = 4000


class SlackConfig(ProviderConfig):
    base_url: str = "https://hooks.slack.com"


def _mrkdwn(text: str) -> str:
    """Escape the three characters Slack reserves for its own markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(delivery: Delivery) -> dict[str, Any]:
    """The JSON document posted for one delivery."""
    subject = " ".join(delivery.subject.split()) or delivery.event_type
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": truncate(subject, HEADER_LIMIT), "emoji": True}},
    ]
    if delivery.text.strip():
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": truncate(_mrkdwn(delivery.text), SECTION_LIMIT)}}
        )
    link = action(delivery)
    if link is not None:
        label, url = link
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {"type": "button", "text": {"type": "plain_text", "text": truncate(label, 75)}, "url": url}
                ],
            }
        )
    fallback = truncate(f"{subject}\n{delivery.text}".strip(), FALLBACK_LIMIT)
    return {"text": _mrkdwn(fallback), "blocks": blocks}


class SlackChannel(HttpChannel):
    name: ClassVar[str] = "slack"
    config_model: ClassVar[type[ChannelConfig]] = SlackConfig
    limits: ClassVar[Limits] = Limits(max_in_flight=16, per_second=1.0)
    default_rate: ClassVar[Rate] = Rate(per_second=1.0, burst=3.0)

    def webhook_path(self, address: str) -> str:
        """The ``/services/…`` path of a Slack webhook address, or :class:`InvalidAddressError`."""
        address = address.strip()
        if address.startswith("/"):
            path = address
        else:
            try:
                url = httpx.URL(address)
            except (httpx.InvalidURL, ValueError) as exc:
                raise InvalidAddressError(f"slack address {mask_url(address)!r} is not a URL") from exc
            base = httpx.URL(self.base_url)
            if url.scheme != "https" and (url.host, url.scheme) != (base.host, base.scheme):
                raise InvalidAddressError(f"slack webhook {mask_url(address)!r} is not an https URL")
            if url.host not in _HOSTS and url.host != base.host:
                raise InvalidAddressError(f"slack webhook {mask_url(address)!r} is not on {' or '.join(_HOSTS)}")
            path = url.path
        if not _PATH.match(path):
            raise InvalidAddressError(f"slack webhook {mask_url('https://x' + path)!r} is not /services/T…/B…/…")
        return path

    async def send(self, delivery: Delivery) -> Sent:
        path = self.webhook_path(delivery.address)
        where = f"slack webhook {mask_url(self.base_url + path)}"
        body = json.dumps(slack_body(delivery), ensure_ascii=False).encode()
        answer = await self.post(
            self.base_url + path,
            where,
            {f"slack:{path}": self.rate},
            content=body,
            headers={"content-type": "application/json; charset=utf-8"},
            delivery_id=delivery.delivery_id,
        )
        text = answer.text().strip()
        if answer.ok:
            if text == "ok":
                return Sent(detail="ok")
            raise TransientError(f"{where} answered {answer.status} with {excerpt(text)!r}, not Slack's 'ok'")
        if answer.status == 429:
            wait = parse_retry_after(answer.headers.get("retry-after"))
            self.limiter.block(f"slack:{path}", wait or 1.0)
            raise status_error(429, where, excerpt(text), wait)
        if answer.status in (403, 404, 410):
            raise InvalidAddressError(f"{where} answered {answer.status}: {excerpt(text)}")
        raise status_error(answer.status, where, excerpt(text))
