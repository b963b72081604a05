"""Salted hashes of addresses: suppression and consent rows are keyed by them, so an opt-out
survives erasure of the address itself (GDPR Art. 17 vs ePrivacy; COMPLIANCE.md E7). And the
spellings an address takes in text comms did not write (erasure and anonymization look for them)."""

from __future__ import annotations

import contextlib
import hashlib
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
                spellings |= {national, address.lstrip("+")}
    return spellings
