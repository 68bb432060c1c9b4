"""The inbox HTTP API, its live stream and the web page (FastAPI; served by ``tidings inbox serve``).

Every ``/api`` route needs a user token (:mod:`channels.inapp.tokens`) in
``Authorization: Bearer <token>``; the stream route also takes it as the
``access_token`` query parameter, because a browser's EventSource cannot set
headers. A missing, malformed, forged or expired token gets 401. The token
alone names the inbox, so a user can only ever reach their own.

==========================================  ===========================================================
route                                       what
==========================================  ===========================================================
``GET  /api/inbox?cursor=&limit=``          a page, newest first: ``{items, next_cursor, unread, total}``
``GET  /api/inbox/counts``                  ``{unread, total}``
``POST /api/inbox/{id}/read``               mark one read: ``{id, outcome, unread}``; 404 if not there
``POST /api/inbox/read-all``                mark every entry read: ``{marked, unread}``
``POST /api/inbox/{id}/dismiss``            remove one from the list: ``{id, unread}``; 404 if not there
``GET  /api/inbox/stream``                  Server-Sent Events (below)
``GET  /``, ``/inbox.js``, ``/inbox.css``   the page: bell with unread badge, list, mark read
``GET  /healthz``                           ``ok`` when Redis answers
==========================================  ===========================================================

The stream sends ``hello`` first (``{unread, total, resumed}``), then one event
per change (``new``, ``read``, ``read_all``, ``dismissed``, ``expired``; each
with the ``unread`` count after it). Event ids are the inbox's stream entry
ids. A client that reconnects with ``Last-Event-ID`` (EventSource does this by
itself) or ``?since=<id>`` first gets every event it missed; when the inbox
no longer holds them all it gets ``reset`` instead and reloads the list. A
comment line goes out after ``heartbeat`` seconds of silence so proxies keep
the connection open.
"""

# No "from __future__ import annotations": FastAPI reads the route annotations, some of which
# (the authenticated user) are local to create_app.
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from redis.exceptions import RedisError

from channels.inapp.store import MAX_PAGE, InboxStore, parse_event_id
from channels.inapp.tokens import Principal, TokenError, check_secret, verify

__all__ = ["create_app", "sse"]

