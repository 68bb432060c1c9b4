"""kill -9 of a real `tidings router` process in the middle of a run: nothing lost, nothing sent twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Pipeline
from .test_pipeline import SOURCE, ada, match

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def router_process(pipeline: Pipeline, log: Path) -> subprocess.Popen[bytes]:
    s = pipeline.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update({
        "TIDINGS_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "TIDINGS_REDIS_URL": s.redis_url,
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix, "TIDINGS_GROUP_PREFIX": s.group_prefix,
        "TIDINGS_RULES": str(s.rules), "TIDINGS_METRICS_PORT": "-1", "TIDINGS_BATCH_SIZE": "100",
        # a killed member leaves the group after 6 s instead of 45 (librdkafka pass-through)
        "TIDINGS_LIBRDKAFKA_SESSION_TIMEOUT_MS": "6000",
    })
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "consumers.cli", "router"], env=env, cwd=REPO,
                                stdout=out, stderr=out)


def test_router_killed_three_times_loses_and_repeats_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.recipients(ada(webhook=pipeline.web.url("/hooks/ada")))
    pipeline.start_channel("email")
    pipeline.start_channel("webhook")
    total = 1500
    for i in range(total):
        pipeline.pub().publish("jobs.match.found", match("u-ada"), subject="u-ada", source=SOURCE, id=f"x-{i}")
    pipeline.pub().flush()

    log = tmp_path / "router.log"
    for kill in range(3):
        proc = router_process(pipeline, log)
        target = (kill + 1) * total // 5
        deadline = time.monotonic() + 90
        while len(pipeline.smtp.received()) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = router_process(pipeline, log)
    try:
        pipeline.smtp.wait_for(total, timeout=180)
        pipeline.web.wait_for(total, timeout=180)
        time.sleep(3.0)
        mails, hooks = pipeline.smtp.received(), pipeline.web.received()
        assert len({m["delivery_id"] for m in mails}) == total
        assert len({h["delivery_id"] for h in hooks}) == total
        assert len(mails) == total and len(hooks) == total  # no duplicate at the sinks
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
