"""The sent-mark writer of the channel consumer: marks go out while other sends still run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from consumers.deliver_consumer import _EagerMarks


def test_marks_are_written_as_sends_complete_and_coalesce_while_a_write_runs() -> None:
    written: list[list[Any]] = []

    async def write(chunk: list[Any]) -> None:
        written.append(list(chunk))
        await asyncio.sleep(0.01)

    async def scenario() -> list[list[Any]]:
        marks = _EagerMarks(write)
        marks.add("a")  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the writer starts with "a" and is busy for 10 ms
        marks.add("b")  # type: ignore[arg-type]
        marks.add("c")  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        before_finish = [list(c) for c in written]
        marks.add("d")  # type: ignore[arg-type]
        await marks.finish()
        return before_finish

    before_finish = asyncio.run(scenario())
    assert before_finish == [["a"], ["b", "c"]], "marks are written before the batch ends"
    assert written == [["a"], ["b", "c"], ["d"]]


def test_a_failed_write_is_raised_by_finish_and_stops_further_writes() -> None:
    calls: list[list[Any]] = []

    async def write(chunk: list[Any]) -> None:
        calls.append(list(chunk))
        raise RedisConnectionError("redis is down")

    async def scenario() -> None:
        marks = _EagerMarks(write)
        marks.add("a")  # type: ignore[arg-type]
        await asyncio.sleep(0)
        marks.add("b")  # type: ignore[arg-type]
        await marks.finish()

    with pytest.raises(RedisConnectionError, match="redis is down"):
        asyncio.run(scenario())
    assert calls == [["a"]], "after a failure the caller rewrites every mark; the writer stops"


def test_finish_without_marks_writes_nothing() -> None:
    async def write(chunk: list[Any]) -> None:
        raise AssertionError("nothing to write")

    asyncio.run(_EagerMarks(write).finish())
