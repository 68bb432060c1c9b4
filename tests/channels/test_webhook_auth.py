"""Webhook receivers' credentials: bearer, basic and API-key header, chosen by URL prefix."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from channels.webhook import WebhookAuth, WebhookChannel, WebhookConfig
from channels.webhook.auth import credential_for
from devstack.sinks import Reply, WebhookSink
from schemas.errors import DeliveryError

from .helpers import send_each

LOOPBACK = ("127.0.0.0/8",)


def config(sink: WebhookSink, **extra: Any) -> WebhookConfig:
    auth = {
        sink.url("/"): {"type": "header", "header": "X-API-Key", "value": "key-for-everything-else"},
        sink.url("/bearer/"): {"type": "bearer", "token": "bearer-token-123"},
        sink.url("/basic"): {"type": "basic", "username": "tidings", "password": "pa:ss-word"},
    }
    return WebhookConfig.model_validate(
        {"auth": auth, "allow_networks": LOOPBACK, "trust_env": False, **extra}
    )


def send(cfg: WebhookConfig, make_delivery: Any, *urls: str) -> list[Any]:
    deliveries = tuple(make_delivery(channel="webhook", address=url) for url in urls)
    return asyncio.run(send_each(WebhookChannel(cfg), deliveries, DeliveryError))


def test_each_url_gets_the_credential_of_its_longest_prefix(make_delivery: Any) -> None:
    with WebhookSink() as sink:
        send(config(sink), make_delivery, sink.url("/bearer/orders"), sink.url("/basic/x"), sink.url("/other"),
             sink.url("/bearerish"))
        headers = [r["headers"] for r in sink.received()]

    assert headers[0]["authorization"] == "Bearer bearer-token-123"
    assert "x-api-key" not in headers[0]
    assert headers[1]["authorization"] == "Basic " + base64.b64encode(b"tidings:pa:ss-word").decode()
    assert headers[2]["x-api-key"] == "key-for-everything-else" and "authorization" not in headers[2]
    assert headers[3]["x-api-key"] == "key-for-everything-else"  # /bearerish is not under /bearer/


def test_no_credential_for_another_origin() -> None:
    auth = {"https://api.example.com/": WebhookAuth(type="bearer", token="t")}
    assert credential_for(httpx.URL("https://api.example.com/x"), auth) is not None
    assert credential_for(httpx.URL("https://api.example.com.evil.net/x"), auth) is None
    assert credential_for(httpx.URL("http://api.example.com/x"), auth) is None
    assert credential_for(httpx.URL("https://api.example.com:8443/x"), auth) is None


def test_credentials_are_not_carried_across_a_redirect_to_another_origin(make_delivery: Any) -> None:
    with WebhookSink() as sink, WebhookSink() as elsewhere:
        sink.replies["/bearer/moved"] = Reply(307, {"Location": elsewhere.url("/landing")})
        [sent] = send(config(sink, max_redirects=1), make_delivery, sink.url("/bearer/moved"))
        assert sent.provider_id == "wh_1"
        assert sink.received()[0]["headers"]["authorization"] == "Bearer bearer-token-123"
        assert "authorization" not in elsewhere.received()[0]["headers"]


def test_credentials_never_show_in_repr() -> None:
    cfg = WebhookConfig.model_validate(
        {"auth": {"https://a.example/": {"type": "basic", "username": "u", "password": "hidden-pw"}}}
    )
    assert "hidden-pw" not in repr(cfg) and "hidden-pw" not in str(cfg)


@pytest.mark.parametrize(
    ("credential", "message"),
    [
        ({"type": "bearer"}, "needs a 'token'"),
        ({"type": "basic", "username": "u"}, "needs 'username' and 'password'"),
        ({"type": "basic", "username": "a:b", "password": "p"}, "cannot contain ':'"),
        ({"type": "header", "header": "X-Key"}, "needs 'header' and 'value'"),
        ({"type": "header", "header": "Webhook-Signature", "value": "v"}, "cannot carry an API key"),
        ({"type": "oauth", "token": "t"}, "type"),
    ],
)
def test_incomplete_credentials_are_refused_at_start(credential: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WebhookConfig.model_validate({"auth": {"https://a.example/": credential}})


def test_auth_prefix_must_be_a_url() -> None:
    with pytest.raises(ValidationError, match="not an http"):
        WebhookConfig.model_validate({"auth": {"api.example.com": {"type": "bearer", "token": "t"}}})
