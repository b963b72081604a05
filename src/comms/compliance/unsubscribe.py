"""Unsubscribe tokens: opaque, unforgeable, and free of personal data.

A token is ``<log id>.<signature>``: the log id names the message (so its tenant, channel and
recipient), the signature is HMAC-SHA256 under COMMS_SECRET_KEY. The URL therefore carries no
address, and a token stays valid as long as its message's log item is kept, for at least
:data:`TOKEN_LIFETIME` (CAN-SPAM wants 30 days; we keep a year and more).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

from comms.kit.ids import id_has_prefix

TOKEN_LIFETIME = timedelta(days=400)
_SIGNATURE_BYTES = 16


class UnsubscribeSigner:
    def __init__(self, secret_key: str) -> None:
        self._key = hashlib.sha256(b"comms-unsubscribe:" + secret_key.encode()).digest()

    def _sign(self, log_id: str) -> str:
        digest = hmac.new(self._key, log_id.encode(), hashlib.sha256).digest()[:_SIGNATURE_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def token(self, log_id: str) -> str:
        return f"{log_id}.{self._sign(log_id)}"

    def verify(self, token: str, now: datetime) -> str | None:
        """The log id when the token is genuine and not older than TOKEN_LIFETIME, else None."""
        log_id, sep, signature = token.partition(".")
        if not sep or not id_has_prefix(log_id, "log"):
            return None
        if not hmac.compare_digest(signature, self._sign(log_id)):
            return None
        issued = datetime.fromtimestamp(int(log_id[4:16], 16) / 1000, UTC)
        if now - issued > TOKEN_LIFETIME:
            return None
        return log_id


def unsubscribe_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/u/{token}"
