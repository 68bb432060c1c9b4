"""The router's Redis state, read and claimed in one round trip per consumed batch.

For each batch the consumer hands over the dedup claims it wants and the
recipients it needs; :meth:`RouterState.load` sends one pipeline holding
``SET claim owner NX GET EX ttl`` per event and ``GET`` per distinct
recipient, and returns a :class:`Snapshot` the pure decision reads.

Claim ownership (DESIGN.md invariant 2): the claim's value is the Kafka
coordinates of the record that claimed it. The same record processed again
(after a crash, a rebalance or a failed produce) finds its own coordinates and
is routed again with the same delivery ids; a second copy of the event at
other coordinates finds someone else's and is a duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError
from redis import Redis

from router import keys
from router.recipients import Recipient

# Delete a claim only if we still own it (used when an event is dead-lettered,
# so that a replay after a fix is not mistaken for a duplicate).
# One key per call so that it stays in one slot on Redis Cluster.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_PARSED_MAX = 50_000


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of claiming one event identity."""

    owner: str
    """Coordinates of the record that holds the claim."""
    mine: bool
    """True when this record holds it (new claim, or our own earlier claim)."""


@dataclass
class Snapshot:
    """What the decision needs from Redis for one batch."""

    claims: dict[tuple[str, str], Claim] = field(default_factory=dict)
    """Per ``(event key, owner)``: two copies of one event in a batch each get their own answer."""
    recipients: dict[tuple[str, str], Recipient | None] = field(default_factory=dict)
    problems: dict[tuple[str, str], str] = field(default_factory=dict)
    """Recipients whose stored document no longer validates, with the reason."""

    def claim(self, event_key: str, owner: str) -> Claim:
        """The claim as the record at ``owner`` saw it."""
        return self.claims[(event_key, owner)]


class RouterState:
    def __init__(self, redis: Redis, claim_ttl_seconds: int) -> None:
        self.redis = redis
        self.claim_ttl = claim_ttl_seconds
        # Parsed recipients by their stored document: validating the same JSON again for
        # every batch was the larger part of a load. A changed document is parsed afresh.
        self._parsed: dict[bytes | str, Recipient] = {}
        self._release = redis.register_script(_RELEASE)

    def load(
        self, claims: Sequence[tuple[str, str]], recipients: Iterable[tuple[str, str]]
    ) -> Snapshot:
        """Claim ``(event_key, owner)`` pairs and read recipients ``(tenant, user)``: one round trip."""
        wanted = list(dict.fromkeys(recipients))
        pipe = self.redis.pipeline(transaction=False)
        for event_key, owner in claims:
            # SET key owner NX GET EX ttl, without redis-py's per-call argument handling
            pipe.execute_command("SET", keys.claim(event_key), owner, "NX", "GET", "EX", self.claim_ttl,
                                 get=True)  # type: ignore[no-untyped-call]
        for tenant, user in wanted:
            pipe.get(keys.recipient(tenant, user))
        results = pipe.execute()
        snap = Snapshot()
        for (event_key, owner), previous in zip(claims, results[: len(claims)], strict=True):
            if previous is None:
                claim = Claim(owner, True)
            else:
                held = previous.decode() if isinstance(previous, bytes) else str(previous)
                claim = Claim(held, held == owner)
            # Keyed by owner too: a later copy of the same event in this batch must not
            # overwrite the first copy's answer (both would then be dropped as duplicates).
            snap.claims[(event_key, owner)] = claim
        for ref, raw in zip(wanted, results[len(claims) :], strict=True):
            if raw is None:
                snap.recipients[ref] = None
                continue
            known = self._parsed.get(raw)
            if known is not None:
                snap.recipients[ref] = known
                continue
            try:
                snap.recipients[ref] = known = Recipient.from_json(raw)
                if len(self._parsed) >= _PARSED_MAX:
                    self._parsed.clear()
                self._parsed[raw] = known
            except ValidationError as exc:
                snap.recipients[ref] = None
                snap.problems[ref] = f"stored recipient document is invalid: {exc.errors()[0]['msg']}"
        return snap

    def release(self, claims: Sequence[tuple[str, str]]) -> int:
        """Drop claims we still own (for events that were dead-lettered)."""
        if not claims:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for event_key, owner in claims:
            self._release(keys=[keys.claim(event_key)], args=[owner], client=pipe)
        return sum(int(n) for n in pipe.execute())
