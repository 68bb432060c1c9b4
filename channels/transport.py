"""A lean HTTP/1.1 keep-alive transport for the httpx clients of the HTTP channels.

httpx's default transport (httpcore) checks every pooled connection for expiry
and readability on every request, with a ``select()`` per connection; with the
32 connections of a webhook consumer that scan was most of the consumer's CPU
time (docs/performance.md, B2 and B4). This transport keeps what the channels
need and nothing else:

* one pool of idle connections per origin (scheme, host, port, TLS server name),
  at most ``max_connections`` requests in flight over all origins; a reused
  connection is checked once, in O(1) (closed by the peer? idle too long?);
* HTTP/1.1 framing written here (:func:`encode_request`, :func:`parse_head`,
  :func:`body_framing`), strict about what it sends and what it accepts: header
  names must be tokens and values may not hold CR, LF or NUL (no header
  injection), an answer with a malformed status line, a folded header, or
  conflicting lengths is a protocol error;
* TLS with the client's SSL context and the ``sni_hostname`` request extension,
  which the webhook SSRF guard sets when it pins a checked address;
* httpx's timeout extension (connect, write, read, pool) and httpx's exception
  classes, so callers map failures exactly as before;
* the answer's body read with its head when it is small and sized (the usual
  case), streamed otherwise; the connection goes back to the pool only when the
  answer was read to its end and both sides may go on; anything else (a body
  left unread, a cancelled request, ``Connection: close``, HTTP/1.0) closes it.

No request is retried here: a request that failed on a reused connection is a
transient failure like any other, and the retry tiers decide what follows.
Proxies still work: with ``trust_env`` httpx mounts its own transport for the
origins an ``HTTP(S)_PROXY`` variable covers.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import httpx

_READ = 64 * 1024
_MAX_HEAD = 64 * 1024
"""Largest status line plus headers accepted from a server (also the largest chunk-size line)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(rb"[\r\n\x00]")
_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: (.*))?")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

_T = TypeVar("_T")
_Origin = tuple[bytes, str, int, str | None]
_Headers = list[tuple[bytes, bytes]]


# -- the codec (pure functions) --------------------------------------------------------------------


