"""``tidings inbox token`` and ``tidings inbox serve``, run as real processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from channels.inapp.tokens import Principal, verify
from devstack import infra

REPO = Path(__file__).resolve().parents[2]
SECRET = "command-test-secret-0123456789"


def tidings(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumers.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return {**clean, "TIDINGS_REDIS_URL": redis_url, "TIDINGS_INBOX_SECRET": SECRET}


def test_token_names_the_user_and_tenant(env: dict[str, str]) -> None:
    done = tidings("inbox", "token", "u-ada", "--tenant", "acme", "--ttl", "120", env=env)
    assert done.returncode == 0, done.stderr
    assert verify(SECRET, done.stdout.strip(), time.time()) == Principal("acme", "u-ada")
    assert verify(SECRET, done.stdout.strip(), time.time() + 100) == Principal("acme", "u-ada")


def test_without_a_secret_nothing_starts(env: dict[str, str]) -> None:
    del env["TIDINGS_INBOX_SECRET"]
    for args in (("inbox", "serve"), ("inbox", "token", "u-ada")):
        done = tidings(*args, env=env)
        assert done.returncode == 2
        assert "TIDINGS_INBOX_SECRET is not set" in done.stderr
    short = tidings("inbox", "token", "u-ada", env={**env, "TIDINGS_INBOX_SECRET": "short"})
    assert short.returncode == 2 and "at least 16 characters" in short.stderr
    assert "short" not in short.stderr.replace("at least", "")
    missing = tidings("inbox", "token", env={**env, "TIDINGS_INBOX_SECRET": SECRET})
    assert missing.returncode == 2 and "needs a USER" in missing.stderr


@pytest.mark.integration
def test_serve_answers_on_its_port_and_stops_on_sigterm(env: dict[str, str], redis_client: Redis) -> None:
    port, metrics_port = infra.free_port(), infra.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "consumers.cli", "inbox", "serve", "--port", str(port)],
                            env={**env, "TIDINGS_METRICS_PORT": str(metrics_port)}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/healthz", timeout=1).text == "ok":
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tidings inbox serve did not answer within 30s"
            time.sleep(0.2)
        token = tidings("inbox", "token", "u-ada", env=env).stdout.strip()
        assert httpx.get(f"{base}/api/inbox", timeout=5).status_code == 401
        answer = httpx.get(f"{base}/api/inbox", headers={"authorization": f"Bearer {token}"}, timeout=5)
        assert answer.json() == {"items": [], "next_cursor": None, "unread": 0, "total": 0}
        with httpx.stream("GET", f"{base}/api/inbox/stream", params={"access_token": token}, timeout=5) as live:
            lines = live.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: hello"
            scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            assert "tidings_inbox_streams_open 1.0" in scrape.splitlines()
            proc.send_signal(signal.SIGTERM)  # with a live stream open
            assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read() if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    assert token not in output and SECRET not in output
