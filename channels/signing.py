"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A webhook request carries three headers:

* ``webhook-id`` - the delivery id, the same on every retry of one delivery;
* ``webhook-timestamp`` - Unix seconds when this attempt was signed;
* ``webhook-signature`` - ``v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"``,
  several space-separated signatures allowed (during a key rotation).

The secret is normally written ``whsec_<base64 key>``, the form every Standard
Webhooks library accepts; the key is the base64-decoded part. A secret without
the ``whsec_`` prefix is taken literally: its UTF-8 bytes are the key. (The
reference libraries would base64-decode an unprefixed secret instead, so give
receivers that use them the ``whsec_`` form; :func:`generate_secret` makes one.)

Both functions are pure: no clock unless ``now`` is left out, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

__all__ = ["PREFIX", "generate_secret", "secret_key", "sign", "verify"]

PREFIX = "whsec_"
_VERSION = "v1"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` decoded, anything else as UTF-8 bytes."""
    if secret.startswith(PREFIX):
        encoded = secret[len(PREFIX) :]
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ValueError("webhook secret after 'whsec_' is not valid base64") from exc
    else:
        key = secret.encode()
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def generate_secret(size: int = 24) -> str:
    """A new random secret in the ``whsec_`` form."""
    return PREFIX + base64.b64encode(secrets.token_bytes(size)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one request: ``v1,<base64>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return f"{_VERSION},{base64.b64encode(digest).decode('ascii')}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = 300,
    now: float | None = None,
) -> None:
    """Check a received request; return quietly or raise :class:`ValueError` saying why.

    ``headers`` may use any case. The timestamp must lie within ``tolerance``
    seconds of ``now`` (default: the current time) in either direction, which
    bounds how long a captured request can be replayed.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    raw_timestamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    for name, value in (
        ("webhook-id", msg_id),
        ("webhook-timestamp", raw_timestamp),
        ("webhook-signature", signatures),
    ):
        if not value.strip():
            raise ValueError(f"missing {name} header")
    try:
        timestamp = int(raw_timestamp.strip())
    except ValueError:
        raise ValueError(f"webhook-timestamp is not an integer: {raw_timestamp[:20]!r}") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise ValueError(f"webhook-timestamp {timestamp} is more than {tolerance:g} s away from now ({int(current)})")
    expected = sign(secret, msg_id, timestamp, body).encode()
    versions: set[str] = set()
    for candidate in signatures.split():
        version, _, _ = candidate.partition(",")
        versions.add(version)
        if version == _VERSION and hmac.compare_digest(candidate.encode(), expected):
            return
    if _VERSION not in versions:
        raise ValueError(f"no {_VERSION} signature in webhook-signature")
    raise ValueError("webhook-signature does not match the body")
