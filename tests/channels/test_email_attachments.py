"""Email attachments (seed 001): inline or fetched by URL, size-limited, through the SSRF guard,
sent to a real SMTP server and read back from what it received."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from channels.email import EmailChannel, EmailConfig
from channels.email.attachments import safe_filename
from devstack.providers import ProviderSink
from devstack.sinks import SmtpSink
from schemas import Delivery
from schemas.errors import DeliveryError, PermanentError, TransientError

from .helpers import send_each


@pytest.fixture
def files() -> Iterator[ProviderSink]:
    with ProviderSink(faults={"missing.pdf": "gone", "flaky.pdf": "busy"}) as sink:
        yield sink


def config(sink: SmtpSink, **extra: Any) -> EmailConfig:
    return EmailConfig(host="127.0.0.1", port=sink.port, local_hostname="client.test", timeout=5,
                       attachment_allow_networks=("127.0.0.0/8",), **extra)


def with_files(make_delivery: Any, *specs: dict[str, Any]) -> Delivery:
    delivery: Delivery = make_delivery(metadata={"attachments": json.dumps(list(specs))})
    return delivery


def run(cfg: EmailConfig, *deliveries: Delivery) -> list[Any]:
    return asyncio.run(send_each(EmailChannel(cfg), deliveries, DeliveryError))


def parts(smtp_sink: SmtpSink) -> list[Any]:
    raw = smtp_sink.received()[0]
    assert raw["content_type"] == "multipart/mixed"
    return list(raw["attachments"])


def test_inline_and_fetched_files_are_attached(
    smtp_sink: SmtpSink, files: ProviderSink, make_delivery: Any
) -> None:
    inline = base64.b64encode(b"%PDF-1.4 tiny").decode()
    delivery = with_files(
        make_delivery,
        {"filename": "resume.pdf", "content_type": "application/pdf", "content": inline},
        {"filename": "book.epub", "content_type": "application/epub+zip",
         "url": files.url("/files/book.epub?size=5000")},
    )

    [sent] = run(config(smtp_sink), delivery)

    assert sent.provider_id
    assert parts(smtp_sink) == [
        {"filename": "resume.pdf", "content_type": "application/pdf", "size": 13},
        {"filename": "book.epub", "content_type": "application/epub+zip", "size": 5000},
    ]
    record = smtp_sink.received()[0]
    assert record["text"].startswith("Your order") and record["html"]  # the body survives next to the files


def test_a_binary_attachment_keeps_its_size(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    payload = bytes(range(256)) * 10
    delivery = with_files(make_delivery, {"filename": "blob.bin", "content": base64.b64encode(payload).decode()})
    run(config(smtp_sink), delivery)
    assert smtp_sink.received()[0]["attachments"] == [
        {"filename": "blob.bin", "content_type": "application/octet-stream", "size": len(payload)}
    ]


@pytest.mark.parametrize(
    ("specs", "limit", "message"),
    [
        ([{"filename": "a.bin", "content": base64.b64encode(b"x" * 600).decode()}], 500, "exceed 500 bytes"),
        ([{"filename": "a.bin", "content": base64.b64encode(b"x" * 300).decode()},
          {"filename": "b.bin", "content": base64.b64encode(b"y" * 300).decode()}], 500, "at 'b.bin'"),
        ([{"filename": "x", "content": "not base64!"}], 500, "not valid base64"),
        ([{"filename": "x"}], 500, "neither a url nor content"),
        ([{"filename": f"f{i}", "content": ""} for i in range(11)], 10_000, "more than the limit of 10"),
        ([{"filename": "x", "url": "ftp://example.com/x"}], 500, "not an http"),
    ],
)
def test_limits_and_bad_lists_are_permanent_and_nothing_is_sent(
    smtp_sink: SmtpSink, make_delivery: Any, specs: list[dict[str, Any]], limit: int, message: str
) -> None:
    [error] = run(config(smtp_sink, max_attachment_bytes=limit), with_files(make_delivery, *specs))
    assert type(error) is PermanentError and message in str(error)
    assert smtp_sink.received() == []


def test_a_fetched_file_over_the_limit_stops_reading(
    smtp_sink: SmtpSink, files: ProviderSink, make_delivery: Any
) -> None:
    url = files.url("/files/huge.iso?size=200000")
    delivery = with_files(make_delivery, {"filename": "x", "url": url})
    [error] = run(config(smtp_sink, max_attachment_bytes=50_000), delivery)
    assert type(error) is PermanentError and "larger than the 50000 bytes left" in str(error)


def test_file_server_errors(smtp_sink: SmtpSink, files: ProviderSink, make_delivery: Any) -> None:
    gone = with_files(make_delivery, {"filename": "m.pdf", "url": files.url("/files/missing.pdf")})
    flaky = with_files(make_delivery, {"filename": "f.pdf", "url": files.url("/files/flaky.pdf")})
    missing, busy = run(config(smtp_sink), gone, flaky)
    assert type(missing) is PermanentError and "answered 404" in str(missing)
    assert type(busy) is TransientError and "answered 503" in str(busy)


def test_attachment_urls_pass_the_ssrf_guard(smtp_sink: SmtpSink, files: ProviderSink, make_delivery: Any) -> None:
    cfg = EmailConfig(host="127.0.0.1", port=smtp_sink.port, local_hostname="client.test", timeout=5)
    delivery = with_files(make_delivery, {"filename": "x", "url": files.url("/files/secret.txt")})
    [error] = run(cfg, delivery)
    assert type(error) is PermanentError and "loopback" in str(error)
    assert smtp_sink.received() == []


def test_filenames_and_content_types_are_made_safe(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    data = base64.b64encode(b"hello").decode()
    delivery = with_files(
        make_delivery, {"filename": "../../etc/pass\r\nwd.txt", "content_type": "text/plain; evil", "content": data}
    )
    run(config(smtp_sink), delivery)
    [attachment] = parts(smtp_sink)
    assert attachment == {"filename": "passwd.txt", "content_type": "application/octet-stream", "size": 5}
    assert safe_filename("C:\\Users\\x\\report.pdf") == "report.pdf"
    assert safe_filename("...") == "attachment"


def test_container_types_are_sent_as_octet_streams(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    # multipart/* and message/* may not be base64-encoded (RFC 2045 6.4, RFC 2046 5.2.1).
    data = base64.b64encode(b"From: a@b.example\r\n\r\nhi\r\n").decode()
    delivery = with_files(
        make_delivery,
        {"filename": "fwd.eml", "content_type": "message/rfc822", "content": data},
        {"filename": "parts.bin", "content_type": "multipart/mixed", "content": data},
    )
    run(config(smtp_sink), delivery)
    assert [a["content_type"] for a in parts(smtp_sink)] == ["application/octet-stream"] * 2


def test_without_attachments_the_message_is_unchanged(smtp_sink: SmtpSink, make_delivery: Any) -> None:
    run(config(smtp_sink), make_delivery())
    assert smtp_sink.received()[0]["content_type"] == "multipart/alternative"
    assert smtp_sink.received()[0]["attachments"] == []
