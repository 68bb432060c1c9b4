"""channels.http.HttpPool: the direct path to the transport, and when it steps aside for proxies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from channels.http import AnswerHeaders, HttpPool, ProviderConfig
from channels.webhook.channel import WebhookConfig
from devstack.sinks import WebhookSink, read_http_request


def test_a_proxy_in_the_environment_sends_requests_through_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert HttpPool(WebhookConfig()).direct
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert not HttpPool(WebhookConfig()).direct
    assert HttpPool(WebhookConfig(trust_env=False)).direct
    assert not HttpPool(ProviderConfig(base_url="https://api.example.com")).direct


def test_the_direct_path_sends_our_user_agent_and_logs_the_call_masked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="channels.http")
    with WebhookSink() as sink:
        pool = HttpPool(WebhookConfig(trust_env=False, user_agent="Tidings/test"))

        async def post() -> tuple[int, bytes]:
            try:
                status, _, body = await pool.post(sink.url("/hook?token=s3cret"), content=b'{"a":1}',
                                                  headers={"content-type": "application/json", "webhook-id": "w-1"})
                return status, body
            finally:
                await pool.aclose()

        status, _ = asyncio.run(post())
        [got] = sink.wait_for(1, timeout=10)
    assert status == 200
    assert got["headers"]["user-agent"] == "Tidings/test"
    assert "HTTP Request: POST" in caplog.text and "s3cret" not in caplog.text


@asynccontextmanager
async def recorder() -> AsyncIterator[tuple[str, list[tuple[bytes, bytes]]]]:
    """A loopback server that records each request as (head, body) and answers 200."""
    seen: list[tuple[bytes, bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await read_http_request(reader)) is not None:
                seen.append(request)
                writer.write(b"HTTP/1.1 200 OK\r\nX-Seen: %d\r\ncontent-length: 2\r\n\r\nok" % len(seen))
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
    finally:
        server.close()
        await server.wait_closed()


def on_the_wire(head: bytes) -> list[tuple[str, str]]:
    """A recorded request's headers, names lower-cased, without those httpx's client adds by default."""
    lines = head.decode().split("\r\n")[1:-2]
    headers = [(name.lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return sorted(h for h in headers if h[0] not in ("accept", "accept-encoding", "connection"))


BODIES: list[dict[str, Any]] = [
    {"content": b'{"raw":"bytes"}'},
    {"content": "texte accentué ✓"},
    {"json": {"text": "héllo ✓ <b>&", "n": [1, 2.5, None, True], "nested": {"a": "b"}}},
    {"json": []},
    {"data": {"To": "+15550100", "Body": "Grüße & more = yes", "flag": True, "off": False, "none": None,
              "many": ["a b", 2]}},
    {"content": b""},
    {},
]


@pytest.mark.parametrize("body", BODIES, ids=["bytes", "text", "json", "empty-json", "form", "empty-content", "none"])
def test_direct_bodies_and_headers_arrive_as_httpx_sends_them(body: dict[str, Any]) -> None:
    caller = {"x-tidings-delivery-id": "d-1", "user-agent": "Tidings/test"}

    async def both() -> list[tuple[bytes, bytes]]:
        async with recorder() as (url, seen):
            async with httpx.AsyncClient() as client:
                await client.post(f"{url}/hook?token=s3cret", headers=caller, **body)
            pool = HttpPool(WebhookConfig(trust_env=False))
            try:
                status, headers, answer = await pool.post(f"{url}/hook?token=s3cret", headers=caller, **body)
            finally:
                await pool.aclose()
            assert (status, answer, headers["x-seen"]) == (200, b"ok", "2")
            return seen

    [(httpx_head, httpx_body), (our_head, our_body)] = asyncio.run(both())
    assert our_body == httpx_body
    assert our_head.split(b"\r\n", 1)[0] == httpx_head.split(b"\r\n", 1)[0] == b"POST /hook?token=s3cret HTTP/1.1"
    assert on_the_wire(our_head) == on_the_wire(httpx_head)
    assert b"accept-encoding" not in our_head.lower()  # the direct path, not the client's


def test_a_user_and_password_become_httpxs_basic_authorization_on_the_direct_path() -> None:
    auth = ("AC0123456789", "pässwörd:with colon")

    async def both() -> list[tuple[bytes, bytes]]:
        async with recorder() as (url, seen):
            async with httpx.AsyncClient() as client:
                await client.post(url, data={"Body": "hi"}, auth=auth, headers={"user-agent": "Tidings/0.1"})
            pool = HttpPool(WebhookConfig(trust_env=False))
            try:
                await pool.post(url, data={"Body": "hi"}, auth=auth, headers={"Authorization": "Bearer old"})
            finally:
                await pool.aclose()
            return seen

    [(httpx_head, httpx_body), (our_head, our_body)] = asyncio.run(both())
    assert our_body == httpx_body == b"Body=hi"
    assert on_the_wire(our_head) == on_the_wire(httpx_head)
    assert b"accept-encoding" not in our_head.lower()


def test_the_callers_headers_win_case_insensitively() -> None:
    async def post() -> list[tuple[bytes, bytes]]:
        async with recorder() as (url, seen):
            pool = HttpPool(WebhookConfig(trust_env=False))
            try:
                await pool.post(url, json={"a": 1}, headers={"User-Agent": "Custom/1", "Content-Type": "text/x-a",
                                                             "Host": "hooks.example.com"})
            finally:
                await pool.aclose()
            return seen

    [(head, body)] = asyncio.run(post())
    assert on_the_wire(head) == [("content-length", "7"), ("content-type", "text/x-a"),
                                 ("host", "hooks.example.com"), ("user-agent", "Custom/1")]
    assert body == b'{"a":1}'


def test_a_deadline_bounds_the_whole_post() -> None:
    async def post() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await read_http_request(reader)
                await asyncio.sleep(5)
            finally:
                writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        pool = HttpPool(WebhookConfig(trust_env=False))
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError):
                await pool.post(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", content=b"{}",
                                deadline=started + 0.2)
            assert loop.time() - started < 4  # the deadline, not the pool's 10 s read timeout
        finally:
            await pool.aclose()
            server.close()

    asyncio.run(post())


def test_answer_headers_read_case_insensitively_like_httpx() -> None:
    raw = [(b"Retry-After", b"7"), (b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Name", "Zoë".encode()),
           (b"X-Latin", b"caf\xe9")]
    ours, theirs = AnswerHeaders(raw), httpx.Headers(raw)
    for name in ("retry-after", "RETRY-AFTER", "set-cookie", "location"):
        assert ours.get(name) == theirs.get(name)
    # httpx decodes every value as Latin-1 once one is not UTF-8; a value at a time is kinder
    assert (ours.get("x-name"), ours.get("x-latin")) == ("Zoë", "café")
    assert ours["Retry-After"] == "7" and "location" not in ours
    assert list(ours) == ["retry-after", "set-cookie", "x-name", "x-latin"] and len(ours) == 4
    assert "a=1" not in repr(ours)  # names only: values can be credentials
