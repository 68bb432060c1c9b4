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
  classes, so callers map failures exactly as before; one timer per request,
  moved from phase to phase, and only for the phases that wait;
* the answer's body read with its head when it is small and sized (the usual
  case), streamed otherwise; the connection goes back to the pool only when the
  answer was read to its end and both sides may go on; anything else (a body
  left unread, a cancelled request, ``Connection: close``, HTTP/1.0) closes it.

Two ways in: :meth:`KeepAliveTransport.handle_async_request`, the httpx
transport interface (``httpx.Request`` in, a streamed ``httpx.Response`` out),
and :meth:`KeepAliveTransport.request`, which the channels' pool uses: a URL
parsed once (:func:`destination`), raw header pairs and the body's bytes in;
the status, the headers and the start of the body, already read, out. Building
httpx's request and response objects cost about as much CPU as the exchange
itself. Both share the pool, the codec, the limits and the exceptions.

No request is retried here: a request that failed on a reused connection is a
transient failure like any other, and the retry tiers decide what follows.
Proxies still work: with ``trust_env`` httpx mounts its own transport for the
origins an ``HTTP(S)_PROXY`` variable covers.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
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


async def _next_piece(reader: asyncio.StreamReader, left: int) -> tuple[bytes, int]:
    """Read the next piece of a body whose framing still expects ``left`` (a byte count, :data:`_CHUNKED`
    or :data:`_CLOSE_DELIMITED`); returns the piece and what is expected after it, 0 once the body ended.

    Raises the stream's own exceptions; :func:`_read` maps them to httpx's.
    """
    if left == _CHUNKED:
        line = await reader.readuntil(b"\r\n")
        size = line[:-2].split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size):
            raise httpx.RemoteProtocolError("malformed answer: a bad chunk size")
        n = int(size, 16)
        if n == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers are read and dropped
            return b"", 0
        data = await reader.readexactly(n + 2)
        if data[-2:] != b"\r\n":
            raise httpx.RemoteProtocolError("malformed answer: a chunk does not end with CRLF")
        return data[:-2], _CHUNKED
    if left == _CLOSE_DELIMITED:
        data = await reader.read(_READ)
        return data, _CLOSE_DELIMITED if data else 0
    data = await reader.read(min(left, _READ))
    if not data:
        raise httpx.RemoteProtocolError("the server closed the connection in the middle of the body")
    return data, left - len(data)


# -- connections, deadlines and the pool -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    """A request URL parsed once (:func:`destination`): where to connect, and what the request line
    and the default ``Host`` header say."""

    scheme: bytes
    host: str
    port: int
    target: bytes
    """Path and query, as the request line carries them."""
    authority: bytes
    """The default ``Host``: the host, and the port unless it is the scheme's default."""

    def url(self) -> str:
        """The whole URL again (for httpx's client, on the paths the pool does not take itself)."""
        return f"{self.scheme.decode()}://{self.authority.decode()}{self.target.decode()}"

    def masked(self) -> str:
        """Scheme, host and port, for log lines: the path and the query can hold a token."""
        return f"{self.scheme.decode()}://{self.authority.decode()}/***"

    def __repr__(self) -> str:
        return f"Destination({self.masked()!r})"


def destination(url: str | httpx.URL) -> Destination:
    """``url`` parsed the way httpx parses it; a string is parsed once and remembered (endpoints repeat).

    Raises :class:`httpx.InvalidURL` (the URL is not shown: it may hold a token) or
    :class:`httpx.UnsupportedProtocol` for a scheme other than http(s) or a URL without a host.
    """
    if isinstance(url, str):
        return _parsed(url)
    return _destination(url)


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> Destination:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise httpx.InvalidURL("the request URL is not a valid URL (not shown: it may hold a token)") from None
    return _destination(parsed)


def _destination(url: httpx.URL) -> Destination:
    scheme = url.raw_scheme
    if scheme not in (b"http", b"https"):
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
    if not url.host:
        raise httpx.UnsupportedProtocol("the request URL has no host")
    port = url.port or (443 if scheme == b"https" else 80)
    if port > 65535:
        raise httpx.InvalidURL("the request URL's port is out of range")
    return Destination(scheme, url.host, port, url.raw_path, url.netloc)


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


