"""The inbox page in headless Chromium: a notification published to Kafka appears live, and reading it clears the badge.

Everything is real: the event goes onto Kafka, the router routes it to the in-app delivery topic,
the in-app delivery consumer writes it into Redis, ``tidings inbox serve`` (a separate process)
pushes it over Server-Sent Events to Debian's Chromium, driven by playwright-core from npm
(``tests/browser``; ``.ci/run`` installs Chromium and runs ``npm ci`` there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from channels.inapp.tokens import mint
from consumers.topics import create_topics
from devstack import infra
from schemas.models import delivery_id

from .conftest import Pipeline

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("TIDINGS_TEST_CHROMIUM", "/usr/bin/chromium")
SECRET = "browser-test-inbox-secret-0123456789"
SOURCE = "tests/e2e/browser"


def require_tools() -> str:
    """The node binary; fails (never skips) with the command that installs what is missing."""
    node = shutil.which("node")
    problems = []
    if node is None:
        problems.append("node is not installed (apt-get install nodejs npm)")
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        problems.append("playwright-core is not installed (cd tests/browser && npm ci)")
    assert not problems, "; ".join(problems) + " - .ci/run installs all of these"
    assert node is not None
    return node


def add_inapp(config_dir: Path, rule: str) -> None:
    path = config_dir / "rules.yaml"
    rules = yaml.safe_load(path.read_text())
    for entry in rules["rules"]:
        if entry["name"] == rule:
            entry["channels"].append("inapp")
    path.write_text(yaml.safe_dump(rules, sort_keys=False))


def serve_inbox(redis_url: str) -> tuple[subprocess.Popen[str], str]:
    port = infra.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update({"TIDINGS_REDIS_URL": redis_url, "TIDINGS_INBOX_SECRET": SECRET, "TIDINGS_INBOX_HEARTBEAT_SECONDS": "2"})
    proc = subprocess.Popen([sys.executable, "-m", "consumers.cli", "inbox", "serve", "--port", str(port)], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"tidings inbox serve exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).text == "ok":
                return proc, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "tidings inbox serve did not answer within 30s"
        time.sleep(0.2)


class Driver:
    """The node script as a child process, its JSON lines read in a thread."""

    def __init__(self, node: str, url: str, title: str) -> None:
        env = {**os.environ, "INBOX_URL": url, "EXPECT_TITLE": title, "CHROMIUM": CHROMIUM,
               "STEP_TIMEOUT_MS": "60000"}
        self.proc = subprocess.Popen([node, "inbox.mjs"], cwd=BROWSER_DIR, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.steps: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            if line.startswith("{"):
                self.steps.append(json.loads(line))

    def wait_for(self, step: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for doc in self.steps:
                if doc["step"] == step:
                    return doc
                if doc["step"] == "error":
                    raise AssertionError(f"browser: {doc['message']}")
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.05)
        stderr = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"browser never reported {step!r}; output: {''.join(self.raw)[-2000:]} {stderr[-2000:]}")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def test_a_published_notification_appears_live_and_reading_it_clears_the_badge(
        pipeline: Pipeline, redis_url: str) -> None:
    node = require_tools()
    add_inapp(pipeline.config_dir, "job-match")
    create_topics(pipeline.settings, ["inapp"])
    pipeline.recipients({"id": "u-ada", "name": "Ada", "contacts": {"email": "ada@example.com", "inapp": "on"}})
    pipeline.start_router()
    pipeline.start_channel("inapp")
    server, base = serve_inbox(redis_url)
    token = mint(SECRET, "default", "u-ada", int(time.time()) + 600)
    title = "New match: Kernel Hacker at Penguin & Sons (93%)"
    driver = Driver(node, f"{base}/#token={token}", title)
    try:
        ready = driver.wait_for("ready")
        assert ready["badge"] == {"hidden": True, "text": "0", "items": 0}

        data = {"user_id": "u-ada", "match_id": "m-live", "job_title": "Kernel Hacker", "company": "Penguin & Sons",
                "score": 93.0}
        event = pipeline.pub().publish("jobs.match.found", data, subject="u-ada", source=SOURCE)
        pipeline.pub().flush()

        arrived = driver.wait_for("arrived")
        assert arrived["badge"] == "1" and arrived["unread"] == 1
        # no reload: the marker set on the document before publishing is still there, no navigation since
        assert arrived["sameDocument"] is True and arrived["navigations"] == ready["navigations"]
        assert "Kernel Hacker" in arrived["body"]

        done = driver.wait_for("done")
        assert done["badgeHidden"] is True and done["badge"] == "0"
        assert (done["unread"], done["read"], done["summary"]) == (0, 1, "all read")
        assert done["sameDocument"] is True and done["navigations"] == ready["navigations"]
        assert done["problems"] == []
        assert driver.close() == 0

        # the click reached the server: the entry is read in Redis, as every other client now sees
        listed = httpx.get(f"{base}/api/inbox", headers={"authorization": f"Bearer {token}"}, timeout=5).json()
        ident = delivery_id(SOURCE, event.id, "job-match", "u-ada", "inapp")
        assert [(i["id"], i["title"], i["read"]) for i in listed["items"]] == [(ident, title, True)]
        assert listed["unread"] == 0
    finally:
        driver.close()
        server.terminate()
        server.wait(timeout=20)
        if server.stderr is not None:
            server.stderr.close()
