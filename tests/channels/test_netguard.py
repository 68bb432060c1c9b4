"""The SSRF guard: which addresses it refuses, what the allow-list lets through, and that
the webhook channel connects to the address it checked. Refusals are decided before any
connection, so these tests send nothing beyond loopback."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import httpx
import pytest

from channels.netguard import NetworkGuard, parse_networks
from channels.webhook import WebhookChannel, WebhookConfig
from devstack.sinks import Reply, WebhookSink
from schemas.errors import DeliveryError, InvalidAddressError

from .helpers import send_each


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.5.5.5", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "not a public"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "not a public"),
        ("192.0.2.10", "private"),  # documentation range
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: judged as IPv4
        ("::ffff:169.254.169.254", "metadata"),
    ],
)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    reason = NetworkGuard().refusal(ipaddress.ip_address(address))
    assert reason is not None and why in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert NetworkGuard().refusal(ipaddress.ip_address(address)) is None


def test_allow_list_lets_named_networks_through_and_only_those() -> None:
    guard = NetworkGuard(["127.0.0.1/32", "10.20.0.0/16"])
    assert guard.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert guard.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert guard.refusal(ipaddress.ip_address("127.0.0.2")) is not None
    assert guard.refusal(ipaddress.ip_address("10.21.0.1")) is not None
    assert guard.refusal(ipaddress.ip_address("169.254.169.254")) is not None


def test_bad_networks_are_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP network"):
        parse_networks(["10.0.0.0/33"])
    with pytest.raises(ValueError, match="allow_networks"):
        WebhookConfig(allow_networks=("nonsense",))


def test_names_are_resolved_before_judging() -> None:
    """``localhost`` is a name, not an address: it is refused for what it resolves to."""
    with pytest.raises(InvalidAddressError, match=r"localhost \(.*\): a loopback address"):
        asyncio.run(NetworkGuard().resolve(httpx.URL("http://localhost:8080/x")))


def test_the_target_keeps_the_name_and_pins_the_checked_address() -> None:
    target = asyncio.run(NetworkGuard(["127.0.0.0/8", "::1/128"]).resolve(httpx.URL("http://localhost:8080/x?y=1")))
    assert target.host == "localhost"
    assert str(target.address) in ("127.0.0.1", "::1")
    assert target.url.port == 8080 and target.url.path == "/x" and target.url.query == b"y=1"
    assert target.url.host == str(target.address)


def test_the_targets_repr_shows_no_path_or_query() -> None:
    """A webhook URL can carry its secret in the path or the query; a target that ends up in a log line
    or a traceback must not show it."""
    url = httpx.URL("http://127.0.0.1:8080/hooks/T0KEN-SECRET?sig=QUERY-SECRET")
    target = asyncio.run(NetworkGuard(["127.0.0.0/8"]).resolve(url))
    shown = repr(target)
    assert "SECRET" not in shown and "127.0.0.1:8080" in shown


def test_an_unresolvable_name_is_transient() -> None:
    from schemas.errors import TransientError

    with pytest.raises(TransientError, match="cannot resolve"):
        asyncio.run(NetworkGuard().resolve(httpx.URL("http://no-such-host.invalid/x")))


def run(config: WebhookConfig, *deliveries: Any) -> list[Any]:
    return asyncio.run(send_each(WebhookChannel(config), deliveries, DeliveryError))


def test_the_webhook_channel_refuses_loopback_by_default(make_delivery: Any) -> None:
    with WebhookSink() as sink:
        [error] = run(WebhookConfig(trust_env=False), make_delivery(channel="webhook", address=sink.url("/hooks/a")))
        assert isinstance(error, InvalidAddressError)
        assert "loopback" in str(error) and "TIDINGS_WEBHOOK_ALLOW_PRIVATE" in str(error)
        assert sink.received() == []  # refused before connecting


def test_host_header_is_the_name_the_url_gave(make_delivery: Any) -> None:
    with WebhookSink() as sink:
        config = WebhookConfig(trust_env=False, allow_networks=("127.0.0.0/8",))
        [sent] = run(config, make_delivery(channel="webhook", address=sink.url("/hooks/a")))
        assert sent.provider_id == "wh_1"
        assert sink.received()[0]["headers"]["host"] == f"127.0.0.1:{sink.port}"


def test_redirects_are_refused_unless_allowed_then_checked_at_every_hop(make_delivery: Any) -> None:
    with WebhookSink(statuses={}) as sink:
        sink.replies["/old"] = Reply(307, {"Location": sink.url("/new")})
        # 127.0.0.2 is loopback too, but outside the allow-list below: the guard refuses it before connecting.
        sink.replies["/sneaky"] = Reply(308, {"Location": f"http://127.0.0.2:{sink.port}/admin"})
        sink.replies["/see-other"] = Reply(303, {"Location": sink.url("/new")})
        allow = ("127.0.0.1/32",)
        hook = make_delivery(channel="webhook", address=sink.url("/old"), payload='{"n": 1}')

        [refused] = run(WebhookConfig(trust_env=False, allow_networks=allow), hook)
        assert type(refused).__name__ == "PermanentError" and "redirect not followed" in str(refused)

        config = WebhookConfig(trust_env=False, allow_networks=allow, max_redirects=1)
        sneaky = make_delivery(channel="webhook", address=sink.url("/sneaky"))
        see_other = make_delivery(channel="webhook", address=sink.url("/see-other"))
        followed, blocked, not_followed = run(config, hook, sneaky, see_other)

        assert followed.provider_id == "wh_1"
        paths = [r["path"] for r in sink.received()]
        assert paths == ["/old", "/old", "/new", "/sneaky", "/see-other"]
        new = sink.received()[2]
        assert new["raw"] == '{"n": 1}' and new["headers"]["webhook-id"] == hook.delivery_id  # POST and body kept
        assert isinstance(blocked, InvalidAddressError) and "127.0.0.2" in str(blocked)
        assert type(not_followed).__name__ == "PermanentError"  # a 303 would turn the POST into a GET


def test_accepted_targets_are_remembered_for_the_dns_ttl() -> None:
    url = httpx.URL("http://localhost:8080/x")

    async def twice(guard: NetworkGuard) -> tuple[object, object]:
        return await guard.resolve(url), await guard.resolve(url)

    first, again = asyncio.run(twice(NetworkGuard(["127.0.0.0/8", "::1/128"])))
    assert again is first  # the second call did not resolve or check again
    first, again = asyncio.run(twice(NetworkGuard(["127.0.0.0/8", "::1/128"], dns_ttl=0.0)))
    assert again is not first and again == first


def test_refusals_are_not_remembered() -> None:
    guard = NetworkGuard()
    for _ in range(2):
        with pytest.raises(InvalidAddressError, match="loopback"):
            asyncio.run(guard.resolve(httpx.URL("http://127.0.0.1:8080/x")))
