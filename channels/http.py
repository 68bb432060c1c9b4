"""What every HTTP provider channel shares: one client, rate limits, timeouts, outcome classes.

A provider channel (Slack, Discord, Telegram, Teams, SMS) subclasses
:class:`HttpChannel`, declares its default :class:`~channels.ratelimit.Rate`
per endpoint, builds its request and reads the provider's answer. This module
does the rest the same way for all of them:

* ``base_url`` in every provider's configuration, so tests and ``make run``
  point a channel at a local server that speaks the provider's API;
* a token bucket per endpoint (:mod:`channels.ratelimit`) taken before each
  call, and a provider's "retry after" remembered for the endpoint;
* one deadline per attempt (connect, send, answer), only the first 64 KiB of
  an answer read;
* transport failures mapped to the error tree: a timeout, a refused or reset
  connection, an answer that is not HTTP -> :class:`TransientError`.

Status classes, used by every provider unless it knows better:

=====================  ==============================================
429                     :class:`RateLimitedError` (``retry_after`` from the provider)
408, 425, 5xx           :class:`TransientError`
other 4xx               :class:`PermanentError`
2xx, answer malformed   :class:`TransientError`: something between us and the
                        provider answered (a proxy, a captive portal); nothing
                        confirms the message was accepted
=====================  ==============================================

Error messages name the provider and a masked endpoint, never a token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Protocol

import httpx
from pydantic import Field

from channels.base import Channel, ChannelConfig
from channels.ratelimit import EndpointLimiter, Rate
from channels.transport import Destination, KeepAliveTransport, destination
from schemas import Delivery
from schemas.errors import DeliveryError, PermanentError, RateLimitedError, TransientError

__all__ = [
    "Answer",
    "AnswerHeaders",
    "HttpChannel",
    "ProviderConfig",
    "action",
    "excerpt",
    "parse_retry_after",
    "seconds",
    "status_error",
    "truncate",
]

MAX_ANSWER = 64 * 1024
_EXCERPT = 200


class _MaskUrls(logging.Filter):
    """httpx logs every request with its full URL, where Telegram, Slack and Discord keep tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_origin(arg) if isinstance(arg, httpx.URL) else arg for arg in record.args)
        return True


