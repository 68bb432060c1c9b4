"""The inbox API on a real uvicorn server over loopback, with httpx, on a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis as AsyncRedis

from channels.inapp.items import InboxItem
from channels.inapp.store import InboxStore, parse_event_id
from channels.inapp.tokens import mint

from .conftest import SECRET, Clock, Server, make_item

pytestmark = pytest.mark.integration
T = "acme"


def token(clock: Clock, user: str, tenant: str = T, ttl: int = 600, secret: str = SECRET) -> str:
    return mint(secret, tenant, user, int(clock.now) + ttl)


def auth(clock: Clock, user: str, **kw: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {token(clock, user, **kw)}"}


def store_call(redis_url: str, method: str, *args: Any, **options: Any) -> Any:
    async def go() -> Any:
        client = AsyncRedis.from_url(redis_url)
        try:
            return await getattr(InboxStore(client, **options), method)(*args)
        finally:
            await client.aclose()

    return asyncio.run(go())


def put(redis_url: str, clock: Clock, user: str, *items: InboxItem, tenant: str = T, **options: Any) -> None:
    now = datetime.fromtimestamp(clock.now, UTC)
    for item in items:
        assert store_call(redis_url, "add", tenant, user, item, now, **options).outcome == "added"


class Events:
    """Reads Server-Sent Events from a streaming httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines: Iterator[str] = response.iter_lines()
        self.comments = 0

    def next(self) -> tuple[str | None, str, dict[str, Any]]:
        """The next event as (id, type, data); comments and the retry hint are counted and skipped."""
        ident, kind, data = None, "message", None
        for line in self.lines:
            if line == "":
                if data is not None:
                    return ident, kind, json.loads(data)
                continue
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        raise AssertionError("stream ended")

    def keep_alive(self) -> None:
        """Read until a comment line (the keep-alive sent after a silence)."""
        for line in self.lines:
            if line.startswith(":"):
                return
            assert not line.startswith("data: "), f"expected silence, got {line}"
        raise AssertionError("stream ended")


def stream(client: httpx.Client, server: Server, headers: dict[str, str], **params: str) -> Any:
    return client.stream("GET", f"{server.url}/api/inbox/stream", headers=headers, params=params,
                         timeout=httpx.Timeout(10.0))


# -- authentication ----------------------------------------------------------------


def test_requests_without_a_valid_token_are_refused(api_server: Any, clock: Clock, redis_url: str) -> None:
    server = api_server()
    put(redis_url, clock, "u-ada", make_item("a-1"))
    good = token(clock, "u-ada")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        missing = client.get("/api/inbox")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        cases = {
            "forged": good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
            "other secret": token(clock, "u-ada", secret="some-other-secret-0123"),
            "expired": token(clock, "u-ada", ttl=-1),
            "garbage": "not-a-token",
        }
        for what, bad in cases.items():
            answer = client.get("/api/inbox", headers={"authorization": f"Bearer {bad}"})
            assert answer.status_code == 401, what
            assert bad not in answer.text and SECRET not in answer.text
        assert client.get("/api/inbox", headers={"authorization": f"Basic {good}"}).status_code == 401
        # the query parameter is only for EventSource, on the stream route
        assert client.get("/api/inbox", params={"access_token": good}).status_code == 401
        assert client.post("/api/inbox/a-1/read").status_code == 401
        assert client.get("/api/inbox", headers={"authorization": f"Bearer {good}"}).status_code == 200
    assert store_call(redis_url, "is_unread", T, "u-ada", "a-1", datetime.fromtimestamp(clock.now, UTC)) is True


def test_a_user_reaches_only_their_own_inbox(api_server: Any, clock: Clock, redis_url: str) -> None:
    server = api_server()
    put(redis_url, clock, "u-ada", make_item("ada-1"))
    put(redis_url, clock, "u-grace", make_item("grace-1"))
    put(redis_url, clock, "u-ada", make_item("other-tenant"), tenant="globex")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        ada = client.get("/api/inbox", headers=auth(clock, "u-ada")).json()
        assert [i["id"] for i in ada["items"]] == ["ada-1"]
        grace = auth(clock, "u-grace")
        assert [i["id"] for i in client.get("/api/inbox", headers=grace).json()["items"]] == ["grace-1"]
        assert client.post("/api/inbox/ada-1/read", headers=grace).status_code == 404
        assert client.post("/api/inbox/ada-1/dismiss", headers=grace).status_code == 404
        assert client.post("/api/inbox/read-all", headers=grace).json() == {"marked": 1, "unread": 0}
        assert client.get("/api/inbox/counts", headers=auth(clock, "u-ada")).json() == {"unread": 1, "total": 1}
        globex = client.get("/api/inbox", headers=auth(clock, "u-ada", tenant="globex")).json()
        assert [i["id"] for i in globex["items"]] == ["other-tenant"]


# -- the JSON API ------------------------------------------------------------------


