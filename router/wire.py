"""The router's Redis round trip: commands queued as on a pipeline, written at once, replies parsed in one pass.

redis-py's pipeline spends about 10 us of CPU per command in the router (argument
handling, response callbacks, its observability hooks) on top of the round trip
itself; in the router that was a tenth of its CPU at 1,000 events a second.
:class:`Commands` takes the calls the router's state code makes on a pipeline
(``get``, ``hgetall``, ``set``, ``incrby``, ``expire``, ``script_load``,
``evalsha``, ``execute_command``) and keeps each as RESP bytes;
:class:`WireConnection` writes them with one call on a connection of the
client's own pool (so URL, credentials, database, TLS and timeouts are the
client's) and feeds what comes back to one hiredis reader.

Replies are what Redis answered, as hiredis gives them, with one conversion:
``HGETALL`` becomes a dict under RESP2 too. An error reply is returned in its
command's place as a :class:`~redis.exceptions.ResponseError` (like a pipeline
run with ``raise_on_error=False``). A connection that fails (refused, reset, timed
out, an answer that is not RESP) is closed and redis-py's ``ConnectionError`` or
``TimeoutError`` raised; the next round trip connects again.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import hiredis
from redis import Redis
from redis.connection import ConnectionInterface
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float
READ_SIZE = 65536
"""Bytes asked of the connection per read."""


def pack(command: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _pairs(reply: Any) -> Any:
    """HGETALL's flat RESP2 array as a dict (RESP3 already answers a map)."""
    if isinstance(reply, list):
        return dict(zip(reply[::2], reply[1::2], strict=True))
    return reply


class Commands:
    """Commands queued the way a redis-py pipeline is driven (the calls the router's state code makes)."""

    def __init__(self) -> None:
        self.packed: list[bytes] = []
        self.converters: dict[int, Callable[[Any], Any]] = {}

    def __len__(self) -> int:
        return len(self.packed)

    def converted(self, replies: list[Any]) -> list[Any]:
        """``replies`` (to these commands, in order) with the conversions they asked for applied."""
        for index, convert in self.converters.items():
            if not isinstance(replies[index], ResponseError):
                replies[index] = convert(replies[index])
        return replies

    def execute_command(self, *args: Arg, **_options: Any) -> Commands:
        self.packed.append(pack(args))
        return self

    def get(self, key: str) -> Commands:
        return self.execute_command("GET", key)

    def hgetall(self, key: str) -> Commands:
        self.converters[len(self.packed)] = _pairs
        return self.execute_command("HGETALL", key)

    def set(self, key: str, value: Arg, ex: int | None = None, nx: bool = False, get: bool = False) -> Commands:
        args: list[Arg] = ["SET", key, value]
        if nx:
            args.append("NX")
        if get:
            args.append("GET")
        if ex is not None:
            args += ["EX", ex]
        return self.execute_command(*args)

    def incrby(self, key: str, amount: int = 1) -> Commands:
        return self.execute_command("INCRBY", key, amount)

    def expire(self, key: str, seconds: int) -> Commands:
        return self.execute_command("EXPIRE", key, seconds)

    def script_load(self, script: str | bytes | memoryview) -> Commands:
        return self.execute_command("SCRIPT", "LOAD", bytes(script) if isinstance(script, memoryview) else script)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Arg) -> Commands:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)


class Replies:
    """The replies to ``count`` commands, parsed from what the connection reads by one hiredis reader."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.replies: list[Any] = []
        self._parser = hiredis.Reader(replyError=ResponseError)

    def add(self, data: bytes) -> bool:
        """Parse one read; True once every reply is in. Raises redis-py's ConnectionError when the
        connection ended (``data`` empty), the answer is not RESP, or more replies came than commands."""
        if not data:
            raise RedisConnectionError("Redis closed the connection before every reply arrived")
        try:
            self._parser.feed(data)
            while (reply := self._parser.gets()) is not False:
                self.replies.append(reply)
        except hiredis.ProtocolError as exc:
            raise RedisConnectionError(f"Redis answered something that is not RESP: {exc}") from exc
        if len(self.replies) > self.count:
            raise RedisConnectionError(f"Redis sent {len(self.replies)} replies to {self.count} commands")
        return len(self.replies) == self.count


@contextmanager
def read_errors(timeout: float | None) -> Iterator[None]:
    """Reading replies: a timeout becomes redis-py's TimeoutError, any other socket error its ConnectionError."""
    try:
        yield
    except TimeoutError as exc:
        raise RedisTimeoutError(f"no reply from Redis within {timeout} s") from exc
    except OSError as exc:
        raise RedisConnectionError(f"reading from Redis failed: {type(exc).__name__}") from exc


class WireConnection:
    """One connection of ``redis``'s pool, kept for the router's round trips; see the module's docstring."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._conn: ConnectionInterface | None = None

    def run(self, commands: Commands) -> list[Any]:
        """Send every queued command in one write; the replies, in order."""
        if not commands.packed:
            return []
        conn = self._conn
        if conn is None:
            conn = self._conn = self._redis.connection_pool.make_connection()
        assert conn is not None
        try:
            if getattr(conn, "_sock", None) is None:
                conn.connect()  # type: ignore[no-untyped-call]
            conn.send_packed_command([b"".join(commands.packed)], check_health=False)  # type: ignore[no-untyped-call]
            replies = self._replies(conn, len(commands.packed))
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        return commands.converted(replies)

    def _replies(self, conn: ConnectionInterface, count: int) -> list[Any]:
        sock = getattr(conn, "_sock", None)  # redis-py's socket of this connection
        if not isinstance(sock, socket.socket):
            raise RedisConnectionError("the Redis connection has no socket to read replies from")
        replies = Replies(count)
        with read_errors(sock.gettimeout()):  # the socket's timeout is the client's socket_timeout
            while not replies.add(sock.recv(READ_SIZE)):
                pass
        return replies.replies

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()  # type: ignore[no-untyped-call]
