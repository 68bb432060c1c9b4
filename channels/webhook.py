"""Webhooks: one signed JSON POST per delivery (Standard Webhooks headers).

Request: ``POST <delivery.address>`` with the body ``delivery.payload`` sent
byte for byte (the router renders it as JSON). Without a payload the body is
this default document::

    {"id": "<delivery id>", "type": "<event type>", "source": "<event source>",
     "subject": "<metadata['subject'] or null>", "time": "<event time, ISO 8601>",
     "recipient": "<recipient id>", "title": "<delivery subject>", "text": "<delivery text>"}

Headers: ``content-type: application/json``, ``user-agent``, ``webhook-id``
(the delivery id, stable across retries: receivers drop duplicates by it),
``webhook-timestamp`` (Unix seconds) and, with a ``signing_secret``,
``webhook-signature`` (see :mod:`channels.signing`).

Outcomes, by answer:

==========================  ==============================================
2xx                          :class:`Sent`, ``provider_id`` = the JSON ``id`` if any
3xx                          ``PermanentError``: redirects are not followed
408, 425, 5xx                ``TransientError``
429                          ``RateLimitedError`` with ``retry_after`` from Retry-After
404, 410                     ``InvalidAddressError``: nobody receives at this URL
other 4xx                    ``PermanentError`` with the status and a body excerpt
timeout, connection error    ``TransientError``
not an http(s) URL           ``InvalidAddressError``, before any request
==========================  ==============================================

``timeout`` bounds one whole attempt (connect, send, answer); only the first
64 KiB of an answer are read.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr

from channels.base import Channel, ChannelConfig, Limits, Sent, mask_url
from channels.signing import secret_key, sign
from schemas import Delivery
from schemas.errors import (
    DeliveryError,
    InvalidAddressError,
    PermanentError,
    RateLimitedError,
    TransientError,
)

__all__ = ["WebhookChannel", "WebhookConfig", "default_body", "parse_retry_after"]

_MAX_ANSWER = 64 * 1024
_EXCERPT = 200


class WebhookConfig(ChannelConfig):
    """HTTP settings. ``signing_secret`` is a SecretStr: hidden in repr and logs."""

    signing_secret: SecretStr | None = None
    """``whsec_<base64>`` (or a literal string; see :mod:`channels.signing`)."""
    timeout: float = 10.0
    """Seconds for one whole attempt: connect, send the body, read the answer."""
    connect_timeout: float = 5.0
    max_connections: int = 32
    user_agent: str = "Tidings/0.1"
    trust_env: bool = True
    """Honour HTTP(S)_PROXY, NO_PROXY and SSL_CERT_FILE from the environment."""


def default_body(delivery: Delivery) -> bytes:
    """The documented JSON body for a delivery that carries no payload."""
    document = {
        "id": delivery.delivery_id,
        "type": delivery.event_type,
        "source": delivery.event_source,
        "subject": delivery.metadata.get("subject"),
        "time": delivery.event_time.isoformat(),
        "recipient": delivery.recipient_id,
        "title": delivery.subject,
        "text": delivery.text,
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None if unusable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max((when - current).total_seconds(), 0.0)


class WebhookChannel(Channel):
    name: ClassVar[str] = "webhook"
    config_model: ClassVar[type[ChannelConfig]] = WebhookConfig
    limits: ClassVar[Limits] = Limits(max_in_flight=32)

    def max_in_flight(self) -> int:
        return self.config.max_connections

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._secret = config.signing_secret.get_secret_value() if config.signing_secret else None
        if self._secret is not None:
            secret_key(self._secret)  # fail at start on a malformed secret
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise RuntimeError("WebhookChannel.send() called after aclose()")
        if self._client is None:
            config = self.config
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
                limits=httpx.Limits(
                    max_connections=config.max_connections,
                    max_keepalive_connections=config.max_connections,
                ),
                follow_redirects=False,
                trust_env=config.trust_env,
                headers={"user-agent": config.user_agent},
            )
        return self._client

    def request_headers(self, delivery: Delivery, body: bytes, timestamp: int) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.delivery_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._secret is not None:
            headers["webhook-signature"] = sign(self._secret, delivery.delivery_id, timestamp, body)
        return headers

    async def send(self, delivery: Delivery) -> Sent:
        url = _check_url(delivery.address)
        masked = mask_url(delivery.address)
        body = delivery.payload.encode() if delivery.payload is not None else default_body(delivery)
        headers = self.request_headers(delivery, body, int(time.time()))
        client = self._http()
        try:
            async with asyncio.timeout(self.config.timeout):
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    answer = await _read_some(response)
        except TimeoutError as exc:
            raise TransientError(f"webhook {masked} timed out after {self.config.timeout:g} s") from exc
        except httpx.TimeoutException as exc:
            raise TransientError(f"webhook {masked} timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise TransientError(f"webhook {masked} failed: {type(exc).__name__}: {exc}") from exc
        return _outcome(response, answer, masked)

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _check_url(address: str) -> httpx.URL:
    try:
        url = httpx.URL(address)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidAddressError(f"webhook address {mask_url(address)!r} is not a valid URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidAddressError(f"webhook address {mask_url(address)!r} is not an absolute http(s) URL with a host")
    return url


async def _read_some(response: httpx.Response) -> bytes:
    """Up to 64 KiB of the answer; an undecodable answer reads as empty."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= _MAX_ANSWER:
                break
    except httpx.DecodingError:
        return b""
    return b"".join(chunks)[:_MAX_ANSWER]


def _outcome(response: httpx.Response, answer: bytes, masked: str) -> Sent:
    status = response.status_code
    if 200 <= status < 300:
        return Sent(provider_id=_answer_id(answer))
    raise _failure(status, response.headers, answer, masked)


def _failure(status: int, headers: httpx.Headers, answer: bytes, masked: str) -> DeliveryError:
    where = f"webhook {masked} answered {status}"
    if 300 <= status < 400:
        return PermanentError(f"{where}: redirect not followed (update the URL)")
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return RateLimitedError(f"{where}: rate limited{_excerpt(answer)}", retry_after=retry_after)
    if status in (408, 425) or status >= 500:
        return TransientError(f"{where}{_excerpt(answer)}")
    if status in (404, 410):
        return InvalidAddressError(f"{where}: no receiver at this URL{_excerpt(answer)}")
    if 400 <= status < 500:
        return PermanentError(f"{where}{_excerpt(answer)}")
    return TransientError(f"{where}: unexpected status")


def _answer_id(answer: bytes) -> str | None:
    try:
        document: Any = json.loads(answer)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(document, dict):
        value = document.get("id")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def _excerpt(answer: bytes) -> str:
    text = " ".join(answer.decode("utf-8", "replace").split())
    if not text:
        return ""
    if len(text) > _EXCERPT:
        text = text[: _EXCERPT - 3] + "..."
    return f": {text}"
