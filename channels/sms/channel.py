"""The SMS channel: compose, check the number, call Twilio, classify the answer."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, model_validator

from channels.base import ChannelConfig, Limits, Sent
from channels.http import HttpChannel, ProviderConfig, excerpt, parse_retry_after, status_error
from channels.ratelimit import Rate
from channels.sms.segments import fit
from schemas import Delivery
from schemas.errors import InvalidAddressError, PermanentError, TransientError

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_SEPARATORS = re.compile(r"[\s().-]")
_NUMBER = re.compile(r"\+?\d[\d ]{6,18}\d")
_SID = re.compile(r"^(AC|SK)[0-9a-fA-F]{32}$")
ADDRESS_CODES = frozenset({21211, 21214, 21217, 21401, 21407, 21408, 21610, 21612, 21614})


class SmsConfig(ProviderConfig):
    base_url: str = "https://api.twilio.com"
    account_sid: str
    """``AC…``: the account the messages are sent from (part of the API path)."""
    auth_token: SecretStr
    """The account's auth token, or the secret of ``api_key_sid``."""
    api_key_sid: str | None = None
    """``SK…``: authenticate with this API key instead of the account SID."""
    from_number: str | None = None
    """Sender: an E.164 number or alphanumeric sender id. This or ``messaging_service_sid``."""
    messaging_service_sid: str | None = None
    max_segments: int = Field(default=4, ge=1, le=10)
    status_callback: str | None = None
    """URL Twilio calls with delivery reports, if any."""

    @model_validator(mode="after")
    def _sender(self) -> SmsConfig:
        if not _SID.match(self.account_sid) or not self.account_sid.startswith("AC"):
            raise ValueError("account_sid must be 'AC' followed by 32 hex digits")
        if self.api_key_sid is not None and not (_SID.match(self.api_key_sid) and self.api_key_sid.startswith("SK")):
            raise ValueError("api_key_sid must be 'SK' followed by 32 hex digits")
        if not self.from_number and not self.messaging_service_sid:
            raise ValueError("set from_number or messaging_service_sid")
        return self


def mask_phone(number: str) -> str:
    """``+447700900123`` -> ``+4477***23``: the country and area, the last two digits."""
    digits = number.strip()
    if len(digits) <= 6:
        return "***"
    return f"{digits[:5]}***{digits[-2:]}"


def redact_numbers(text: str) -> str:
    """Twilio's messages quote the number they refused: mask every phone-number-like run."""
    return _NUMBER.sub(lambda m: mask_phone(m.group(0)), text)


def e164(address: str) -> str:
    """The E.164 form of ``address`` (spaces, dots, dashes and brackets dropped), or an error."""
    number = _SEPARATORS.sub("", address.strip())
    if number.startswith("00"):
        number = "+" + number[2:]
    if not _E164.match(number):
        raise InvalidAddressError(
            f"phone number {mask_phone(address)!r} is not in E.164 form (+ and country code, up to 15 digits)"
        )
    return number


def sms_text(delivery: Delivery, max_segments: int) -> str:
    subject = " ".join(delivery.subject.split())
    text = delivery.text.strip()
    if subject and text and not text.startswith(subject):
        return fit(f"{subject}\n{text}", max_segments)
    return fit(text or subject, max_segments)


class SmsChannel(HttpChannel):
    name: ClassVar[str] = "sms"
    config_model: ClassVar[type[ChannelConfig]] = SmsConfig
    limits: ClassVar[Limits] = Limits(max_in_flight=16, per_second=1.0)
    default_rate: ClassVar[Rate] = Rate(per_second=1.0, burst=10.0)
    config: SmsConfig

    def __init__(self, config: SmsConfig) -> None:
        super().__init__(config)
        self._url = f"{self.base_url}/2010-04-01/Accounts/{config.account_sid}/Messages.json"
        self._auth = httpx.BasicAuth(config.api_key_sid or config.account_sid, config.auth_token.get_secret_value())
        self._sender_key = f"sms:{config.messaging_service_sid or config.from_number}"

    def form(self, delivery: Delivery, to: str) -> dict[str, str]:
        config = self.config
        form = {"To": to, "Body": sms_text(delivery, config.max_segments)}
        if config.messaging_service_sid:
            form["MessagingServiceSid"] = config.messaging_service_sid
        else:
            assert config.from_number is not None
            form["From"] = config.from_number
        if config.status_callback:
            form["StatusCallback"] = config.status_callback
        return form

    async def send(self, delivery: Delivery) -> Sent:
        to = e164(delivery.address)
        where = f"twilio message to {mask_phone(to)}"
        answer = await self.post(
            self._url,
            where,
            {self._sender_key: self.rate},
            delivery_id=delivery.delivery_id,
            data=self.form(delivery, to),
            auth=self._auth,
        )
        document = answer.json()
        info: dict[str, Any] = document if isinstance(document, dict) else {}
        if answer.ok:
            sid = info.get("sid")
            if isinstance(sid, str) and sid:
                status = info.get("status")
                return Sent(provider_id=sid, detail=status if isinstance(status, str) else None)
            raise TransientError(f"{where} answered {answer.status} without a message sid: {excerpt(answer.body)!r}")
        code = info.get("code")
        message = info.get("message")
        detail = redact_numbers(f"{message} (code {code})" if isinstance(message, str) else excerpt(answer.body))
        if answer.status == 429 or code == 20429:
            raise status_error(429, where, detail, parse_retry_after(answer.headers.get("retry-after")))
        if answer.status == 401:
            raise TransientError(f"{where}: credentials refused ({detail}); check TIDINGS_SMS_ACCOUNT_SID and token")
        if code in ADDRESS_CODES:
            raise InvalidAddressError(f"{where} refused: {detail}")
        if 400 <= answer.status < 500:
            raise PermanentError(f"{where} answered {answer.status}: {detail}")
        raise status_error(answer.status, where, detail)
