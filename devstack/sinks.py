"""Local stand-ins for the mail relay and for webhook receivers.

:class:`SmtpSink` is a real SMTP server (aiosmtpd) and :class:`WebhookSink` a
real HTTP server (``http.server``), both on loopback, both recording what
lands. ``make run`` and ``make demo`` point the channels at them; the tests
use them as the far end of a real conversation.

Each record is a plain dict with the wall-clock time it arrived
(``received_at``, Unix seconds), kept in memory (``received()``, ``wait_for()``),
optionally appended as one JSON line to a file, and optionally echoed as one
line to stdout::

    email   -> a***@example.com  Your report is ready
    webhook -> /hooks/acme  Your report is ready

Command line (runs until SIGINT or SIGTERM)::

    python -m devstack.sinks --smtp-port 2525 --http-port 8025 \\
        --secret whsec_... --record .local/sinks.jsonl \\
        --refuse bounce@example.com --status /gone=410 --status '/slow-down=429,Retry-After:2'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import json
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Self, TextIO

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from channels.base import mask_email
from channels.signing import verify

__all__ = ["Reply", "SmtpSink", "WebhookSink", "main"]

Record = dict[str, Any]
_FILE_LOCK = threading.Lock()  # both sinks may append to one file
Predicate = Callable[[list[Record]], bool]


class _Recorder:
    """Thread-safe list of records, with an optional JSON-lines file and echo."""

    def __init__(self, record: str | Path | None, echo: bool | TextIO) -> None:
        self._records: list[Record] = []
        self._changed = threading.Condition()
        self._record_path = Path(record) if record is not None else None
        self._echo: TextIO | None = sys.stdout if echo is True else (echo or None)

    def _add(self, record: Record, line: str) -> None:
        record.setdefault("received_at", time.time())
        with self._changed:
            self._records.append(record)
            if self._record_path is not None:
                with _FILE_LOCK, self._record_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            if self._echo is not None:
                print(line, file=self._echo, flush=True)
            self._changed.notify_all()

    def received(self) -> list[Record]:
        """A copy of every record so far, oldest first."""
        with self._changed:
            return list(self._records)

    def wait_for(self, condition: int | Predicate = 1, timeout: float = 5.0) -> list[Record]:
        """Block until ``condition`` holds (a record count, or a predicate on the list).

        Returns the records; raises :class:`TimeoutError` listing what did arrive.
        """
        if isinstance(condition, int):
            count = condition

            def at_least(records: list[Record]) -> bool:
                return len(records) >= count

            check: Predicate = at_least
        else:
            check = condition
        with self._changed:
            if self._changed.wait_for(lambda: check(self._records), timeout):
                return list(self._records)
            got = [_summary(record) for record in self._records]
        raise TimeoutError(f"{type(self).__name__}: condition not met within {timeout:g} s; received {got}")


def _summary(record: Record) -> str:
    if record.get("kind") == "email":
        return f"email to {record.get('to')}"
    return f"webhook {record.get('path')} -> {record.get('status')}"


# --------------------------------------------------------------------- SMTP


class _SmtpHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self.sink.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        self.sink._note_session(server, session.peer)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.sink.refuse:
            return "550 5.1.1 mailbox unavailable"
        if address.lower() in self.sink.defer:
            return "451 4.3.0 mailbox temporarily unavailable, try again later"
        if address.lower() in self.sink.throttle:
            return "450 4.7.1 too many messages, rate limited: slow down and try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if any(rcpt.lower() in self.sink.reject for rcpt in envelope.rcpt_tos):
            return "554 5.6.0 message content refused"
        queued = self.sink._deliver(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        return f"250 2.0.0 OK: queued as {queued}"

    async def handle_QUIT(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.sink._note_quit()
        return "221 Bye"


class _Controller(Controller):
    """aiosmtpd's threaded controller, able to listen on port 0 (any free port)."""

    def _trigger_server(self) -> None:
        # Called once the listener is bound, before the first probe connection.
        if self.port == 0 and isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SmtpSink(_Recorder):
    """A real SMTP server on loopback that records every message it accepts.

    Records: ``{"kind": "email", "to": [...], "from": ..., "subject": ...,
    "message_id": ..., "delivery_id": ..., "text": ..., "html": ...,
    "content_type": ..., "attachments": [{"filename", "content_type", "size"}],
    "headers": {...}}``.

    ``refuse`` addresses get ``550 5.1.1`` at RCPT, ``defer`` addresses ``451``,
    ``throttle`` addresses ``450 4.7.1 … rate limited``; a message to a ``reject``
    address is refused after DATA with ``554 5.6.0``.
    With ``credentials`` (user, password) the server offers AUTH and refuses MAIL
    without it. ``starttls_context`` offers STARTTLS; ``tls_context`` makes the
    listener implicit TLS.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        refuse: Iterable[str] = (),
        defer: Iterable[str] = (),
        throttle: Iterable[str] = (),
        reject: Iterable[str] = (),
        credentials: tuple[str, str] | None = None,
        starttls_context: ssl.SSLContext | None = None,
        tls_context: ssl.SSLContext | None = None,
        record: str | Path | None = None,
        echo: bool | TextIO = False,
    ) -> None:
        super().__init__(record, echo)
        self.host = host
        self.refuse = {address.lower() for address in refuse}
        self.defer = {address.lower() for address in defer}
        self.throttle = {address.lower() for address in throttle}
        self.reject = {address.lower() for address in reject}
        self.credentials = credentials
        self._peers: set[str] = set()
        self._servers: set[SMTP] = set()
        self._quits = 0
        self._queued = 0
        smtp_options: dict[str, Any] = {"server_hostname": "tidings-sink"}
        if credentials is not None:
            smtp_options.update(authenticator=self._authenticate, auth_require_tls=False)
        if starttls_context is not None:
            smtp_options.update(tls_context=starttls_context, require_starttls=False)
        self._controller = _Controller(
            _SmtpHandler(self), hostname=host, port=port, ssl_context=tls_context, **smtp_options
        )
        self._running = False

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def start(self) -> Self:
        self._controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sessions(self) -> int:
        """How many distinct SMTP connections have started a mail transaction."""
        with self._changed:
            return len(self._peers)

    def quits(self) -> int:
        """How many clients said QUIT."""
        with self._changed:
            return self._quits

    def _authenticate(self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert self.credentials is not None
        user, password = self.credentials
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    def drop_connections(self, timeout: float = 5.0) -> None:
        """Close every open client connection from the server side, as an idle timeout would."""
        done = threading.Event()

        def close_all() -> None:
            with self._changed:
                servers, self._servers = self._servers, set()
            for server in servers:
                if server.transport is not None:
                    server.transport.close()
            done.set()

        self._controller.loop.call_soon_threadsafe(close_all)
        if not done.wait(timeout):
            raise TimeoutError("SMTP sink did not close its connections")

    def _note_session(self, server: SMTP, peer: Any) -> None:
        with self._changed:
            self._peers.add(str(peer))
            self._servers.add(server)

    def _note_quit(self) -> None:
        with self._changed:
            self._quits += 1

    def _deliver(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> int:
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        text_part = message.get_body(("plain",))
        html_part = message.get_body(("html",))
        record: Record = {
            "kind": "email",
            "to": rcpt_tos,
            "from": mail_from,
            "subject": message.get("Subject"),
            "message_id": message.get("Message-ID"),
            "delivery_id": message.get("X-Tidings-Delivery-Id"),
            "text": text_part.get_content() if isinstance(text_part, EmailMessage) else None,
            "html": html_part.get_content() if isinstance(html_part, EmailMessage) else None,
            "content_type": message.get_content_type(),
            "attachments": [
                {
                    "filename": part.get_filename(),
                    "content_type": part.get_content_type(),
                    "size": len(part.get_payload(decode=True) or b""),
                }
                for part in message.iter_attachments()
            ],
            "headers": {name.lower(): str(value) for name, value in message.items()},
        }
        with self._changed:
            self._queued += 1
            queued = self._queued
        line = f"email   -> {', '.join(mask_email(to) for to in rcpt_tos)}  {record['subject']}"
        self._add(record, line)
        return queued


# --------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Reply:
    """A fixed answer for one path of the webhook sink."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str | None = None
    """Answer body; default: ``{"id": "wh_<n>"}`` for 2xx, empty otherwise."""
    delay: float = 0.0
    """Seconds to wait before answering (cut short when the sink stops)."""
    drop: bool = False
    """Close the connection without any answer."""


