"""The router's Redis state: one round trip per consumed batch, writes included.

For each batch the consumer hands over the dedup claims it wants, the
recipients it needs and the other keys the decision will read (:class:`Needs`:
preference hashes, rule dedup claims, content hashes, cap counters);
:meth:`RouterState.load` sends one pipeline holding ``SET claim owner NX GET
EX ttl`` per event, ``GET`` per distinct recipient, ``HGETALL`` per
preference hash, ``SET NX GET`` per rule dedup key and ``GET`` per content
hash and counter, and returns a :class:`Snapshot` the pure decision reads.

What a batch's decisions change (cap counts, content hashes, held deliveries,
digest items, releases of dead-lettered events' claims) is a :class:`Writes`.
The consumer keeps it until its next batch: :meth:`RouterState.load` puts the
pending writes at the front of that batch's pipeline, and Redis runs a
pipeline in order, so the next batch reads counts that include them. With no
next batch in sight the consumer sends them alone (:meth:`RouterState.flush`).
So a batch costs one round trip whether or not it changes state.
:meth:`RouterState.write` (fan-out pages) writes at once, in its own pipeline.

A "pipeline" here is a :class:`router.wire.Commands`: the commands are packed as
they are queued and sent in one write, and their replies parsed in one pass
(:mod:`router.wire`), without redis-py's per-command work. Lua scripts in them go
through :class:`router.scripts.PipelineScripts` (``SCRIPT LOAD`` queued in front
of ``EVALSHA``), as redis-py's own script objects would add a ``SCRIPT EXISTS``
round trip.

Claim ownership (DESIGN.md invariant 2): the claim's value is the Kafka
coordinates of the record that claimed it. The same record processed again
(after a crash, a rebalance or a failed produce) finds its own coordinates and
is routed again with the same delivery ids; a second copy of the event at
other coordinates finds someone else's and is a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from redis import Redis
from redis.exceptions import RedisError

from router import keys
from router.caps import CapBook
from router.recipients import Recipient
from router.schedule import DigestAdd, HeldStore, Hold
from router.scripts import PipelineScripts
from router.templates import Rendered
from router.wire import Commands, WireConnection

# Delete a claim only if we still own it (used when an event is dead-lettered,
# so that a replay after a fix is not mistaken for a duplicate).
# One key per call so that it stays in one slot on Redis Cluster.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_PARSED_MAX = 50_000

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of claiming one event identity."""

    owner: str
    """Coordinates of the record that holds the claim."""
    mine: bool
    """True when this record holds it (new claim, or our own earlier claim)."""


