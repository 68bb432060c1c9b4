"""The admin HTTP API on a real uvicorn server on loopback, spoken to with httpx, on real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from redis import Redis

from consumers.admin import create_app
from devstack import infra
from router.preferences import PreferenceStore
from router.subscriptions import SubscriptionStore

pytestmark = pytest.mark.integration


@pytest.fixture
def api(redis_client: Redis, redis_url: str) -> Iterator[httpx.Client]:
    port = infra.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Redis.from_url(redis_url)), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client
    server.should_exit = True
    thread.join(10)


def test_openapi_describes_every_operation(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    assert spec["info"]["title"] == "Tidings admin API"
    paths = spec["paths"]
    assert set(paths["/tenants/{tenant}/users/{user}/preferences"]) == {"get", "patch"}
    assert set(paths["/tenants/{tenant}/recipients/{user}"]) == {"get", "put", "delete"}
    assert "/tenants/{tenant}/topics/{topic}/subscribers" in paths
    assert "/preferences" in paths and "/tenants/{tenant}/preferences" in paths


def test_recipient_round_trip_and_clear_errors(api: httpx.Client, redis_client: Redis) -> None:
    put = api.put("/tenants/acme/recipients/u-1", json={"locale": "de", "timezone": "Europe/Berlin",
                                                        "contacts": {"email": "u1@example.com"},
                                                        "quiet_hours": {"start": "22:00", "end": "07:00"}})
    assert put.status_code == 200, put.text
    got = api.get("/tenants/acme/recipients/u-1").json()
    assert (got["id"], got["tenant"], got["quiet_hours"]) == ("u-1", "acme", {"start": "22:00:00", "end": "07:00:00"})
    assert api.get("/tenants/acme/recipients").json() == ["u-1"]
    bad = api.put("/tenants/acme/recipients/u-2", json={"timezone": "Mars/Olympus"})
    assert bad.status_code == 422 and "not an IANA time zone" in bad.json()["error"]
    assert api.get("/tenants/acme/recipients/u-2").status_code == 404
    assert api.delete("/tenants/acme/recipients/u-1").status_code == 204
    missing = api.delete("/tenants/acme/recipients/u-1")
    assert missing.status_code == 404 and "no recipient 'u-1'" in missing.json()["error"]
    assert api.get("/tenants/acme/recipients/bad%20id").status_code == 422


def test_preferences_at_three_levels_and_the_effective_answer(api: httpx.Client, redis_client: Redis) -> None:
    assert api.patch("/preferences", json={"switches": {"*/category:marketing": "off"}}).status_code == 200
    assert api.patch("/tenants/acme/preferences", json={"switches": {"email/*": True}}).json() == {
        "level": "tenant", "switches": {"email/*": "on"}}
    user = api.patch("/tenants/acme/users/u-1/preferences", json={"switches": {"email/category:marketing": "on"}})
    assert user.json() == {"level": "user", "switches": {"email/category:marketing": "on"}}
    eff = api.get("/tenants/acme/users/u-1/preferences/effective",
                  params={"channel": "email", "type": "promo.sent", "category": "marketing"}).json()
    assert eff == {"allowed": True, "decided_by": "user email/category:marketing"}
    other = api.get("/tenants/acme/users/u-2/preferences/effective",
                    params={"channel": "sms", "type": "promo.sent", "category": "marketing"}).json()
    assert other == {"allowed": False, "decided_by": "global */category:marketing"}
    removed = api.delete("/tenants/acme/users/u-1/preferences/email/category:marketing")
    assert removed.status_code == 200 and removed.json()["switches"] == {}
    # A bad switch among good ones: 422, and nothing of the request is written.
    bad = api.patch("/tenants/acme/users/u-1/preferences",
                    json={"switches": {"email/*": "off", "email/kind:x": "off"}})
    assert bad.status_code == 422 and "scope 'kind:x'" in bad.json()["error"]
    assert PreferenceStore(redis_client).get("user", "acme", "u-1") == {}
    assert api.patch("/tenants/acme/users/u-1/preferences", json={"switches": {"email/*": "maybe"}}).status_code == 422
    assert api.patch("/tenants/acme/users/u-1/preferences", json={"nope": 1}).status_code == 422


def test_subscriptions_and_paged_subscribers(api: httpx.Client, redis_client: Redis) -> None:
    assert api.put("/tenants/acme/users/u-1/subscriptions", json={"topics": ["company:Acme", "news"]}).json() == {
        "topics": ["company:Acme", "news"]}
    SubscriptionStore(redis_client).subscribe_many("acme", "news", [f"u-{i}" for i in range(2, 7)])
    first = api.get("/tenants/acme/topics/news/subscribers", params={"limit": 4}).json()
    assert first == {"topic": "news", "subscribers": ["u-1", "u-2", "u-3", "u-4"], "next_after": "u-4"}
    rest = api.get("/tenants/acme/topics/news/subscribers", params={"limit": 4, "after": "u-4"}).json()
    assert rest == {"topic": "news", "subscribers": ["u-5", "u-6"], "next_after": None}
    assert api.delete("/tenants/acme/users/u-1/subscriptions/news").json() == {"topics": ["company:Acme"]}
    assert api.delete("/tenants/acme/users/u-1/subscriptions/news").status_code == 404
    bad = api.put("/tenants/acme/users/u-1/subscriptions", json={"topics": ["ok", "not ok"]})
    assert bad.status_code == 422 and "topic 'not ok'" in bad.json()["error"]
    assert api.get("/tenants/acme/users/u-1/subscriptions").json() == {"topics": ["company:Acme"]}


def test_redis_down_is_a_503(redis_url: str) -> None:
    port = infra.free_port()
    dead = Redis.from_url(f"redis://127.0.0.1:{infra.free_port()}/0", socket_connect_timeout=1)
    server = uvicorn.Server(uvicorn.Config(create_app(dead), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/tenants/acme/recipients", timeout=10)
        assert answer.status_code == 503 and answer.json()["error"].startswith("redis unavailable")
    finally:
        server.should_exit = True
        thread.join(10)