ReplySpec = Reply | int | tuple[int, Mapping[str, str]]


def _as_reply(spec: ReplySpec) -> Reply:
    if isinstance(spec, Reply):
        return spec
    if isinstance(spec, int):
        return Reply(spec)
    status, headers = spec
    return Reply(status, dict(headers))


class _WebhookHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    server_version = "TidingsSink/0.1"
    sink: ClassVar[WebhookSink]

    def do_POST(self) -> None:
        self.sink._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the sink echoes deliveries itself."""

    def answer(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5. A webhook consumer opening its connections
    # at once (after an idle spell, all pooled ones expired) overflowed it (TcpExtListenOverflows
    # rose by about 145 in one broker-restart test), and in that test deliveries timed out at
    # the channel's 10 s deadline yet reached this sink, which recorded them twice once
    # retried. Real receivers listen with hundreds.
    request_queue_size = 512

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up early is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _HttpSink(_Recorder):
    """A recording HTTP server on its own thread: the life cycle both HTTP stand-ins share."""

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler],
                 record: str | Path | None, echo: bool | TextIO) -> None:
        super().__init__(record, echo)
        self.host = host
        bound = type(f"_Bound{handler.__name__}", (handler,), {"sink": self})
        self._server = _HttpServer((host, port), bound)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class WebhookSink(_HttpSink):
    """A real HTTP server on loopback that records every POST it gets.

    Records: ``{"kind": "webhook", "path": ..., "status": <our answer>,
    "delivery_id": <webhook-id>, "body": <parsed JSON or text>, "raw": <body text>,
    "headers": {...}, "peer": "host:port", "answer": <our answer body>}``.

    With ``secret``, a request whose Standard Webhooks signature does not verify
    is answered 401 (and recorded with ``"error"``). ``statuses`` maps paths to
    fixed answers: a status, ``(status, headers)`` or a :class:`Reply`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret: str | None = None,
        statuses: Mapping[str, ReplySpec] | None = None,
        record: str | Path | None = None,
        echo: bool | TextIO = False,
    ) -> None:
        self.secret = secret
        self.replies = {path: _as_reply(spec) for path, spec in (statuses or {}).items()}
        super().__init__(host, port, _WebhookHandler, record, echo)
        self._answered = 0

    def url(self, path: str = "/") -> str:
        return super().url(path)

    def _handle(self, request: _WebhookHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in request.headers.items()}
        path = request.path.split("?", 1)[0]
        reply = self.replies.get(path, Reply())
        error: str | None = None
        if self.secret is not None:
            try:
                verify(self.secret, headers, raw)
            except ValueError as exc:
                error = str(exc)
                reply = Reply(401, {"Content-Type": "application/json"}, json.dumps({"error": error}))
        if reply.delay:
            self._stopping.wait(reply.delay)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record: Record = {
            "kind": "webhook",
            "path": path,
            "status": None if reply.drop else reply.status,
            "delivery_id": headers.get("webhook-id"),
            "body": body,
            "raw": raw.decode("utf-8", "replace"),
            "headers": headers,
            "peer": f"{request.client_address[0]}:{request.client_address[1]}",
        }
        if error is not None:
            record["error"] = error
        answer = b""
        answer_headers: dict[str, str] = {}
        if not reply.drop:
            answer = self._answer_body(reply)
            record["answer"] = answer.decode("utf-8", "replace")
            answer_headers = dict(reply.headers)
            if reply.body is None and 200 <= reply.status < 300:
                answer_headers.setdefault("Content-Type", "application/json")
        title = body.get("title") if isinstance(body, dict) else None
        line = f"webhook -> {path}  {title or headers.get('webhook-id', '')}"
        if reply.drop:
            line += "  [dropped]"
        elif error is not None:
            line += f"  [{reply.status}: {error}]"
        elif not 200 <= reply.status < 300:
            line += f"  [{reply.status}]"
        self._add(record, line)  # before answering: whoever got the answer finds the record
        if reply.drop:
            request.close_connection = True
        else:
            request.answer(reply.status, answer_headers, answer)

    def _answer_body(self, reply: Reply) -> bytes:
        if reply.body is not None:
            return reply.body.encode() if isinstance(reply.body, str) else reply.body
        if 200 <= reply.status < 300:
            with self._changed:
                self._answered += 1
                number = self._answered
            return json.dumps({"id": f"wh_{number}"}).encode()
        return b""


