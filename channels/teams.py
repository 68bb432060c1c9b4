"""Microsoft Teams: an Adaptive Card through an incoming webhook or a Workflows trigger.

Address: the URL Teams gave for the channel, either an incoming webhook
(``https://<tenant>.webhook.office.com/webhookb2/…``) or a Workflows "post to a
channel when a webhook request is received" trigger (``https://….logic.azure.com/
workflows/…`` or ``https://….environment.api.powerplatform.com/…``). Only those
Microsoft hosts are accepted, so a contact point cannot aim the channel
anywhere else. With ``base_url`` set, the scheme and host of every address are
replaced by it (a local stand-in for Teams); the path and query are kept.

Body: a ``message`` with one Adaptive Card attachment (version 1.4: the subject
as a bold heading, the text wrapped, an ``Action.OpenUrl`` button when
``metadata["action_url"]`` is set). The text is cut so the request stays under
Teams' 28 KB message limit.

=============================================  ======================================
``200`` ``1`` (webhook), ``202`` (Workflows)    :class:`~channels.base.Sent`
``200`` saying ``HTTP error N``                 classified as status N: the classic
                                                webhook reports failures this way
``429``                                         :class:`RateLimitedError` (``Retry-After``)
``403``, ``404``, ``410``                       :class:`InvalidAddressError`
other ``4xx``                                   :class:`PermanentError`
``5xx``, timeout, connection error              :class:`TransientError`
other ``2xx`` answers                           :class:`TransientError`
=============================================  ======================================

Limits: Microsoft documents connector webhooks as throttled past 4 requests a
second (and 60 in 30 seconds): a bucket of 2/s with bursts of 4 per webhook.
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

__all__ = ["TeamsChannel", "TeamsConfig", "teams_body"]

HOST_SUFFIXES = (".webhook.office.com", ".logic.azure.com", ".api.powerplatform.com")
MAX_BYTES = 28_000
_EMBEDDED_ERROR = re.compile(r"HTTP error (\d{3})")


class TeamsConfig(ProviderConfig):
    base_url: str = ""
    """Empty: post to the address as given. Set: replace each address's scheme and host by this."""


def teams_body(delivery: Delivery, text_limit: int = 20_000) -> dict[str, Any]:
    card_body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": truncate(" ".join(delivery.subject.split()) or delivery.event_type, 300),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
        },
    ]
    if delivery.text.strip():
        card_body.append({"type": "TextBlock", "text": truncate(delivery.text, text_limit), "wrap": True})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": card_body,
        "msteams": {"width": "Full"},
    }
    link = action(delivery)
    if link is not None:
        card["actions"] = [{"type": "Action.OpenUrl", "title": link[0], "url": link[1]}]
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def encoded_body(delivery: Delivery) -> bytes:
    """The request body, its text shortened until the whole stays under :data:`MAX_BYTES`."""
    limit = 20_000
    while True:
        body = json.dumps(teams_body(delivery, limit), ensure_ascii=False).encode()
        if len(body) <= MAX_BYTES or limit <= 100:
            return body
        limit = max(100, limit - (len(body) - MAX_BYTES) - 100)


class TeamsChannel(HttpChannel):
    name: ClassVar[str] = "teams"
    config_model: ClassVar[type[ChannelConfig]] = TeamsConfig
    limits: ClassVar[Limits] = Limits(max_in_flight=16, per_second=2.0)
    default_rate: ClassVar[Rate] = Rate(per_second=2.0, burst=4.0)

    def __init__(self, config: TeamsConfig) -> None:
        if config.base_url:
            super().__init__(config)
        else:
            super().__init__(config.model_copy(update={"base_url": "https://teams.invalid"}))
            self.base_url = ""

    def target(self, address: str) -> str:
        """The URL to post to for ``address``, or :class:`InvalidAddressError`."""
        try:
            url = httpx.URL(address.strip())
        except (httpx.InvalidURL, ValueError) as exc:
            raise InvalidAddressError(f"teams address {mask_url(address)!r} is not a URL") from exc
        host = url.host or ""
        if url.scheme != "https" or not host.endswith(HOST_SUFFIXES):
            raise InvalidAddressError(
                f"teams address {mask_url(address)!r} is not an https URL on a Teams or Workflows host"
            )
        path = url.raw_path.decode("ascii")
        return f"{self.base_url}{path}" if self.base_url else str(url)

    async def send(self, delivery: Delivery) -> Sent:
        url = self.target(delivery.address)
        endpoint = url.split("?", 1)[0]
        where = f"teams webhook {mask_url(url)}"
        answer = await self.post(
            url,
            where,
            {f"teams:{endpoint}": self.rate},
            content=encoded_body(delivery),
            headers={"content-type": "application/json"},
            delivery_id=delivery.delivery_id,
        )
        text = answer.text().strip()
        if answer.ok:
            embedded = _EMBEDDED_ERROR.search(text)
            if answer.status == 202 or text in ("1", ""):
                return Sent(detail=f"{answer.status}")
            if embedded:
                status = int(embedded.group(1))
                raise self._failure(status, where, excerpt(text), None, endpoint)
            raise TransientError(f"{where} answered {answer.status} with {excerpt(text)!r}, not Teams' answer")
        wait = parse_retry_after(answer.headers.get("retry-after"))
        raise self._failure(answer.status, where, excerpt(text), wait, endpoint)

    def _failure(self, status: int, where: str, detail: str, wait: float | None, endpoint: str) -> Exception:
        if status == 429:
            self.limiter.block(f"teams:{endpoint}", wait or 1.0)
        if status in (403, 404, 410):
            return InvalidAddressError(f"{where} answered {status}: {detail}")
        return status_error(status, where, detail, wait)
