"""Complaint feedback loops: ARF reports (RFC 5965) that mailbox providers send when a recipient
marks a message as spam (Yahoo CFL, Microsoft JMRP, Comcast, Fastmail and others; COMPLIANCE.md M6).

A report is an email of type ``multipart/report; report-type=feedback-report``: a human-readable
part, a ``message/feedback-report`` part of fields (``Feedback-Type: abuse``, ...), and the
reported message or its headers. Providers often redact the recipient's address, so the message
is found by what comms put into it: the signed token of its ``List-Unsubscribe`` header (marketing
and announcement email), else its ``Message-ID``, whose left part is the log id (every provider that
lets comms set it: smtp, ses). A report names the message; the caller's tenant must own it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import MIMEPart
from email.parser import BytesParser
from email.utils import getaddresses

from comms.compliance.unsubscribe import UnsubscribeSigner, mailto_token_of
from comms.kit.ids import id_has_prefix

# RFC 5965 3.5 feedback types; a complaint is what suppresses and counts in the complaint rate.
COMPLAINT_TYPES = frozenset({"abuse", "fraud"})
KNOWN_TYPES = COMPLAINT_TYPES | {"virus", "other", "not-spam", "auth-failure", "dmarc"}
_ANGLE = re.compile(r"<([^<>]*)>")
_UNSUBSCRIBE_PATH = re.compile(r"/u/([^/?#>\s]+)$")


class NotAFeedbackReport(ValueError):
    """The body is no ARF report comms can use; the message says why."""


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    feedback_type: str
    log_id: str
    found_by: str  # "list-unsubscribe" (a signed token) or "message-id"


def parse_feedback_report(raw: bytes, signer: UnsubscribeSigner, now: datetime) -> FeedbackReport:
    """NotAFeedbackReport for anything that is not a report of a message comms sent, however it is
    broken: reports quote spam, and the standard library's parser raises on some of it (an unknown
    charset: LookupError; a Message-ID like ``<@>``: IndexError deep in the header parser)."""
    try:
        return _parse(raw, signer, now)
    except NotAFeedbackReport:
        raise
    except (ValueError, LookupError, IndexError, AttributeError, TypeError) as exc:
        raise NotAFeedbackReport(f"unreadable report ({type(exc).__name__})") from None


def _parse(raw: bytes, signer: UnsubscribeSigner, now: datetime) -> FeedbackReport:
    report = BytesParser(policy=policy.default).parsebytes(raw)
    if (
        report.get_content_type() != "multipart/report"
        or report.get_param("report-type") != "feedback-report"
    ):
        raise NotAFeedbackReport("expected an ARF report: multipart/report; report-type=feedback-report")
    parts = list(report.iter_parts())
    fields = _feedback_fields(parts)
    feedback_type = str(fields.get("Feedback-Type", "")).strip().lower()
    if feedback_type not in KNOWN_TYPES:
        raise NotAFeedbackReport(f"unknown Feedback-Type {feedback_type!r}")
    original = _reported_headers(parts)
    if original is None:
        raise NotAFeedbackReport("the report carries neither the reported message nor its headers")
    found = _log_id(original, signer, now)
    if found is None:
        raise NotAFeedbackReport(
            "the reported message was not sent by comms (no unsubscribe token, no log id in its Message-ID)"
        )
    return FeedbackReport(feedback_type, *found)


def _feedback_fields(parts: list[MIMEPart]) -> MIMEPart:
    for part in parts:
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], MIMEPart):
                return payload[0]
            text = payload if isinstance(payload, str) else ""
            return BytesParser(policy=policy.default).parsebytes(text.encode(), headersonly=True)
    raise NotAFeedbackReport("the report has no message/feedback-report part")


def _reported_headers(parts: list[MIMEPart]) -> MIMEPart | None:
    for part in parts:
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], MIMEPart):
                return payload[0]
        if kind in ("text/rfc822-headers", "text/global-headers"):
            # The bytes as sent (its charset may be unknown or made up): headers are ASCII, or UTF-8.
            headers = part.get_payload(decode=True)
            raw = headers if isinstance(headers, bytes) else b""
            return BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    return None


def _log_id(original: MIMEPart, signer: UnsubscribeSigner, now: datetime) -> tuple[str, str] | None:
    # The headers' raw values: the parsed ones raise on the malformed ids spam is full of.
    raw = [(name.lower(), str(value)) for name, value in original.raw_items()]
    for header in (value for name, value in raw if name == "list-unsubscribe"):
        for uri in _ANGLE.findall(header):
            log_id = _verified(uri.strip(), signer, now)
            if log_id is not None:
                return log_id, "list-unsubscribe"
    for _, address in getaddresses([value for name, value in raw if name == "message-id"]):
        left = address.partition("@")[0]
        if id_has_prefix(left, "log"):
            return left, "message-id"
    return None


def _verified(uri: str, signer: UnsubscribeSigner, now: datetime) -> str | None:
    if uri.lower().startswith("mailto:"):
        token = mailto_token_of(uri[len("mailto:") :].partition("?")[0])
        return signer.verify_mailto(token, now) if token else None
    match = _UNSUBSCRIBE_PATH.search(uri)
    return signer.verify(match.group(1), now) if match else None


__all__ = ["COMPLAINT_TYPES", "FeedbackReport", "NotAFeedbackReport", "parse_feedback_report"]
