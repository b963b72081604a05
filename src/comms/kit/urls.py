"""URLs given in configuration and by tenants: checked when they are given, not when first used.

``urllib.parse.urlsplit`` accepts ``https://[zz]/`` or ``https://host:abc/`` and raises only when
the host or port is read, which a provider does when it is built or a request is made: a bad URL
accepted at set-up would turn every later callback or send into a 500.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator


def http_url(value: str) -> str:
    """``value`` if it is an http(s) URL whose host and port can be read; else ValueError."""
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


HttpUrl = Annotated[str, AfterValidator(http_url)]

__all__ = ["HttpUrl", "http_url"]
