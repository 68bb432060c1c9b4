"""User tokens: minted and verified with a shared secret, refused with a reason that leaks nothing."""

from __future__ import annotations

import base64
import json

import pytest

from channels.inapp.tokens import Principal, TokenError, mint, verify
from schemas.errors import ConfigError

SECRET = "inbox-test-secret-0123456789"
NOW = 1_800_000_000


def test_a_minted_token_names_its_user() -> None:
    token = mint(SECRET, "acme", "u-ada", NOW + 60)
    assert verify(SECRET, token, NOW) == Principal("acme", "u-ada")


def test_changing_the_user_in_the_payload_breaks_the_signature() -> None:
    token = mint(SECRET, "acme", "u-ada", NOW + 60)
    _, signature = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"t": "acme", "u": "u-grace", "exp": NOW + 60},
                                                 separators=(",", ":")).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature does not match"):
        verify(SECRET, f"{forged}.{signature}", NOW)


def test_another_secret_is_refused() -> None:
    token = mint("another-secret-of-some-length", "acme", "u-ada", NOW + 60)
    with pytest.raises(TokenError, match="signature"):
        verify(SECRET, token, NOW)


def test_expired_token_is_refused() -> None:
    token = mint(SECRET, "acme", "u-ada", NOW)
    with pytest.raises(TokenError, match="expired"):
        verify(SECRET, token, NOW)


@pytest.mark.parametrize("token", ["", "abc", "abc.", ".abc", "a.b.c", "not base64!.sig"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError):
        verify(SECRET, token, NOW)


def test_signed_garbage_payloads_are_refused() -> None:
    import hashlib
    import hmac

    for doc in (b"[1,2]", b'{"t":"acme","u":"","exp":1}', b'{"t":"acme","u":"x"}', b'{"t":"a","u":"x","exp":true}',
                b"\xff\xfe"):
        payload = base64.urlsafe_b64encode(doc).rstrip(b"=").decode()
        sig = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest())
        with pytest.raises(TokenError):
            verify(SECRET, f"{payload}.{sig.rstrip(b'=').decode()}", 0)


def test_errors_never_contain_the_token_or_the_secret() -> None:
    token = mint(SECRET, "acme", "u-ada", NOW - 1)
    for candidate in (token, token[:-2] + "xx", token + "."):
        with pytest.raises(TokenError) as info:
            verify(SECRET, candidate, NOW)
        assert candidate not in str(info.value) and SECRET not in str(info.value)


def test_short_secrets_are_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        mint("short", "acme", "u-ada", NOW)
    with pytest.raises(ValueError, match="non-empty"):
        mint(SECRET, "acme", "", NOW)
