from __future__ import annotations

import pytest
from redis import Redis

from router import keys
from router.recipients import Recipient, RecipientStore
from router.state import Claim, RouterState, Snapshot
from schemas.models import event_key

pytestmark = pytest.mark.integration

TTL = 3600


@pytest.fixture
def state(redis_client: Redis) -> RouterState:
    return RouterState(redis_client, TTL)


def _key(unique: str, n: int = 1) -> str:
    return event_key(f"/test/{unique}", str(n))


# -- claims ----------------------------------------------------------------------------


def test_new_claim_is_mine_and_stored_with_its_owner(state: RouterState, redis_client: Redis,
                                                      unique: str) -> None:
    key = _key(unique)
    snap = state.load([(key, "events:0:10")], [])
    assert snap.claims == {(key, "events:0:10"): Claim("events:0:10", True)}
    assert redis_client.get(keys.claim(key)) == b"events:0:10"


def test_claim_ttl_is_set(state: RouterState, redis_client: Redis, unique: str) -> None:
    key = _key(unique)
    state.load([(key, "events:0:10")], [])
    ttl = redis_client.ttl(keys.claim(key))
    assert TTL - 5 <= ttl <= TTL


def test_same_owner_again_is_mine(state: RouterState, redis_client: Redis, unique: str) -> None:
    # Re-processing after a crash: the same record finds its own claim and routes again.
    key = _key(unique)
    state.load([(key, "events:2:7")], [])
    again = RouterState(redis_client, TTL).load([(key, "events:2:7")], [])
    assert again.claim(key, "events:2:7") == Claim("events:2:7", True)
    assert redis_client.get(keys.claim(key)) == b"events:2:7"


def test_other_owner_is_not_mine_and_reports_the_holder(state: RouterState, redis_client: Redis,
                                                         unique: str) -> None:
    key = _key(unique)
    state.load([(key, "events:0:1")], [])
    other = state.load([(key, "events:3:99")], [])
    assert other.claim(key, "events:3:99") == Claim("events:0:1", False)
    assert redis_client.get(keys.claim(key)) == b"events:0:1"  # the holder is untouched


def test_two_claims_of_one_event_in_one_call_first_wins(state: RouterState, redis_client: Redis,
                                                        unique: str) -> None:
    key = _key(unique)
    snap = state.load([(key, "events:0:5"), (key, "events:1:8")], [])
    assert snap.claim(key, "events:0:5") == Claim("events:0:5", True)
    assert snap.claim(key, "events:1:8") == Claim("events:0:5", False)
    assert redis_client.get(keys.claim(key)) == b"events:0:5"


def test_many_claims_in_one_call_keep_their_order(state: RouterState, unique: str) -> None:
    first = [(_key(unique, n), f"events:0:{n}") for n in range(20)]
    state.load(first[::2], [])
    snap = state.load(first, [])
    assert [snap.claim(k, o) for k, o in first] == [Claim(o, True) for _, o in first]
    other = state.load([(k, "elsewhere:0:0") for k, _ in first], [])
    assert all(not c.mine for c in other.claims.values())
    assert [other.claim(k, "elsewhere:0:0").owner for k, _ in first] == [o for _, o in first]


def test_claims_of_different_events_are_independent(state: RouterState, unique: str) -> None:
    a, b = _key(unique, 1), _key(unique, 2)
    state.load([(a, "t:0:1")], [])
    snap = state.load([(a, "t:0:2"), (b, "t:0:2")], [])
    assert snap.claims == {(a, "t:0:2"): Claim("t:0:1", False), (b, "t:0:2"): Claim("t:0:2", True)}


def test_empty_load(state: RouterState) -> None:
    assert state.load([], []) == Snapshot()


# -- recipients --------------------------------------------------------------------------


def test_recipients_are_read_in_the_same_call(state: RouterState, redis_client: Redis, unique: str) -> None:
    ada = Recipient(id="u-ada", contacts={"email": "ada@example.com"})
    acme = Recipient(id="u-ada", tenant="acme", locale="de")
    RecipientStore(redis_client).put_many([ada, acme])
    key = _key(unique)
    snap = state.load([(key, "t:0:1")], [("default", "u-ada"), ("acme", "u-ada"), ("default", "u-nobody")])
    assert snap.claim(key, "t:0:1").mine
    assert snap.recipients == {
        ("default", "u-ada"): ada,
        ("acme", "u-ada"): acme,
        ("default", "u-nobody"): None,
    }
    assert snap.problems == {}


