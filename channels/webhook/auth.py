"""Credentials a webhook receiver asks for, chosen by the URL they belong to.

Configuration maps URL prefixes to one credential each (JSON in
``TIDINGS_WEBHOOK_AUTH``, a secret)::

    {"https://api.example.com/hooks/": {"type": "bearer", "token": "…"},
     "https://hooks.acme.io/":         {"type": "basic", "username": "tidings", "password": "…"},
     "https://ops.example.org/":       {"type": "header", "header": "X-API-Key", "value": "…"}}

A delivery's URL uses the credential of the longest prefix with the same
scheme, host and port whose path it starts with; ``https://api.example.com``
never matches ``https://api.example.com.evil.net``. Credentials live in
configuration, not in recipients' contact points, so they never travel
through Kafka or Redis. Every secret is a ``SecretStr``: hidden in repr and logs.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

__all__ = ["RESERVED_HEADERS", "WebhookAuth", "credential_for"]

RESERVED_HEADERS = frozenset(
    {"host", "content-type", "content-length", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature"}
)


class WebhookAuth(BaseModel):
    """One credential: a bearer token, HTTP basic auth, or an API key in a header of the receiver's choosing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["bearer", "basic", "header"]
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    header: str | None = None
    value: SecretStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> WebhookAuth:
        if self.type == "bearer" and not (self.token and self.token.get_secret_value()):
            raise ValueError("bearer auth needs a 'token'")
        if self.type == "basic" and (not self.username or self.password is None):
            raise ValueError("basic auth needs 'username' and 'password'")
        if self.type == "basic" and ":" in (self.username or ""):
            raise ValueError("a basic auth username cannot contain ':'")
        if self.type == "header":
            if not self.header or not self.value or not self.value.get_secret_value():
                raise ValueError("header auth needs 'header' and 'value'")
            if self.header.lower() in RESERVED_HEADERS or not self.header.replace("-", "").isalnum():
                raise ValueError(f"{self.header!r} cannot carry an API key (reserved or not a header name)")
        return self

    def headers(self) -> dict[str, str]:
        """The request header(s) that present this credential."""
        if self.type == "bearer":
            assert self.token is not None
            return {"authorization": f"Bearer {self.token.get_secret_value()}"}
        if self.type == "basic":
            assert self.password is not None
            pair = f"{self.username}:{self.password.get_secret_value()}".encode()
            return {"authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        assert self.header is not None and self.value is not None
        return {self.header.lower(): self.value.get_secret_value()}


def _origin_and_path(url: httpx.URL) -> tuple[tuple[str, str, int | None], str]:
    return (url.scheme, url.host, url.port), url.path


def credential_for(url: httpx.URL, credentials: Mapping[str, WebhookAuth]) -> WebhookAuth | None:
    """The credential of the longest matching prefix, or None."""
    origin, path = _origin_and_path(url)
    best: tuple[int, WebhookAuth] | None = None
    for prefix, auth in credentials.items():
        prefix_url = httpx.URL(prefix)
        prefix_origin, prefix_path = _origin_and_path(prefix_url)
        if prefix_origin != origin:
            continue
        if prefix_path not in ("", "/") and not (path == prefix_path or path.startswith(prefix_path.rstrip("/") + "/")):
            continue
        if best is None or len(prefix_path) > best[0]:
            best = (len(prefix_path), auth)
    return best[1] if best else None
