"""The Kafka broker restarting in the middle of a run: nothing lost, nothing sent twice.

This module runs its own broker (overriding the session's ``kafka_bootstrap``) so
that stopping it disturbs no other test.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devstack import infra
from schemas import Status

from .conftest import Pipeline
from .test_pipeline import SOURCE, ada, match

# Not in `make test`: in about one run in eight on this machine the router's consumer
# never found its group coordinator again after the restart (librdkafka logged
# SESSTMOUT with "broker -1" and then timed-out GroupCoordinator requests for minutes).
# /healthz reports such a consumer dead after 180 s so that an orchestrator restarts
# it; making the process recover by itself belongs to the failure-handling work.
pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    state = tmp_path_factory.mktemp("own-kafka")
    port, controller = infra.free_port(), infra.free_port()
    service = infra.start_kafka(state, port, controller)
    try:
        yield state, port, controller
    finally:
        service.stop()


@pytest.fixture(scope="module")
def kafka_bootstrap(broker: tuple[Path, int, int]) -> str:
    return f"127.0.0.1:{broker[1]}"


def test_broker_restart_mid_run_loses_and_repeats_nothing(pipeline: Pipeline,
                                                          broker: tuple[Path, int, int]) -> None:
    state, port, controller = broker
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_all()
    total = 300
    for i in range(total // 2):
        pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id=f"k-{i}")
    pipeline.pub().flush()
    pipeline.smtp.wait_for(10, timeout=60)

    infra.kafka_service(state, port, controller).stop()
    time.sleep(3.0)
    infra.start_kafka(state, port, controller)
    for i in range(total // 2, total):
        pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id=f"k-{i}")
    pipeline.pub().flush()

    for sink in (pipeline.smtp, pipeline.web):
        try:
            sink.wait_for(total, timeout=180)
        except TimeoutError:
            break  # what is missing is listed by diagnose() below
    time.sleep(3.0)
    mails, hooks = pipeline.smtp.received(), pipeline.web.received()
    problems = diagnose(pipeline, {"email": mails, "webhook": hooks}, total)
    # Duplicates at the sinks: the only window is a crash between the provider's
    # acceptance and the sent mark, which a broker restart does not open.
    assert not problems, "\n".join(problems)


def diagnose(pipeline: Pipeline, received: dict[str, list[dict[str, Any]]], total: int) -> list[str]:
    """What went wrong, per channel: duplicates and missing deliveries with their status history."""
    problems: list[str] = []
    counts = {channel: Counter(r["delivery_id"] for r in records) for channel, records in received.items()}
    if all(len(records) == total and len(counts[ch]) == total for ch, records in received.items()):
        return problems
    history: dict[str, list[Status]] = defaultdict(list)
    for m in pipeline.read_topic(pipeline.settings.status_topic, expect=1, timeout=10):
        status = Status.decode(pipeline.catalog, m.value())
        if status.delivery_id:
            history[status.delivery_id].append(status)
    for channel, seen in counts.items():
        routed = {d for d, statuses in history.items() if any(s.channel == channel for s in statuses)}
        twice = sorted(d for d, n in seen.items() if n > 1)
        missing = sorted(routed - set(seen))
        problems.append(f"{channel}: {len(received[channel])} received, {len(seen)} distinct of {total}, "
                        f"{len(routed)} routed; {len(twice)} duplicated, {len(missing)} routed but not received")
        for d in (twice + missing)[:5]:
            steps = [f"{s.state} {clock(s.at)}" + (f" ({s.detail})" if s.detail else "")
                     for s in sorted(history[d], key=lambda s: s.at)]
            arrivals = [clock(datetime.fromtimestamp(r["received_at"], UTC))
                        for r in received[channel] if r["delivery_id"] == d]
            problems.append(f"  {d}: {', '.join(steps)}; received at {', '.join(arrivals) or 'never'}")
    for name, (loop, _) in pipeline.loops.items():
        problems.append(f"{name}: health {loop.health.problem() or 'ok'}, connected {loop.health.connected}, "
                        f"assigned {loop.health.assigned}")
    return problems


def clock(at: datetime) -> str:
    return at.strftime("%H:%M:%S.%f")[:-3]
