"""Salted hashes of addresses: suppression and consent rows are keyed by them, so an opt-out
survives erasure of the address itself (GDPR Art. 17 vs ePrivacy; COMPLIANCE.md E7). And the
spellings an address takes in text comms did not write (erasure and anonymization look for them)."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache
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
_SEPARATORS = r"[\s\-.()/]*"  # between a number's digits, as people and vendors write them


@lru_cache(maxsize=4096)  # the same recipient's texts are shown again and again (/logs pages)
def _address_pattern(channel: str, address: str, also: tuple[str, ...]) -> re.Pattern[str]:
    """Every way a text may quote the address: as stored and form-encoded; a phone number with or
    without its country code, "+" or "00", or the trunk "0", its digits in any grouping
    ("138-1234-5678", "(415) 555-2671", "07700 900123"), never inside a longer run of digits; an
    email address with its local part quoted or not, in any case."""
    literal = [s for s in {address, quote(address, safe=""), *also} if len(s) >= MIN_SCRUBBED]
    forms = [re.escape(s) for s in sorted(literal, key=len, reverse=True)]
    if channel == "sms":
        with contextlib.suppress(phonenumbers.NumberParseException):
            number = phonenumbers.parse(address)
            national, code = str(number.national_number), str(number.country_code)
            if len(national) >= 6:

                def spaced(digits: str) -> str:
                    return _SEPARATORS.join(digits)

                prefix = rf"(?:(?:\+|%2B|00){_SEPARATORS})?{spaced(code)}{_SEPARATORS}|0{_SEPARATORS}"
                forms.insert(0, rf"(?<!\d)(?:{prefix})?{spaced(national)}(?!\d)")
    elif "@" in address:
        local, _, domain = address.rpartition("@")
        forms.insert(0, rf'(?<![\w.%+-])"?{re.escape(local)}"?@{re.escape(domain)}(?![\w-])')
    return re.compile("|".join(forms), re.IGNORECASE)


def scrub_address(
    text: str | None, channel: str, address: str, masked: str, also: Iterable[str] = ()
) -> str | None:
    """``text`` with every spelling of the address (and of ``also``) replaced by ``masked``:
    provider answers and errors quote addresses as they were written ("550 5.1.1
    <Ann@Example.com>: Recipient address rejected", "The 'To' number +1 415-555-2671 is not
    valid"). The common case, a text that does not quote it, costs a substring search."""
    if not text or len(address) < MIN_SCRUBBED:
        return text
    # Every spelling contains the number's last four digits together, or the email's local part.
    probe = address[-4:] if channel == "sms" else address.rpartition("@")[0]
    if probe.lower() not in text.lower():
        return text
    return _address_pattern(channel, address, tuple(sorted(also))).sub(lambda _: masked, text)
