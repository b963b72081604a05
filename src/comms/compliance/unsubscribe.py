"""Unsubscribe tokens: opaque, unforgeable, and free of personal data.

A token is ``<log id>.<signature>``: the log id names the message (so its tenant, channel and
recipient), the signature is HMAC-SHA256 under COMMS_SECRET_KEY. The URL therefore carries no
address, and a token stays valid as long as its message's log item is kept (CAN-SPAM wants 30
days after the send; a send can be scheduled a year ahead, and a batch retry sends the same log ids
again at any age, so no time limit from the log id's creation would do).

The ``mailto:`` form (``unsub+<log id>.<signature>@<domain>``, RFC 2369) has a signature of its own:
lower-case base32 of 96 bits, because mail systems may change the case of a local part and a local
part holds at most 64 characters (this one has 63).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import datetime

from comms.kit.ids import id_has_prefix, id_time

_SIGNATURE_BYTES = 16
_MAILTO_SIGNATURE_BYTES = 12
MAILTO_PREFIX = "unsub+"
_MAILTO_LOCAL = re.compile(r"^unsub\+(log_[0-9a-f]{32}\.[a-z2-7]{20})$", re.IGNORECASE)


class UnsubscribeSigner:
    def __init__(self, secret_key: str) -> None:
        self._key = hashlib.sha256(b"comms-unsubscribe:" + secret_key.encode()).digest()

    def _sign(self, log_id: str) -> str:
        digest = hmac.new(self._key, log_id.encode(), hashlib.sha256).digest()[:_SIGNATURE_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def token(self, log_id: str) -> str:
        return f"{log_id}.{self._sign(log_id)}"

    def _sign_mailto(self, log_id: str) -> str:
        digest = hmac.new(self._key, b"mailto:" + log_id.encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:_MAILTO_SIGNATURE_BYTES]).decode().rstrip("=").lower()

    def mailto_token(self, log_id: str) -> str:
        return f"{log_id}.{self._sign_mailto(log_id)}"

    def verify(self, token: str, now: datetime) -> str | None:
        """The log id when the token is genuine, else None (whether its message still exists is
        the caller's to find out)."""
        log_id, sep, signature = token.partition(".")
        if not sep or not id_has_prefix(log_id, "log") or not signature.isascii():
            return None  # compare_digest takes ASCII strings only: anything else is forged
        if not hmac.compare_digest(signature, self._sign(log_id)):
            return None
        return log_id if _fresh(log_id, now) else None

    def verify_mailto(self, token: str, now: datetime) -> str | None:
        """As :meth:`verify`, for the token of a ``mailto:`` address (case-insensitive)."""
        log_id, sep, signature = token.lower().partition(".")
        if not sep or not id_has_prefix(log_id, "log") or not signature.isascii():
            return None
        if not hmac.compare_digest(signature, self._sign_mailto(log_id)):
            return None
        return log_id if _fresh(log_id, now) else None


def _fresh(log_id: str, now: datetime) -> bool:
    """A log id whose time can be read (the signature, checked first, says we issued it)."""
    return id_time(log_id, "log") is not None


def mailto_address(token: str, domain: str) -> str:
    return f"{MAILTO_PREFIX}{token}@{domain}"


def mailto_token_of(address: str) -> str | None:
    """The token of an ``unsub+TOKEN@domain`` address, None when the address is not one."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not domain:
        return None
    match = _MAILTO_LOCAL.match(local)
    return match.group(1) if match else None


def unsubscribe_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/u/{token}"
