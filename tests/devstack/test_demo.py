"""`make run` as a user sees it: every delivery and dead letter printed, Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devstack import infra

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


ALERT = "[CRITICAL] router: Consumer lag above 10000 for 5 minutes"
EXPECTED = (
    "u-ada      email    New match: Analytical Engineer at Babbage & Co (91%)",
    "u-kurt     email    Neuer Treffer: Logician bei IAS Princeton (88 %)",
    f"oncall     webhook  {ALERT}",
    "u-edsger   email    [dead-lettered: InvalidAddressError",
    "u-edsger   webhook  [dead-lettered: InvalidAddressError",
    "router   [dead-lettered: DecodeError",
    "u-ada      inapp    New match: Analytical Engineer at Babbage & Co (91%)  "
    "[View Analytical Engineer: /matches/m-1]",
    "u-grace    inapp    Your application for Compiler Engineer is now interview  "
    "[Open the application: /applications/a-7]",
    "Inbox page for u-ada (bell, live updates): http://127.0.0.1:8070/#token=",
    *(f"oncall     {channel:8} {ALERT}" for channel in ("slack", "discord", "telegram", "teams", "sms")),
    "u-ada      telegram New match: Analytical Engineer at Babbage & Co (91%)",
    "u-ada      sms      New match: Analytical Engineer at Babbage & Co (91%)",
    "u-edsger   sms      [dead-lettered: InvalidAddressError: twilio message to +3161***78 refused",
)
"""Lines `make run` must print (each a prefix of a printed line)."""


def test_run_prints_deliveries_and_dead_letters_then_stops_what_it_started(tmp_path: Path) -> None:
    ports = (9092, 6379, 2525, 8025, 8026, 8070)
    if any(infra.port_open(p) for p in (2525, 8025, 8026, 8070)):
        pytest.skip("the demo sink or inbox ports 2525/8025/8026/8070 are in use on this machine")
    free_before = {p: not infra.port_open(p) for p in ports}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["TIDINGS_STATE"] = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "devstack.demo", "run"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            text = "\n".join(lines)
            if all(line in text for line in EXPECTED) or proc.poll() is not None:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, "\n".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    text = "\n".join(lines)
    missing = [line for line in EXPECTED if line not in text]
    assert missing == [], text
    assert "u-grace    webhook" not in text  # she opted out of webhooks
    # Whatever it started is stopped again; whatever was running before is left alone.
    for port, was_free in free_before.items():
        if was_free:
            assert not infra.port_open(port), f"port {port} still open after the demo stopped"
