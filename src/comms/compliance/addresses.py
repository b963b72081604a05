"""Salted hashes of addresses: suppression and consent rows are keyed by them, so an opt-out
survives erasure of the address itself (GDPR Art. 17 vs ePrivacy; COMPLIANCE.md E7). And the
spellings an address takes in text comms did not write (erasure and anonymization look for them)."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable
from urllib.parse import quote

import phonenumbers


def address_hash(salt: str, channel: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{channel}:{key}".encode()).hexdigest()


def address_spellings(channel: str, address: str) -> set[str]:
    """How a vendor's callback or answer may write a normalized address: as it is, form-encoded,
    and for a phone number its digits without the ``+`` and its national digits (which every
    spelling of the number contains; only from 9 digits up, as shorter runs turn up inside other
    numbers, ids and times)."""
    spellings = {address, quote(address, safe="")}
    if channel == "sms":
        with contextlib.suppress(phonenumbers.NumberParseException):
            national = str(phonenumbers.parse(address).national_number)
            if len(national) >= 9:
                spellings.add(national)
        spellings.add(address.lstrip("+"))
    return spellings


# Shorter "addresses" (a rejected recipient such as "x1") would turn up inside unrelated words.
MIN_SCRUBBED = 5


def scrub_address(
    text: str | None, channel: str, address: str, masked: str, also: Iterable[str] = ()
) -> str | None:
    """``text`` with every spelling of the address (and of ``also``) replaced by ``masked``,
    whatever its case: provider answers and errors quote addresses as they were written
    ("550 5.1.1 <Ann@Example.com>: Recipient address rejected", "The 'To' number +1... is not
    valid"). The common case, a text that does not quote it, costs a substring search."""
    if not text or len(address) < MIN_SCRUBBED:
        return text
    # Every spelling contains the address's last digits (a phone) or its local part (an email).
    probe = address[-7:] if channel == "sms" else address.partition("@")[0]
    if probe.lower() not in text.lower():
        return text
    spellings = sorted(
        (s for s in address_spellings(channel, address).union(also) if len(s) >= MIN_SCRUBBED),
        key=len,
        reverse=True,  # longest first: a number's national digits are part of its other spellings
    )
    pattern = "|".join(re.escape(s) for s in spellings)
    return re.sub(pattern, lambda _: masked, text, flags=re.IGNORECASE)
