from __future__ import annotations

import json
from pathlib import Path

import pytest
from redis import Redis
from redis.crc import key_slot

from router import keys
from router.recipients import Recipient, RecipientError, RecipientStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _snapshot(redis: Redis) -> dict[bytes, object]:
    """Every key with its value, to show that nothing changed."""
    out: dict[bytes, object] = {}
    for key in sorted(redis.scan_iter(count=1000)):  # type: ignore[type-var]
        kind = redis.type(key)
        if kind == b"string":
            out[key] = redis.get(key)
        elif kind == b"set":
            out[key] = sorted(redis.smembers(key))  # type: ignore[type-var]
        else:
            out[key] = kind
    return out


def test_keys_carry_the_recipient_hash_tag() -> None:
    assert keys.recipient("acme", "u-1") == "tidings:{acme:u-1}:recipient"
    assert keys.sent("acme", "u-1", "d-9") == "tidings:{acme:u-1}:sent:d-9"
    assert keys.recipient_index("acme") == "tidings:recipients:acme"
    assert keys.claim("abc123") == "tidings:{ev:abc123}:claim"


def test_recipient_and_sent_keys_share_one_cluster_slot() -> None:
    # redis-py's own slot function, as Redis Cluster computes it (CRC16 of the hash tag).
    recipient = key_slot(keys.recipient("acme", "u-1").encode())
    assert key_slot(keys.sent("acme", "u-1", "d-1").encode()) == recipient
    assert key_slot(keys.sent("acme", "u-1", "d-2").encode()) == recipient
    assert recipient == key_slot(b"acme:u-1")
    assert key_slot(keys.claim("abc").encode()) == key_slot(b"ev:abc")
    # Without the tag the two keys would almost surely land on different slots.
    assert key_slot(b"tidings:acme:u-1:recipient") != key_slot(b"tidings:acme:u-1:sent:d-1")


def test_put_many_get_ids_remove(redis_client: Redis) -> None:
    store = RecipientStore(redis_client)
    ada = Recipient(id="u-ada", name="Ada", contacts={"email": "ada@example.com"})
    bob = Recipient(id="u-bob", locale="de", timezone="Europe/Berlin", opt_out=frozenset({"webhook"}))
    other = Recipient(id="u-ada", tenant="acme", name="Other Ada")
    assert store.put_many([ada, bob, other]) == 3

    assert store.get("default", "u-ada") == ada
    assert store.get("default", "u-bob") == bob
    assert store.get("acme", "u-ada") == other
    assert store.get("default", "u-nobody") is None
    assert store.ids() == ["u-ada", "u-bob"]
    assert store.ids("acme") == ["u-ada"]
    assert store.ids("empty") == []

    raw = redis_client.get("tidings:{default:u-ada}:recipient")
    assert isinstance(raw, bytes)
    assert json.loads(raw)["contacts"] == {"email": "ada@example.com"}
    assert redis_client.ttl("tidings:{default:u-ada}:recipient") == -1  # recipients do not expire

    assert store.remove("default", "u-ada") is True
    assert store.get("default", "u-ada") is None
    assert store.ids() == ["u-bob"]
    assert store.get("acme", "u-ada") == other
    assert store.remove("default", "u-ada") is False
    assert redis_client.exists("tidings:{default:u-ada}:recipient") == 0


def test_put_many_overwrites(redis_client: Redis) -> None:
    store = RecipientStore(redis_client)
    store.put_many([Recipient(id="u-1", locale="en")])
    store.put_many([Recipient(id="u-1", locale="fr")])
    got = store.get("default", "u-1")
    assert got is not None
    assert got.locale == "fr"
    assert store.ids() == ["u-1"]


def test_put_nothing(redis_client: Redis) -> None:
    assert RecipientStore(redis_client).put_many([]) == 0
    assert redis_client.dbsize() == 0


def test_load_demo_file(redis_client: Redis) -> None:
    store = RecipientStore(redis_client)
    assert store.load_file(REPO / "config" / "recipients.yaml") == 5
    assert store.ids() == sorted(["u-ada", "u-grace", "u-kurt", "u-edsger", "oncall"])
    kurt = store.get("default", "u-kurt")
    assert kurt is not None
    assert (kurt.locale, kurt.timezone) == ("de-AT", "Europe/Vienna")
    assert redis_client.dbsize() == 6  # five documents and one index set


def test_a_file_with_one_invalid_entry_writes_nothing(redis_client: Redis, tmp_path: Path) -> None:
    store = RecipientStore(redis_client)
    before = Recipient(id="u-keep", name="Kept", contacts={"email": "keep@example.com"})
    store.put_many([before])
    snapshot = _snapshot(redis_client)
    assert len(snapshot) == 2

    path = tmp_path / "people.yaml"
    path.write_text(
        "recipients:\n"
        "  - {id: u-new, contacts: {email: new@example.com}}\n"
        "  - {id: u-keep, name: Overwritten, contacts: {email: other@example.com}}\n"
        "  - {id: u-broken, timezone: Mars/Base}\n"
        "  - {id: u-late}\n"
    )
    with pytest.raises(RecipientError, match="entry #3 \\(id 'u-broken'\\)") as info:
        store.load_file(path)
    assert info.value.position == 3

    assert _snapshot(redis_client) == snapshot
    assert store.get("default", "u-keep") == before
    assert store.get("default", "u-new") is None
    assert store.ids() == ["u-keep"]


def test_a_file_with_a_duplicate_writes_nothing(redis_client: Redis, tmp_path: Path) -> None:
    path = tmp_path / "people.json"
    path.write_text(json.dumps([{"id": "u-1"}, {"id": "u-2"}, {"id": "u-1"}]))
    with pytest.raises(RecipientError, match="duplicate id 'u-1'"):
        RecipientStore(redis_client).load_file(path)
    assert redis_client.dbsize() == 0
