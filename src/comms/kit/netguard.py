"""Keeping tenant-given URLs off the private network (server-side request forgery).

A tenant admin sets the URL comms posts its events to. Left alone, that URL could name the
database, the cloud's metadata service (169.254.169.254) or any other address only the servers can
reach, and the delivery errors would tell what answers there. So, unless the operator allows it
(an on-premises deployment whose tenants' apps live on the private network), such posts may only
go to public (globally routable) addresses: checked when the URL is set, for an address written in
it, and again when a connection is made, for every address a name resolves to (a name may point
anywhere, and may change).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

# IPv6 prefixes that carry an IPv4 address in their last 32 bits and reach it: NAT64's well-known
# prefix (RFC 6052; an IPv6-only host behind NAT64 reaches private IPv4 through it) and the
# deprecated IPv4-compatible form (::a.b.c.d). 6to4 (2002::/16) carries it in bits 16-48.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# RFC 8215's local-use NAT64 prefix: a network's own translator, never a public destination.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64_LOCAL:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        # Python 3.11 calls some of these global whatever IPv4 address they lead to.
        return inner.is_global and not inner.is_multicast
    return ip.is_global and not ip.is_multicast


def private_host(url: str) -> str | None:
    """The host of ``url`` when it is an address (or name) that is certainly not public, else None
    (a name is checked when it is resolved).

    The host is read as the HTTP client will read it (yarl, which aiohttp uses) as well as by the
    standard library: yarl normalizes a host written in other forms (full-width digits, ideographic
    full stops, circled digits all read as 127.0.0.1), and an address literal never goes through
    the resolver's check."""
    try:
        client_host = URL(url).host or ""
    except (ValueError, TypeError):
        return url  # not a URL the client could use: refused rather than guessed
    for raw in (urlsplit(url).hostname or "", client_host):
        host = raw.rstrip(".").lower()
        if host == "localhost" or host.endswith(".localhost"):
            return host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            continue
        if not is_public(host):
            return host
    return None


class PublicOnlyResolver(AbstractResolver):
    """Resolves as usual, then keeps the public addresses only; none left is a connection error."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if is_public(r["host"])]
        if not public:
            raise OSError(f"{host} resolves to no public address; posts to private networks are not allowed")
        return public

    async def close(self) -> None:
        await self._inner.close()


__all__ = ["PublicOnlyResolver", "is_public", "private_host"]