_Phase = tuple[type[httpx.TimeoutException], str, str]
_POOL: _Phase = (httpx.PoolTimeout, "pool", "no connection free within the pool timeout")
_CONNECT: _Phase = (httpx.ConnectTimeout, "connect", "no connection within the connect timeout")
_WRITE: _Phase = (httpx.WriteTimeout, "write", "the request was not sent within the write timeout")
_ANSWER: _Phase = (httpx.ReadTimeout, "read", "no answer within the read timeout")


class _Clock:
    """The time limits of one request under a single ``asyncio.timeout``.

    Each phase that waits (for a slot, a connection, the send buffer, the answer)
    moves the one deadline to that phase's limit from httpx's timeout mapping, or
    to the attempt's ``deadline`` when that comes first, and only when the phase
    has to wait: a request on a reused connection schedules one timer, not one
    per phase. When it expires, the phase's httpx exception is raised, or a plain
    :class:`TimeoutError` when it was the attempt's deadline (as an enclosing
    ``asyncio.timeout`` would).
    """

    __slots__ = ("_deadline", "_limits", "_overall", "_phase", "_scope")

    def __init__(self, timeouts: Mapping[str, float | None], deadline: float | None) -> None:
        self._scope = asyncio.timeout(None)
        self._limits = timeouts
        self._deadline = deadline
        self._phase = _ANSWER
        self._overall = False

    def start(self, phase: _Phase) -> None:
        seconds = self._limits.get(phase[1])
        when = None if seconds is None else asyncio.get_running_loop().time() + seconds
        deadline = self._deadline
        self._overall = deadline is not None and (when is None or deadline <= when)
        if self._overall:
            when = deadline
        self._phase = phase
        if when != self._scope.when():
            self._scope.reschedule(when)

    async def __aenter__(self) -> _Clock:
        await self._scope.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        try:
            await self._scope.__aexit__(exc_type, exc_value, traceback)
        except TimeoutError as exc:
            if self._overall:
                raise TimeoutError("the attempt's deadline passed") from exc
            kind, _, message = self._phase
            raise kind(message) from exc


class _Body(httpx.AsyncByteStream):
    """The answer's body: already read (``first`` and no more to come) or read as the caller iterates."""

    def __init__(self, transport: KeepAliveTransport, origin: _Origin, conn: _Connection, first: bytes,
                 length: int, reusable: bool, read_timeout: float | None) -> None:
        self._transport = transport
        self._origin = origin
        self._conn: _Connection | None = conn
        self._first = first
        self._left = length  # bytes still to read, or _CHUNKED / _CLOSE_DELIMITED; 0 once read to its end
        self._reusable = reusable
        self._timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        if self._first:
            first, self._first = self._first, b""
            yield first
        while self._left:
            data, self._left = await _read(_next_piece(conn.reader, self._left), self._timeout)
            if data:
                yield data

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._finished(self._origin, conn, reusable=self._left == 0 and self._reusable)


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


