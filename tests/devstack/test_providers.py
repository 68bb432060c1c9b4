"""The provider stand-in, driven by plain httpx (no Tidings code on the sending side): it must
answer as Slack, Discord, Telegram, Teams and Twilio do, or the channel tests prove nothing."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.providers import TELEGRAM_TOKEN, TWILIO_ACCOUNT, TWILIO_TOKEN, ProviderSink, target_of

from .test_sinks import read_line

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sink() -> Iterator[ProviderSink]:
    with ProviderSink(faults={"busy": "busy", "+15550001111": "gone", "rl": "ratelimit"}) as running:
        yield running


def test_slack_answers_in_text(sink: ProviderSink) -> None:
    ok = httpx.post(sink.url("/services/T/B/x"), json={"text": "hi"})
    assert (ok.status_code, ok.text) == (200, "ok")
    bad = httpx.post(sink.url("/services/T/B/x"), json={"nothing": 1})
    assert (bad.status_code, bad.text) == (400, "invalid_payload")
    busy = httpx.post(sink.url("/services/T/B/busy"), json={"text": "hi"})
    assert (busy.status_code, busy.text) == (500, "rollup_error")


def test_discord_answers_the_message_only_when_asked_to_wait(sink: ProviderSink) -> None:
    body = {"embeds": [{"title": "t", "description": "d"}]}
    assert httpx.post(sink.url("/api/webhooks/1/tok"), json=body).status_code == 204
    waited = httpx.post(sink.url("/api/webhooks/1/tok?wait=true"), json=body)
    assert waited.status_code == 200 and waited.json()["id"]
    limited = httpx.post(sink.url("/api/webhooks/1/rl?wait=true"), json=body)
    assert limited.status_code == 429
    assert limited.json()["retry_after"] == 0.35 and limited.headers["retry-after"] == "1"


def test_telegram_checks_the_token_and_answers_ok_false(sink: ProviderSink) -> None:
    wrong = httpx.post(sink.url("/bot1:nope/sendMessage"), json={"chat_id": 1, "text": "x"})
    assert wrong.status_code == 401 and wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    right = httpx.post(sink.url(f"/bot{TELEGRAM_TOKEN}/sendMessage"), json={"chat_id": 1, "text": "<b>x</b>"})
    assert right.json()["ok"] is True and right.json()["result"]["text"] == "x"
    long = httpx.post(sink.url(f"/bot{TELEGRAM_TOKEN}/sendMessage"), json={"chat_id": 1, "text": "y" * 4097})
    assert long.json()["description"] == "Bad Request: message is too long"


def test_teams_wants_an_adaptive_card(sink: ProviderSink) -> None:
    assert httpx.post(sink.url("/webhookb2/a/b"), json={"text": "legacy"}).status_code == 400
    card = {"type": "message", "attachments": [{"content": {"type": "AdaptiveCard", "body": [{"text": "t"}]}}]}
    answer = httpx.post(sink.url("/webhookb2/a/b"), json=card)
    assert (answer.status_code, answer.text) == (200, "1")
    assert httpx.post(sink.url("/workflows/a/triggers/b"), json=card).status_code == 202


def test_twilio_checks_basic_auth_and_numbers(sink: ProviderSink) -> None:
    url = sink.url(f"/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Messages.json")
    form = {"To": "+15550002222", "From": "+15550009999", "Body": "hi"}
    assert httpx.post(url, data=form).json()["code"] == 20003
    auth = (TWILIO_ACCOUNT, TWILIO_TOKEN)
    created = httpx.post(url, data=form, auth=auth)
    assert created.status_code == 201 and created.json()["sid"].startswith("SM")
    assert httpx.post(url, data={**form, "To": "0777"}, auth=auth).json()["code"] == 21211
    gone = httpx.post(url, data={**form, "To": "+15550001111"}, auth=auth)
    assert (gone.status_code, gone.json()["code"]) == (400, 21610)
    header = sink.received()[1]["headers"]["authorization"]
    assert header == "Basic " + base64.b64encode(f"{TWILIO_ACCOUNT}:{TWILIO_TOKEN}".encode()).decode()


def test_unknown_faults_are_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        ProviderSink(faults={"x": "explode"})


@pytest.mark.parametrize(
    ("kind", "address", "target"),
    [
        ("slack", "https://hooks.slack.com/services/T/B/abc", "abc"),
        ("discord", "https://discord.com/api/webhooks/1/tok", "tok"),
        ("telegram", "@room_one", "room_one"),
        ("teams", "https://a.webhook.office.com/webhookb2/x/y", "y"),
        ("sms", "+44 7700 900123", "+447700900123"),
        ("email", "a@b.c", None),
    ],
)
def test_target_of_matches_what_the_sink_keys_faults_by(kind: str, address: str, target: str | None) -> None:
    assert target_of(kind, address) == target


def test_command_line_runs_the_providers_too(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "devstack.sinks", "--smtp-port", "0", "--http-port", "0",
               "--providers-port", "0", "--fault", "+15550001111=gone"]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        try:
            banner = read_line(proc)
            match = re.search(r"providers on (http://\S+?);", banner)
            assert match, banner
            answer = httpx.post(f"{match.group(1)}/services/T/B/hook", json={"blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Hello"}}]}, timeout=5)
            assert answer.text == "ok"
            assert read_line(proc) == "slack    -> hook***  Hello\n"
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "sinks: stopped" in out
