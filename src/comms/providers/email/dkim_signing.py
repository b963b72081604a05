"""DKIM signatures (RFC 6376) with dkimpy, covering the headers mailbox providers check.

``h=`` lists From, To, Subject, Date, Message-ID and, when present, List-Unsubscribe and
List-Unsubscribe-Post: RFC 8058 one-click only counts when both are signed.
"""

from __future__ import annotations

import dkim

SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)


class DkimSigner:
    def __init__(self, domain: str, selector: str, private_key_pem: str) -> None:
        self.domain = domain.encode()
        self.selector = selector.encode()
        self.key = private_key_pem.encode()

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header in front."""
        present = message.split(b"\r\n\r\n", 1)[0].lower()
        headers = [h for h in SIGNED_HEADERS if b"\r\n" + h + b":" in b"\r\n" + present]
        signature: bytes = dkim.sign(
            message, self.selector, self.domain, self.key, include_headers=headers, linesep=b"\r\n"
        )
        return signature + message