def _origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}/***"


_LOG = logging.getLogger(__name__)
_HTTPX_LOG = logging.getLogger("httpx")
if not any(isinstance(f, _MaskUrls) for f in _HTTPX_LOG.filters):
    _HTTPX_LOG.addFilter(_MaskUrls())


class ProviderConfig(ChannelConfig):
    """Settings every HTTP provider channel has."""

    base_url: str
    """Scheme, host and optional path prefix of the provider's API."""
    timeout: float = Field(default=10.0, gt=0)
    """Seconds for one whole attempt: connect, send, read the answer."""
    connect_timeout: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=16, ge=1)
    per_second: float | None = Field(default=None, gt=0)
    """Override of the provider's documented rate per endpoint."""
    burst: float | None = Field(default=None, ge=1)
    """Override of how many sends may go at once before the rate applies."""
    max_queue_wait: float = Field(default=5.0, ge=0)
    """Longest wait for a token; past it the send is rate-limited without calling the provider."""
    user_agent: str = "Tidings/0.1"
    trust_env: bool = True
    """Honour HTTP(S)_PROXY, NO_PROXY and SSL_CERT_FILE from the environment."""



class ClientSettings(Protocol):
    """What :class:`HttpPool` reads from a channel's configuration."""

    @property
    def timeout(self) -> float: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def trust_env(self) -> bool: ...
    @property
    def user_agent(self) -> str: ...


class HttpPool:
    """The one HTTP pool an HTTP channel keeps: :class:`~channels.transport.KeepAliveTransport`
    under an ``httpx.AsyncClient``, no redirects followed, our user agent.

    :meth:`post` hands the request straight to the transport's
    :meth:`~channels.transport.KeepAliveTransport.request`: no httpx request or
    response objects and none of the client's layers (merging defaults, cookies,
    auth and redirect hooks), which together cost more CPU than the exchange
    itself. The pool writes the body and the headers as httpx would put them on
    the wire. When ``trust_env`` is on and the environment names a proxy, requests
    go through the client instead, which routes them over httpx's proxy
    transports; so does a request with something the direct path does not write
    (files, an auth flow other than a user and password, a streamed body).
    """

    def __init__(self, config: ClientSettings) -> None:
        self.transport = KeepAliveTransport(config.max_connections,
                                            ssl_context=httpx.create_ssl_context(trust_env=config.trust_env))
        self.client = httpx.AsyncClient(
            transport=self.transport,
            timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
            follow_redirects=False,
            trust_env=config.trust_env,
            headers={"user-agent": config.user_agent},
        )
        self.direct = not (config.trust_env and urllib.request.getproxies())
        self._timeout = {"connect": config.connect_timeout, "read": config.timeout, "write": config.timeout,
                         "pool": config.timeout}
        self._user_agent = config.user_agent.encode("ascii")

    async def post(self, url: Destination | httpx.URL | str, headers: dict[str, str] | None = None,
                   extensions: dict[str, Any] | None = None, deadline: float | None = None,
                   **body: Any) -> tuple[int, AnswerHeaders, bytes]:
        """POST and read up to 64 KiB of the answer; ``body`` is httpx's ``content``, ``json`` or ``data``,
        and ``auth`` a (user, password) pair. ``deadline`` (event-loop time) bounds the whole attempt:
        past it :class:`TimeoutError` is raised. Other transport failures raise httpx's exceptions."""
        written = _written(body) if self.direct else None
        if written is None:
            async with asyncio.timeout_at(deadline), self.client.stream(
                    "POST", url if not isinstance(url, Destination) else url.url(), headers=headers,
                    extensions=extensions, **body) as response:
                return response.status_code, AnswerHeaders(response.headers.raw), await _read_some(response)
        content, content_type, authorization = written
        where = url if isinstance(url, Destination) else destination(url)
        raw: list[tuple[bytes, bytes]] = []
        names: set[bytes] = set()
        if headers:
            for name, value in headers.items():
                key = name.encode("ascii")
                raw.append((key, value.encode("ascii")))
                names.add(key.lower())
        if b"user-agent" not in names:
            raw.insert(0, (b"user-agent", self._user_agent))
        if content_type is not None and b"content-type" not in names:
            raw.append((b"Content-Type", content_type))
        if authorization is not None:  # as httpx's BasicAuth: it replaces a caller's header
            raw = [(k, v) for k, v in raw if k.lower() != b"authorization"]
            raw.append((b"Authorization", authorization))
        timeouts = self._timeout
        sni_hostname = None
        if extensions:
            timeouts = extensions.get("timeout", timeouts)
            sni_hostname = extensions.get("sni_hostname")
        status, answer_headers, answer = await self.transport.request(
            b"POST", where, raw, content, timeouts, sni_hostname=sni_hostname, deadline=deadline, limit=MAX_ANSWER)
        if _LOG.isEnabledFor(logging.DEBUG):  # as httpx's client logs it, with the URL masked the same way
            _LOG.debug("HTTP Request: POST %s %d", where.masked(), status)
        return status, AnswerHeaders(answer_headers), answer

    async def aclose(self) -> None:
        await self.client.aclose()  # closes the transport too


def _written(body: dict[str, Any]) -> tuple[bytes, bytes | None, bytes | None] | None:
    """The bytes of a request body as httpx writes them (``content``, else form ``data``, else ``json``),
    its content type and a Basic ``Authorization`` for ``auth``; None when the pool cannot write them."""
    content = body.get("content")
    data = body.get("data")
    document = body.get("json")
    auth = body.get("auth")
    if not body.keys() <= _WRITTEN or not (data is None or isinstance(data, Mapping)):
        return None
    authorization = None
    if auth is not None:
        if not (isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(a, str | bytes) for a in auth)):
            return None
        user, password = (a.encode() if isinstance(a, str) else a for a in auth)
        authorization = b"Basic " + base64.b64encode(user + b":" + password)
    if content is not None:
        if isinstance(content, str):
            return content.encode(), None, authorization
        if isinstance(content, bytes):
            return content, None, authorization
        return None  # a stream: the client sends it
    if data:
        pairs = [(key, _form_value(v)) for key, value in data.items()
                 for v in (value if isinstance(value, list | tuple) else (value,))]
        return urllib.parse.urlencode(pairs, doseq=True).encode(), b"application/x-www-form-urlencoded", authorization
    if document is not None:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode(), b"application/json", authorization
    return b"", None, authorization


_WRITTEN = frozenset(("content", "data", "json", "auth"))


def _form_value(value: Any) -> str:
    """A form field's value as httpx writes it: JSON-style booleans, None as empty."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return "" if value is None else str(value)


class AnswerHeaders(Mapping[str, str]):
    """An answer's headers, looked up case-insensitively; a field sent more than once reads as its values
    joined with ``", "`` (as ``httpx.Headers`` reads it). Built from the raw pairs without parsing them:
    a channel looks at one or two of them, when at all."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def __getitem__(self, name: str) -> str:
        key = name.lower().encode("latin-1")
        values = [_text(value) for field, value in self.raw if field.lower() == key]
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(field.lower().decode("latin-1") for field, _ in self.raw))

    def __len__(self) -> int:
        return len({field.lower() for field, _ in self.raw})

    def __repr__(self) -> str:
        return f"AnswerHeaders({[field.decode('latin-1') for field, _ in self.raw]!r})"  # names only


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's answer: status, headers and (the start of) the body."""

    status: int
    headers: AnswerHeaders
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON, or ``None`` when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class HttpChannel(Channel):
    """Base of the HTTP provider channels. Subclasses set ``default_rate`` and implement ``send``."""

    default_rate: ClassVar[Rate] = Rate(per_second=10.0, burst=10.0)

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"{self.name} base_url must start with http:// or https://")
        self.limiter = EndpointLimiter(max_wait=config.max_queue_wait)
        self._pool: HttpPool | None = None
        self._closed = False

    def max_in_flight(self) -> int:
        return min(self.limits.max_in_flight, self.config.max_connections)

    @property
    def rate(self) -> Rate:
        """The rate per endpoint in force: the declared default unless configuration overrides it."""
        default = self.default_rate
        return Rate(self.config.per_second or default.per_second, self.config.burst or default.burst)

    def _http(self) -> HttpPool:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__}.send() called after aclose()")
        if self._pool is None:
            self._pool = HttpPool(self.config)
        return self._pool

    async def post(
        self, url: str, where: str, limits: dict[str, Rate], delivery_id: str | None = None, **request: Any
    ) -> Answer:
        """Take a token for every endpoint in ``limits``, POST, and return the answer.

        ``where`` names the endpoint in error messages (masked: no token). The
        delivery id travels as ``x-tidings-delivery-id``: providers ignore it,
        proxies and the local stand-ins log it. Transport failures raise
        :class:`TransientError`.
        """
        if delivery_id is not None:
            request["headers"] = {**request.get("headers", {}), "x-tidings-delivery-id": delivery_id}
        await self.limiter.acquire(limits)
        pool = self._http()
        timeout = self.config.timeout
        try:
            deadline = asyncio.get_running_loop().time() + timeout  # one deadline for the attempt
            status, headers, body = await pool.post(url, deadline=deadline, **request)
        except TimeoutError as exc:
            raise TransientError(f"{where} timed out after {timeout:g} s") from exc
        except httpx.TimeoutException as exc:
            raise TransientError(f"{where} timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            # The exception text can hold the request URL, and with it a token: name the class only.
            raise TransientError(f"{where} failed: {type(exc).__name__}") from exc
        return Answer(status, headers, body)

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()


async def _read_some(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_ANSWER:
                break
    except httpx.DecodingError:
        return b""
    return b"".join(chunks)[:MAX_ANSWER]


def status_error(status: int, where: str, detail: str = "", retry_after: float | None = None) -> DeliveryError:
    """The default error class for a non-2xx status (see the module's table)."""
    text = f"{where} answered {status}{f': {detail}' if detail else ''}"
    if status == 429:
        return RateLimitedError(text, retry_after=retry_after)
    if status in (408, 425) or status >= 500:
        return TransientError(text)
    if 400 <= status < 500:
        return PermanentError(text)
    if 300 <= status < 400:
        return PermanentError(f"{text} (redirects are not followed)")
    return TransientError(f"{text} (unexpected status)")


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


def seconds(value: Any) -> float | None:
    """A JSON number of seconds (``retry_after`` in a body), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return max(number, 0.0) if math.isfinite(number) else None


def excerpt(text: str | bytes, limit: int = _EXCERPT) -> str:
    """One line of at most ``limit`` characters of an answer, for an error message."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def truncate(text: str, limit: int, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``limit`` characters, marked with ``ellipsis`` when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(ellipsis))].rstrip() + ellipsis


def action(delivery: Delivery) -> tuple[str, str] | None:
    """The call to action of a delivery, ``(label, url)``, from ``metadata`` ``action_url`` and
    ``action_label``; None without one or when the URL is not http(s)."""
    url = delivery.metadata.get("action_url", "").strip()
    if not url.startswith(("https://", "http://")):
        return None
    label = delivery.metadata.get("action_label", "").strip() or "Open"
    return label, url
