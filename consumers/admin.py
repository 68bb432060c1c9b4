"""The admin HTTP API: recipients, preferences and subscriptions, for a preference centre.

``tidings admin`` serves it with uvicorn; the OpenAPI description is at
``/openapi.json`` and browsable at ``/docs``. It is a thin layer over the
same Python API the ``tidings`` commands use (:mod:`router.recipients`,
:mod:`router.preferences`, :mod:`router.subscriptions`): every body is
validated completely before anything is written, and each write is one Redis
transaction, so a bad request changes nothing. Errors are JSON,
``{"error": "..."}``: 422 for bad input, 404 for what does not exist, 503
when Redis is unreachable. It touches no Kafka.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from redis import Redis
from redis.exceptions import RedisError

from router.preferences import Level, PreferenceStore, Switch, field_name, parse_value
from router.recipients import Recipient, RecipientStore
from router.subscriptions import SubscriptionStore
from schemas.errors import InputError

Ident = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,199}$")]


class NotFound(Exception):
    pass


class PreferencesBody(BaseModel):
    switches: dict[str, bool | str] = Field(
        description="CHANNEL/SCOPE -> on/off, e.g. {\"email/category:marketing\": \"off\", \"*/*\": \"on\"}",
        examples=[{"email/category:marketing": "off"}])


class Preferences(BaseModel):
    level: Level
    switches: dict[str, str]


class Effective(BaseModel):
    allowed: bool
    decided_by: str | None


class Topics(BaseModel):
    topics: list[str]


class Subscribers(BaseModel):
    topic: str
    subscribers: list[str]
    next_after: str | None = Field(description="pass as `after` for the next page; null at the end")


def _switches(body: PreferencesBody) -> list[Switch]:
    out = []
    for name, value in body.switches.items():
        channel, slash, scope = name.partition("/")
        if not slash:
            raise InputError(f"{name!r}: expected CHANNEL/SCOPE, e.g. email/* or */category:marketing")
        field_name(channel, scope)
        out.append(Switch(channel, scope, parse_value(value)))
    return out


def create_app(redis: Redis) -> FastAPI:
    app = FastAPI(title="Tidings admin API", version="1",
                  description="Recipients, preferences and subscriptions of the Tidings router.")
    recipients = RecipientStore(redis)
    prefs = PreferenceStore(redis)
    subs = SubscriptionStore(redis)

    @app.exception_handler(InputError)
    async def _bad(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "request"
        return JSONResponse({"error": f"{where}: {err.get('msg')}"}, status_code=422)

    @app.exception_handler(NotFound)
    async def _missing(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(RedisError)
    async def _down(request: Request, exc: RedisError) -> JSONResponse:
        return JSONResponse({"error": f"redis unavailable: {type(exc).__name__}"}, status_code=503)

    # -- recipients -------------------------------------------------------------

    @app.get("/tenants/{tenant}/recipients", tags=["recipients"])
    def list_recipients(tenant: Ident) -> list[str]:
        return recipients.ids(tenant)

    @app.get("/tenants/{tenant}/recipients/{user}", tags=["recipients"])
    def get_recipient(tenant: Ident, user: Ident) -> Recipient:
        found = recipients.get(tenant, user)
        if found is None:
            raise NotFound(f"no recipient {user!r} in tenant {tenant!r}")
        return found

    @app.put("/tenants/{tenant}/recipients/{user}", tags=["recipients"])
    def put_recipient(tenant: Ident, user: Ident, body: dict[str, Any]) -> Recipient:
        try:
            recipient = Recipient.model_validate({**body, "id": user, "tenant": tenant})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InputError(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}") from None
        recipients.put_many([recipient])
        return recipient

    @app.delete("/tenants/{tenant}/recipients/{user}", status_code=204, tags=["recipients"])
    def delete_recipient(tenant: Ident, user: Ident) -> None:
        if not recipients.remove(tenant, user):
            raise NotFound(f"no recipient {user!r} in tenant {tenant!r}")

    # -- preferences ------------------------------------------------------------

    def _get(level: Level, tenant: str, user: str | None) -> Preferences:
        return Preferences(level=level, switches=prefs.get(level, tenant, user))

    def _set(level: Level, tenant: str, user: str | None, body: PreferencesBody) -> Preferences:
        prefs.set(level, tenant, user, _switches(body))
        return _get(level, tenant, user)

    @app.get("/tenants/{tenant}/users/{user}/preferences", tags=["preferences"])
    def get_user_prefs(tenant: Ident, user: Ident) -> Preferences:
        return _get("user", tenant, user)

    @app.patch("/tenants/{tenant}/users/{user}/preferences", tags=["preferences"])
    def set_user_prefs(tenant: Ident, user: Ident, body: PreferencesBody) -> Preferences:
        return _set("user", tenant, user, body)

    @app.delete("/tenants/{tenant}/users/{user}/preferences/{channel}/{scope}", tags=["preferences"])
    def remove_user_pref(tenant: Ident, user: Ident, channel: str, scope: str) -> Preferences:
        if not prefs.remove("user", tenant, user, channel, scope):
            raise NotFound(f"no preference {channel}/{scope} for {user!r}")
        return _get("user", tenant, user)

    @app.get("/tenants/{tenant}/users/{user}/preferences/effective", tags=["preferences"])
    def effective(tenant: Ident, user: Ident, channel: Annotated[str, Query()],
                  type: Annotated[str, Query(alias="type")],
                  category: Annotated[str | None, Query()] = None) -> Effective:
        field_name(channel, "*")
        verdict = prefs.effective(tenant, user, channel, type, category)
        return Effective(allowed=verdict.allowed, decided_by=verdict.source)

    @app.get("/tenants/{tenant}/preferences", tags=["preferences"])
    def get_tenant_prefs(tenant: Ident) -> Preferences:
        return _get("tenant", tenant, None)

    @app.patch("/tenants/{tenant}/preferences", tags=["preferences"])
    def set_tenant_prefs(tenant: Ident, body: PreferencesBody) -> Preferences:
        return _set("tenant", tenant, None, body)

    @app.get("/preferences", tags=["preferences"])
    def get_global_prefs() -> Preferences:
        return _get("global", "", None)

    @app.patch("/preferences", tags=["preferences"])
    def set_global_prefs(body: PreferencesBody) -> Preferences:
        return _set("global", "", None, body)

    # -- subscriptions ----------------------------------------------------------

    @app.get("/tenants/{tenant}/users/{user}/subscriptions", tags=["subscriptions"])
    def get_subs(tenant: Ident, user: Ident) -> Topics:
        return Topics(topics=subs.topics(tenant, user))

    @app.put("/tenants/{tenant}/users/{user}/subscriptions", tags=["subscriptions"])
    def add_subs(tenant: Ident, user: Ident, body: Topics) -> Topics:
        subs.subscribe(tenant, user, body.topics)
        return Topics(topics=subs.topics(tenant, user))

    @app.delete("/tenants/{tenant}/users/{user}/subscriptions/{topic}", tags=["subscriptions"])
    def remove_sub(tenant: Ident, user: Ident, topic: str) -> Topics:
        if not subs.unsubscribe(tenant, user, [topic]):
            raise NotFound(f"{user!r} does not subscribe to {topic!r}")
        return Topics(topics=subs.topics(tenant, user))

    @app.get("/tenants/{tenant}/topics/{topic}/subscribers", tags=["subscriptions"])
    def subscribers(tenant: Ident, topic: str, after: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> Subscribers:
        page = subs.page(tenant, topic, after, limit)
        return Subscribers(topic=topic, subscribers=page, next_after=page[-1] if len(page) == limit else None)

    return app
