"""Subscriptions: who in a tenant follows a topic.

A topic is any name: an event type (``jobs.match.found``) or a name a rule
derives from the event (``project:{{ data.project_id }}``). A rule with
``audience: subscribers`` notifies every subscriber of its topic in the
event's tenant (seeds 002 and 003).

Subscribers of a topic are a sorted set with every score 0, so members are
ordered by id and can be read in pages from a cursor (the last id done) with
``ZRANGE ... BYLEX``: a fan-out that stops half way resumes after the last id
whose deliveries Kafka acknowledged, never from the start. Each user's own
topics are a set, for listing and removal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from redis import Redis

from router import keys
from schemas.errors import InputError

_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,199}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,199}$")


class SubscriptionError(InputError):
    """A topic or user id is malformed."""


def check_topic(topic: str) -> str:
    if not _TOPIC.match(topic):
        raise SubscriptionError(f"topic {topic!r} is not valid (letters, digits, _.:/+-; at most 200)")
    return topic


def check_user(user: str) -> str:
    if not _ID.match(user):
        raise SubscriptionError(f"user id {user!r} is not valid")
    return user


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SubscriptionStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def subscribe(self, tenant: str, user: str, topics: Sequence[str]) -> int:
        """Subscribe one user to topics, in one transaction; returns how many were new."""
        check_user(user)
        for topic in topics:
            check_topic(topic)
        if not topics:
            raise SubscriptionError("no topic given")
        pipe = self.redis.pipeline(transaction=True)
        for topic in topics:
            pipe.zadd(keys.subscribers(tenant, topic), {user: 0})
        pipe.sadd(keys.user_subs(tenant, user), *topics)
        return sum(int(n) for n in pipe.execute()[:-1])

    def subscribe_many(self, tenant: str, topic: str, users: Iterable[str], chunk: int = 5000) -> int:
        """Bulk import of one topic's subscribers (validated first, then chunked pipelines)."""
        check_topic(topic)
        ids = [check_user(u) for u in users]
        added = 0
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(keys.subscribers(tenant, topic), dict.fromkeys(part, 0))
            for user in part:
                pipe.sadd(keys.user_subs(tenant, user), topic)
            added += int(pipe.execute()[0])
        return added

    def unsubscribe(self, tenant: str, user: str, topics: Sequence[str]) -> int:
        pipe = self.redis.pipeline(transaction=True)
        for topic in topics:
            pipe.zrem(keys.subscribers(tenant, check_topic(topic)), user)
        if topics:
            pipe.srem(keys.user_subs(tenant, user), *topics)
        return sum(int(n) for n in pipe.execute()[: len(topics)])

    def topics(self, tenant: str, user: str) -> list[str]:
        return sorted(_text(t) for t in self.redis.smembers(keys.user_subs(tenant, user)))

    def count(self, tenant: str, topic: str) -> int:
        return int(self.redis.zcard(keys.subscribers(tenant, topic)))

    def page(self, tenant: str, topic: str, after: str | None, size: int) -> list[str]:
        """Up to ``size`` subscriber ids after ``after`` (exclusive), in id order."""
        low = f"({after}" if after else "-"
        raw = self.redis.zrangebylex(keys.subscribers(tenant, topic), low, "+", start=0, num=size)
        return [_text(m) for m in raw]
