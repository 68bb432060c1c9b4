"""The local sinks, driven by plain stdlib and httpx clients (no Tidings code on the sending side)."""

from __future__ import annotations

import io
import json
import os
import re
import selectors
import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from channels.signing import sign
from devstack.sinks import Reply, ReplySpec, SmtpSink, WebhookSink, _parse_status

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_c2luay10ZXN0LWtleQ=="  # base64 of b"sink-test-key"


def mail(to: str, subject: str = "Hello", delivery_id: str = "d-1") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "sender@example.com"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{delivery_id}@test>"
    message["X-Tidings-Delivery-Id"] = delivery_id
    message.set_content("plain body")
    message.add_alternative("<p>html body</p>", subtype="html")
    return message


def signed_headers(body: bytes, msg_id: str = "d-1") -> dict[str, str]:
    timestamp = int(time.time())
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(SECRET, msg_id, timestamp, body),
    }


# ------------------------------------------------------------------ SMTP sink


def test_smtp_sink_records_echoes_and_writes_json_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    record_file = tmp_path / "sinks.jsonl"
    with SmtpSink(record=record_file, echo=out) as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=5) as client:
            client.send_message(mail("alice@example.com", "Report ready"))
        [record] = sink.wait_for(1)

    assert record["kind"] == "email"
    assert record["to"] == ["alice@example.com"]
    assert record["from"] == "sender@example.com"
    assert record["subject"] == "Report ready"
    assert record["message_id"] == "<d-1@test>"
    assert record["delivery_id"] == "d-1"
    assert record["text"].strip() == "plain body"
    assert record["html"].strip() == "<p>html body</p>"
    assert out.getvalue() == "email   -> a***@example.com  Report ready\n"
    [line] = record_file.read_text().splitlines()
    assert json.loads(line)["subject"] == "Report ready"


def test_smtp_sink_refuses_and_defers_configured_addresses() -> None:
    with SmtpSink(refuse={"Bounce@Example.com"}, defer={"later@example.com"}) as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=5) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.send_message(mail("bounce@example.com"))
            assert refused.value.recipients["bounce@example.com"] == (550, b"5.1.1 mailbox unavailable")
            client.rset()
            with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
                client.send_message(mail("later@example.com"))
            assert deferred.value.recipients["later@example.com"][0] == 451
        assert sink.received() == []


def test_smtp_sink_counts_sessions_and_quits() -> None:
    with SmtpSink() as sink:
        for _ in range(2):
            with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=5) as client:
                client.send_message(mail("a@example.com"))
                client.send_message(mail("b@example.com"))
        sink.wait_for(4)
        assert sink.sessions() == 2
        assert sink.quits() == 2


def test_smtp_sink_with_credentials_requires_login() -> None:
    with SmtpSink(credentials=("user", "pass")) as sink:
        with (
            smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=5) as client,
            pytest.raises(smtplib.SMTPSenderRefused),
        ):
            client.send_message(mail("a@example.com"))
        with smtplib.SMTP("127.0.0.1", sink.port, local_hostname="client.test", timeout=5) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("user", "wrong")
            client.login("user", "pass")
            client.send_message(mail("a@example.com"))
        assert len(sink.wait_for(1)) == 1


def test_wait_for_times_out_with_what_arrived() -> None:
    with SmtpSink() as sink:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="received \\[\\]"):
            sink.wait_for(1, timeout=0.2)
        assert time.monotonic() - started < 1.0


# ------------------------------------------------------------------ webhook sink


def test_webhook_sink_verifies_records_and_answers_an_id(tmp_path: Path) -> None:
    out = io.StringIO()
    body = json.dumps({"title": "Report ready", "n": 1}).encode()
    with WebhookSink(secret=SECRET, record=tmp_path / "hooks.jsonl", echo=out) as sink:
        good = httpx.post(sink.url("/hooks/acme"), content=body, headers=signed_headers(body), timeout=5)
        bad = httpx.post(sink.url("/hooks/acme"), content=body + b" ", headers=signed_headers(body), timeout=5)
        records = sink.wait_for(2)

    assert good.status_code == 200
    assert good.json() == {"id": "wh_1"}
    assert bad.status_code == 401
    assert "does not match" in bad.json()["error"]
    accepted, rejected = records
    assert accepted["path"] == "/hooks/acme"
    assert accepted["delivery_id"] == "d-1"
    assert accepted["body"] == {"title": "Report ready", "n": 1}
    assert accepted["status"] == 200
    assert rejected["status"] == 401
    assert "error" in rejected
    lines = out.getvalue().splitlines()
    assert lines[0] == "webhook -> /hooks/acme  Report ready"
    assert lines[1].startswith("webhook -> /hooks/acme  Report ready  [401: ")
    assert len((tmp_path / "hooks.jsonl").read_text().splitlines()) == 2


