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


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast


def private_host(url: str) -> str | None:
    """The host of ``url`` when it is an address (or name) that is certainly not public, else None
    (a name is checked when it is resolved)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if is_public(host) else host


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