def encode_request(method: bytes, target: bytes, headers: _Headers, body: bytes) -> bytes:
    """The bytes of one HTTP/1.1 request; ``headers`` must already hold Host and the body's length.

    Raises :class:`httpx.LocalProtocolError` for a method or header name that is not a token,
    a target with whitespace or control characters, or a header value with CR, LF or NUL.
    """
    if not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"illegal method {method!r}")
    if not target or _UNSAFE_TARGET.search(target):
        raise httpx.LocalProtocolError("illegal request target")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise httpx.LocalProtocolError(f"illegal header name {name!r}")
        if _UNSAFE_VALUE.search(value):
            # The value is not shown: it may be a credential.
            raise httpx.LocalProtocolError(f"illegal character in the value of header {name.decode()!r}")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed status line and header block."""

    minor: int
    """1 for HTTP/1.1, 0 for HTTP/1.0."""
    status: int
    reason: bytes
    headers: _Headers


def parse_head(block: bytes) -> Head:
    """Parse a status line and headers (``block`` without the final blank line)."""
    lines = block.split(b"\r\n")
    found = _STATUS_LINE.fullmatch(lines[0])
    if found is None:
        raise httpx.RemoteProtocolError("malformed answer: not an HTTP/1.x status line")
    headers: _Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise httpx.RemoteProtocolError("malformed answer: a header line is not 'name: value'")
        value = value.strip(b" \t")
        if _UNSAFE_VALUE.search(value):
            raise httpx.RemoteProtocolError("malformed answer: a header value holds a control character")
        headers.append((name, value))
    return Head(int(found[1]), int(found[2]), found[3] or b"", headers)


_CLOSE_DELIMITED = -1
_CHUNKED = -2


def body_framing(head: Head, method: bytes) -> tuple[int, bool]:
    """How the body of an answer ends, and whether the connection may serve another request.

    The length is a byte count, :data:`_CHUNKED` or :data:`_CLOSE_DELIMITED` (RFC 9112, 6.3).
    """
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    close = head.minor == 0
    for name, value in head.headers:
        lower = name.lower()
        if lower == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif lower == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",")]
        elif lower == b"connection":
            close = close or b"close" in (t.strip().lower() for t in value.split(b","))
    if method == b"HEAD" or head.status in (204, 304) or head.status < 200:
        return 0, not close
    if codings:
        if codings[-1] == b"chunked":
            return _CHUNKED, not close
        return _CLOSE_DELIMITED, False
    if lengths:
        if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
            raise httpx.RemoteProtocolError("malformed answer: an invalid or conflicting Content-Length")
        return int(lengths.pop()), not close
    return _CLOSE_DELIMITED, False


# -- connections and the pool -------------------------------------------------------------------------


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        """Not closed by either side (the stream sees the peer's close as it happens) nor idle too long."""
        return not self.writer.is_closing() and not self.reader.at_eof() and now - self.idle_since <= expiry

    def close(self) -> None:
        self.writer.close()


class _Body(httpx.AsyncByteStream):
    """The answer's body: already read (``first`` and no more to come) or read as the caller iterates."""

    def __init__(self, transport: KeepAliveTransport, origin: _Origin, conn: _Connection, first: bytes,
                 length: int, reusable: bool, read_timeout: float | None) -> None:
        self._transport = transport
        self._origin = origin
        self._conn: _Connection | None = conn
        self._first = first
        self._left = length  # bytes still to read, or _CHUNKED / _CLOSE_DELIMITED
        self._reusable = reusable
        self._timeout = read_timeout
        self._complete = length == 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        if self._first:
            first, self._first = self._first, b""
            yield first
        reader = conn.reader
        while not self._complete:
            if self._left == _CHUNKED:
                line = await _read(reader.readuntil(b"\r\n"), self._timeout)
                size = line[:-2].split(b";", 1)[0].strip()
                if not _HEX.fullmatch(size):
                    raise httpx.RemoteProtocolError("malformed answer: a bad chunk size")
                n = int(size, 16)
                if n == 0:
                    while await _read(reader.readuntil(b"\r\n"), self._timeout) != b"\r\n":
                        pass  # trailers are read and dropped
                    self._complete = True
                    return
                data = await _read(reader.readexactly(n + 2), self._timeout)
                if data[-2:] != b"\r\n":
                    raise httpx.RemoteProtocolError("malformed answer: a chunk does not end with CRLF")
                yield data[:-2]
            elif self._left == _CLOSE_DELIMITED:
                data = await _read(reader.read(_READ), self._timeout)
                if not data:
                    self._complete = True
                    return
                yield data
            else:
                data = await _read(reader.read(min(self._left, _READ)), self._timeout)
                if not data:
                    raise httpx.RemoteProtocolError("the server closed the connection in the middle of the body")
                self._left -= len(data)
                self._complete = self._left == 0
                yield data

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._finished(self._origin, conn, reusable=self._complete and self._reusable)


async def _read(pending: Awaitable[_T], timeout: float | None = None) -> _T:
    """Await one read of the answer (under the read timeout when one is given), with httpx's exceptions."""
    try:
        if timeout is None:
            return await pending
        async with asyncio.timeout(timeout):
            return await pending
    except TimeoutError as exc:
        raise httpx.ReadTimeout("no answer within the read timeout") from exc
    except asyncio.IncompleteReadError as exc:
        raise httpx.RemoteProtocolError("the server closed the connection without a complete answer") from exc
    except asyncio.LimitOverrunError as exc:
        raise httpx.RemoteProtocolError("malformed answer: a header block or line too long") from exc
    except OSError as exc:
        raise httpx.ReadError(f"reading the answer failed: {type(exc).__name__}") from exc


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over pooled keep-alive connections; see the module's docstring."""

    def __init__(self, max_connections: int = 32, keepalive_expiry: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._slots = asyncio.Semaphore(max_connections)
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("KeepAliveTransport used after aclose()")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        timeouts = request.extensions.get("timeout", {})
        server_name = (request.extensions.get("sni_hostname") or url.host) if scheme == b"https" else None
        port = url.port or (443 if scheme == b"https" else 80)
        origin: _Origin = (scheme, url.host, port, server_name)
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        method = request.method.encode("ascii")
        data = encode_request(method, url.raw_path, _framed(request.headers.raw, body), body)

        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no connection free within the pool timeout") from exc
        conn: _Connection | None = None
        read_timeout = timeouts.get("read")
        try:
            conn = self._reuse(origin) or await self._connect(origin, timeouts.get("connect"))
            await self._send(conn, data, timeouts.get("write"))
            reader = conn.reader
            async with asyncio.timeout(read_timeout):
                head = parse_head((await _read(reader.readuntil(b"\r\n\r\n")))[:-4])
                while head.status < 200:  # interim answers (100 Continue, 103 Early Hints) are skipped
                    if head.status == 101:
                        raise httpx.RemoteProtocolError("the server switched protocols, which was not asked for")
                    head = parse_head((await _read(reader.readuntil(b"\r\n\r\n")))[:-4])
                length, reusable = body_framing(head, method)
                first = b""
                if 0 < length <= _READ:  # small and sized: read it now, under the same deadline
                    first = await _read(reader.readexactly(length))
                    length = 0
            stream = _Body(self, origin, conn, first, length, reusable, read_timeout)
        except TimeoutError as exc:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise httpx.ReadTimeout("no answer within the read timeout") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return httpx.Response(head.status, headers=head.headers, stream=stream,
                              extensions={"http_version": b"HTTP/1.%d" % head.minor, "reason_phrase": head.reason})

    def _reuse(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self._expiry):
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin, timeout: float | None) -> _Connection:
        scheme, host, port, server_name = origin
        context = None
        if scheme == b"https":
            context = self._ssl or httpx.create_ssl_context()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=server_name if context else None, limit=_MAX_HEAD)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection within {timeout} s") from exc
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS handshake failed: {exc.reason or type(exc).__name__}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connection failed: {exc.strerror or type(exc).__name__}") from exc
        return _Connection(reader, writer)

    async def _send(self, conn: _Connection, data: bytes, timeout: float | None) -> None:
        try:
            conn.writer.write(data)
            if conn.writer.transport.get_write_buffer_size() > _READ:
                async with asyncio.timeout(timeout):
                    await conn.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("the request was not sent within the write timeout") from exc
        except OSError as exc:
            raise httpx.WriteError(f"sending the request failed: {type(exc).__name__}") from exc

    def _finished(self, origin: _Origin, conn: _Connection, reusable: bool) -> None:
        """The caller is done with an answer: keep the connection for the next request, or close it."""
        self._slots.release()
        if reusable and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    async def __aenter__(self) -> KeepAliveTransport:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None = None, exc_value: BaseException | None = None,
                        traceback: TracebackType | None = None) -> None:
        await self.aclose()


def _framed(headers: _Headers, body: bytes) -> _Headers:
    """The request's headers with the body sent whole: Content-Length, never Transfer-Encoding."""
    had_length = any(k.lower() == b"content-length" for k, _ in headers)
    out = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")]
    if body or had_length:
        out.append((b"content-length", b"%d" % len(body)))
    return out
