"""channels.transport against real HTTP/1.1 servers on loopback (asyncio servers written here,
so that each test controls the answer byte by byte: keep-alive, close, chunks, silence, garbage)."""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from channels.transport import KeepAliveTransport, body_framing, destination, encode_request, parse_head
from devstack.sinks import read_http_request
from tests.channels.conftest import Certificate

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]
"""Writes the answer to one request (its head and body given); False closes the connection."""

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    def url(self, path: str = "/hook", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def fixed(answer: bytes, keep: bool = True, delay: float = 0.0) -> Answer:
    """Answer every request with ``answer`` (after ``delay`` seconds); ``keep`` False hangs up after it."""

    async def write(request: bytes, writer: asyncio.StreamWriter) -> bool:
        if delay:
            await asyncio.sleep(delay)
        writer.write(answer)
        return keep

    return write


answer_ok = fixed(OK)


def held_until(release: asyncio.Event) -> Answer:
    """Answer ``OK`` to each request only once ``release`` is set (a connection kept busy)."""

    async def write(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(OK)
        return True

    return write


def silent_first() -> Answer:
    """Say nothing to the first request (for 5 s, longer than any test's read timeout), ``OK`` to the rest."""
    calls = 0

    async def write(request: bytes, writer: asyncio.StreamWriter) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        writer.write(OK)
        return True

    return write


@asynccontextmanager
async def http_server(answer: Answer = answer_ok, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    state = Server(port=0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while (parts := await read_http_request(reader)) is not None:
                request = b"".join(parts)
                state.requests.append(request)
                keep = await answer(request, writer)
                await writer.drain()
                if not keep:
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function in a fresh event loop (fixtures pass through by name)."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def client(max_connections: int = 4, timeout: float = 5.0, **kwargs: object) -> httpx.AsyncClient:
    transport = KeepAliveTransport(max_connections, **kwargs)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, timeout=timeout)


# -- keep-alive and the pool ---------------------------------------------------------------------


@in_loop
async def test_sequential_requests_share_one_connection_and_bodies_arrive_intact() -> None:
    async with http_server() as server, client() as http:
        for i in range(30):
            answer = await http.post(server.url(), content=f'{{"n":{i}}}'.encode(),
                                     headers={"webhook-id": f"d-{i}"})
            assert answer.status_code == 200 and answer.json() == {"ok": True}
    assert server.connections == 1
    assert len(server.requests) == 30
    assert server.requests[7].endswith(b'{"n":7}')
    assert b"webhook-id: d-7\r\n" in server.requests[7]
    assert b"content-length: 7\r\n" in server.requests[7].lower()


@in_loop
async def test_concurrent_requests_never_open_more_than_max_connections() -> None:
    async with http_server(fixed(OK, delay=0.01)) as server, client(max_connections=3) as http:
        answers = await asyncio.gather(*(http.post(server.url(), content=b"{}") for _ in range(40)))
    assert [a.status_code for a in answers] == [200] * 40
    assert 1 <= server.connections <= 3


@in_loop
async def test_a_connection_the_server_closes_is_not_reused() -> None:
    answer = fixed(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", keep=False)
    async with http_server(answer) as server, client() as http:
        for _ in range(5):
            assert (await http.post(server.url(), content=b"{}")).text == "ok"
    assert server.connections == 5


@in_loop
async def test_an_idle_connection_closed_by_the_server_meanwhile_is_replaced() -> None:
    # a keep-alive answer, but the server goes away right after it
    async with http_server(fixed(OK, keep=False)) as server, client() as http:
        assert (await http.post(server.url(), content=b"{}")).status_code == 200
        await asyncio.sleep(0.1)  # the peer's close reaches our idle connection
        assert (await http.post(server.url(), content=b"{}")).status_code == 200
    assert server.connections == 2


@in_loop
async def test_an_expired_idle_connection_is_not_reused() -> None:
    async with http_server() as server, client(keepalive_expiry=0.0) as http:
        for _ in range(3):
            await http.post(server.url(), content=b"{}")
            await asyncio.sleep(0.01)
    assert server.connections == 3


@in_loop
async def test_chunked_answers_are_read_whole() -> None:
    answer = fixed(b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    async with http_server(answer) as server, client() as http:
        first = await http.post(server.url(), content=b"{}")
        second = await http.post(server.url(), content=b"{}")
    assert (first.status_code, first.text, second.text) == (202, "hello world", "hello world")
    assert server.connections == 1


@in_loop
async def test_an_answer_left_unread_closes_its_connection() -> None:
    answer = fixed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    async with http_server(answer) as server, client() as http:
        async with http.stream("POST", server.url(), content=b"{}") as answer:
            assert answer.status_code == 200  # the body is never read
        assert (await http.post(server.url(), content=b"{}")).text == "ok"
    assert server.connections == 2


@in_loop
async def test_a_small_sized_answer_is_read_with_its_head_and_the_connection_kept() -> None:
    async with http_server() as server, client() as http:
        async with http.stream("POST", server.url(), content=b"{}") as answer:
            assert answer.status_code == 200  # the body is never asked for, but it came with the head
        assert (await http.post(server.url(), content=b"{}")).status_code == 200
    assert server.connections == 1


@in_loop
async def test_a_large_answer_is_streamed_whole() -> None:
    big = bytes(range(256)) * 600  # 150 KiB, more than one read

    answer = fixed(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
    async with http_server(answer) as server, client() as http:
        first = await http.post(server.url(), content=b"{}")
        second = await http.post(server.url(), content=b"{}")
    assert first.content == second.content == big
    assert server.connections == 1


@in_loop
async def test_answers_that_end_with_the_connection_are_read_and_not_reused() -> None:
    answer = fixed(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it", keep=False)
    async with http_server(answer) as server, client() as http:
        for _ in range(2):
            assert (await http.post(server.url(), content=b"{}")).text == "all of it"
    assert server.connections == 2


@in_loop
async def test_interim_answers_are_skipped() -> None:
    async with http_server(fixed(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + OK)) as server, client() as http:
        assert (await http.post(server.url(), content=b"{}")).json() == {"ok": True}


# -- failures map to httpx's exceptions -----------------------------------------------------------


@in_loop
async def test_a_closed_port_is_a_connect_error(closed_port: int) -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"http://127.0.0.1:{closed_port}/", content=b"{}")


@in_loop
async def test_silence_is_a_read_timeout_and_frees_the_slot() -> None:
    async with http_server(silent_first()) as server, client(max_connections=1, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(server.url(), content=b"{}")
        assert (await http.post(server.url(), content=b"{}")).status_code == 200  # the one slot came back
    assert server.connections == 2  # the timed-out connection was not reused


@in_loop
async def test_a_hang_up_without_an_answer_is_a_protocol_error() -> None:
    async with http_server(fixed(b"", keep=False)) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(server.url(), content=b"{}")


@in_loop
async def test_garbage_is_a_protocol_error() -> None:
    async with http_server(fixed(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", keep=False)) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed answer"):
            await http.post(server.url(), content=b"{}")


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/2 200\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
], ids=["conflicting-length", "bad-length", "folded-header", "http2-line", "bad-chunk", "unasked-upgrade"])
@in_loop
async def test_malformed_framing_is_a_protocol_error(head: bytes) -> None:
    async with http_server(fixed(head, keep=False)) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(server.url(), content=b"{}")


@in_loop
async def test_a_header_block_without_end_is_refused_not_buffered_forever() -> None:
    async def endless(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 100_000 + b"\r\n")
        await asyncio.sleep(1)
        return False

    async with http_server(endless) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="too long"):
            await http.post(server.url(), content=b"{}")


@pytest.mark.parametrize(("name", "value"), [
    ("x-note", "line one\r\nx-injected: yes"), ("x-note", "nul\x00byte"), ("bad name", "v"), ("x:y", "v"),
])
@in_loop
async def test_header_injection_is_refused_before_anything_is_sent(name: str, value: str) -> None:
    async with http_server() as server, client() as http:
        with pytest.raises(httpx.LocalProtocolError):
            await http.post(server.url(), content=b"{}", headers={name: value})
    assert server.requests == []


@in_loop
async def test_a_full_pool_is_a_pool_timeout() -> None:
    release = asyncio.Event()
    held = held_until(release)

    async with http_server(held) as server, client(max_connections=1) as http:
        first = asyncio.create_task(http.post(server.url(), content=b"{}"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.post(server.url(), content=b"{}", timeout=httpx.Timeout(5.0, pool=0.1))
        release.set()
        assert (await first).status_code == 200


@in_loop
async def test_a_cancelled_request_gives_its_slot_back() -> None:
    async with http_server(fixed(OK, delay=0.5)) as server, client(max_connections=1) as http:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await http.post(server.url(), content=b"{}")
        assert (await http.post(server.url(), content=b"{}")).status_code == 200


@in_loop
async def test_unsupported_scheme_is_refused() -> None:
    async with client() as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.post("ftp://127.0.0.1/x", content=b"{}")


# -- TLS ---------------------------------------------------------------------------------------


@in_loop
async def test_tls_with_a_trusted_certificate_and_the_pinned_server_name(certificate: Certificate) -> None:
    trusted = ssl.create_default_context(cafile=str(certificate.cert))
    async with http_server(tls=certificate.server_context()) as server, client(ssl_context=trusted) as http:
        # The SSRF guard connects to the checked address and names the host for SNI and the check.
        answer = await http.post(server.url(scheme="https"), content=b"{}",
                                 extensions={"sni_hostname": "localhost"})
        again = await http.post(server.url(scheme="https", host="localhost"), content=b"{}")
    assert answer.status_code == again.status_code == 200


@in_loop
async def test_tls_with_an_untrusted_certificate_is_a_connect_error(certificate: Certificate) -> None:
    async with http_server(tls=certificate.server_context()) as server, client() as http:
        with pytest.raises(httpx.ConnectError, match="TLS handshake failed"):
            await http.post(server.url(scheme="https", host="localhost"), content=b"{}")
    assert server.requests == []


# -- the codec, with plain values ----------------------------------------------------------------


def test_encode_request_writes_exactly_the_request_line_headers_and_body() -> None:
    data = encode_request(b"POST", b"/hook?a=1", [(b"host", b"example.com"), (b"content-length", b"2")], b"{}")
    assert data == b"POST /hook?a=1 HTTP/1.1\r\nhost: example.com\r\ncontent-length: 2\r\n\r\n{}"


@pytest.mark.parametrize(("method", "target", "headers"), [
    (b"POST", b"/x", [(b"x-a", b"one\r\nx-b: two")]),
    (b"POST", b"/x", [(b"x-a", b"one\ntwo")]),
    (b"POST", b"/x", [(b"x a", b"v")]),
    (b"POST", b"/x y", []),
    (b"PO ST", b"/x", []),
    (b"POST", b"", []),
])
def test_encode_request_refuses_what_could_split_or_smuggle_a_request(method: bytes, target: bytes,
                                                                     headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(httpx.LocalProtocolError) as caught:
        encode_request(method, target, headers, b"")
    assert b"one" not in str(caught.value).encode()  # a refused value is never echoed


@pytest.mark.parametrize(("headers", "names"), [
    ([(b"x-ok", b"fine"), (b"x-a", b"one\r\nx-b: two")], "x-a"),
    ([(b"x-a", b"one\r")], "x-a"),
    ([(b"x-a", b"one\r\n")], "x-a"),
    ([(b"x-a", b"\r\n\r\nGET / HTTP/1.1")], "x-a"),
    ([(b"x-ok", b"v"), (b"x-a", b"nul\x00")], "x-a"),
    ([(b"", b"v")], "b''"),
    ([(b"x-a: b", b"v")], "b'x-a: b'"),
    ([(b"x-a\r\nx-b", b"v")], "x-a"),
])
def test_encode_request_names_the_header_it_refuses(headers: list[tuple[bytes, bytes]], names: str) -> None:
    with pytest.raises(httpx.LocalProtocolError, match=re.escape(names)) as caught:
        encode_request(b"POST", b"/x", headers, b"")
    assert "one" not in str(caught.value) and "nul" not in str(caught.value)


def test_encode_request_sends_any_other_value_as_is() -> None:
    headers = [(b"x-tab", b"a\tb"), (b"x-empty", b""), (b"x-colon", b"a: b"), (b"x-utf8", "é".encode())]
    data = encode_request(b"PUT", b"/x", headers, b"body")
    assert data == b"PUT /x HTTP/1.1\r\nx-tab: a\tb\r\nx-empty: \r\nx-colon: a: b\r\nx-utf8: \xc3\xa9\r\n\r\nbody"


def test_parse_head_and_framing() -> None:
    head = parse_head(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After:  7 \r\nContent-Length: 0")
    assert (head.minor, head.status, head.reason) == (1, 429, b"Too Many Requests")
    assert head.headers == [(b"Retry-After", b"7"), (b"Content-Length", b"0")]
    assert body_framing(head, b"POST") == (0, True)
    assert body_framing(parse_head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\ncontent-length: 5"),
                        b"POST") == (5, False)
    chunked = body_framing(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked"), b"POST")
    assert chunked[0] < 0 and chunked[1]
    assert body_framing(parse_head(b"HTTP/1.1 200 OK"), b"POST")[1] is False  # ends with the connection
    assert body_framing(parse_head(b"HTTP/1.0 200 OK\r\ncontent-length: 2"), b"POST") == (2, False)
    assert body_framing(parse_head(b"HTTP/1.1 204 No Content"), b"POST") == (0, True)
    assert body_framing(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9"), b"HEAD") == (0, True)


# -- the direct method: no httpx request or response objects --------------------------------------

TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


def transport(max_connections: int = 4) -> KeepAliveTransport:
    return KeepAliveTransport(max_connections)


@in_loop
async def test_direct_requests_reuse_one_connection_and_return_status_headers_and_body() -> None:
    async with http_server() as server, transport() as pool:
        where = destination(server.url("/hook?token=s3cret"))
        for i in range(20):
            status, headers, body = await pool.request(b"POST", where, [(b"webhook-id", b"d-%d" % i)],
                                                       b'{"n":%d}' % i, TIMEOUTS)
            assert (status, body) == (200, b'{"ok":true}')
            assert (b"content-type", b"application/json") in headers
    assert server.connections == 1
    assert server.requests[3] == (b"POST /hook?token=s3cret HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                                  b"webhook-id: d-3\r\ncontent-length: 7\r\n\r\n{\"n\":3}" % server.port)


@in_loop
async def test_a_direct_request_keeps_the_callers_host_and_sends_a_length_for_an_empty_post() -> None:
    async with http_server() as server, transport() as pool:
        await pool.request(b"POST", destination(server.url()), [(b"host", b"hooks.example.com")], b"", TIMEOUTS)
    [request] = server.requests
    assert request == b"POST /hook HTTP/1.1\r\nhost: hooks.example.com\r\ncontent-length: 0\r\n\r\n"


@in_loop
async def test_an_answer_over_the_limit_is_cut_and_its_connection_closed_not_drained() -> None:
    big = bytes(range(256)) * 400  # 100 KiB
    answer = fixed(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
    async with http_server(answer) as server, transport() as pool:
        where = destination(server.url())
        for _ in range(2):
            status, _, body = await pool.request(b"POST", where, [], b"{}", TIMEOUTS, limit=64 * 1024)
            assert status == 200 and body == big[:64 * 1024]
        _, _, whole = await pool.request(b"POST", where, [], b"{}", TIMEOUTS, limit=len(big))
        assert whole == big
        _, _, again = await pool.request(b"POST", where, [], b"{}", TIMEOUTS, limit=len(big))
        assert again == big
    assert server.connections == 3  # two cut answers closed theirs; read whole, the third was kept


@in_loop
async def test_a_chunked_answer_is_read_whole_by_the_direct_method_and_the_connection_kept() -> None:
    answer = fixed(b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n")
    async with http_server(answer) as server, transport() as pool:
        where = destination(server.url())
        answers = [await pool.request(b"POST", where, [], b"{}", TIMEOUTS) for _ in range(3)]
    assert [(status, body) for status, _, body in answers] == [(202, b"hello world")] * 3
    assert server.connections == 1


@in_loop
async def test_direct_answers_that_close_or_end_with_the_connection_are_not_reused() -> None:
    close = fixed(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", keep=False)
    until_eof = fixed(b"HTTP/1.0 200 OK\r\n\r\nall of it", keep=False)
    for answer, expected in ((close, b"ok"), (until_eof, b"all of it")):
        async with http_server(answer) as server, transport() as pool:
            where = destination(server.url())
            for _ in range(3):
                assert (await pool.request(b"POST", where, [], b"{}", TIMEOUTS))[2] == expected
        assert server.connections == 3


@in_loop
async def test_a_direct_request_to_a_server_that_hangs_up_is_a_protocol_error_and_frees_the_slot() -> None:
    async with http_server(fixed(b"", keep=False)) as server, transport(max_connections=1) as pool:
        for _ in range(2):  # the one slot came back after the first failure
            with pytest.raises(httpx.RemoteProtocolError):
                await pool.request(b"POST", destination(server.url()), [], b"{}", TIMEOUTS)
    assert server.connections == 2


@in_loop
async def test_a_direct_read_timeout_frees_the_slot_and_drops_the_connection() -> None:
    async with http_server(silent_first()) as server, transport(max_connections=1) as pool:
        where = destination(server.url())
        with pytest.raises(httpx.ReadTimeout):
            await pool.request(b"POST", where, [], b"{}", {**TIMEOUTS, "read": 0.3})
        assert (await pool.request(b"POST", where, [], b"{}", TIMEOUTS))[0] == 200
    assert server.connections == 2


@in_loop
async def test_the_attempts_deadline_is_a_timeout_error_and_frees_the_slot() -> None:
    async with http_server(fixed(OK, delay=0.5)) as server, transport(max_connections=1) as pool:
        where = destination(server.url())
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError) as caught:
            await pool.request(b"POST", where, [], b"{}", TIMEOUTS, deadline=loop.time() + 0.1)
        assert not isinstance(caught.value, httpx.TimeoutException)
        assert (await pool.request(b"POST", where, [], b"{}", TIMEOUTS, deadline=loop.time() + 5))[0] == 200


@in_loop
async def test_a_direct_request_waits_for_a_slot_only_until_the_pool_timeout() -> None:
    release = asyncio.Event()
    held = held_until(release)

    async with http_server(held) as server, transport(max_connections=1) as pool:
        where = destination(server.url())
        first = asyncio.create_task(pool.request(b"POST", where, [], b"{}", TIMEOUTS))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await pool.request(b"POST", where, [], b"{}", {**TIMEOUTS, "pool": 0.1})
        release.set()
        assert (await first)[0] == 200


@pytest.mark.parametrize(("name", "value"), [
    (b"x-note", b"line one\r\nx-injected: yes"), (b"x-note", b"nul\x00byte"), (b"bad name", b"v"), (b"x:y", b"v"),
])
@in_loop
async def test_header_injection_is_refused_before_a_direct_request_is_sent(name: bytes, value: bytes) -> None:
    async with http_server() as server, transport() as pool:
        with pytest.raises(httpx.LocalProtocolError) as caught:
            await pool.request(b"POST", destination(server.url()), [(name, value)], b"{}", TIMEOUTS)
    assert server.requests == [] and server.connections == 0
    assert b"one" not in str(caught.value).encode()


@in_loop
async def test_direct_failures_never_name_the_url(closed_port: int) -> None:
    async with transport() as pool:
        with pytest.raises(httpx.ConnectError) as refused:
            await pool.request(b"POST", destination(f"http://127.0.0.1:{closed_port}/bot123:s3cret/send"), [],
                               b"{}", TIMEOUTS)
    with pytest.raises(httpx.InvalidURL) as invalid:
        destination("http://api.example.com:x/bot123:s3cret/send")
    with pytest.raises(httpx.InvalidURL) as port:
        destination("http://api.example.com:99999/bot123:s3cret/send")
    with pytest.raises(httpx.UnsupportedProtocol) as scheme:
        destination("ftp://api.example.com/bot123:s3cret/send")
    for caught in (refused, invalid, port, scheme):
        assert "s3cret" not in str(caught.value) and "bot123" not in str(caught.value)
    assert invalid.value.__cause__ is None and invalid.value.__suppress_context__  # not shown in tracebacks


def test_destinations_are_parsed_once_per_url_and_as_httpx_parses_them() -> None:
    first = destination("https://Hooks.Example.com/a%20b/c?x=1&y=%2F")
    assert destination("https://Hooks.Example.com/a%20b/c?x=1&y=%2F") is first
    assert (first.scheme, first.host, first.port, first.target, first.authority) == (
        b"https", "hooks.example.com", 443, b"/a%20b/c?x=1&y=%2F", b"hooks.example.com")
    assert first.masked() == "https://hooks.example.com/***"
    assert "s3cret" not in repr(destination("https://api.example.com/bot123:s3cret/send?x=1"))
    pinned = destination(httpx.URL("http://[::1]:8080"))
    assert (pinned.host, pinned.port, pinned.target, pinned.authority) == ("::1", 8080, b"/", b"[::1]:8080")