@dataclass
class View:
    """What Redis said for one batch (or one fan-out page), by key."""

    prefs: dict[str, dict[str, str]] = field(default_factory=dict)
    claims: dict[tuple[str, str], Claim] = field(default_factory=dict)
    """Rule dedup claims (key_window, once_ever) by (Redis key, owner event): two events with
    one key in a batch each get their own answer, the first in batch order wins."""
    content: dict[str, str | None] = field(default_factory=dict)
    caps: CapBook = field(default_factory=CapBook)
    rendered: dict[tuple[str, str, str, str, str], Rendered] = field(default_factory=dict)
    """Renderings that do not depend on the recipient, by (event key, rule, template, locale, channel
    variant):
    a fan-out renders those once per page and locale."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Needs:
    """What the decision will look up, so that one round trip can fetch all of it."""

    prefs: set[str] = field(default_factory=set)
    claims: dict[tuple[str, str], int | None] = field(default_factory=dict)
    """(Redis key, owner event) -> ttl seconds, or None for once-ever; in batch order."""
    content: set[str] = field(default_factory=set)
    caps: set[str] = field(default_factory=set)


@dataclass
class Snapshot:
    """What the decision needs from Redis for one batch."""

    claims: dict[tuple[str, str], Claim] = field(default_factory=dict)
    """Per ``(event key, owner)``: two copies of one event in a batch each get their own answer."""
    recipients: dict[tuple[str, str], Recipient | None] = field(default_factory=dict)
    problems: dict[tuple[str, str], str] = field(default_factory=dict)
    """Recipients whose stored document no longer validates, with the reason."""
    view: View = field(default_factory=View)

    def claim(self, event_key: str, owner: str) -> Claim:
        """The claim as the record at ``owner`` saw it."""
        return self.claims[(event_key, owner)]


@dataclass
class Writes:
    """What one batch's decisions changed in Redis, not yet written."""

    now: datetime
    caps: dict[str, int] = field(default_factory=dict)
    """Cap counter -> increment (INCRBY)."""
    ttls: dict[str, int] = field(default_factory=dict)
    """Cap counter -> expiry in seconds."""
    content: list[tuple[str, str, int | None]] = field(default_factory=list)
    """(content-hash key, hash, ttl seconds or None)."""
    holds: list[Hold] = field(default_factory=list)
    digests: list[DigestAdd] = field(default_factory=list)
    releases: list[tuple[str, str]] = field(default_factory=list)
    """Dedup claims ``(event key, owner)`` to drop where still owned (dead-lettered events)."""
    extra: list[tuple[str, str]] = field(default_factory=list)
    """Plain ``SET key value EX dedup-ttl`` pairs (fan-out checkpoints)."""
    applied: bool = False
    """Set once Redis has run them (or refused them): sending them again would count twice."""

    def __bool__(self) -> bool:
        return bool(self.caps or self.content or self.holds or self.digests or self.releases or self.extra)