def test_paging_counts_read_and_dismiss(api_server: Any, clock: Clock, redis_url: str) -> None:
    server = api_server()
    put(redis_url, clock, "u-ada", *(make_item(f"n-{i}", action_url=f"/jobs/{i}", action_label="Open")
                                      for i in range(5)))
    with httpx.Client(base_url=server.url, timeout=10, headers=auth(clock, "u-ada")) as client:
        first = client.get("/api/inbox", params={"limit": 2}).json()
        assert [i["id"] for i in first["items"]] == ["n-4", "n-3"]
        assert (first["unread"], first["total"]) == (5, 5)
        item = first["items"][0]
        assert item["title"] == "Title n-4" and item["action_url"] == "/jobs/4" and item["action_label"] == "Open"
        assert item["read"] is False and item["expires_at"].startswith("2026-05-02T09:00:00")
        ids = [i["id"] for i in first["items"]]
        cursor = first["next_cursor"]
        while cursor is not None:
            page = client.get("/api/inbox", params={"limit": 2, "cursor": cursor}).json()
            ids += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
        assert ids == ["n-4", "n-3", "n-2", "n-1", "n-0"]

        assert client.post("/api/inbox/n-2/read").json() == {"id": "n-2", "outcome": "read", "unread": 4}
        assert client.post("/api/inbox/n-2/read").json()["outcome"] == "already_read"
        assert client.post("/api/inbox/nope/read").status_code == 404
        assert client.post("/api/inbox/n-4/dismiss").json() == {"id": "n-4", "unread": 3}
        assert client.post("/api/inbox/n-4/dismiss").status_code == 404
        assert client.get("/api/inbox/counts").json() == {"unread": 3, "total": 4}
        assert client.post("/api/inbox/read-all").json() == {"marked": 3, "unread": 0}
        listed = client.get("/api/inbox").json()
        assert [(i["id"], i["read"]) for i in listed["items"]] == [
            ("n-3", True), ("n-2", True), ("n-1", True), ("n-0", True)]
        assert client.get("/api/inbox", params={"limit": 0}).status_code == 422
        assert client.get("/api/inbox", params={"limit": 101}).status_code == 422
        assert client.get("/api/inbox", params={"cursor": "x"}).status_code == 422


def test_expired_entries_leave_the_list_when_their_time_comes(api_server: Any, clock: Clock,
                                                              redis_url: str) -> None:
    from datetime import timedelta

    server = api_server()
    put(redis_url, clock, "u-ada", make_item("soon", lifetime=timedelta(minutes=10)), make_item("later"))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/api/inbox/counts", headers=auth(clock, "u-ada")).json() == {"unread": 2, "total": 2}
        clock.now += 11 * 60
        assert client.get("/api/inbox/counts", headers=auth(clock, "u-ada")).json() == {"unread": 1, "total": 1}


def test_the_page_and_health(api_server: Any) -> None:
    server = api_server()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert 'id="badge"' in page.text and 'src="/inbox.js"' in page.text
        script = client.get("/inbox.js")
        assert script.status_code == 200 and "EventSource" in script.text
        assert client.get("/inbox.css").status_code == 200
        assert client.get("/healthz").text == "ok"


# -- the live stream ---------------------------------------------------------------


