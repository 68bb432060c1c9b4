"""EmailChannel against a real aiosmtpd server on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from email.headerregistry import Address
from typing import Any

import pytest
from pydantic import ValidationError

from channels.email import EmailChannel, EmailConfig, validate_address
from devstack.sinks import SmtpSink
from schemas import Delivery
from schemas.errors import InvalidAddressError, PermanentError, TransientError

from .helpers import send_each


def config(port: int, **fields: Any) -> EmailConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "local_hostname": "tidings.test",
        "timeout": 2.0,
        "from_address": "Tidings <notify@tidings.example>",
        "message_id_domain": "mail.tidings.example",
    }
    values.update(fields)
    return EmailConfig(**values)


async def send_all(cfg: EmailConfig, *deliveries: Delivery) -> list[Any]:
    return await send_each(EmailChannel(cfg), deliveries, Exception)


def send_one(cfg: EmailConfig, delivery: Delivery) -> Any:
    return asyncio.run(send_all(cfg, delivery))[0]


# ------------------------------------------------------------------ success


def test_sends_text_and_html_with_identity_headers(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    delivery = make_delivery(subject="Your order has shipped", text="It is on its way.", html="<p>On its way</p>")

    sent = send_one(config(smtp_sink.port), delivery)

    expected_id = f"<{delivery.delivery_id}@mail.tidings.example>"
    assert sent.provider_id == expected_id
    [record] = smtp_sink.wait_for(1)
    assert record["to"] == ["alice@example.com"]
    assert record["from"] == "notify@tidings.example"
    assert record["subject"] == "Your order has shipped"
    assert record["message_id"] == expected_id
    assert record["delivery_id"] == delivery.delivery_id
    assert record["content_type"] == "multipart/alternative"
    assert record["text"].strip() == "It is on its way."
    assert record["html"].strip() == "<p>On its way</p>"
    headers = record["headers"]
    assert headers["from"] == "Tidings <notify@tidings.example>"
    assert headers["to"] == "alice@example.com"
    assert headers["auto-submitted"] == "auto-generated"
    assert headers["content-language"] == "en"
    assert "date" in headers


def test_text_only_when_no_html(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    send_one(config(smtp_sink.port), make_delivery(html=None, text="Plain words only."))

    [record] = smtp_sink.wait_for(1)
    assert record["content_type"] == "text/plain"
    assert record["html"] is None
    assert record["text"].strip() == "Plain words only."


def test_non_ascii_subject_and_body_survive(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    send_one(config(smtp_sink.port), make_delivery(subject="Grüße aus Köln ✓", text="Ça marche — 東京"))

    [record] = smtp_sink.wait_for(1)
    assert record["subject"] == "Grüße aus Köln ✓"
    assert record["text"].strip() == "Ça marche — 東京"


def test_every_kind_of_text_arrives_intact(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    # Through aiosmtplib's dot-stuffing and aiosmtpd's un-stuffing, with an attachment.
    text = ".\n.. two dots\nFrom the start\nGrüße aus Köln\n" + "long " * 300 + "\n.\n"
    html = "<p>東京の会議室の予約が確定しました 🎉</p>\n.\n"
    data = b"line one\r\n.\r\nline three"
    files = json.dumps([{"filename": "Übersicht 📎.txt", "content_type": "text/plain",
                         "content": base64.b64encode(data).decode()}])
    delivery = make_delivery(subject="Termin bestätigt ✓ 東京 🎉", text=text, html=html,
                             metadata={"attachments": files})

    send_one(config(smtp_sink.port, from_address="Büro Köln <notify@tidings.example>"), delivery)

    [record] = smtp_sink.wait_for(1)
    assert record["subject"] == "Termin bestätigt ✓ 東京 🎉"
    assert record["headers"]["from"] == "Büro Köln <notify@tidings.example>"
    assert record["content_type"] == "multipart/mixed"
    assert record["text"].replace("\r\n", "\n") == text
    assert record["html"].replace("\r\n", "\n") == html
    assert record["attachments"] == [{"filename": "Übersicht 📎.txt", "content_type": "text/plain", "size": len(data)}]


def test_nothing_of_the_address_or_password_is_logged(
    smtp_auth_sink: SmtpSink, make_delivery: Any, smtp_password: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = config(smtp_auth_sink.port, username="tidings", password=smtp_password)
    bad = config(smtp_auth_sink.port, username="tidings", password="hunter2-wrong-password")

    send_one(good, make_delivery(address="secret.person@example.com"))
    send_one(bad, make_delivery(address="secret.person@example.com"))
    send_one(good, make_delivery(address="secret.person@example.com", delivery_id="bad\r\nid"))

    assert len(smtp_auth_sink.wait_for(1)) == 1
    ours = [r for r in caplog.records if not r.name.startswith("mail.log")]  # aiosmtpd is the server
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in ours)
    for secret in ("secret.person", smtp_password, "hunter2"):
        assert secret not in text


def test_newlines_in_subject_cannot_inject_headers(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    send_one(config(smtp_sink.port), make_delivery(subject="Hello\r\nBcc: mallory@evil.example"))

    [record] = smtp_sink.wait_for(1)
    assert record["subject"] == "Hello Bcc: mallory@evil.example"
    assert "bcc" not in record["headers"]
    assert record["to"] == ["alice@example.com"]


def test_international_domain_is_sent_as_idna(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    send_one(config(smtp_sink.port), make_delivery(address="kunde@bücher.example"))

    [record] = smtp_sink.wait_for(1)
    assert record["to"] == ["kunde@xn--bcher-kva.example"]


# ------------------------------------------------------------------ pooling


def test_consecutive_sends_reuse_one_connection(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    deliveries = [make_delivery(address=f"user{i}@example.com") for i in range(3)]

    results = asyncio.run(send_all(config(smtp_sink.port), *deliveries))

    assert all(result.provider_id for result in results)
    records = smtp_sink.wait_for(3)
    assert [r["to"] for r in records] == [["user0@example.com"], ["user1@example.com"], ["user2@example.com"]]
    assert smtp_sink.sessions() == 1
    assert smtp_sink.quits() == 1  # aclose() said QUIT on the pooled session


def test_concurrent_sends_stay_within_pool_size(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    deliveries = [make_delivery(address=f"user{i}@example.com") for i in range(8)]

    async def scenario() -> list[Any]:
        channel = EmailChannel(config(smtp_sink.port, pool_size=2))
        try:
            return await asyncio.gather(*(channel.send(d) for d in deliveries))
        finally:
            await channel.aclose()

    results = asyncio.run(scenario())

    assert len({r.provider_id for r in results}) == 8
    records = smtp_sink.wait_for(8)
    assert sorted(r["to"][0] for r in records) == sorted(d.address for d in deliveries)
    assert 1 <= smtp_sink.sessions() <= 2
    assert smtp_sink.quits() == smtp_sink.sessions()


@pytest.mark.parametrize("noticed", [False, True], ids=["drop-unnoticed", "drop-noticed"])
def test_reconnects_when_server_dropped_the_idle_connection(
    smtp_sink: SmtpSink, make_delivery: Any, noticed: bool
) -> None:
    first, second = make_delivery(address="one@example.com"), make_delivery(address="two@example.com")

    async def scenario() -> None:
        channel = EmailChannel(config(smtp_sink.port))
        try:
            await channel.send(first)
            smtp_sink.drop_connections()
            if noticed:
                await asyncio.sleep(0.1)  # let the client see the close before the next send
            await channel.send(second)
        finally:
            await channel.aclose()

    asyncio.run(scenario())

    records = smtp_sink.wait_for(2)
    assert [r["to"] for r in records] == [["one@example.com"], ["two@example.com"]]
    assert smtp_sink.sessions() == 2


def test_idle_session_older_than_max_idle_is_not_reused(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    async def scenario() -> None:
        channel = EmailChannel(config(smtp_sink.port, max_idle=0.05))
        try:
            await channel.send(make_delivery())
            await asyncio.sleep(0.15)
            await channel.send(make_delivery())
        finally:
            await channel.aclose()

    asyncio.run(scenario())

    assert len(smtp_sink.wait_for(2)) == 2
    assert smtp_sink.sessions() == 2


def test_refused_recipient_keeps_the_session_usable(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    results = asyncio.run(
        send_all(
            config(smtp_sink.port),
            make_delivery(address="bounce@example.com"),
            make_delivery(address="alice@example.com"),
        )
    )

    assert isinstance(results[0], InvalidAddressError)
    assert results[1].provider_id
    assert [r["to"] for r in smtp_sink.wait_for(1)] == [["alice@example.com"]]
    assert smtp_sink.sessions() == 1


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    "address",
    [
        "",
        "alice",
        "alice@",
        "@example.com",
        "alice@@example.com",
        "al ice@example.com",
        " alice@example.com",
        "alice@example.com\n",
        "Alice <alice@example.com>",
        "alice@localhost",
        "alice@-example.com",
        "alice@exa_mple.com",
        "alice@example..com",
        "alice@[127.0.0.1]",
        "alice.@example.com",
        "alicé@example.com",
        "alice@example.123",
        "a" * 65 + "@example.com",
    ],
)
def test_invalid_address_is_refused_before_connecting(closed_port: int, make_delivery: Any, address: str) -> None:
    # The port is closed: reaching the network would give a TransientError instead.
    with pytest.raises(InvalidAddressError):
        asyncio.run(EmailChannel(config(closed_port)).send(make_delivery(address=address)))


def test_validate_address_returns_the_envelope_form() -> None:
    assert validate_address("Alice.Smith+tag@Example.COM") == "Alice.Smith+tag@example.com"
    assert validate_address("o'brien@mail.example.org") == "o'brien@mail.example.org"
    assert validate_address("kunde@Bücher.example") == "kunde@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "address",
    ["a@example.com", "first.last@example.com", "x!#$%&'*+/=?^_`{|}~-y@example.com", "a.b.c.d@sub.example.co.uk",
     '"quoted.local"@example.com', "UPPER@EXAMPLE.ORG"],
)
def test_dot_atom_shortcut_agrees_with_the_parser(address: str) -> None:
    local, _, domain = address.rpartition("@")
    assert validate_address(address) == Address(addr_spec=f"{local}@{domain.lower()}").addr_spec


def test_550_at_rcpt_is_an_invalid_address(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    error = send_one(config(smtp_sink.port), make_delivery(address="bounce@example.com"))

    assert isinstance(error, InvalidAddressError)
    assert isinstance(error, PermanentError)
    assert "550" in str(error)
    assert "b***@example.com" in str(error)
    assert "bounce@example.com" not in str(error)
    assert smtp_sink.received() == []


def test_451_at_rcpt_is_transient(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    error = send_one(config(smtp_sink.port), make_delivery(address="later@example.com"))

    assert isinstance(error, TransientError)
    assert not isinstance(error, PermanentError)
    assert "451" in str(error)
    assert smtp_sink.received() == []


def test_server_down_is_transient(closed_port: int, make_delivery: Any) -> None:
    error = send_one(config(closed_port), make_delivery())

    assert isinstance(error, TransientError)
    assert f"127.0.0.1:{closed_port}" in str(error)
    assert error.__cause__ is not None


def test_server_that_never_greets_times_out_as_transient(silent_port: int, make_delivery: Any) -> None:
    started = time.monotonic()
    error = send_one(config(silent_port, timeout=0.3), make_delivery())

    assert isinstance(error, TransientError)
    assert time.monotonic() - started < 2.0


def test_server_that_stops_mid_run_is_transient(make_delivery: Any) -> None:
    sink = SmtpSink().start()
    port = sink.port

    async def scenario() -> Any:
        channel = EmailChannel(config(port))
        try:
            await channel.send(make_delivery())
            sink.drop_connections()
            sink.stop()
            try:
                await channel.send(make_delivery())
            except TransientError as exc:
                return exc
            return None
        finally:
            await channel.aclose()

    try:
        error = asyncio.run(scenario())
    finally:
        sink.stop()
    assert isinstance(error, TransientError)


# ------------------------------------------------------------------ auth and TLS


def test_login_with_the_right_password(smtp_auth_sink: SmtpSink, make_delivery: Any, smtp_password: str) -> None:
    cfg = config(smtp_auth_sink.port, username="tidings", password=smtp_password)

    assert send_one(cfg, make_delivery()).provider_id
    assert len(smtp_auth_sink.wait_for(1)) == 1


def test_without_login_the_server_refuses(smtp_auth_sink: SmtpSink, make_delivery: Any) -> None:
    error = send_one(config(smtp_auth_sink.port), make_delivery())

    assert isinstance(error, PermanentError)
    assert "530" in str(error)
    assert smtp_auth_sink.received() == []


def test_wrong_password_is_transient_and_never_shown(smtp_auth_sink: SmtpSink, make_delivery: Any) -> None:
    cfg = config(smtp_auth_sink.port, username="tidings", password="hunter2-wrong-password")

    error = send_one(cfg, make_delivery())

    assert isinstance(error, TransientError)
    assert "535" in str(error)
    assert "hunter2" not in str(error)
    assert "hunter2" not in repr(error)
    assert "hunter2" not in str(error.__cause__)
    assert smtp_auth_sink.received() == []


def test_password_is_hidden_in_config_repr_and_dump() -> None:
    cfg = EmailConfig(username="tidings", password="hunter2-secret")

    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump())):
        assert "hunter2" not in text
    assert cfg.password is not None
    assert cfg.password.get_secret_value() == "hunter2-secret"


def test_starttls_with_a_trusted_certificate(certificate: Any, make_delivery: Any) -> None:
    with SmtpSink(starttls_context=certificate.server_context()) as sink:
        cfg = config(sink.port, security="starttls", ca_file=str(certificate.cert))
        assert send_one(cfg, make_delivery()).provider_id
        assert len(sink.wait_for(1)) == 1


def test_implicit_tls(certificate: Any, make_delivery: Any) -> None:
    with SmtpSink(tls_context=certificate.server_context()) as sink:
        cfg = config(sink.port, security="tls", ca_file=str(certificate.cert))
        assert send_one(cfg, make_delivery()).provider_id
        assert len(sink.wait_for(1)) == 1


def test_untrusted_certificate_is_refused_unless_validation_is_off(certificate: Any, make_delivery: Any) -> None:
    with SmtpSink(tls_context=certificate.server_context()) as sink:
        error = send_one(config(sink.port, security="tls"), make_delivery())
        assert isinstance(error, TransientError)
        assert sink.received() == []

        sent = send_one(config(sink.port, security="tls", validate_certs=False), make_delivery())
        assert sent.provider_id
        assert len(sink.wait_for(1)) == 1


def test_starttls_required_but_not_offered_is_transient(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    error = send_one(config(smtp_sink.port, security="starttls"), make_delivery())

    assert isinstance(error, TransientError)
    assert smtp_sink.received() == []


def test_security_none_does_not_upgrade_even_when_offered(certificate: Any, make_delivery: Any) -> None:
    # The certificate is untrusted: an opportunistic upgrade would fail the send.
    with SmtpSink(starttls_context=certificate.server_context()) as sink:
        assert send_one(config(sink.port), make_delivery()).provider_id
        assert len(sink.wait_for(1)) == 1


# ------------------------------------------------------------------ config


def test_from_address_must_have_a_mailbox() -> None:
    with pytest.raises(ValidationError):
        EmailConfig(from_address="Tidings")
    with pytest.raises(ValidationError):
        EmailConfig(pool_size=0)


def test_config_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        EmailConfig.model_validate({"hostname": "smtp.example.com"})


def test_from_config_accepts_a_dict(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    channel = EmailChannel.from_config({"host": "127.0.0.1", "port": smtp_sink.port, "local_hostname": "t.test"})

    async def scenario() -> Any:
        try:
            return await channel.send(make_delivery())
        finally:
            await channel.aclose()

    assert asyncio.run(scenario()).provider_id
    assert len(smtp_sink.wait_for(1)) == 1


def test_send_after_aclose_is_a_bug(make_delivery: Any, closed_port: int) -> None:
    async def scenario() -> None:
        channel = EmailChannel(config(closed_port))
        await channel.aclose()
        await channel.send(make_delivery())

    with pytest.raises(RuntimeError):
        asyncio.run(scenario())


def test_in_flight_limit_follows_the_pool_size() -> None:
    assert EmailChannel(EmailConfig(pool_size=7)).max_in_flight() == 7
    assert EmailChannel(EmailConfig()).max_in_flight() == 8
