"""One local HTTP server that speaks the APIs of Slack, Discord, Telegram, Teams and Twilio.

It answers on each provider's own paths, checks what that provider checks
(the bot token, Twilio's basic auth, required fields, size limits) and answers
in that provider's form, errors included:

==========  ===============================================  ==========================
provider    path                                             success answer
==========  ===============================================  ==========================
slack       ``POST /services/<T>/<B>/<secret>``              ``200 ok`` (text)
discord     ``POST /api/webhooks/<id>/<token>[?wait=true]``  ``200`` message JSON / ``204``
telegram    ``POST /bot<token>/sendMessage``                 ``{"ok": true, "result": …}``
teams       ``POST /webhookb2/…`` or ``/workflows/…``        ``200 1`` / ``202``
twilio      ``POST /2010-04-01/Accounts/<sid>/Messages.json``  ``201`` message JSON
==========  ===============================================  ==========================

Faults are scripted per *target*: the last path segment for Slack and Teams,
the webhook token for Discord, the chat id (without ``@``) for Telegram, the
``To`` number for Twilio. ``faults={"busy-hook": "busy"}`` makes Slack answer
``/services/T/B/busy-hook`` the way Slack answers when it is down. Kinds:

* ``busy``: a 5xx in the provider's form;
* ``ratelimit``: a 429 in the provider's form (Discord's ``retry_after`` in the
  body, Telegram's ``parameters.retry_after``, ``Retry-After`` for the others);
* ``refuse``: a 4xx about the request (bad payload);
* ``gone``: a 4xx about the destination (unknown webhook, chat not found,
  unsubscribed number);
* ``slow``: the normal answer, after ``slow_delay`` seconds;
* ``drop``: the connection closed without an answer;
* ``garble``: a 2xx with an HTML page instead of the provider's answer, as a
  captive portal or a misrouted proxy would give;
* ``embedded429`` (Teams only): ``200`` whose text reports ``HTTP error 429``,
  as Teams' classic webhooks do.

It also serves files for attachment URLs: ``GET /files/<name>?size=N`` answers
N bytes (``gone`` and ``busy`` faults on the name give 404 and 503); these are
not recorded.

Records: ``{"kind": <provider>, "path", "target", "status", "body": <JSON or form>,
"headers", "title", "fault", "delivery_id"}`` (the delivery id from the
``x-tidings-delivery-id`` header the channels send).
"""

from __future__ import annotations

import base64
import html
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar, TextIO
from urllib.parse import parse_qs, urlsplit

from devstack.sinks import Record, _HttpSink

__all__ = ["TELEGRAM_TOKEN", "TWILIO_ACCOUNT", "TWILIO_TOKEN", "ProviderSink", "target_of"]

