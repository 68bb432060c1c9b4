"""Standard Webhooks signing: pure functions, checked against independent computations."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from channels.signing import generate_secret, secret_key, sign, verify

KEY = b"\x00\x01tidings-signing-key\xfe\xff"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
MSG_ID = "0b6f6b1e-0000-4000-8000-000000000001"
TIMESTAMP = 1_740_830_400
BODY = b'{"order": 17, "status": "shipped"}'


def expected_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The spec's formula, written out independently of channels.signing."""
    mac = hmac.new(key, msg_id.encode() + b"." + str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(signature: str, msg_id: str = MSG_ID, timestamp: int | str = TIMESTAMP) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def test_sign_matches_an_independent_hmac() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == expected_signature(KEY, MSG_ID, TIMESTAMP, BODY)


def test_sign_matches_the_published_standard_webhooks_vector() -> None:
    # The test vector from the Standard Webhooks specification's reference libraries.
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_unprefixed_secret_is_used_literally() -> None:
    assert secret_key("plain passphrase") == b"plain passphrase"
    assert sign("plain passphrase", MSG_ID, TIMESTAMP, BODY) == expected_signature(
        b"plain passphrase", MSG_ID, TIMESTAMP, BODY
    )


def test_signature_depends_on_every_input() -> None:
    reference = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    assert sign(SECRET, MSG_ID + "x", TIMESTAMP, BODY) != reference
    assert sign(SECRET, MSG_ID, TIMESTAMP + 1, BODY) != reference
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY + b" ") != reference
    assert sign("whsec_" + base64.b64encode(b"other").decode(), MSG_ID, TIMESTAMP, BODY) != reference


@pytest.mark.parametrize("secret", ["whsec_not*base64", "whsec_", ""])
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        secret_key(secret)


def test_generated_secrets_are_prefixed_random_keys() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_")
    assert first != second
    assert len(secret_key(first)) == 24


# ------------------------------------------------------------------ verify


def test_verify_accepts_a_good_signature() -> None:
    verify(SECRET, headers(sign(SECRET, MSG_ID, TIMESTAMP, BODY)), BODY, now=TIMESTAMP + 10)


def test_verify_ignores_header_case() -> None:
    signature = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    mixed = {"Webhook-Id": MSG_ID, "WEBHOOK-TIMESTAMP": str(TIMESTAMP), "Webhook-Signature": signature}
    verify(SECRET, mixed, BODY, now=TIMESTAMP)


def test_verify_accepts_any_of_several_signatures_during_rotation() -> None:
    old = expected_signature(b"retired key", MSG_ID, TIMESTAMP, BODY)
    new = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    verify(SECRET, headers(f"{old} {new}"), BODY, now=TIMESTAMP)
    verify(SECRET, headers(f"v2,abc {new}"), BODY, now=TIMESTAMP)


def test_verify_rejects_an_altered_body() -> None:
    signature = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    with pytest.raises(ValueError, match="does not match"):
        verify(SECRET, headers(signature), BODY.replace(b"17", b"18"), now=TIMESTAMP)


def test_verify_rejects_another_id_or_timestamp() -> None:
    signature = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    with pytest.raises(ValueError, match="does not match"):
        verify(SECRET, headers(signature, msg_id="another"), BODY, now=TIMESTAMP)
    with pytest.raises(ValueError, match="does not match"):
        verify(SECRET, headers(signature, timestamp=TIMESTAMP + 1), BODY, now=TIMESTAMP)


def test_verify_rejects_the_wrong_secret() -> None:
    signature = sign("whsec_" + base64.b64encode(b"someone else").decode(), MSG_ID, TIMESTAMP, BODY)
    with pytest.raises(ValueError, match="does not match"):
        verify(SECRET, headers(signature), BODY, now=TIMESTAMP)


@pytest.mark.parametrize("offset", [-301, 301, -10_000])
def test_verify_rejects_timestamps_outside_the_tolerance(offset: int) -> None:
    signature = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    with pytest.raises(ValueError, match="away from now"):
        verify(SECRET, headers(signature), BODY, now=TIMESTAMP + offset)


def test_verify_tolerance_is_configurable() -> None:
    signature = sign(SECRET, MSG_ID, TIMESTAMP, BODY)
    verify(SECRET, headers(signature), BODY, tolerance=3600, now=TIMESTAMP + 3000)
    with pytest.raises(ValueError, match="away from now"):
        verify(SECRET, headers(signature), BODY, tolerance=5, now=TIMESTAMP + 6)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_names_a_missing_header(missing: str) -> None:
    given = headers(sign(SECRET, MSG_ID, TIMESTAMP, BODY))
    del given[missing]
    with pytest.raises(ValueError, match=f"missing {missing}"):
        verify(SECRET, given, BODY, now=TIMESTAMP)


def test_verify_rejects_a_non_numeric_timestamp() -> None:
    with pytest.raises(ValueError, match="not an integer"):
        verify(SECRET, headers("v1,abc", timestamp="yesterday"), BODY, now=TIMESTAMP)


def test_verify_rejects_signatures_of_an_unknown_version_only() -> None:
    digest = expected_signature(KEY, MSG_ID, TIMESTAMP, BODY).removeprefix("v1,")
    with pytest.raises(ValueError, match="no v1 signature"):
        verify(SECRET, headers(f"v1a,{digest}"), BODY, now=TIMESTAMP)


def test_verify_uses_the_clock_when_now_is_omitted() -> None:
    import time

    now = int(time.time())
    verify(SECRET, headers(sign(SECRET, MSG_ID, now, BODY), timestamp=now), BODY)
