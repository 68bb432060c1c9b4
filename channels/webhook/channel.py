"""The webhook channel: sign, authenticate, guard, POST, follow allowed redirects, classify."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator

from channels.base import Channel, ChannelConfig, Limits, Sent, mask_url
from channels.http import AnswerHeaders, HttpPool, excerpt, parse_retry_after
from channels.netguard import NetworkGuard, parse_networks
from channels.ratelimit import EndpointLimiter, Rate
from channels.signing import secret_key, sign
from channels.webhook.auth import WebhookAuth, credential_for
from schemas import Delivery
from schemas.errors import (
    DeliveryError,
    InvalidAddressError,
    PermanentError,
    RateLimitedError,
    TransientError,
)

_FOLLOWED = (307, 308)  # the redirects that keep the method and the body
_UNLIMITED = Rate(per_second=1e9, burst=1e9)


class WebhookConfig(ChannelConfig):
    """HTTP settings. Secrets are SecretStr: hidden in repr and logs."""

    signing_secret: SecretStr | None = None
    """``whsec_<base64>`` (or a literal string; see :mod:`channels.signing`)."""
    timeout: float = 10.0
    """Seconds for one whole attempt: connect, send the body, read the answer."""
    connect_timeout: float = 5.0
    max_connections: int = 32
    user_agent: str = "Tidings/0.1"
    trust_env: bool = True
    """Honour HTTP(S)_PROXY, NO_PROXY and SSL_CERT_FILE from the environment."""
    auth: dict[str, WebhookAuth] = Field(default_factory=dict)
    """URL prefix -> credential (see :mod:`channels.webhook.auth`)."""
    allow_networks: tuple[str, ...] = ()
    """CIDR networks the SSRF guard lets through although they are not public."""
    max_redirects: int = Field(default=0, ge=0, le=5)
    """307/308 redirects followed per attempt; 0 refuses every redirect."""
    per_second: float | None = Field(default=None, gt=0)
    """Requests a second to one receiver (scheme, host and port); None: no bucket, only 429 pauses."""
    burst: float = Field(default=10.0, ge=1)
    max_queue_wait: float = Field(default=5.0, ge=0)
    """Longest wait for a receiver's token or pause; past it the send is rate-limited without calling."""

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)
        return value

    @field_validator("auth")
    @classmethod
    def _prefixes(cls, value: dict[str, WebhookAuth]) -> dict[str, WebhookAuth]:
        for prefix in value:
            url = httpx.URL(prefix)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(f"auth prefix {mask_url(prefix)!r} is not an http(s) URL with a host")
        return value


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
        self.guard = NetworkGuard(config.allow_networks)
        self.limiter = EndpointLimiter(max_wait=config.max_queue_wait)
        self._rate = Rate(config.per_second, config.burst) if config.per_second else None
        self._pool: HttpPool | None = None
        self._closed = False

    def _http(self) -> HttpPool:
        if self._closed:
            raise RuntimeError("WebhookChannel.send() called after aclose()")
        if self._pool is None:
            self._pool = HttpPool(self.config)
        return self._pool

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
        url, masked, receiver = _endpoint(delivery.address)
        body = delivery.payload.encode() if delivery.payload is not None else default_body(delivery)
        headers = self.request_headers(delivery, body, int(time.time()))
        credential = credential_for(url, self.config.auth)
        # Every receiver gets a key, so a 429's pause holds; a bucket only when a rate is configured.
        await self.limiter.acquire({receiver: self._rate or _UNLIMITED})
        try:
            deadline = asyncio.get_running_loop().time() + self.config.timeout  # one deadline for the attempt
            status, answer_headers, answer = await self._post(url, body, headers, credential, masked, deadline)
        except TimeoutError as exc:
            raise TransientError(f"webhook {masked} timed out after {self.config.timeout:g} s") from exc
        except httpx.TimeoutException as exc:
            raise TransientError(f"webhook {masked} timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise TransientError(f"webhook {masked} failed: {type(exc).__name__}") from exc
        if 200 <= status < 300:
            return Sent(provider_id=_answer_id(answer))
        failure = _failure(status, answer_headers, answer, masked)
        if isinstance(failure, RateLimitedError):
            self.limiter.block(receiver, failure.retry_after or 1.0)
        raise failure

    async def _post(
        self, url: httpx.URL, body: bytes, headers: dict[str, str], credential: WebhookAuth | None, masked: str,
        deadline: float,
    ) -> tuple[int, AnswerHeaders, bytes]:
        """POST, following allowed redirects, all before ``deadline``; every hop goes through the guard."""
        origin = (url.scheme, url.host, url.port)
        for hop in range(self.config.max_redirects + 1):
            target = self.guard.remembered(url)
            if target is None:  # the resolver is called: it waits, under the attempt's deadline too
                async with asyncio.timeout_at(deadline):
                    target = await self.guard.resolve(url)
            sent_headers = dict(headers)
            sent_headers["host"] = url.netloc.decode("ascii")
            if credential is not None and (url.scheme, url.host, url.port) == origin:
                sent_headers.update(credential.headers())
            extensions = {"sni_hostname": target.host} if url.scheme == "https" else {}
            status, answer_headers, answer = await self._http().post(
                target.destination, content=body, headers=sent_headers, extensions=extensions, deadline=deadline)
            location = answer_headers.get("location")
            if status not in _FOLLOWED or not location or hop == self.config.max_redirects:
                return status, answer_headers, answer
            try:
                url = _check_url(str(url.join(location)))
            except InvalidAddressError as exc:
                raise InvalidAddressError(f"webhook {masked} redirected to an unusable URL") from exc
        raise AssertionError("unreachable: the loop returns on its last hop")

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()


@functools.lru_cache(maxsize=4096)
def _endpoint(address: str) -> tuple[httpx.URL, str, str]:
    """A webhook address parsed once: the URL, its masked form for messages, and the receiver
    (scheme, host and port) its rate limit and 429 pauses are kept for."""
    url = _check_url(address)
    return url, mask_url(address), f"webhook:{url.scheme}://{url.netloc.decode('ascii')}"


def _check_url(address: str) -> httpx.URL:
    try:
        url = httpx.URL(address)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidAddressError(f"webhook address {mask_url(address)!r} is not a valid URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidAddressError(f"webhook address {mask_url(address)!r} is not an absolute http(s) URL with a host")
    return url


def _failure(status: int, headers: AnswerHeaders, answer: bytes, masked: str) -> DeliveryError:
    where = f"webhook {masked} answered {status}"
    detail = f": {excerpt(answer)}" if answer.strip() else ""
    if 300 <= status < 400:
        return PermanentError(f"{where}: redirect not followed (update the URL)")
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return RateLimitedError(f"{where}: rate limited{detail}", retry_after=retry_after)
    if status in (408, 425) or status >= 500:
        return TransientError(f"{where}{detail}")
    if status in (404, 410):
        return InvalidAddressError(f"{where}: no receiver at this URL{detail}")
    if 400 <= status < 500:
        return PermanentError(f"{where}{detail}")
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