_STATIC = resources.files("channels.inapp") / "static"
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}
_MAX_ID = 200


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    """One Server-Sent Events message."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def create_app(store: InboxStore, secret: str, *, heartbeat: float = 15.0, max_streams: int = 500,
               clock: Callable[[], float] = time.time) -> FastAPI:
    """The app. ``secret`` signs user tokens; ``clock`` gives Unix seconds (tests move it).

    The app owns the store's Redis client from here on: it closes it when it shuts down.
    """
    check_secret(secret)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await store.redis.aclose()

    app = FastAPI(title="Tidings inbox", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    # Read by the inbox's metrics (consumers/metrics.py, InboxStreams) when they are scraped.
    app.state.open_streams = 0
    app.state.max_streams = max_streams
    app.state.refused_streams = 0

    def now() -> datetime:
        return datetime.fromtimestamp(clock(), UTC)

    def principal(request: Request) -> Principal:
        token = None
        header = request.headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if token is None and request.url.path == "/api/inbox/stream":
            token = request.query_params.get("access_token") or None
        if token is None:
            raise HTTPException(401, "a user token is required (Authorization: Bearer <token>)",
                                headers={"www-authenticate": "Bearer"})
        try:
            return verify(secret, token, clock())
        except TokenError as exc:
            raise HTTPException(401, str(exc), headers={"www-authenticate": 'Bearer error="invalid_token"'}) from None

    User = Annotated[Principal, Depends(principal)]

    def item_id(value: str) -> str:
        if not value or len(value) > _MAX_ID:
            raise HTTPException(404, "no such item")
        return value

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> Response:
        return JSONResponse({"detail": "inbox store unavailable"}, status_code=503)

    @app.get("/api/inbox")
    async def list_inbox(who: User, cursor: Annotated[int | None, Query(ge=0)] = None,
                         limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20) -> dict[str, Any]:
        page = await store.page(who.tenant, who.user, now(), cursor=cursor, limit=limit)
        return {"items": [e.to_api() for e in page.entries], "next_cursor": page.next_cursor,
                "unread": page.unread, "total": page.total}

    @app.get("/api/inbox/counts")
    async def counts(who: User) -> dict[str, int]:
        c = await store.counts(who.tenant, who.user, now())
        return {"unread": c.unread, "total": c.total}

    @app.post("/api/inbox/read-all")
    async def read_all(who: User) -> dict[str, int]:
        marked = await store.mark_all_read(who.tenant, who.user, now())
        return {"marked": marked, "unread": 0}

    @app.post("/api/inbox/{ident}/read")
    async def read(who: User, ident: str) -> dict[str, Any]:
        outcome, unread = await store.mark_read(who.tenant, who.user, item_id(ident), now())
        if outcome == "missing":
            raise HTTPException(404, "no such item in this inbox")
        return {"id": ident, "outcome": outcome, "unread": unread}

    @app.post("/api/inbox/{ident}/dismiss")
    async def dismiss(who: User, ident: str) -> dict[str, Any]:
        found, unread = await store.dismiss(who.tenant, who.user, item_id(ident), now())
        if not found:
            raise HTTPException(404, "no such item in this inbox")
        return {"id": ident, "unread": unread}

    @app.get("/api/inbox/stream")
    async def stream(request: Request, who: User, since: str | None = None) -> StreamingResponse:
        last = request.headers.get("last-event-id") or since
        if last is not None:
            try:
                parse_event_id(last)
            except ValueError:
                raise HTTPException(400, "Last-Event-ID / since must be an event id from this stream") from None
        if app.state.open_streams >= max_streams:
            app.state.refused_streams += 1
            raise HTTPException(503, "too many live streams on this server; retry later",
                                headers={"retry-after": "5"})
        return StreamingResponse(_events(who, last), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def _events(who: Principal, last: str | None) -> AsyncIterator[str]:
        app.state.open_streams += 1
        try:
            yield "retry: 2000\n\n"
            if last is None:
                after = await store.last_event_id(who.tenant, who.user)
                c = await store.counts(who.tenant, who.user, now())
                yield sse("hello", {"unread": c.unread, "total": c.total, "resumed": False}, after)
            else:
                replay = await store.replay(who.tenant, who.user, last)
                if replay.complete:
                    after = last
                    c = await store.counts(who.tenant, who.user, now())
                    yield sse("hello", {"unread": c.unread, "total": c.total, "resumed": True}, after)
                    for event in replay.events:
                        yield sse(event.type, event.data, event.id)
                        after = event.id
                else:
                    after = await store.last_event_id(who.tenant, who.user)
                    c = await store.counts(who.tenant, who.user, now())
                    yield sse("reset", {"unread": c.unread, "total": c.total}, after)
            block = max(1, int(heartbeat * 1000))
            while True:
                events = await store.wait(who.tenant, who.user, after, block)
                if not events:
                    yield ": keep-alive\n\n"
                    continue
                for event in events:
                    yield sse(event.type, event.data, event.id)
                    after = event.id
        finally:
            app.state.open_streams -= 1

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        await store.redis.ping()
        return PlainTextResponse("ok")

    def static(name: str, media_type: str) -> Callable[[], Any]:
        async def serve() -> Response:
            body = (_STATIC / name).read_bytes()
            return Response(body, media_type=media_type, headers=_PAGE_HEADERS)
        return serve

    app.get("/", include_in_schema=False)(static("index.html", "text/html; charset=utf-8"))
    app.get("/inbox.js", include_in_schema=False)(static("inbox.js", "text/javascript; charset=utf-8"))
    app.get("/inbox.css", include_in_schema=False)(static("inbox.css", "text/css; charset=utf-8"))
    return app