TELEGRAM_TOKEN = "123456789:AAlocal-sink-token-000000000000000"  # noqa: S105 - a local stand-in
TWILIO_ACCOUNT = "AC" + "0" * 31 + "1"
TWILIO_TOKEN = "local-sink-auth-token"  # noqa: S105 - a local stand-in
FAULTS = ("busy", "ratelimit", "refuse", "gone", "slow", "drop", "garble", "embedded429")
_HTML = "<html><head><title>Welcome</title></head><body>Sign in to continue browsing.</body></html>"
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: Any, **headers: str) -> _Answer:
        return cls(status, json.dumps(document).encode(), {"Content-Type": "application/json", **headers})

    @classmethod
    def text(cls, status: int, text: str, **headers: str) -> _Answer:
        return cls(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8", **headers})


def _garble() -> _Answer:
    return _Answer(200, _HTML.encode(), {"Content-Type": "text/html"})


@dataclass
class _Request:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.raw)
        except ValueError:
            return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server_version = "TidingsProviderSink/0.1"
    sink: ClassVar[ProviderSink]

    def do_POST(self) -> None:
        self.sink._handle(self)

    def do_GET(self) -> None:
        self.sink._file(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the sink echoes deliveries itself."""


class ProviderSink(_HttpSink):
    """Slack, Discord, Telegram, Teams and Twilio on one loopback port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        faults: Mapping[str, str] | None = None,
        telegram_token: str = TELEGRAM_TOKEN,
        twilio_account: str = TWILIO_ACCOUNT,
        twilio_token: str = TWILIO_TOKEN,
        slow_delay: float = 3.0,
        record: str | Path | None = None,
        echo: bool | TextIO = False,
    ) -> None:
        for target, kind in (faults or {}).items():
            if kind not in FAULTS:
                raise ValueError(f"fault {kind!r} for {target!r} is not one of {', '.join(FAULTS)}")
        self.faults = dict(faults or {})
        self.telegram_token = telegram_token
        self.twilio_account = twilio_account
        self.twilio_token = twilio_token
        self.slow_delay = slow_delay
        super().__init__(host, port, _Handler, record, echo)
        self._count = 0

    def _next(self) -> int:
        with self._changed:
            self._count += 1
            return self._count

    # -- files (attachment URLs) ----------------------------------------------

    def _file(self, handler: _Handler) -> None:
        """``GET /files/<name>[?size=N]``: N bytes (default 2048) of a repeatable pattern; faults by name."""
        parts = urlsplit(handler.path)
        match = re.fullmatch(r"/files/([^/]+)", parts.path)
        fault = self.faults.get(match[1]) if match else None
        if match is None or fault == "gone":
            answer = _Answer.text(404, "no such file")
        elif fault == "busy":
            answer = _Answer.text(503, "try later")
        else:
            size = int(parse_qs(parts.query).get("size", ["2048"])[0])
            pattern = f"Tidings test file {match[1]}\n".encode()
            answer = _Answer(200, (pattern * (size // len(pattern) + 1))[:size],
                             {"Content-Type": "application/octet-stream"})
        handler.send_response(answer.status)
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        handler.wfile.write(answer.body)

    # -- one request --------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        request = _Request(parts.path, parse_qs(parts.query), {k.lower(): v for k, v in handler.headers.items()}, raw)
        kind, target, answer, seen = self._route(request)
        fault = self.faults.get(target or "")
        if fault == "slow":
            self._stopping.wait(self.slow_delay)
        record: Record = {
            "kind": kind,
            "path": request.path,
            "target": target,
            "status": None if fault == "drop" else answer.status,
            "body": seen,
            "headers": request.headers,
            "title": _title(kind, seen),
            "fault": fault,
            "delivery_id": request.headers.get("x-tidings-delivery-id"),
        }
        note = "" if 200 <= answer.status < 300 and fault not in ("drop", "garble") else f"  [{fault or answer.status}]"
        # Recorded before answering: whoever got the answer finds the record.
        self._add(record, f"{kind:8} -> {_mask_target(kind, target)}  {record['title'] or ''}{note}")
        if fault == "drop":
            handler.close_connection = True
        else:
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(answer.body)))
            handler.end_headers()
            handler.wfile.write(answer.body)

    def _route(self, request: _Request) -> tuple[str, str | None, _Answer, Any]:
        path = request.path
        if match := re.fullmatch(r"/services/[^/]+/[^/]+/([^/]+)", path):
            return "slack", match[1], *self._slack(request, match[1])
        if match := re.fullmatch(r"/api/(?:v\d+/)?webhooks/(\d+)/([^/]+)", path):
            return "discord", match[2], *self._discord(request, match[1], match[2])
        if match := re.fullmatch(r"/bot([^/]+)/sendMessage", path):
            return "telegram", *self._telegram(request, match[1])
        if match := re.fullmatch(r"/(webhookb2|workflows|powerautomate)/(?:.*/)?([^/]+)", path):
            return "teams", match[2], *self._teams(request, match[1], match[2])
        if match := re.fullmatch(r"/2010-04-01/Accounts/([^/]+)/Messages\.json", path):
            return "sms", *self._twilio(request, match[1])
        return "unknown", None, _Answer.text(404, "not found"), request.raw.decode("utf-8", "replace")

    # -- providers ----------------------------------------------------------

    def _slack(self, request: _Request, target: str) -> tuple[_Answer, Any]:
        body = request.json()
        fault = self.faults.get(target)
        if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
            return _Answer.text(400, "invalid_payload"), body
        blocks = body.get("blocks") or []
        for block in blocks:
            if block.get("type") == "header" and len(block.get("text", {}).get("text", "")) > 150:
                return _Answer.text(400, "invalid_blocks"), body
        answers = {
            "busy": _Answer.text(500, "rollup_error"),
            "ratelimit": _Answer.text(429, "rate_limited", **{"Retry-After": "1"}),
            "refuse": _Answer.text(400, "invalid_blocks"),
            "gone": _Answer.text(404, "no_service"),
            "garble": _garble(),
        }
        return answers.get(fault or "", _Answer.text(200, "ok")), body

    def _discord(self, request: _Request, webhook_id: str, token: str) -> tuple[_Answer, Any]:
        body = request.json()
        fault = self.faults.get(token)
        if not isinstance(body, dict) or not (body.get("content") or body.get("embeds")):
            return _Answer.json(400, {"code": 50006, "message": "Cannot send an empty message"}), body
        for embed in body.get("embeds") or []:
            if len(embed.get("title", "")) > 256 or len(embed.get("description", "")) > 4096:
                return _Answer.json(400, {"code": 50035, "message": "Invalid Form Body"}), body
        answers = {
            "busy": _Answer.json(502, {"message": "502: Bad Gateway", "code": 0}),
            "ratelimit": _Answer.json(
                429,
                {"message": "You are being rate limited.", "retry_after": 0.35, "global": False},
                **{"Retry-After": "1", "X-RateLimit-Scope": "shared"},
            ),
            "refuse": _Answer.json(400, {"code": 50035, "message": "Invalid Form Body", "errors": {}}),
            "gone": _Answer.json(404, {"message": "Unknown Webhook", "code": 10015}),
            "garble": _garble(),
        }
        if fault in answers:
            return answers[fault], body
        if request.query.get("wait") != ["true"]:
            return _Answer(204), body
        message_id = str(1_100_000_000_000_000_000 + self._next())
        message = {"id": message_id, "type": 0, "channel_id": "1", "webhook_id": webhook_id,
                   "content": body.get("content") or "", "embeds": body.get("embeds") or []}
        return _Answer.json(200, message, **{"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4",
                                            "X-RateLimit-Reset-After": "0.4"}), body

    def _telegram(self, request: _Request, token: str) -> tuple[str | None, _Answer, Any]:
        body = request.json()
        if token != self.telegram_token:
            return None, _Answer.json(401, {"ok": False, "error_code": 401, "description": "Unauthorized"}), body
        if not isinstance(body, dict) or "chat_id" not in body:
            error = {"ok": False, "error_code": 400, "description": "Bad Request: chat_id is empty"}
            return None, _Answer.json(400, error), body
        target = str(body["chat_id"]).lstrip("@")
        fault = self.faults.get(target)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            error = {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
            return target, _Answer.json(400, error), body
        shown = html.unescape(re.sub(r"<[^>]+>", "", text))  # Telegram counts the text after parsing markup
        if len(shown) > 4096:
            error = {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"}
            return target, _Answer.json(400, error), body
        answers = {
            "busy": _Answer.json(502, {"ok": False, "error_code": 502, "description": "Bad Gateway"}),
            "ratelimit": _Answer.json(429, {"ok": False, "error_code": 429,
                                            "description": "Too Many Requests: retry after 2",
                                            "parameters": {"retry_after": 2}}),
            "refuse": _Answer.json(400, {"ok": False, "error_code": 400,
                                         "description": "Bad Request: can't parse entities"}),
            "gone": _Answer.json(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}),
            "garble": _garble(),
        }
        if fault in answers:
            return target, answers[fault], body
        result = {"message_id": self._next(), "date": int(time.time()), "chat": {"id": body["chat_id"]},
                  "text": shown}
        return target, _Answer.json(200, {"ok": True, "result": result}), body

    def _teams(self, request: _Request, flavour: str, target: str) -> tuple[_Answer, Any]:
        body = request.json()
        fault = self.faults.get(target)
        attachments = body.get("attachments") if isinstance(body, dict) else None
        card = attachments[0].get("content") if isinstance(attachments, list) and attachments else None
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            return _Answer.text(400, "Bad payload received by generic incoming webhook."), body
        if len(request.raw) > 28 * 1024:
            return _Answer.text(413, "Payload too large"), body
        answers = {
            "busy": _Answer.text(503, "Service Unavailable"),
            "ratelimit": _Answer.text(429, "Too many requests", **{"Retry-After": "1"}),
            "refuse": _Answer.text(400, "Bad payload received by generic incoming webhook."),
            "gone": _Answer.text(404, "Not Found"),
            "garble": _garble(),
            "embedded429": _Answer.text(
                200, "Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP error 429 "
                     "with ContextId tcid=0,server=local"),
        }
        if fault in answers:
            return answers[fault], body
        return (_Answer.text(200, "1") if flavour == "webhookb2" else _Answer(202)), body

    def _twilio(self, request: _Request, account: str) -> tuple[str | None, _Answer, Any]:
        form = {key: values[-1] for key, values in parse_qs(request.raw.decode("utf-8", "replace")).items()}
        expected = "Basic " + base64.b64encode(f"{self.twilio_account}:{self.twilio_token}".encode()).decode()
        if account != self.twilio_account or request.headers.get("authorization") != expected:
            return None, _twilio_error(401, 20003, "Authenticate"), form
        to = form.get("To", "")
        fault = self.faults.get(to)
        if not _E164.match(to):
            return to, _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number."), form
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return to, _twilio_error(400, 21603, "The 'From' number is required."), form
        body = form.get("Body", "")
        if not body:
            return to, _twilio_error(400, 21602, "Message body is required."), form
        too_long = _twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        if len(body) > 1600:
            return to, too_long, form
        answers = {
            "busy": _twilio_error(503, 20503, "Service unavailable"),
            "ratelimit": _twilio_error(429, 20429, "Too Many Requests"),
            "refuse": too_long,
            "gone": _twilio_error(400, 21610, f"Attempt to send to unsubscribed recipient {to}"),
            "garble": _Answer(201, _HTML.encode(), {"Content-Type": "text/html"}),
        }
        if fault in answers:
            return to, answers[fault], form
        sid = "SM" + secrets.token_hex(16)
        message = {"sid": sid, "account_sid": account, "to": to, "from": form.get("From"),
                   "messaging_service_sid": form.get("MessagingServiceSid"), "body": body, "status": "queued",
                   "num_segments": "1", "direction": "outbound-api", "error_code": None}
        return to, _Answer.json(201, message), form


def _twilio_error(status: int, code: int, message: str) -> _Answer:
    return _Answer.json(status, {"code": code, "message": message, "status": status,
                                 "more_info": f"https://www.twilio.com/docs/errors/{code}"})


def _title(kind: str, body: Any) -> str | None:
    """The human headline of what arrived, for echo lines and the demo."""
    try:
        if kind == "slack":
            return str(body["blocks"][0]["text"]["text"])
        if kind == "discord":
            return str(body["embeds"][0]["title"])
        if kind == "telegram":
            return html.unescape(re.sub(r"<[^>]+>", "", str(body["text"]).split("\n", 1)[0]))
        if kind == "teams":
            return str(body["attachments"][0]["content"]["body"][0]["text"])
        if kind == "sms":
            return str(body["Body"]).split("\n", 1)[0]
    except (KeyError, IndexError, TypeError):
        return None
    return None


def _mask_target(kind: str, target: str | None) -> str:
    if not target:
        return "?"
    if kind == "sms":
        return f"{target[:5]}***{target[-2:]}" if len(target) > 6 else "***"
    if kind in ("slack", "discord", "teams"):
        return target[:4] + "***"
    return target


def target_of(kind: str, address: str) -> str | None:
    """The fault target a contact point becomes at this sink (see the module docstring)."""
    address = address.strip()
    if kind in ("slack", "teams"):
        return urlsplit(address).path.rstrip("/").rsplit("/", 1)[-1] or None
    if kind == "discord":
        return address.rstrip("/").rsplit("/", 1)[-1] or None
    if kind == "telegram":
        return address.lstrip("@")
    if kind == "sms":
        return re.sub(r"[\s().-]", "", address)
    return None