def test_live_events_reach_a_connected_client(api_server: Any, clock: Clock, redis_url: str) -> None:
    server = api_server(heartbeat=0.3)
    put(redis_url, clock, "u-ada", make_item("old"))
    headers = auth(clock, "u-ada")
    with httpx.Client(timeout=10) as client, stream(client, server, headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = Events(response)
        ident, kind, data = events.next()
        assert (kind, data) == ("hello", {"unread": 1, "total": 1, "resumed": False})
        assert ident is not None and ident != "0-0"

        put(redis_url, clock, "u-ada", make_item("fresh", title="Interview on Monday"))
        ident2, kind, data = events.next()
        assert kind == "new" and data["unread"] == 2 and data["id"] == "fresh"
        assert data["item"]["title"] == "Interview on Monday" and data["item"]["read"] is False
        assert ident2 is not None and parse_event_id(ident2) > parse_event_id(ident)

        assert client.post(f"{server.url}/api/inbox/fresh/read", headers=headers).json()["unread"] == 1
        assert events.next()[1:] == ("read", {"id": "fresh", "unread": 1})
        client.post(f"{server.url}/api/inbox/old/dismiss", headers=headers)
        assert events.next()[1:] == ("dismissed", {"id": "old", "unread": 0})
        put(redis_url, clock, "u-grace", make_item("not-for-ada"))  # someone else's inbox: nothing arrives
        put(redis_url, clock, "u-ada", make_item("third"))
        assert events.next()[2]["id"] == "third"
        events.keep_alive()  # nothing else for ada, so a keep-alive comment, not an event


def test_a_reconnecting_client_gets_what_it_missed(api_server: Any, clock: Clock, redis_url: str) -> None:
    server = api_server(heartbeat=0.3)
    headers = auth(clock, "u-ada")
    with httpx.Client(timeout=10) as client:
        with stream(client, server, headers) as response:
            last, kind, _ = Events(response).next()
            assert kind == "hello" and last == "0-0"
        put(redis_url, clock, "u-ada", make_item("m-1"), make_item("m-2"))
        client.post(f"{server.url}/api/inbox/m-1/read", headers=headers)
        assert last is not None
        with stream(client, server, {**headers, "last-event-id": last}) as response:
            events = Events(response)
            assert events.next()[1:] == ("hello", {"unread": 1, "total": 2, "resumed": True})
            missed = [events.next() for _ in range(3)]
            assert [(k, d.get("id"), d["unread"]) for _, k, d in missed] == [
                ("new", "m-1", 1), ("new", "m-2", 2), ("read", "m-1", 1)]
            put(redis_url, clock, "u-ada", make_item("live"))
            assert events.next()[1:3] == ("new", {"id": "live", "unread": 2, "item": events_item("live")})
        # ?since= does the same for clients that keep the id themselves
        with stream(client, server, headers, since=missed[1][0] or "") as response:
            events = Events(response)
            assert events.next()[1:] == ("hello", {"unread": 2, "total": 3, "resumed": True})
            assert [(k, d.get("id")) for _, k, d in (events.next(), events.next())] == [
                ("read", "m-1"), ("new", "live")]


def events_item(ident: str) -> dict[str, Any]:
    return {**make_item(ident).model_dump(mode="json"), "read": False}


def test_a_client_too_far_behind_is_told_to_reload(api_server: Any, clock: Clock, redis_url: str) -> None:
    server = api_server(heartbeat=0.3, stream_length=10, max_items=1000)
    put(redis_url, clock, "u-ada", make_item("first"))
    headers = auth(clock, "u-ada")
    with httpx.Client(timeout=10) as client:
        with stream(client, server, headers) as response:
            last = Events(response).next()[0]
        put(redis_url, clock, "u-ada", *(make_item(f"x-{i}") for i in range(300)), stream_length=10, max_items=1000)
        assert last is not None
        with stream(client, server, {**headers, "last-event-id": last}) as response:
            ident, kind, data = Events(response).next()
            assert (kind, data) == ("reset", {"unread": 301, "total": 301})
            assert ident is not None and parse_event_id(ident) > parse_event_id(last)
        bad = client.get(f"{server.url}/api/inbox/stream", headers={**headers, "last-event-id": "yesterday"})
        assert bad.status_code == 400


def test_the_stream_takes_the_token_from_the_query_and_refuses_without_one(api_server: Any, clock: Clock) -> None:
    server = api_server(heartbeat=0.3)
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{server.url}/api/inbox/stream").status_code == 401
        refused = client.get(f"{server.url}/api/inbox/stream", params={"access_token": "x.y"})
        assert refused.status_code == 401
        with stream(client, server, {}, access_token=token(clock, "u-ada")) as response:
            assert Events(response).next()[1] == "hello"


def test_streams_beyond_the_limit_are_refused(api_server: Any, clock: Clock) -> None:
    server = api_server(heartbeat=0.3, max_streams=1)
    headers = auth(clock, "u-ada")
    with httpx.Client(timeout=10) as client:
        with stream(client, server, headers) as response:
            events = Events(response)  # held: dropping the line iterator would close the connection
            events.next()
            busy = client.get(f"{server.url}/api/inbox/stream", headers=headers)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        # the slot is free again once the first client has gone
        for _ in range(50):
            with stream(client, server, headers) as response:
                if response.status_code == 200:
                    assert Events(response).next()[1] == "hello"
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the stream slot was never released")


def scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(url, timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(body) for s in family.samples}


def test_open_and_refused_streams_are_on_the_metrics_port(api_server: Any, clock: Clock) -> None:
    from consumers.metrics import serve_inbox_metrics

    server = api_server(heartbeat=0.3, max_streams=1)
    metrics = serve_inbox_metrics(server.app.state, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{metrics.server_address[1]}/metrics"
    headers = auth(clock, "u-ada")
    try:
        assert scrape(url) == {"tidings_inbox_streams_open": 0, "tidings_inbox_streams_max": 1,
                               "tidings_inbox_streams_refused_total": 0}
        with httpx.Client(timeout=10) as client, stream(client, server, headers) as response:
            events = Events(response)  # held: dropping the line iterator would close the connection
            events.next()
            assert scrape(url)["tidings_inbox_streams_open"] == 1
            assert client.get(f"{server.url}/api/inbox/stream", headers=headers).status_code == 503
            assert scrape(url)["tidings_inbox_streams_refused_total"] == 1
        deadline = time.monotonic() + 10
        while scrape(url)["tidings_inbox_streams_open"] != 0:  # the server sees the client go at its next write
            assert time.monotonic() < deadline, "the closed stream was still counted"
            time.sleep(0.1)
        # the API's own port serves no metrics: it faces users
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 404
    finally:
        metrics.shutdown()
        metrics.server_close()


def test_redis_down_is_503_and_names_no_secret(clock: Clock, closed_port: int) -> None:
    server = Server(f"redis://:hunter2-password@127.0.0.1:{closed_port}/0", clock).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10, headers=auth(clock, "u-ada")) as client:
            for answer in (client.get("/api/inbox"), client.post("/api/inbox/x/read"), client.get("/healthz")):
                assert answer.status_code == 503
                assert answer.json() == {"detail": "inbox store unavailable"}
    finally:
        server.stop()
