"""The email channel: composes the message's bytes and sends them over a pooled SMTP session."""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import time
from collections.abc import Sequence
from typing import ClassVar

import aiosmtplib
import httpx
from aiosmtplib.protocol import SMTPProtocol

from channels.base import Channel, ChannelConfig, Limits, Sent, mask_email
from channels.email.address import validate_address
from channels.email.attachments import Attachment, load_attachments
from channels.email.config import EmailConfig
from channels.email.mime import Composer
from channels.netguard import NetworkGuard
from schemas import Delivery
from schemas.errors import DeliveryError, InvalidAddressError, PermanentError, RateLimitedError, TransientError


class _StaleSession(Exception):
    """A reused session turned out to be closed before the transaction began."""


class EmailChannel(Channel):
    name: ClassVar[str] = "email"
    config_model: ClassVar[type[ChannelConfig]] = EmailConfig
    limits: ClassVar[Limits] = Limits(max_in_flight=4)

    def __init__(self, config: EmailConfig) -> None:
        self.config = config
        self._sender = email.utils.parseaddr(config.from_address)[1]
        self._sender_arg = f"<{self._sender}>".encode("ascii")
        self._composer = Composer(config.from_address, config.message_id_domain)
        self._slots = asyncio.Semaphore(config.pool_size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._sessions: list[SMTPProtocol] = []  # every session opened and not yet seen closed
        self._ehlo_name = config.local_hostname
        self._closed = False
        self._guard = NetworkGuard(config.attachment_allow_networks)
        self._fetcher: httpx.AsyncClient | None = None

    def max_in_flight(self) -> int:
        # One transaction per pooled connection at a time: more would only queue for a slot.
        return self.config.pool_size

    def compose(self, delivery: Delivery, recipient: str, attachments: Sequence[Attachment] = ()) -> bytes:
        """The message for one delivery, as sent: text, an HTML alternative when given, then the attachments.

        See :mod:`channels.email.mime`; raises :class:`PermanentError` for a delivery whose id or
        locale cannot go into a header."""
        return self._composer.compose(
            recipient=recipient, subject=delivery.subject, text=delivery.text, html=delivery.html,
            delivery_id=delivery.delivery_id, locale=delivery.locale, attachments=attachments,
        )

    def message_id(self, delivery: Delivery) -> str:
        return self._composer.message_id(delivery.delivery_id)

    async def send(self, delivery: Delivery) -> Sent:
        if self._closed:
            raise RuntimeError("EmailChannel.send() called after aclose()")
        recipient = validate_address(delivery.address)
        attachments = await self._attachments(delivery) if "attachments" in delivery.metadata else []
        message = self.compose(delivery, recipient, attachments)
        masked = mask_email(recipient)
        async with self._slots:
            client = self._take_idle()
            try:
                if client is not None:
                    try:
                        await self._transmit(client, recipient, message, reused=True)
                    except _StaleSession:
                        client = None
                if client is None:
                    client = await self._open(masked)
                    await self._transmit(client, recipient, message, reused=False)
            except aiosmtplib.SMTPRecipientRefused as exc:
                raise _refused(exc, masked) from exc
            except aiosmtplib.SMTPResponseException as exc:
                text = f"SMTP server refused the message to {masked}: {exc.code} {exc.message}"
                raise _by_code(exc.code, text, exc.message) from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise TransientError(f"SMTP send to {masked} failed: {_describe(exc)}") from exc
            finally:
                if client is not None:
                    self._give_back(client)
        return Sent(provider_id=self._composer.message_id(delivery.delivery_id))

    async def _attachments(self, delivery: Delivery) -> list[Attachment]:
        config = self.config
        if self._fetcher is None:
            self._fetcher = httpx.AsyncClient(follow_redirects=False, timeout=config.attachment_timeout)
        return await load_attachments(
            delivery, self._fetcher, self._guard, config.max_attachment_bytes, config.max_attachments,
            config.attachment_timeout,
        )

    async def aclose(self) -> None:
        """Say QUIT on every idle session, then wait (briefly) until every socket is closed."""
        self._closed = True
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is not None:
            await fetcher.aclose()
        idle, self._idle = self._idle, []
        for client, _ in idle:
            try:
                await client.quit(timeout=min(self.config.timeout, 2.0))
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        await self._wait_closed(timeout=2.0)

    async def _wait_closed(self, timeout: float) -> None:
        # A closed TLS session still owes its close_notify exchange; if the event loop
        # stopped first, its socket would leak. Wait for every session's connection_lost.
        deadline = time.monotonic() + timeout
        alive = [p for p in self._sessions if p.transport is not None]
        while alive and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            alive = [p for p in alive if p.transport is not None]
        for protocol in alive:
            if isinstance(protocol.transport, asyncio.WriteTransport):
                protocol.transport.abort()
        self._sessions = []
        if alive:
            await asyncio.sleep(0)  # let the aborts run

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and now - since <= self.config.max_idle:
                return client
            client.close()
        return None

    def _give_back(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected and not self._closed:
            self._idle.append((client, time.monotonic()))
        else:
            client.close()

    async def _open(self, masked: str) -> aiosmtplib.SMTP:
        config = self.config
        if self._ehlo_name is None:
            self._ehlo_name = await asyncio.to_thread(socket.getfqdn)
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=config.password.get_secret_value() if config.password is not None else None,
            local_hostname=self._ehlo_name,
            timeout=config.timeout,
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",
            validate_certs=config.validate_certs,
            cert_bundle=config.ca_file,
        )
        where = f"{config.host}:{config.port}"
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            user = config.username or ""
            raise TransientError(f"SMTP login as {user!r} at {where} refused: {exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise TransientError(
                f"SMTP session with {where} refused (sending to {masked}): {exc.code} {exc.message}"
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise TransientError(
                f"cannot open SMTP session with {where} (sending to {masked}): {_describe(exc)}"
            ) from exc
        self._sessions = [p for p in self._sessions if p.transport is not None]
        if client.protocol is not None:
            self._sessions.append(client.protocol)
        return client

    async def _transmit(self, client: aiosmtplib.SMTP, recipient: str, data: bytes, *, reused: bool) -> None:
        """One MAIL/RCPT/DATA transaction. On a refusal the session is reset and stays
        usable; on anything else (lost connection, timeout, cancellation) it is closed.
        A reused session that is already gone at MAIL raises :class:`_StaleSession`.

        The message is 7-bit ASCII (see :mod:`channels.email.mime`): no BODY=8BITMIME needed.
        The commands go out one by one rather than through ``sendmail()``, which runs the
        same three but would hide where a stale session or a refused recipient showed. MAIL
        and RCPT are written here rather than with ``mail()`` and ``rcpt()``: both addresses
        are checked already (the sender with the settings, the recipient by
        :func:`validate_address`), and aiosmtplib's own parse of them cost a tenth of the
        channel's time."""
        size = b" SIZE=%d" % len(data) if client.supports_extension("size") else b""
        try:
            try:
                reply = await client.execute_command(b"MAIL FROM:" + self._sender_arg + size)
                if reply.code != 250:
                    raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, self._sender)
            except ConnectionError as exc:  # SMTPServerDisconnected is one
                if reused:
                    raise _StaleSession from exc
                raise
            except aiosmtplib.SMTPResponseException as exc:
                if reused and exc.code == 421:  # "closing idle connection"
                    raise _StaleSession from exc
                raise
            reply = await client.execute_command(b"RCPT TO:<" + recipient.encode("ascii") + b">")
            if reply.code not in (250, 251):
                raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
            await client.data(data)
        except aiosmtplib.SMTPResponseException:
            if client.is_connected:
                try:
                    await client.rset()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()
            raise
        except BaseException:
            client.close()
            raise


def _refused(exc: aiosmtplib.SMTPRecipientRefused, masked: str) -> DeliveryError:
    text = f"recipient {masked} refused: {exc.code} {exc.message}"
    if 500 <= exc.code < 600:
        return InvalidAddressError(text)
    return _transient(exc.message, text)


def _by_code(code: int, text: str, reply: str = "") -> DeliveryError:
    if 500 <= code < 600:
        return PermanentError(text)
    return _transient(reply, text)


_THROTTLED = re.compile(r"rate.?limit|too many (messages|mails|emails|connections|recipients)|throttl", re.I)


def _transient(reply: str, text: str) -> TransientError:
    """A 4xx reply; relays that say they are throttling us give a rate-limited error (no retry-after in SMTP)."""
    if _THROTTLED.search(reply):
        return RateLimitedError(text)
    return TransientError(text)


def _describe(exc: BaseException) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
