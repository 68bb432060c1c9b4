"""SMS through Twilio's Programmable Messaging REST API.

``POST <base_url>/2010-04-01/Accounts/<AccountSid>/Messages.json`` with a
form body (``To``, ``From`` or ``MessagingServiceSid``, ``Body``), HTTP basic
auth with the Account SID (or an API key SID) and its secret.

* The recipient must be an E.164 number (``+`` then up to 15 digits, no
  leading zero): anything else is an :class:`~schemas.errors.InvalidAddressError`
  before any request. Numbers are masked in every message (``+4477***89``).
* The body is the subject and the text, cut with ``...`` to at most
  ``max_segments`` segments, counted the way carriers count them: GSM-7
  (160 / 153 per part, extension characters count twice) unless a character
  needs UCS-2 (70 / 67 per part). See :mod:`channels.sms.segments`.

Twilio answers JSON; failures carry ``code``, ``message`` and ``more_info``:

===========================================  ======================================
``201`` with a ``sid``                        :class:`~channels.base.Sent` (the message SID)
``429`` / code 20429                          :class:`RateLimitedError` (``Retry-After``
                                              if given)
``400`` codes 21211, 21214, 21217, 21401,     :class:`InvalidAddressError`: the number is
21407, 21408, 21610, 21612, 21614             invalid, unreachable, or opted out (STOP)
``401`` (code 20003)                          :class:`TransientError`: the credentials
                                              are refused, a configuration problem
other ``4xx``                                 :class:`PermanentError`
``5xx``, timeout, connection error            :class:`TransientError`
``2xx`` without a message SID                 :class:`TransientError`
===========================================  ======================================

Limits: Twilio queues what a sender cannot send at once; a US long code sends
about one segment a second. The default bucket is one message a second per
sender (bursts of 10), raised with ``per_second`` for short codes, toll-free
numbers and messaging services.
"""

from channels.sms.channel import SmsChannel, SmsConfig, e164, mask_phone
from channels.sms.segments import Length, fit, measure

__all__ = ["Length", "SmsChannel", "SmsConfig", "e164", "fit", "mask_phone", "measure"]
