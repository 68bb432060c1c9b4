"""Telegram: the Bot API's ``sendMessage`` to a chat id or a public ``@channel``.

Address: a numeric chat id (``123456789``, ``-1001234567890`` for groups and
channels) or a channel username (``@tidings_news``). The bot token comes from
configuration (``TIDINGS_TELEGRAM_BOT_TOKEN``); it is part of the request path
(``<base_url>/bot<token>/sendMessage``), so it never appears in an error, and
httpx's request log lines are masked (:mod:`channels.http`).

Body: ``chat_id``, ``text`` (the subject in bold, then the text, as HTML with
everything escaped; cut to Telegram's 4096 characters), ``parse_mode: HTML``,
link previews off, and an inline button when ``metadata["action_url"]`` is set.

Telegram always answers JSON, ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error_code": N, "description": "...", "parameters": {...}}``:

==========================================  ======================================
``ok: true``                                :class:`~channels.base.Sent` (``message_id``)
``429`` (``parameters.retry_after``)        :class:`RateLimitedError`; the chat is
                                            paused for that long
``400 chat not found``, ``403`` (bot        :class:`InvalidAddressError`
blocked, kicked, user deactivated), a
group migrated to a supergroup
``401`` (the bot token is refused)          :class:`TransientError`: a configuration
                                            problem, not the message's; it waits in
                                            the retries while someone fixes the token
other ``4xx``                               :class:`PermanentError`
``5xx``, timeout, connection error          :class:`TransientError`
``2xx`` that is not ``{"ok": true}``        :class:`TransientError`
==========================================  ======================================

Limits (Telegram's FAQ for bots): about 30 messages a second per bot, no
more than about one a second in a single chat, and no more than 20 a minute
to one group. Negative chat ids (groups, supergroups, channels) and
``@names`` (public channels and supergroups) get that third bucket, one
message every three seconds without bursts, so a minute never holds more
than 20; a private chat (a positive id) only the first two.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from channels.base import ChannelConfig, Limits, Sent, mask_secret
from channels.http import HttpChannel, ProviderConfig, action, excerpt, seconds, status_error, truncate
from channels.ratelimit import Rate
from schemas import Delivery
from schemas.errors import InvalidAddressError, PermanentError, TransientError

__all__ = ["TelegramChannel", "TelegramConfig", "chat_id", "is_group", "telegram_body"]

_CHAT_ID = re.compile(r"^-?\d{1,20}$")
_USERNAME = re.compile(r"^@[A-Za-z][A-Za-z0-9_]{3,31}$")
_TOKEN = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{20,100}$")
TEXT_LIMIT = 4096
_GONE = ("chat not found", "bot was blocked", "bot was kicked", "user is deactivated", "bot is not a member",
         "have no rights to send", "not enough rights")


class TelegramConfig(ProviderConfig):
    base_url: str = "https://api.telegram.org"
    bot_token: SecretStr
    """``<bot id>:<secret>`` from @BotFather."""
    chat_per_second: float = 1.0
    """Messages a second to one chat (bursts of one)."""
    group_per_minute: float = Field(default=20.0, gt=0)
    """Messages a minute to one group, supergroup or channel (bursts of one)."""

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        if not _TOKEN.match(value.get_secret_value()):
            raise ValueError("bot_token is not of the form '<bot id>:<secret>' that @BotFather hands out")
        return value


def chat_id(address: str) -> int | str:
    """The ``chat_id`` for an address: an int for numeric ids, the ``@username`` as is."""
    address = address.strip()
    if _CHAT_ID.match(address):
        return int(address)
    if _USERNAME.match(address):
        return address
    raise InvalidAddressError(
        f"telegram address {mask_secret(address, keep=2)!r} is neither a numeric chat id nor an @channel name"
    )


def _chat_key(chat: int | str) -> str:
    return f"telegram:chat:{chat}"


def is_group(chat: int | str) -> bool:
    """Groups, supergroups and channels have negative ids; ``@names`` are public channels or
    supergroups. Private chats with users have positive ids."""
    return isinstance(chat, str) or chat < 0


def telegram_body(delivery: Delivery, chat: int | str) -> dict[str, Any]:
    subject = " ".join(delivery.subject.split())
    # Telegram counts the text after parsing the markup, so the limit applies to the unescaped text.
    room = TEXT_LIMIT - len(subject) - 1
    text = truncate(delivery.text.strip(), max(room, 0)) if room > 0 else ""
    parts = [f"<b>{html.escape(truncate(subject, TEXT_LIMIT), quote=False)}</b>"] if subject else []
    if text:
        parts.append(html.escape(text, quote=False))
    body: dict[str, Any] = {
        "chat_id": chat,
        "text": "\n".join(parts) or html.escape(delivery.event_type),
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": True},
    }
    link = action(delivery)
    if link is not None:
        body["reply_markup"] = {"inline_keyboard": [[{"text": truncate(link[0], 64), "url": link[1]}]]}
    return body


def _masked(chat: int | str) -> str:
    """``@channel`` names are public; numeric ids show their last four digits."""
    return chat if isinstance(chat, str) else "***" + str(chat)[-4:]


class TelegramChannel(HttpChannel):
    name: ClassVar[str] = "telegram"
    config_model: ClassVar[type[ChannelConfig]] = TelegramConfig
    limits: ClassVar[Limits] = Limits(max_in_flight=32, per_second=30.0)
    default_rate: ClassVar[Rate] = Rate(per_second=30.0, burst=30.0)
    config: TelegramConfig

    def __init__(self, config: TelegramConfig) -> None:
        super().__init__(config)
        self._url = f"{self.base_url}/bot{config.bot_token.get_secret_value()}/sendMessage"
        self._chat_rate = Rate(config.chat_per_second, 1.0)
        self._group_rate = Rate(config.group_per_minute / 60.0, 1.0)

    def buckets(self, chat: int | str) -> dict[str, Rate]:
        """The token buckets one send to ``chat`` takes from: the bot's, the chat's and, for a
        group or channel, the group's."""
        limits = {"telegram:bot": self.rate, _chat_key(chat): self._chat_rate}
        if is_group(chat):
            limits[f"telegram:group:{chat}"] = self._group_rate
        return limits

    async def send(self, delivery: Delivery) -> Sent:
        chat = chat_id(delivery.address)
        where = f"telegram sendMessage to chat {_masked(chat)}"
        answer = await self.post(
            self._url,
            where,
            self.buckets(chat),
            content=json.dumps(telegram_body(delivery, chat), ensure_ascii=False).encode(),
            headers={"content-type": "application/json"},
            delivery_id=delivery.delivery_id,
        )
        document = answer.json()
        info: dict[str, Any] = document if isinstance(document, dict) else {}
        if answer.ok:
            result = info.get("result")
            if info.get("ok") is True and isinstance(result, dict):
                message_id = result.get("message_id")
                return Sent(provider_id=str(message_id) if message_id is not None else None)
            raise TransientError(f"{where} answered {answer.status} without ok: {excerpt(answer.body)!r}")
        description = info.get("description")
        detail = description if isinstance(description, str) else excerpt(answer.body)
        parameters = info.get("parameters") if isinstance(info.get("parameters"), dict) else {}
        assert isinstance(parameters, dict)
        if answer.status == 429:
            retry_after = seconds(parameters.get("retry_after"))
            self.limiter.block(_chat_key(chat), retry_after or 1.0)
            raise status_error(429, where, detail, retry_after)
        if answer.status == 401:
            raise TransientError(f"{where}: the bot token was refused (401 {detail}); check TIDINGS_TELEGRAM_BOT_TOKEN")
        if "migrate_to_chat_id" in parameters:
            raise InvalidAddressError(
                f"{where}: the group became a supergroup with chat id {parameters['migrate_to_chat_id']}; "
                "update the contact point"
            )
        lowered = detail.lower()
        if answer.status == 403 or (answer.status == 400 and any(text in lowered for text in _GONE)):
            raise InvalidAddressError(f"{where} answered {answer.status}: {detail}")
        if 400 <= answer.status < 500:
            raise PermanentError(f"{where} answered {answer.status}: {detail}")
        raise status_error(answer.status, where, detail)