def test_webhook_sink_fixed_answers() -> None:
    statuses: dict[str, ReplySpec] = {
        "/gone": 410,
        "/slow-down": (429, {"Retry-After": "2"}),
        "/custom": Reply(202, {"X-Test": "yes"}, body="accepted"),
    }
    with WebhookSink(statuses=statuses) as sink, httpx.Client(timeout=5) as client:
        assert client.post(sink.url("/gone"), content=b"{}").status_code == 410
        slow = client.post(sink.url("/slow-down"), content=b"{}")
        custom = client.post(sink.url("/custom?x=1"), content=b"not json")
        ok = client.post(sink.url("/anything"), content=b"{}")
        records = sink.wait_for(4)

    assert (slow.status_code, slow.headers["retry-after"]) == (429, "2")
    assert (custom.status_code, custom.headers["x-test"], custom.text) == (202, "yes", "accepted")
    assert ok.json() == {"id": "wh_1"}
    assert [r["status"] for r in records] == [410, 429, 202, 200]
    assert records[2]["path"] == "/custom"
    assert records[2]["body"] == "not json"


def test_webhook_sink_can_drop_the_connection() -> None:
    with WebhookSink(statuses={"/drop": Reply(drop=True)}) as sink:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(sink.url("/drop"), content=b"{}", timeout=5)
        assert sink.wait_for(1)[0]["status"] is None


def test_slow_answers_are_cut_short_when_the_sink_stops() -> None:
    sink = WebhookSink(statuses={"/slow": Reply(delay=30)}).start()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(sink.url("/slow"), content=b"{}", timeout=0.2)
    finally:
        started = time.monotonic()
        sink.stop()
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("text", "path", "reply"),
    [
        ("/gone=410", "/gone", Reply(410)),
        ("/slow-down=429,Retry-After:2", "/slow-down", Reply(429, {"Retry-After": "2"})),
    ],
)
def test_parse_status(text: str, path: str, reply: Reply) -> None:
    assert _parse_status(text) == (path, reply)


@pytest.mark.parametrize("text", ["gone=410", "/gone", "/gone=abc", "/x=429,Retry-After"])
def test_parse_status_refuses_bad_specs(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        _parse_status(text)


# ------------------------------------------------------------------ command line


def read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError("no output from the sinks process")
    return proc.stdout.readline()


def test_command_line_runs_both_sinks_until_sigterm(tmp_path: Path) -> None:
    record_file = tmp_path / "record.jsonl"
    command = [
        sys.executable,
        "-m",
        "devstack.sinks",
        "--smtp-port",
        "0",
        "--http-port",
        "0",
        "--record",
        str(record_file),
        "--refuse",
        "bounce@example.com",
        "--status",
        "/gone=410",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            banner = read_line(proc)
            match = re.search(r"smtp on 127\.0\.0\.1:(\d+), webhooks on (http://\S+?)/?[;,]", banner)
            assert match, banner
            smtp_port, base = int(match.group(1)), match.group(2)

            with smtplib.SMTP("127.0.0.1", smtp_port, local_hostname="client.test", timeout=5) as client:
                client.send_message(mail("alice@example.com", "Hi from the CLI test"))
                with pytest.raises(smtplib.SMTPRecipientsRefused):
                    client.send_message(mail("bounce@example.com"))
            assert read_line(proc) == "email   -> a***@example.com  Hi from the CLI test\n"
            assert httpx.post(f"{base}/gone", json={"title": "t"}, timeout=5).status_code == 410
            assert read_line(proc) == "webhook -> /gone  t  [410]\n"
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "sinks: stopped" in out
    kinds = [json.loads(line)["kind"] for line in record_file.read_text().splitlines()]
    assert kinds == ["email", "webhook"]