# --------------------------------------------------------------------- CLI


async def read_http_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 request from an asyncio stream, as ``(head, body)``; None when the client
    went away. For small loopback servers that answer by hand (tests, the bench): a
    Content-Length body only, no chunked requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head, body


def _parse_status(text: str) -> tuple[str, Reply]:
    """``/path=STATUS[,Header:Value...]``, e.g. ``/slow-down=429,Retry-After:2``."""
    path, sep, spec = text.partition("=")
    if not sep or not path.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected /path=STATUS[,Header:Value], got {text!r}")
    status_text, *header_specs = spec.split(",")
    try:
        status = int(status_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"status in {text!r} is not a number") from None
    headers: dict[str, str] = {}
    for header in header_specs:
        name, colon, value = header.partition(":")
        if not colon:
            raise argparse.ArgumentTypeError(f"header {header!r} in {text!r} is not Name:Value")
        headers[name.strip()] = value.strip()
    return path, Reply(status, headers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.sinks", description="Run the local SMTP and webhook sinks."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=2525, help="0 picks a free port")
    parser.add_argument("--http-port", type=int, default=8025, help="0 picks a free port")
    parser.add_argument(
        "--providers-port", type=int, default=None,
        help="also run the Slack/Discord/Telegram/Teams/Twilio stand-in on this port (0 picks a free one)",
    )
    parser.add_argument(
        "--fault", action="append", default=[], metavar="TARGET=KIND",
        help="scripted provider failure, e.g. +31612345678=gone (repeatable; see devstack.providers)",
    )
    parser.add_argument("--secret", help="verify webhook signatures with this secret (whsec_...)")
    parser.add_argument("--record", help="append every delivery as one JSON line to this file")
    parser.add_argument(
        "--refuse",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="answer 550 to this recipient (repeatable)",
    )
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        type=_parse_status,
        metavar="PATH=STATUS",
        help="fixed answer for a webhook path, e.g. /gone=410 (repeatable)",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        smtp = SmtpSink(args.host, args.smtp_port, refuse=args.refuse, record=args.record, echo=True)
        webhooks = WebhookSink(
            args.host,
            args.http_port,
            secret=args.secret,
            statuses=dict(args.status),
            record=args.record,
            echo=True,
        )
    except OSError as exc:
        print(f"sinks: cannot listen on {args.host} ports {args.smtp_port}/{args.http_port}: {exc.strerror}; "
              "free them or set TIDINGS_DEMO_SMTP_PORT / TIDINGS_DEMO_HTTP_PORT", file=sys.stderr)
        return 2
    providers = None
    if args.providers_port is not None:
        from devstack.providers import ProviderSink

        faults = dict(item.split("=", 1) for item in args.fault if "=" in item)
        try:
            providers = ProviderSink(args.host, args.providers_port, faults=faults, record=args.record, echo=True)
        except (OSError, ValueError) as exc:
            print(f"sinks: cannot start the provider stand-in: {exc}", file=sys.stderr)
            return 2
    with smtp, webhooks, providers if providers is not None else contextlib.nullcontext():
        print(
            f"sinks: smtp on {args.host}:{smtp.port}, webhooks on {webhooks.url()}"
            f"{' (signatures checked)' if args.secret else ''}"
            f"{f', providers on {providers.url()}' if providers is not None else ''}; Ctrl-C to stop",
            flush=True,
        )
        stop.wait()
    print("sinks: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def redis_handshake_answer(data: bytes) -> bytes:
    """What a stand-in Redis answers redis-py's connection handshake (``HELLO 3``, ``CLIENT SETINFO``...):
    RESP3's map to ``HELLO`` and ``+OK`` to every other command in ``data``."""
    hello = b"%1\r\n$5\r\nproto\r\n:3\r\n" if b"HELLO" in data else b""
    return hello + b"+OK\r\n" * (data.count(b"\r\n*") + 1 - (1 if hello else 0))
