"""DNS names as comms takes them from tenants: sending domains and DKIM selectors."""

from __future__ import annotations

import re

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(?:{_LABEL}\.)+[a-z][a-z0-9-]{{0,62}}(?<!-)$")
_SELECTOR = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*$")


def normalize_domain(value: str) -> str:
    """A DNS domain name, lower case, without a trailing dot; ValueError when it is not one."""
    domain = value.strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{value!r} is not a domain name") from None
    if len(domain) > 253 or not _DOMAIN.match(domain):
        raise ValueError(f"{value!r} is not a domain name (e.g. mail.example.com)")
    return domain


def valid_selector(selector: str) -> bool:
    return bool(_SELECTOR.match(selector)) and len(selector) <= 200
