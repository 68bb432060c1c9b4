"""Webhooks: one signed JSON POST per delivery (Standard Webhooks headers).

Request: ``POST <delivery.address>`` with the body ``delivery.payload`` sent
byte for byte (the router renders it as JSON). Without a payload the body is
this default document::

    {"id": "<delivery id>", "type": "<event type>", "source": "<event source>",
     "subject": "<metadata['subject'] or null>", "time": "<event time, ISO 8601>",
     "recipient": "<recipient id>", "title": "<delivery subject>", "text": "<delivery text>"}

Headers: ``content-type: application/json``, ``user-agent``, ``webhook-id``
(the delivery id, stable across retries: receivers drop duplicates by it),
``webhook-timestamp`` (Unix seconds), with a ``signing_secret``
``webhook-signature`` (see :mod:`channels.signing`), and the receiver's
credential when configuration has one for its URL: a bearer token, HTTP basic
auth or an API key header (:mod:`channels.webhook.auth`).

Before every request the URL's host is resolved and checked by the SSRF
guard (:mod:`channels.netguard`): private, loopback, link-local, shared and
metadata addresses are refused unless their network is allow-listed
(``allow_networks``), and the request goes to the address that was checked.

Outcomes, by answer:

==========================  ==============================================
2xx                          :class:`Sent`, ``provider_id`` = the JSON ``id`` if any
307, 308                     followed (up to ``max_redirects``, default 0), each hop
                             checked by the guard; the credential is dropped when
                             the redirect leaves the origin
other 3xx, or past the limit ``PermanentError``: not followed (update the URL)
408, 425, 5xx                ``TransientError``
429                          ``RateLimitedError`` with ``retry_after`` from Retry-After
404, 410                     ``InvalidAddressError``: nobody receives at this URL
other 4xx                    ``PermanentError`` with the status and a body excerpt
timeout, connection error,   ``TransientError``
not an HTTP answer
not an http(s) URL, or a     ``InvalidAddressError``, before any request
refused address
==========================  ==============================================

Rate: a receiver (scheme, host, port) that answers 429 is paused for its
``Retry-After`` (one second without one): later sends to it wait, or fail at
once as rate-limited when the pause is longer than ``max_queue_wait``. With
``per_second`` set, a token bucket per receiver also spaces the requests.

``timeout`` bounds one whole attempt (connect, send, answer, redirects); only
the first 64 KiB of an answer are read.
"""

from channels.http import parse_retry_after
from channels.webhook.auth import WebhookAuth
from channels.webhook.channel import WebhookChannel, WebhookConfig, default_body

__all__ = ["WebhookAuth", "WebhookChannel", "WebhookConfig", "default_body", "parse_retry_after"]
