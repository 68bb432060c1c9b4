"""Local infrastructure management: idempotent start, reuse of a compatible server, clear refusals."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from devstack import infra

pytestmark = pytest.mark.integration


def test_start_is_idempotent_and_stop_stops_only_what_it_started(tmp_path: Path) -> None:
    port = infra.free_port()
    first = infra.start_redis(tmp_path / "a", port)
    try:
        pid = first.pid()
        assert pid is not None
        again = infra.start_redis(tmp_path / "a", port)  # sees its own pid file: does nothing
        assert again.pid() == pid
        # Another state directory finds a real Redis on the port and uses it without owning it.
        foreign = infra.start_redis(tmp_path / "b", port)
        assert foreign.pid() is None
        assert foreign.stop() is False
        assert infra.port_open(port)
    finally:
        assert first.stop() is True
    assert not infra.port_open(port)


def test_a_port_held_by_something_else_is_refused(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer_nothing() -> None:
            conn, _ = server.accept()
            conn.close()

        threading.Thread(target=answer_nothing, daemon=True).start()
        with pytest.raises(infra.InfraError, match=f"port {port} is taken by a process that is not a redis server"):
            infra.start_redis(tmp_path, port)


def test_kafka_version_comes_from_the_pom() -> None:
    assert infra.kafka_version().startswith("4.")


def test_cluster_ids_never_look_like_an_option() -> None:
    ids = [infra.new_cluster_id() for _ in range(2000)]  # about 31 would start with '-' unchecked
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
