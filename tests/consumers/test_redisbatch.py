"""Lean command batches: against the real Redis, and against loopback servers that misbehave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from consumers.redisbatch import BatchConnection
from devstack.sinks import redis_handshake_answer
from router.wire import Commands

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def queued(*commands: tuple[str | int, ...]) -> Commands:
    out = Commands()
    for command in commands:
        out.execute_command(*command)
    return out


def test_replies_come_back_in_order_with_an_error_reply_in_its_place(redis_client: Redis, redis_url: str) -> None:
    redis_client.set("present", "v")
    redis_client.hset("a-hash", "f", "v")

    async def scenario() -> list[object]:
        client = AsyncRedis.from_url(redis_url, socket_timeout=5)
        batch = BatchConnection(client)
        try:
            return await batch.run(queued(("EXISTS", "present"), ("EXISTS", "absent"), ("SET", "new", "1", "EX", 60),
                                          ("GET", "a-hash"), ("GET", "new"), ("INCRBY", "counter", 5)))
        finally:
            await batch.aclose()
            await client.aclose()

    replies = asyncio.run(scenario())
    assert replies[:3] == [1, 0, b"OK"]
    assert isinstance(replies[3], ResponseError) and "WRONGTYPE" in str(replies[3])
    assert replies[4:] == [b"1", 5]
    assert redis_client.ttl("new") > 0


def test_a_large_batch_spans_many_reads_and_uses_the_clients_database(redis_client: Redis, redis_url: str) -> None:
    n = 5_000  # replies of about 60 KiB arrive in several reads
    redis_client.set("key-3", "x" * 8)

    async def scenario() -> tuple[list[object], list[object]]:
        client = AsyncRedis.from_url(redis_url, socket_timeout=5)
        batch = BatchConnection(client)
        try:
            first = await batch.run(queued(*[("GET", f"key-{i}") for i in range(n)]))
            second = await batch.run(queued(*[("SET", f"key-{i}", "y") for i in range(3)]))  # the same connection again
            return first, second
        finally:
            await batch.aclose()
            await client.aclose()

    first, second = asyncio.run(scenario())
    assert len(first) == n and first[3] == b"x" * 8 and first.count(None) == n - 1
    assert second == [b"OK"] * 3
    assert redis_client.get("key-0") == b"y"  # written in the database of the client's URL


async def _serve(handler: Handler, commands: list[tuple[str, ...]]) -> tuple[list[object], list[BaseException]]:
    """Run two batches against a loopback server; what each returned or raised."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AsyncRedis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=2)
    batch = BatchConnection(client)
    results: list[object] = []
    errors: list[BaseException] = []
    try:
        for _ in range(2):
            try:
                results.append(await batch.run(queued(*commands)))
            except Exception as exc:
                errors.append(exc)
    finally:
        await batch.aclose()
        await client.aclose()
        server.close()
        await server.wait_closed()
    return results, errors


def _answering(*answers: bytes) -> tuple[Handler, list[int]]:
    """A server that accepts redis-py's connection handshake (``+OK`` to each command), then answers
    the batch on its n-th connection with ``answers[n]`` and closes (``b"hang"``: no answer, the
    connection is kept open until the client goes)."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        answer = answers[min(len(connections), len(answers)) - 1]
        try:
            while (data := await reader.read(65536)) and b"EXISTS" not in data:
                writer.write(redis_handshake_answer(data))
            if not data:
                return
            if answer == b"hang":
                await reader.read()  # until the client closes
            else:
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()

    return handler, connections


def test_a_server_that_closes_mid_answer_raises_connection_error_and_the_next_batch_reconnects() -> None:
    handler, connections = _answering(b":1\r\n", b":1\r\n:0\r\n")
    results, errors = asyncio.run(_serve(handler, [("EXISTS", "a"), ("EXISTS", "b")]))
    assert len(errors) == 1 and isinstance(errors[0], RedisConnectionError)
    assert "closed the connection" in str(errors[0])
    assert results == [[1, 0]]
    assert len(connections) == 2


def test_an_answer_that_is_not_resp_raises_connection_error() -> None:
    handler, _ = _answering(b"HTTP/1.1 200 OK\r\n\r\n")
    results, errors = asyncio.run(_serve(handler, [("EXISTS", "a")]))
    assert results == [] and len(errors) == 2
    assert all(isinstance(e, RedisConnectionError) and "not RESP" in str(e) for e in errors)


def test_no_answer_within_the_socket_timeout_raises_timeout_error() -> None:
    handler, connections = _answering(b"hang", b":1\r\n")
    results, errors = asyncio.run(_serve(handler, [("EXISTS", "a")]))
    assert len(errors) == 1 and isinstance(errors[0], RedisTimeoutError)
    assert results == [[1]] and len(connections) == 2  # the timed-out connection was not reused


def test_more_replies_than_commands_is_refused() -> None:
    handler, _ = _answering(b":1\r\n:2\r\n")
    _, errors = asyncio.run(_serve(handler, [("EXISTS", "a")]))
    assert errors and all(isinstance(e, RedisConnectionError) and "2 replies to 1" in str(e) for e in errors)


def test_an_empty_batch_sends_nothing() -> None:
    handler, connections = _answering(b":1\r\n")
    results, errors = asyncio.run(_serve(handler, []))
    assert results == [[], []] and errors == [] and connections == []


def test_a_refused_connection_raises_connection_error() -> None:
    async def scenario() -> BaseException | None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()  # nothing listens on the port now
        client = AsyncRedis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=2)
        batch = BatchConnection(client)
        try:
            await batch.run(queued(("EXISTS", "a")))
        except RedisConnectionError as exc:
            return exc
        finally:
            await batch.aclose()
            await client.aclose()
        return None

    assert isinstance(asyncio.run(scenario()), RedisConnectionError)