class RouterState:
    def __init__(self, redis: Redis, claim_ttl_seconds: int) -> None:
        self.redis = redis
        self.claim_ttl = claim_ttl_seconds
        # Parsed recipients by their stored document: validating the same JSON again for
        # every batch was the larger part of a load. A changed document is parsed afresh.
        self._parsed: dict[bytes | str, Recipient] = {}
        self._release = redis.register_script(_RELEASE)
        self.wire = WireConnection(redis)  # the batch round trip (router/wire.py)
        self.held = HeldStore(redis)

    def load(
        self, claims: Sequence[tuple[str, str]], recipients: Iterable[tuple[str, str]],
        needs: Needs | None = None, writes: Writes | None = None,
    ) -> Snapshot:
        """Claim ``(event_key, owner)`` pairs, read recipients ``(tenant, user)`` and what ``needs``
        lists: one round trip, with ``writes`` (an earlier batch's) sent first in it.

        ``writes.applied`` is set as soon as Redis has answered the pipeline, even when a read
        in it then fails (RedisError raised); after a connection error it stays unset.
        """
        wanted = list(dict.fromkeys(recipients))
        needs = needs or Needs()
        prefs = sorted(needs.prefs)
        dedup = list(needs.claims.items())
        content = sorted(needs.content)
        caps = sorted(needs.caps)
        pipe = Commands()
        front = self._queue(pipe, writes) if writes else 0
        for event_key, owner in claims:
            # SET key owner NX GET EX ttl, without redis-py's per-call argument handling
            pipe.execute_command("SET", keys.claim(event_key), owner, "NX", "GET", "EX", self.claim_ttl,
                                 get=True)
        for tenant, user in wanted:
            pipe.get(keys.recipient(tenant, user))
        for key in prefs:
            pipe.hgetall(key)
        for (key, owner), ttl in dedup:
            pipe.set(key, owner, nx=True, get=True, ex=ttl)
        for key in (*content, *caps):
            pipe.get(key)
        results = self._execute(pipe, front, writes)
        snap = Snapshot()
        rest = results[len(claims) + len(wanted):]
        view = snap.view
        for key, raw in zip(prefs, rest[: len(prefs)], strict=True):
            view.prefs[key] = {_text(k): _text(v) for k, v in (raw or {}).items()}
        rest = rest[len(prefs):]
        for ((key, owner), _), previous in zip(dedup, rest[: len(dedup)], strict=True):
            held = owner if previous is None else _text(previous)
            view.claims[(key, owner)] = Claim(held, held == owner)
        rest = rest[len(dedup):]
        for key, raw in zip(content, rest[: len(content)], strict=True):
            view.content[key] = None if raw is None else _text(raw)
        rest = rest[len(content):]
        view.caps = CapBook.from_counts({k: int(v or 0) for k, v in zip(caps, rest, strict=True)})
        for (event_key, owner), previous in zip(claims, results[: len(claims)], strict=True):
            if previous is None:
                claim = Claim(owner, True)
            else:
                held = previous.decode() if isinstance(previous, bytes) else str(previous)
                claim = Claim(held, held == owner)
            # Keyed by owner too: a later copy of the same event in this batch must not
            # overwrite the first copy's answer (both would then be dropped as duplicates).
            snap.claims[(event_key, owner)] = claim
        for ref, raw in zip(wanted, results[len(claims) : len(claims) + len(wanted)], strict=True):
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
        """Drop claims we still own (for events that were dead-lettered), at once; how many went."""
        if not claims:
            return 0
        pipe = Commands()
        scripts = PipelineScripts(pipe)
        for event_key, owner in claims:
            scripts(self._release, [keys.claim(event_key)], [owner])
        return sum(int(n) for n in self.wire.run(pipe)[-len(claims):])

    def write(self, caps: CapBook, content: Sequence[tuple[str, str, int | None]], holds: Sequence[Hold],
              digests: Sequence[DigestAdd], now: datetime, extra: Sequence[tuple[str, str]] = ()) -> bool:
        """Write what a fan-out page's decisions changed, at once, in one pipeline; False when there
        was nothing.

        ``extra`` are plain ``SET key value EX dedup-ttl`` pairs (fan-out checkpoints).
        """
        return self.flush(Writes(now, dict(caps.taken), dict(caps.ttls), list(content), list(holds), list(digests),
                                 extra=list(extra)))

    def flush(self, writes: Writes) -> bool:
        """Send ``writes`` alone, in one pipeline; False when there was nothing to send."""
        if not writes:
            return False
        pipe = Commands()
        self._execute(pipe, self._queue(pipe, writes), writes)
        return True

    def _queue(self, pipe: Commands, writes: Writes) -> int:
        """Queue ``writes`` on ``pipe``; returns how many commands that added."""
        before = len(pipe)
        for key, n in writes.caps.items():
            pipe.incrby(key, n)
            pipe.expire(key, writes.ttls[key])
        for key, value, ttl in writes.content:
            pipe.set(key, value, ex=ttl)
        for key, value in writes.extra:
            pipe.set(key, value, ex=self.claim_ttl)
        scripts = PipelineScripts(pipe)
        for event_key, owner in writes.releases:
            scripts(self._release, [keys.claim(event_key)], [owner])
        self.held.queue(pipe, writes.holds, writes.digests, writes.now, scripts)
        return len(pipe) - before

    def _execute(self, pipe: Commands, front: int, writes: Writes | None) -> list[Any]:
        """Run ``pipe`` whose first ``front`` commands are ``writes``; the other results, or RedisError.

        A connection error leaves open which commands ran: ``writes`` stay unapplied and are sent
        again with the next try (an ``INCRBY`` that did run is then counted twice). Once Redis
        answered, every command has run: the writes are applied, and one that Redis refused
        (a wrong key type, say) would be refused again, so it is logged, not retried.
        """
        results = self.wire.run(pipe)
        if writes is not None and front:
            writes.applied = True
            refused = [r for r in results[:front] if isinstance(r, Exception)]
            if refused:
                log.error("Redis refused %d of %d state write(s), not retried: %s", len(refused), front, refused[0])
        for result in results[front:]:
            if isinstance(result, RedisError):
                raise result
        return results[front:]
