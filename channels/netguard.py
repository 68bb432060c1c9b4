"""A guard against server-side request forgery for URLs that come from data.

A webhook URL is a contact point: whoever can edit a recipient can aim
Tidings at any address, including the ones only Tidings can reach (the cloud
metadata service, an admin port on loopback, the office network). Before each
request, and again for every redirect it follows, the webhook channel asks
:meth:`NetworkGuard.resolve` for the addresses to connect to:

* the host is resolved (an IP literal as is), and *every* address it resolves
  to must be public: not private (RFC 1918, unique-local ``fc00::/7``),
  loopback, link-local (``169.254.0.0/16``, ``fe80::/10``: the metadata
  service on most clouds), shared (``100.64.0.0/10``: Alibaba's metadata),
  multicast, reserved, unspecified or documentation; IPv4-mapped IPv6
  addresses are judged by their IPv4 address;
* networks listed in ``allow`` (CIDR, from configuration) are accepted even
  if not public, for receivers on an internal network, or loopback in tests.

The channel then connects to the address that was checked (the URL's host is
replaced by it, ``Host`` and TLS SNI keep the name), so a DNS answer that
changes between the check and the connection (DNS rebinding) changes nothing.

A refused URL is an :class:`~schemas.errors.InvalidAddressError`; a name that
does not resolve is a :class:`~schemas.errors.TransientError` (DNS fails
transiently more often than names disappear).

Accepted targets are remembered per URL: an IP literal for good, a host name
for ``dns_ttl`` seconds (30 by default), after which it is resolved and checked
again. A remembered target is still the checked address, so the cache gives
a rebinding attacker nothing; it saves a resolver call (a thread hop) and the
checks on every request to the same receiver. Refusals are not remembered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from channels.transport import Destination, destination
from schemas.errors import InvalidAddressError, TransientError

__all__ = ["METADATA_ADDRESSES", "NetworkGuard", "Target", "parse_networks"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
"""Cloud instance metadata services (AWS, ECS, GCP and Azure share the first; Alibaba; AWS over IPv6)."""


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (``10.0.0.0/8``, ``127.0.0.1``) as networks; a bad one is a ValueError naming it."""
    networks: list[IPNetwork] = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (expected CIDR such as 10.0.0.0/8)") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect for one URL: the checked address, and the URL rewritten to it."""

    url: httpx.URL
    """The URL with its host replaced by the checked address."""
    host: str
    """The original host name (for ``Host`` and TLS SNI)."""
    address: IPAddress
    destination: Destination
    """``url`` parsed for the transport, once per accepted target."""

    def __repr__(self) -> str:  # the URL's path and query can hold a token: show the masked origin only
        return f"Target({self.destination.masked()!r}, host={self.host!r}, address={str(self.address)!r})"


class NetworkGuard:
    """Resolves a URL's host and refuses non-public addresses outside the allow-list."""

    CACHE_MAX = 10_000

    def __init__(self, allow: Iterable[str] = (), dns_ttl: float = 30.0) -> None:
        self.allow = parse_networks(allow)
        self.dns_ttl = dns_ttl
        self._accepted: dict[str, tuple[float, Target]] = {}

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be contacted, or None if it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allow):
            return None
        if address in METADATA_ADDRESSES:
            return "a cloud metadata address"
        if address.is_unspecified:
            return "the unspecified address"
        if address.is_loopback:
            return "a loopback address"
        if address.is_link_local:
            return "a link-local address"
        if address.is_private:
            return "a private address"
        if address.is_multicast or address.is_reserved or not address.is_global:
            return "not a public address"
        return None

    def remembered(self, url: httpx.URL) -> Target | None:
        """The target accepted for ``url`` earlier, while it is still fresh (no resolver call, no wait)."""
        known = self._accepted.get(str(url))
        return known[1] if known is not None and known[0] > time.monotonic() else None

    async def resolve(self, url: httpx.URL) -> Target:
        """The target to connect to for ``url``; raises when any address of its host is refused."""
        known = self.remembered(url)
        if known is not None:
            return known
        host = url.host
        if not host:
            raise InvalidAddressError("URL has no host")
        addresses, literal = await _addresses(host, url.port or (443 if url.scheme == "https" else 80))
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                shown = host if host == str(address) else f"{host} ({address})"
                raise InvalidAddressError(
                    f"refused to call {shown}: {why}; allow its network in TIDINGS_WEBHOOK_ALLOW_PRIVATE "
                    "if this receiver is meant to be internal"
                )
        chosen = addresses[0]
        pinned = url.copy_with(host=str(chosen))
        target = Target(pinned, host, chosen, destination(pinned))
        if len(self._accepted) >= self.CACHE_MAX:
            self._accepted.clear()
        self._accepted[str(url)] = (math.inf if literal else time.monotonic() + self.dns_ttl, target)
        return target


async def _addresses(host: str, port: int) -> tuple[list[IPAddress], bool]:
    """The addresses of ``host``, and whether it was an IP literal."""
    try:
        return [ipaddress.ip_address(host)], True
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TransientError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    found: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise TransientError(f"cannot resolve {host}: no addresses")
    return found, False
