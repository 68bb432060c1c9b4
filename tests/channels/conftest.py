"""Fixtures for channel tests: real SMTP and HTTP servers on loopback, free ports.

Every server is started per test and stopped after it, so a test sees only
its own traffic. Nothing here mocks a client: the channels talk to these
servers over real sockets.
"""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devstack.sinks import Reply, SmtpSink, WebhookSink
from schemas import Delivery

SECRET = "whsec_" + base64.b64encode(b"tidings-test-signing-key-0001").decode()
SMTP_PASSWORD = "correct-horse-battery-staple"

DeliveryFactory = Callable[..., Delivery]


@pytest.fixture
def make_delivery() -> DeliveryFactory:
    """Build a Delivery with sensible defaults; keyword arguments override fields."""
    counter = iter(range(1, 1_000_000))

    def build(**fields: Any) -> Delivery:
        number = next(counter)
        values: dict[str, Any] = {
            "delivery_id": f"0b6f6b1e-0000-4000-8000-{number:012d}",
            "event_id": f"evt-{number}",
            "event_source": "/tests/orders",
            "event_type": "orders.shipped",
            "event_time": datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
            "tenant": "acme",
            "rule": "shipped-notice",
            "channel": "email",
            "recipient_id": "user-42",
            "address": "alice@example.com",
            "subject": f"Order {number} has shipped",
            "text": f"Your order {number} is on its way.",
            "html": f"<p>Your order <b>{number}</b> is on its way.</p>",
        }
        values.update(fields)
        return Delivery(**values)

    return build


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink(refuse={"bounce@example.com"}, defer={"later@example.com"}) as sink:
        yield sink


@pytest.fixture
def smtp_auth_sink() -> Iterator[SmtpSink]:
    with SmtpSink(credentials=("tidings", SMTP_PASSWORD)) as sink:
        yield sink


WEBHOOK_REPLIES: dict[str, Reply | int | tuple[int, dict[str, str]]] = {
    "/gone": Reply(410, body='{"error": "endpoint removed"}'),
    "/busy": 503,
    "/slow-down": (429, {"Retry-After": "2"}),
    "/slow": Reply(200, delay=3.0),
    "/drop": Reply(drop=True),
    "/moved": Reply(302, {"Location": "/elsewhere"}),
    "/plain": Reply(200, body="ok, thanks"),
    "/teapot": Reply(418, body="x" * 5000),
    "/hooks/token-that-must-not-leak": 404,
}


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    """Checks signatures with :data:`SECRET`; fixed answers on the paths above."""
    with WebhookSink(secret=SECRET, statuses=WEBHOOK_REPLIES) as sink:
        yield sink


@pytest.fixture
def open_webhook_sink() -> Iterator[WebhookSink]:
    """Accepts anything: no signature check."""
    with WebhookSink(statuses=WEBHOOK_REPLIES) as sink:
        yield sink


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (into the backlog) but never says anything."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for localhost / 127.0.0.1, made by the openssl binary."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return Certificate(cert, key)


@pytest.fixture
def webhook_secret() -> str:
    """The secret :func:`webhook_sink` verifies with."""
    return SECRET


@pytest.fixture
def smtp_password() -> str:
    """The password :func:`smtp_auth_sink` accepts for user ``tidings``."""
    return SMTP_PASSWORD
