"""A lean HTTP/1.1 keep-alive transport for the httpx clients of the HTTP channels.

httpx's default transport (httpcore) checks every pooled connection for expiry
and readability on every request, with a ``select()`` per connection; with the
32 connections of a webhook consumer that scan was most of the consumer's CPU
time (docs/performance.md, B2 and B4). This transport keeps what the channels
need and nothing else:

* one pool of idle connections per origin (scheme, host, port, TLS server name),
  at most ``max_connections`` requests in flight over all origins; a reused
  connection is checked once, in O(1) (closed by the peer? idle too long?);
* HTTP/1.1 framing by ``h11`` (the parser httpcore uses), over asyncio streams;
* TLS with the client's SSL context and the ``sni_hostname`` request extension,
  which the webhook SSRF guard sets when it pins a checked address;
* httpx's timeout extension (connect, write, read, pool) and httpx's exception
  classes, so callers map failures exactly as before;
* the response body streamed, and the connection returned to the pool only when
  the answer was read to its end and both sides may go on; anything else
  (a body left unread, a cancelled request, ``Connection: close``) closes it.

No request is retried here: a request that failed on a reused connection is a
transient failure like any other, and the retry tiers decide what follows.
Proxies still work: with ``trust_env`` httpx mounts its own transport for the
origins an ``HTTP(S)_PROXY`` variable covers.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import h11
import httpx

_READ = 64 * 1024
_MAX_HEAD = 64 * 1024
"""Largest status line plus headers accepted from a server."""

_Origin = tuple[bytes, str, int, str | None]


class _Connection:
    __slots__ = ("h11", "idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        """Not closed by either side (the stream sees the peer's close as it happens) nor idle too long."""
        return not self.writer.is_closing() and not self.reader.at_eof() and now - self.idle_since <= expiry

    def close(self) -> None:
        self.writer.close()


class _Body(httpx.AsyncByteStream):
    """The response body, read from the connection as the caller iterates."""

    def __init__(self, transport: KeepAliveTransport, origin: _Origin, conn: _Connection,
                 read_timeout: float | None) -> None:
        self._transport = transport
        self._origin = origin
        self._conn: _Connection | None = conn
        self._timeout = read_timeout
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        while True:
            event = await _next_event(conn, self._timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
                return

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._finished(self._origin, conn, reusable=self._complete)


async def _next_event(conn: _Connection, timeout: float | None) -> Any:
    """The next h11 event from the server, reading as needed."""
    while True:
        try:
            event = conn.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(f"malformed answer: {exc}") from exc
        if event is not h11.NEED_DATA:
            if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("the server closed the connection without a complete answer")
            return event
        try:
            async with asyncio.timeout(timeout):
                data = await conn.reader.read(_READ)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("no answer within the read timeout") from exc
        except OSError as exc:
            raise httpx.ReadError(f"reading the answer failed: {type(exc).__name__}") from exc
        try:
            conn.h11.receive_data(data)  # b"" is the end of the stream
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(f"malformed answer: {exc}") from exc


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
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await _read_all(request)

        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("no connection free within the pool timeout") from exc
        conn: _Connection | None = None
        try:
            conn = self._reuse(origin) or await self._connect(origin, timeouts.get("connect"))
            await self._send(conn, request, body, timeouts.get("write"))
            head = await _next_event(conn, timeouts.get("read"))
            while isinstance(head, h11.InformationalResponse):
                head = await _next_event(conn, timeouts.get("read"))
            stream = _Body(self, origin, conn, timeouts.get("read"))
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return httpx.Response(head.status_code, headers=head.headers, stream=stream,
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason})

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
                    host, port, ssl=context, server_hostname=server_name if context else None, limit=_READ)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection within {timeout} s") from exc
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS handshake failed: {exc.reason or type(exc).__name__}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connection failed: {exc.strerror or type(exc).__name__}") from exc
        return _Connection(reader, writer)

    async def _send(self, conn: _Connection, request: httpx.Request, body: bytes, timeout: float | None) -> None:
        headers = list(request.headers.raw)
        if body and not any(k.lower() == b"content-length" for k, _ in headers):
            headers.append((b"content-length", str(len(body)).encode()))
        try:
            data = conn.h11.send(h11.Request(method=request.method, target=request.url.raw_path, headers=headers))
            if body:
                data += conn.h11.send(h11.Data(data=body)) or b""
            data += conn.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        try:
            conn.writer.write(data or b"")
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
        state = conn.h11
        if reusable and not self._closed and state.our_state is h11.DONE and state.their_state is h11.DONE:
            state.start_next_cycle()
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


async def _read_all(request: httpx.Request) -> bytes:
    return await request.aread()
