"""Masking of recipients for logs, API responses and dashboards.

Phones are stored normalized as E.164 (``+8613800138000``); what people recognise (and what the
API documents, ``138****8000``) is the *national significant number* with the middle hidden, so
the country calling code is split off first. Calling codes are prefix-free (ITU E.164), so taking
the first 1-3 digits that are a known code -- phonenumbers' own table, the same walk
``phonenumbers.parse`` does after a ``+`` -- splits a stored number unambiguously without parsing
it.

This module sits in ``kit`` and imports nothing from the rest of ``comms``; ``messages`` builds on
:func:`split_calling_code`.
"""

from __future__ import annotations

from typing import Final

from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

MASK: Final = "***"
# recipient_key of a log item past the tenant's log_retention_days: this prefix and a salted hash
# of the key it had (compliance/retention.py); its recipient column holds the masked form.
ANONYMIZED_KEY_PREFIX: Final = "anon:"

_CALLING_CODES: Final[frozenset[int]] = frozenset(COUNTRY_CODE_TO_REGION_CODE)
_MAX_CALLING_CODE_DIGITS: Final = 3


def split_calling_code(e164: str) -> tuple[int, str] | None:
    """Split ``+<digits>`` into (country calling code, national significant number).

    Returns None unless the value is a ``+`` followed by ASCII digits that start with a known
    calling code and leave at least one digit after it. The number itself is not validated.
    """
    if e164[:1] != "+":
        return None
    digits = e164[1:]
    if not (digits.isascii() and digits.isdigit()) or digits[0] == "0":
        return None
    for size in range(1, min(_MAX_CALLING_CODE_DIGITS, len(digits) - 1) + 1):
        code = int(digits[:size])
        if code in _CALLING_CODES:
            return code, digits[size:]
    return None


def mask_phone(e164: str) -> str:
    """``+8613800138000`` -> ``138****8000``; ``+14155552671`` -> ``415***2671``.

    At least three digits stay hidden (one or two hidden digits leave a number anyone can try):
    the national number keeps its first 3 and last 4 digits from 10 digits up, 2 and 2 from 7, 1
    and 1 from 5; under 5 digits nothing is shown.
    """
    split = split_calling_code(e164)
    if split is None:
        return MASK
    national = split[1]
    size = len(national)
    for minimum, head, tail in ((10, 3, 4), (7, 2, 2), (5, 1, 1)):
        if size >= minimum:
            return national[:head] + "*" * (size - head - tail) + national[-tail:]
    return MASK


def mask_email(address: str) -> str:
    """``john@example.com`` -> ``j***@example.com``: first character of the local part, then ``***``.

    A quoted local part (``"john doe"@example.com``) shows its first character inside the quotes.
    """
    local, at, domain = address.rpartition("@")
    first = local.lstrip('"')[:1]
    if not at or not first or not domain:
        return MASK
    return f"{first}{MASK}@{domain}"


def mask_recipient(channel: str, value: str) -> str:
    """Mask a stored recipient for display; anything unparseable (or an unknown channel) is ``***``."""
    if channel == "sms":
        return mask_phone(value)
    if channel == "email":
        return mask_email(value)
    return MASK
