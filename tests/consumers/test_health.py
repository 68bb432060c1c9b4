"""Liveness and readiness decisions, with an injected clock, and the HTTP endpoints that serve them."""

from __future__ import annotations

import urllib.error
import urllib.request

from consumers.health import Health, HealthServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stalled_poll_loop_is_not_alive() -> None:
    clock = Clock()
    health = Health(stall_after=60, clock=clock)
    clock.now += 59
    assert health.alive()
    clock.now += 2
    assert health.problem() == "poll loop stalled for 61s"
    health.tick()
    assert health.alive()


def test_lost_partitions_must_come_back_within_the_rejoin_window() -> None:
    clock = Clock()
    health = Health(rejoin_after=180, clock=clock)
    health.on_assigned()
    health.on_lost()
    clock.now += 100
    health.tick()
    health.on_lost()  # a second loss does not restart the window
    clock.now += 81
    health.tick()
    assert health.problem() == "partitions lost 181s ago and the group was not rejoined"
    health.on_assigned()
    assert health.alive()


def test_ready_needs_an_assignment_a_broker_and_no_shutdown() -> None:
    health = Health()
    assert not health.ready()
    health.on_assigned()
    assert not health.ready()
    health.connected = True
    assert health.ready()
    health.stopping = True
    assert not health.ready()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_endpoints_report_the_decisions() -> None:
    clock = Clock()
    health = Health(stall_after=60, clock=clock)
    server = HealthServer(health, "127.0.0.1", 0).start()
    try:
        assert get(server.port, "/healthz") == (200, "ok\n")
        assert get(server.port, "/readyz") == (503, "not ready\n")
        health.on_assigned()
        health.connected = True
        assert get(server.port, "/readyz") == (200, "ready\n")
        clock.now += 120
        assert get(server.port, "/healthz") == (503, "poll loop stalled for 120s\n")
        status, body = get(server.port, "/metrics")
        assert status == 200 and "tidings_" in body
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()