def test_recipients_accept_any_iterable_and_repeat_once(state: RouterState, redis_client: Redis) -> None:
    RecipientStore(redis_client).put_many([Recipient(id="u-1")])
    refs = iter([("default", "u-1"), ("default", "u-1"), ("default", "u-1")])
    snap = state.load([], refs)
    assert list(snap.recipients) == [("default", "u-1")]


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        (b"{not json", "stored recipient document is invalid: Invalid JSON"),
        (b'{"id": "u-1", "timezone": "Mars/Base"}', "stored recipient document is invalid: Value error, "
                                                     "'Mars/Base' is not an IANA time zone"),
        (b'{"id": "u-1", "unknown": 1}',
         "stored recipient document is invalid: Extra inputs are not permitted"),
        (b"[]", "stored recipient document is invalid: Input should be an object"),
    ],
)
def test_corrupted_recipient_is_none_with_a_problem(state: RouterState, redis_client: Redis,
                                                    stored: bytes, problem: str) -> None:
    RecipientStore(redis_client).put_many([Recipient(id="u-ok")])
    redis_client.set(keys.recipient("default", "u-1"), stored)
    snap = state.load([], [("default", "u-1"), ("default", "u-ok")])
    assert snap.recipients[("default", "u-1")] is None
    assert snap.problems[("default", "u-1")].startswith(problem)
    assert snap.recipients[("default", "u-ok")] == Recipient(id="u-ok")
    assert ("default", "u-ok") not in snap.problems


def test_a_changed_recipient_is_read_afresh(state: RouterState, redis_client: Redis) -> None:
    store = RecipientStore(redis_client)
    store.put_many([Recipient(id="u-1", locale="en", contacts={"email": "a@example.com"})])
    first = state.load([], [("default", "u-1")]).recipients[("default", "u-1")]
    again = state.load([], [("default", "u-1")]).recipients[("default", "u-1")]
    assert again is first  # the same document is parsed once
    store.put_many([Recipient(id="u-1", locale="de", contacts={"email": "b@example.com"})])
    changed = state.load([], [("default", "u-1")]).recipients[("default", "u-1")]
    assert changed is not None and changed.locale == "de" and changed.address("email") == "b@example.com"
    redis_client.set(keys.recipient("default", "u-1"), b"{not json")
    snap = state.load([], [("default", "u-1")])
    assert snap.recipients[("default", "u-1")] is None and ("default", "u-1") in snap.problems


# -- one round trip ------------------------------------------------------------------------


def _processed(redis: Redis) -> int:
    return int(redis.info("stats")["total_commands_processed"])


def test_load_sends_one_command_per_claim_and_per_distinct_recipient(state: RouterState,
                                                                     redis_client: Redis,
                                                                     unique: str) -> None:
    RecipientStore(redis_client).put_many([Recipient(id="u-1"), Recipient(id="u-2")])
    state.load([], [("default", "u-0")])  # the state's connection is made (and its handshake sent) before
    # Calibrate: how many commands the measurement itself adds (the INFO calls).
    start = _processed(redis_client)
    baseline = _processed(redis_client) - start

    claims = [(_key(unique, n), f"t:0:{n}") for n in range(7)]
    refs = [("default", "u-1"), ("default", "u-2"), ("default", "u-1"), ("default", "u-3")]
    redis_client.config_resetstat()
    start = _processed(redis_client)
    snap = state.load(claims, refs)
    delta = _processed(redis_client) - start - baseline
    assert delta == len(claims) + 3
    assert len(snap.claims) == 7
    assert len(snap.recipients) == 3

    stats = redis_client.info("commandstats")
    assert stats["cmdstat_set"]["calls"] == 7
    assert stats["cmdstat_get"]["calls"] == 3


# -- release -------------------------------------------------------------------------------


def test_release_deletes_only_claims_still_owned(state: RouterState, redis_client: Redis,
                                                 unique: str) -> None:
    mine, theirs, gone = _key(unique, 1), _key(unique, 2), _key(unique, 3)
    state.load([(mine, "t:0:1"), (theirs, "t:0:2")], [])
    released = state.release([(mine, "t:0:1"), (theirs, "t:9:9"), (gone, "t:0:3")])
    assert released == 1
    assert redis_client.exists(keys.claim(mine)) == 0
    assert redis_client.get(keys.claim(theirs)) == b"t:0:2"
    assert redis_client.exists(keys.claim(gone)) == 0


def test_released_claim_can_be_claimed_again(state: RouterState, unique: str) -> None:
    # A dead-lettered event that is replayed after a fix must not be mistaken for a duplicate.
    key = _key(unique)
    state.load([(key, "t:0:1")], [])
    assert state.release([(key, "t:0:1")]) == 1
    replay = state.load([(key, "replay:0:0")], [])
    assert replay.claim(key, "replay:0:0") == Claim("replay:0:0", True)


def test_release_nothing(state: RouterState, redis_client: Redis) -> None:
    start = _processed(redis_client)
    assert state.release([]) == 0
    assert _processed(redis_client) - start == 1  # only the second INFO


def test_release_works_on_a_fresh_server_script_cache(state: RouterState, redis_client: Redis,
                                                      unique: str) -> None:
    key = _key(unique)
    state.load([(key, "t:0:1")], [])
    redis_client.script_flush()
    assert state.release([(key, "t:0:1")]) == 1
    assert redis_client.exists(keys.claim(key)) == 0
