"""The bytes of an outbound email: the one place an OutboundMessage becomes RFC 5322."""

from __future__ import annotations

from comms.providers.base import OutboundMessage
from comms.providers.email.mime import EmailContent, build_email, message_id_for


def email_bytes(message: OutboundMessage, default_sender: str = "no-reply@localhost") -> bytes:
    """Raises ValueError when a header cannot be built (e.g. a line break from a variable)."""
    sender = message.sender or default_sender
    return build_email(
        EmailContent(
            from_addr=sender,
            from_name=message.sender_name,
            to_addr=message.to,
            subject=message.subject or "",
            text=message.text,
            html=message.html,
            message_id=message_id_for(message.id, sender),
            extra_headers=message.headers,
        )
    )
