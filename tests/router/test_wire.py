"""The router's round trip: commands queued like a pipeline's, against the real Redis and misbehaving servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from devstack.sinks import redis_handshake_answer
from router.wire import Commands, WireConnection, pack


def test_pack_writes_resp_arrays_of_bulk_strings() -> None:
    assert pack(("SET", b"k\r\n", 7)) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n7\r\n"
    assert pack(("GET", "ключ")) == b"*2\r\n$3\r\nGET\r\n$8\r\n" + "ключ".encode() + b"\r\n"


def test_commands_are_queued_as_redis_py_would_send_them() -> None:
    queued = Commands()
    queued.set("k", "v", nx=True, get=True, ex=60).set("k", 1).incrby("n", 3).expire("n", 9)
    queued.script_load("return 1").evalsha("abc", 1, "key", 5)
    assert len(queued) == 6
    assert queued.packed == [pack(c) for c in (
        ("SET", "k", "v", "NX", "GET", "EX", 60), ("SET", "k", 1), ("INCRBY", "n", 3), ("EXPIRE", "n", 9),
        ("SCRIPT", "LOAD", "return 1"), ("EVALSHA", "abc", 1, "key", 5))]


def test_replies_in_order_hashes_as_dicts_and_an_error_reply_in_its_place(redis_client: Redis,
                                                                         redis_url: str) -> None:
    redis_client.set("present", "v")
    redis_client.hset("a-hash", mapping={"f": "1", "g": "2"})
    wire = WireConnection(Redis.from_url(redis_url, socket_timeout=5))
    try:
        queued = (Commands().get("present").get("absent").hgetall("a-hash").hgetall("no-hash")
                  .incrby("a-hash", 1).set("claim", "me", nx=True, get=True, ex=60)
                  .set("claim", "other", nx=True, get=True, ex=60))
        replies = wire.run(queued)
        again = wire.run(Commands().get("claim"))  # the same connection, again
    finally:
        wire.close()
    assert replies[:4] == [b"v", None, {b"f": b"1", b"g": b"2"}, {}]
    assert isinstance(replies[4], ResponseError) and "WRONGTYPE" in str(replies[4])
    assert replies[5:] == [None, b"me"]  # SET NX GET: nothing before; then the first owner
    assert again == [b"me"]
    assert redis_client.ttl("claim") > 0


def test_a_large_batch_spans_many_reads_in_the_clients_database(redis_client: Redis, redis_url: str) -> None:
    redis_client.set("key-3", "x" * 8)
    wire = WireConnection(Redis.from_url(redis_url, socket_timeout=5))
    try:
        queued = Commands()
        for i in range(5_000):
            queued.get(f"key-{i}")
        replies = wire.run(queued)
    finally:
        wire.close()
    assert len(replies) == 5_000 and replies[3] == b"x" * 8 and replies.count(None) == 4_999


@contextmanager
def _server(*answers: bytes) -> Iterator[tuple[int, list[int]]]:
    """A loopback server: redis-py's handshake gets ``+OK`` per command; the first request holding a GET
    on the n-th connection gets ``answers[n]`` (``b"hang"``: nothing until the client goes), then the
    connection is closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[int] = []

    def serve(conn: socket.socket) -> None:
        answer = answers[min(len(connections), len(answers)) - 1]
        with conn:
            while (data := conn.recv(65536)) and b"GET" not in data:
                conn.sendall(redis_handshake_answer(data))
            if data and answer == b"hang":
                while conn.recv(65536):
                    pass
            elif data:
                conn.sendall(answer)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(1)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], connections
    finally:
        listener.close()


def _two_runs(port: int) -> tuple[list[object], list[Exception]]:
    wire = WireConnection(Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=2))
    results: list[object] = []
    errors: list[Exception] = []
    try:
        for _ in range(2):
            try:
                results.append(wire.run(Commands().get("a").get("b")))
            except (RedisConnectionError, RedisTimeoutError) as exc:
                errors.append(exc)
    finally:
        wire.close()
    return results, errors


def test_a_server_that_closes_mid_answer_raises_and_the_next_round_trip_reconnects() -> None:
    with _server(b"$1\r\nx\r\n", b"$1\r\nx\r\n$-1\r\n") as (port, connections):
        results, errors = _two_runs(port)
    assert len(errors) == 1 and isinstance(errors[0], RedisConnectionError)
    assert "closed the connection" in str(errors[0])
    assert results == [[b"x", None]] and len(connections) == 2


def test_an_answer_that_is_not_resp_raises_connection_error() -> None:
    with _server(b"HTTP/1.1 200 OK\r\n\r\n") as (port, _):
        results, errors = _two_runs(port)
    assert results == [] and len(errors) == 2
    assert all(isinstance(e, RedisConnectionError) and "not RESP" in str(e) for e in errors)


def test_no_answer_within_the_socket_timeout_raises_timeout_error_and_the_connection_is_dropped() -> None:
    with _server(b"hang", b"$1\r\nx\r\n$1\r\ny\r\n") as (port, connections):
        results, errors = _two_runs(port)
    assert len(errors) == 1 and isinstance(errors[0], RedisTimeoutError)
    assert results == [[b"x", b"y"]] and len(connections) == 2


def test_nothing_queued_sends_nothing() -> None:
    with _server(b"$1\r\nx\r\n") as (port, connections):
        wire = WireConnection(Redis(host="127.0.0.1", port=port, socket_timeout=0.5))
        assert wire.run(Commands()) == []
        wire.close()
    assert connections == []