@dataclass(frozen=True, slots=True)
class _Exchange:
    """A request sent and the head of its answer read; the connection (and its slot) still held."""

    conn: _Connection
    head: Head
    left: int
    """What the body's framing still expects (see :func:`_next_piece`); 0 when it was read whole."""
    first: bytes
    reusable: bool


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

    async def request(self, method: bytes, where: Destination, headers: _Headers, body: bytes,
                      timeouts: Mapping[str, float | None], *, sni_hostname: str | None = None,
                      deadline: float | None = None, limit: int = _READ) -> tuple[int, _Headers, bytes]:
        """Send one request and read its answer, without httpx's request and response objects.

        ``headers`` as they go on the wire (``Host`` is added when missing, the body's length always);
        ``timeouts`` is httpx's mapping (connect, write, read, pool), ``deadline`` an optional event-loop
        time for the whole attempt, past which :class:`TimeoutError` is raised. Returns the status, the
        headers and at most ``limit`` bytes of the body. The connection goes back to the pool only when
        the body was read to its end; a longer body is not drained: its connection is closed.
        Failures raise httpx's exceptions, as :meth:`handle_async_request` does; no message names the URL.
        """
        if self._closed:
            raise RuntimeError("KeepAliveTransport used after aclose()")
        origin: _Origin = (where.scheme, where.host, where.port,
                           (sni_hostname or where.host) if where.scheme == b"https" else None)
        framed = _framed(headers, body, method in _WITH_BODY, where.authority)
        data = encode_request(method, where.target, framed, body)
        async with _Clock(timeouts, deadline) as clock:
            exchange = await self._exchange(origin, method, data, clock)
            conn, left = exchange.conn, exchange.left
            pieces = [exchange.first]
            size = len(exchange.first)
            try:
                while left and size < limit:
                    clock.start(_ANSWER)
                    piece, left = await _read(_next_piece(conn.reader, left))
                    pieces.append(piece)
                    size += len(piece)
            except BaseException:
                self._finished(origin, conn, reusable=False)
                raise
            self._finished(origin, conn, reusable=exchange.reusable and left == 0)
        answer = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return exchange.head.status, exchange.head.headers, answer[:limit]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("KeepAliveTransport used after aclose()")
        where = _destination(request.url)
        timeouts = request.extensions.get("timeout", {})
        server_name = (request.extensions.get("sni_hostname") or where.host) if where.scheme == b"https" else None
        origin: _Origin = (where.scheme, where.host, where.port, server_name)
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        method = request.method.encode("ascii")
        data = encode_request(method, where.target, _framed(request.headers.raw, body, False), body)
        async with _Clock(timeouts, None) as clock:
            exchange = await self._exchange(origin, method, data, clock)
        head = exchange.head
        stream = _Body(self, origin, exchange.conn, exchange.first, exchange.left, exchange.reusable,
                       timeouts.get("read"))
        return httpx.Response(head.status, headers=head.headers, stream=stream,
                              extensions={"http_version": b"HTTP/1.%d" % head.minor, "reason_phrase": head.reason})

    async def _exchange(self, origin: _Origin, method: bytes, data: bytes, clock: _Clock) -> _Exchange:
        """Take a slot, send ``data`` on a pooled or new connection, and read the answer's head, with the
        body too when it is small and sized. On any failure the connection is closed and the slot given back."""
        if self._slots.locked():
            clock.start(_POOL)
        await self._slots.acquire()  # without waiting (and without a timer) when a slot is free
        conn: _Connection | None = None
        try:
            conn = self._reuse(origin)
            if conn is None:
                clock.start(_CONNECT)
                conn = await self._connect(origin)
            await self._send(conn, data, clock)
            clock.start(_ANSWER)
            reader = conn.reader
            head = parse_head((await _read(reader.readuntil(b"\r\n\r\n")))[:-4])
            while head.status < 200:  # interim answers (100 Continue, 103 Early Hints) are skipped
                if head.status == 101:
                    raise httpx.RemoteProtocolError("the server switched protocols, which was not asked for")
                head = parse_head((await _read(reader.readuntil(b"\r\n\r\n")))[:-4])
            left, reusable = body_framing(head, method)
            first = b""
            if 0 < left <= _READ:  # small and sized: read it now, under the same deadline
                first = await _read(reader.readexactly(left))
                left = 0
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return _Exchange(conn, head, left, first, reusable)

    def _reuse(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self._expiry):
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        scheme, host, port, server_name = origin
        context = None
        if scheme == b"https":
            context = self._ssl or httpx.create_ssl_context()
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=server_name if context else None, limit=_MAX_HEAD)
        except TimeoutError as exc:  # the kernel's, not the clock's (that one cancels)
            raise httpx.ConnectTimeout("the connection attempt timed out") from exc
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS handshake failed: {exc.reason or type(exc).__name__}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connection failed: {exc.strerror or type(exc).__name__}") from exc
        return _Connection(reader, writer)

    async def _send(self, conn: _Connection, data: bytes, clock: _Clock) -> None:
        try:
            conn.writer.write(data)
            if conn.writer.transport.get_write_buffer_size() > _READ:
                clock.start(_WRITE)
                await conn.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("sending the request timed out") from exc
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


_WITH_BODY = frozenset((b"POST", b"PUT", b"PATCH"))
"""Methods whose requests carry ``Content-Length`` even when the body is empty (as httpx sends them)."""


def _framed(headers: _Headers, body: bytes, length: bool, authority: bytes | None = None) -> _Headers:
    """The request's headers with the body sent whole: Content-Length (also for an empty body when
    ``length``), never Transfer-Encoding; ``Host`` first when ``authority`` is given and none is set."""
    out: _Headers = []
    has_host = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            length = True
        elif lower != b"transfer-encoding":
            has_host = has_host or lower == b"host"
            out.append((name, value))
    if authority is not None and not has_host:
        out.insert(0, (b"Host", authority))
    if body or length:
        out.append((b"content-length", b"%d" % len(body)))
    return out
