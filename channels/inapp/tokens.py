"""User tokens for the inbox API: who is asking, signed with a shared secret.

A token is ``<payload>.<signature>``, both unpadded base64url: the payload is
the JSON ``{"t": tenant, "u": user, "exp": unix seconds}`` and the signature
is HMAC-SHA256 over the encoded payload with the configured secret
(``TIDINGS_INBOX_SECRET``). The application that logs the user in mints the
token (``tidings inbox token USER`` does it by hand) and hands it to the page;
the API reads only the inbox the token names, so no request can name another
user's inbox.

:class:`TokenError` messages say what is wrong (malformed, bad signature,
expired) and never contain the token or the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from schemas.errors import ConfigError, TidingsError

__all__ = ["MIN_SECRET_LENGTH", "Principal", "TokenError", "check_secret", "mint", "verify"]

MIN_SECRET_LENGTH = 16


class TokenError(TidingsError):
    """A token that does not prove who is asking: refused with 401."""


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    user: str


def check_secret(secret: str) -> bytes:
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"the inbox token secret must be at least {MIN_SECRET_LENGTH} characters")
    return secret.encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def mint(secret: str, tenant: str, user: str, expires: int) -> str:
    """A token for ``user`` of ``tenant`` valid until Unix time ``expires``."""
    key = check_secret(secret)
    if not tenant or not user:
        raise ValueError("tenant and user must be non-empty")
    payload = _b64(json.dumps({"t": tenant, "u": user, "exp": int(expires)}, separators=(",", ":")).encode())
    return f"{payload}.{_sign(key, payload)}"


def verify(secret: str, token: str, now: float) -> Principal:
    """The principal a token names, or :class:`TokenError` saying why it is refused."""
    key = check_secret(secret)
    payload, sep, signature = token.strip().partition(".")
    if not sep or not payload or not signature or "." in signature:
        raise TokenError("malformed token: expected <payload>.<signature>")
    if not hmac.compare_digest(_sign(key, payload), signature):
        raise TokenError("token signature does not match")
    try:
        doc = json.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        raise TokenError("malformed token payload") from None
    if not isinstance(doc, dict):
        raise TokenError("malformed token payload")
    tenant, user, expires = doc.get("t"), doc.get("u"), doc.get("exp")
    if not (isinstance(tenant, str) and tenant and isinstance(user, str) and user):
        raise TokenError("token names no tenant and user")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise TokenError("token has no expiry")
    if expires <= now:
        raise TokenError("token expired")
    return Principal(tenant, user)
