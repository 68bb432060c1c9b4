"""Email over SMTP (aiosmtplib), with a small pool of reusable connections.

One :class:`EmailChannel` keeps up to ``pool_size`` SMTP sessions open and
reuses them across sends. A session found dead when the next message starts
(the server closed it while idle) is replaced by a fresh one and the message
goes out on that; nothing had been transmitted, so this cannot duplicate.
Sessions idle for longer than ``max_idle`` seconds are dropped rather than
reused, as servers and NAT boxes forget quiet connections.

Outcomes:

* the recipient address is checked before any connection is made; a malformed
  one is an :class:`~schemas.errors.InvalidAddressError`;
* a 5xx answer to RCPT is an ``InvalidAddressError``; any other 5xx answer to
  the transaction (sender or content refused) is a ``PermanentError``;
* a 4xx answer, a lost connection or a timeout is a ``TransientError``;
* failing to open a session (connection refused, TLS handshake, EHLO, AUTH),
  whatever the reply code, is a ``TransientError``: it says nothing about the
  message and everything about our relay or credentials, so the delivery waits
  in the retry tiers while someone fixes the settings.

Attachments named in ``metadata["attachments"]`` are decoded or fetched (size
limited, through the SSRF guard) before a session is taken, and attached after
the text and HTML parts: see :mod:`channels.email.attachments`. A relay that
says it is throttling us gives a :class:`~schemas.errors.RateLimitedError`.

The returned :class:`~channels.base.Sent` carries the Message-ID,
``<delivery_id@message_id_domain>``, the same on every retry of a delivery, so
receivers and relays can drop duplicates.
"""

from channels.email.address import validate_address
from channels.email.channel import EmailChannel
from channels.email.config import EmailConfig

__all__ = ["EmailChannel", "EmailConfig", "validate_address"]
