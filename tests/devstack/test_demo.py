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


def test_run_prints_deliveries_and_dead_letters_then_stops_what_it_started(tmp_path: Path) -> None:
    ports = (9092, 6379, 2525, 8025, 8070)
    if any(infra.port_open(p) for p in (2525, 8025, 8070)):
        pytest.skip("the demo sink or inbox ports 2525/8025/8070 are in use on this machine")
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
            shown = [ln for ln in lines if ln.split()[:1] and ln.split()[0].startswith(("u-", "oncall"))]
            if len(shown) >= 13 or proc.poll() is not None:
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
    assert "u-ada      email    New match: Analytical Engineer at Babbage & Co (91%)" in text
    assert "u-kurt     email    Neuer Treffer: Logician bei IAS Princeton (88 %)" in text
    assert "oncall     webhook  [CRITICAL] router: Consumer lag above 10000 for 5 minutes" in text
    assert "u-edsger   email    [dead-lettered: InvalidAddressError" in text
    assert "u-edsger   webhook  [dead-lettered: InvalidAddressError" in text
    assert "router   [dead-lettered: DecodeError" in text
    assert "u-grace    webhook" not in text  # she opted out of webhooks
    assert "u-ada      inapp    New match: Analytical Engineer at Babbage & Co (91%)" in text
    assert "u-grace    inapp    Your application for Compiler Engineer is now interview" in text
    assert "Inbox page for u-ada (bell, live updates): http://127.0.0.1:8070/#token=" in text
    # Whatever it started is stopped again; whatever was running before is left alone.
    for port, was_free in free_before.items():
        if was_free:
            assert not infra.port_open(port), f"port {port} still open after the demo stopped"
