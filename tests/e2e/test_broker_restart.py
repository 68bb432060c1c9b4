"""The Kafka broker restarting in the middle of a run: nothing lost, nothing sent twice.

This module runs its own broker (overriding the session's ``kafka_bootstrap``) so
that stopping it disturbs no other test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import infra

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

    mails = pipeline.smtp.wait_for(total, timeout=180)
    hooks = pipeline.web.wait_for(total, timeout=180)
    time.sleep(3.0)
    mails, hooks = pipeline.smtp.received(), pipeline.web.received()
    assert len({m["delivery_id"] for m in mails}) == total
    assert len({h["delivery_id"] for h in hooks}) == total
    # Duplicates at the sinks: the only window is a crash between the provider's
    # acceptance and the sent mark, which a broker restart does not open.
    assert len(mails) == total and len(hooks) == total
