"""channels.http.HttpPool: the direct path to the transport, and when it steps aside for proxies."""

from __future__ import annotations

import asyncio
import logging

import pytest

from channels.http import HttpPool, ProviderConfig
from channels.webhook.channel import WebhookConfig
from devstack.sinks import WebhookSink


def test_a_proxy_in_the_environment_sends_requests_through_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert HttpPool(WebhookConfig()).direct
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert not HttpPool(WebhookConfig()).direct
    assert HttpPool(WebhookConfig(trust_env=False)).direct
    assert not HttpPool(ProviderConfig(base_url="https://api.example.com")).direct


def test_the_direct_path_sends_our_user_agent_and_logs_the_call_masked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="channels.http")
    with WebhookSink() as sink:
        pool = HttpPool(WebhookConfig(trust_env=False, user_agent="Tidings/test"))

        async def post() -> tuple[int, bytes]:
            try:
                status, _, body = await pool.post(sink.url("/hook?token=s3cret"), content=b'{"a":1}',
                                                  headers={"content-type": "application/json", "webhook-id": "w-1"})
                return status, body
            finally:
                await pool.aclose()

        status, _ = asyncio.run(post())
        [got] = sink.wait_for(1, timeout=10)
    assert status == 200
    assert got["headers"]["user-agent"] == "Tidings/test"
    assert "HTTP Request: POST" in caplog.text and "s3cret" not in caplog.text
