"""Recipient normalization: phone numbers to E.164, email addresses to email-validator's form.

A bulk send carries up to 100,000 recipients and must be accepted in well under a second, but the
library path costs ~22 us per phone (``phonenumbers.parse`` + ``is_valid_number`` +
``format_number``) and ~26 us per address (``email_validator.validate_email``). Each normalizer
therefore has a *fast path* that only ever **accepts**: when it is not certain, it returns nothing
and the library decides. Every rejection, error message and odd format comes from the library, so
the fast path can cost speed when it is too cautious but never changes a verdict or an output.

Why the phone fast path gives exactly the library's answer
----------------------------------------------------------
It only looks at ASCII digit strings with an optional single leading ``+`` (surrounding ASCII
whitespace allowed, input at most 250 characters like ``parse`` demands). For such a string,
``phonenumbers.parse`` does no punctuation, extension, alpha or RFC 3966 handling; what remains is:

1. ``+`` numbers: the calling code is the first 1-3 digits found in ``COUNTRY_CODE_TO_REGION_CODE``
   (we do the same walk; if there is none, ``parse`` retries the digits as a national number, so
   we defer). National numbers: ``parse`` first tries the default region's international prefix
   (``00``/``011``...) and then the region's own calling code written without ``+`` (``86138...``
   with "CN"); we defer whenever the IDD pattern matches or the digits start with the code.
2. Either way it then strips a national prefix / carrier code when ``national_prefix_for_parsing``
   matches at the start (``0``, CN's ``(1(?:[12]\\d|79)\\d\\d)|0``, AR's transform rule...), using
   the default region's metadata for national numbers and the calling code's main region for
   ``+`` numbers. We defer whenever that pattern could change the digits, i.e. it matches with
   a non-empty prefix or would apply a transform rule.
3. So when we get here the national significant number *is* the digits (2 to 17 of them; the
   leading zeros of "Italian" numbers are kept by ``national_significant_number``), and E.164 is
   ``+`` + calling code + digits.
4. ``is_valid_number`` = ``region_code_for_number`` + ``_number_type_helper``: the number must
   match the region's ``general_desc`` (pattern and possible lengths) and then the pattern (and
   possible lengths, if the desc lists any) of premium rate, toll free, shared cost, VoIP,
   personal, pager, UAN, voicemail, fixed line, or mobile -- mobile only when the metadata does not
   flag it as identical to fixed line. For calling codes shared by several regions (+1, +7,
   +44...), regions are tried in metadata order: a region with ``leading_digits`` claims the
   number when those match (valid or not), one without claims it when the number is valid there.
   We precompile the same patterns once per region and NSN length into one regex
   (``(?=general\\Z)(?:type1|type2|...)`` under ``fullmatch``) and replay that walk.

The fast path also requires a default region phonenumbers supports, spelled as it spells it
("CN", not "cn": ``parse`` refuses national input otherwise). The guards in 1 and 2 are cheap and
deliberately wider than needed (searching every region's number ranges, we found no number valid
as written that ``parse`` actually reads differently), so that a metadata update cannot make the
two paths drift apart silently.
``tests/unit/test_recipients.py`` checks the fast path against the library on every region's
example numbers and mutations of them, plus thousands of generated near misses.

Why the email fast path gives exactly the library's answer
----------------------------------------------------------
It accepts only ``dot-atom@domain`` in plain ASCII: RFC 5322 atext with single dots before the
``@`` (so no quoting, no display name, nothing to NFC-normalize), LDH labels of 1-63 characters
with no ``--`` anywhere (so no Punycode ``xn--`` labels, which email-validator decodes to Unicode,
and no reserved "R-LDH" labels), at least two labels and an alphabetic TLD (email-validator wants
a dot and a final letter), at most 254 characters in total, and not under one of
email-validator's ``SPECIAL_USE_DOMAIN_NAMES`` (``local``, ``localhost``, ``invalid``, ``test``,
``onion``, ``arpa``; ``example.com`` is fine). For that shape email-validator's normalized form is
the local part unchanged -- except the RFC 2142 role names in ``CASE_INSENSITIVE_MAILBOX_NAMES``
(``Postmaster``, ``Info``...), which it lowercases -- ``@``, and the domain lowercased (UTS-46 maps
ASCII only by lowercasing). The library path pins email-validator's options to their defaults
(the module-level defaults are mutable globals) so both paths always agree on the rules.
"""

from __future__ import annotations

import re
from typing import Any, Final

import email_validator
import idna
import phonenumbers
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, SUPPORTED_REGIONS, PhoneMetadata

from comms.kit.masking import split_calling_code

__all__ = [
    "InvalidRecipient",
    "normalize_email",
    "normalize_phone",
    "recipient_key",
    "region_of_phone",
    "split_e164",
]


class InvalidRecipient(ValueError):
    """A recipient that cannot be normalized; ``reason`` is a short human message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- phones --------------------------------------------------------------------------------------

_NON_GEO: Final = "001"
_MAX_INPUT_LENGTH: Final = 250  # phonenumbers' _MAX_INPUT_STRING_LENGTH
_MIN_NSN: Final = 2  # phonenumbers' _MIN_LENGTH_FOR_NSN
_MAX_NSN: Final = 17  # phonenumbers' _MAX_LENGTH_FOR_NSN
_MAX_CC_DIGITS: Final = 3
_ASCII_WS: Final = " \t\r\n"
# The descs _number_type_helper tries after general_desc; "mobile" only when the metadata does not
# flag it as the same pattern as fixed line. Any match means valid, so the order is free: SMS
# recipients are mostly mobiles, so those go first.
_TYPE_DESCS: Final = (
    "fixed_line",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


class _NumberPlan:
    """``_number_type_helper(nsn, metadata) != UNKNOWN`` for one PhoneMetadata, one regex per length."""

    __slots__ = ("_by_length",)

    def __init__(self, metadata: Any) -> None:
        self._by_length: dict[int, re.Pattern[str]] = {}
        general = metadata.general_desc
        if general is None or not general.national_number_pattern or not general.possible_length:
            return  # nothing is fast-path valid; the library decides
        descs = [getattr(metadata, name) for name in _TYPE_DESCS]
        if not metadata.same_mobile_and_fixed_line_pattern:
            descs.insert(0, metadata.mobile)
        for length in set(general.possible_length):
            alternatives = [
                f"(?:{desc.national_number_pattern})"
                for desc in descs
                if desc is not None
                and desc.national_number_pattern
                and (not desc.possible_length or length in desc.possible_length)
            ]
            if not alternatives:
                continue
            source = rf"(?=(?:{general.national_number_pattern})\Z)(?:{'|'.join(alternatives)})"
            try:
                self._by_length[length] = re.compile(source)
            except re.error:  # pragma: no cover - metadata patterns always combine
                continue

    def is_valid(self, nsn: str) -> bool:
        pattern = self._by_length.get(len(nsn))
        return pattern is not None and pattern.fullmatch(nsn) is not None


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


class _PrefixRule:
    """A region's ``national_prefix_for_parsing`` (+ transform rule), as a "might strip" test."""

    __slots__ = ("_pattern", "_transform")

    def __init__(self, metadata: Any) -> None:
        self._pattern = _compile(metadata.national_prefix_for_parsing)
        self._transform = bool(metadata.national_prefix_transform_rule)

    def may_change(self, digits: str) -> bool:
        """True unless _maybe_strip_national_prefix_carrier_code surely returns ``digits`` as is."""
        if self._pattern is None:
            return False
        match = self._pattern.match(digits)
        if match is None:
            return False
        if match.end() > 0:
            return True
        # An empty match strips nothing -- unless the transform branch runs (the rule exists and
        # the last group took part in the match), which may insert digits.
        groups = match.groups()
        return self._transform and (not groups or groups[-1] is not None)


class _CountryPlan:
    """Everything the fast path needs about one country calling code."""

    __slots__ = ("_members", "_single", "code", "prefix_rule")

    def __init__(self, code: int) -> None:
        self.code = code
        regions: tuple[str, ...] = COUNTRY_CODE_TO_REGION_CODE[code]
        # parse() strips national prefixes from "+" numbers with the main region's metadata.
        self.prefix_rule: _PrefixRule | None = None
        main = PhoneMetadata.metadata_for_region_or_calling_code(code, regions[0])
        if main is not None:
            self.prefix_rule = _PrefixRule(main)
        self._single: _NumberPlan | None = None
        self._members: list[tuple[re.Pattern[str] | None, _NumberPlan]] = []
        if len(regions) == 1:
            if main is not None and (regions[0] == _NON_GEO or main.country_code == code):
                self._single = _NumberPlan(main)
            return
        members = []
        for region in regions:
            metadata = PhoneMetadata.metadata_for_region(region, None)
            if metadata is None:
                continue  # region_code_for_number skips it too
            if metadata.country_code != code:  # pragma: no cover - never in the metadata
                return  # inconsistent table: no fast path for this code
            members.append((_compile(metadata.leading_digits), _NumberPlan(metadata)))
        self._members = members

    def is_valid(self, nsn: str) -> bool:
        """is_valid_number for ``+<code><nsn>`` (region_code_for_number, then that region)."""
        if self._single is not None:
            return self._single.is_valid(nsn)
        for leading, plan in self._members:
            if leading is not None:
                if leading.match(nsn) is not None:
                    return plan.is_valid(nsn)
            elif plan.is_valid(nsn):
                return True
        return False


class _RegionPlan:
    """A default region for national-format input."""

    __slots__ = ("code_digits", "country", "idd", "prefix_rule")

    def __init__(self, metadata: Any) -> None:
        self.idd = _compile(metadata.international_prefix)
        self.code_digits: str = str(metadata.country_code)
        self.prefix_rule = _PrefixRule(metadata)
        self.country = _country_plan(metadata.country_code)


_CALLING_CODES: Final[dict[str, int]] = {str(code): code for code in COUNTRY_CODE_TO_REGION_CODE}
_COUNTRY_PLANS: dict[int, _CountryPlan] = {}
_REGION_PLANS: dict[str, _RegionPlan | None] = {}


def _country_plan(code: int) -> _CountryPlan:
    plan = _COUNTRY_PLANS.get(code)
    if plan is None:
        plan = _COUNTRY_PLANS[code] = _CountryPlan(code)
    return plan


def _region_plan(region: str) -> _RegionPlan | None:
    try:
        return _REGION_PLANS[region]
    except KeyError:
        pass
    plan: _RegionPlan | None = None
    # parse() only accepts national input for exact (upper-case) supported region codes.
    if region in SUPPORTED_REGIONS:
        metadata = PhoneMetadata.metadata_for_region(region, None)
        if metadata is not None:
            plan = _RegionPlan(metadata)
    _REGION_PLANS[region] = plan
    return plan


def _fast_phone(raw: str, default_region: str) -> str | None:
    """E.164 when the digits are certainly a valid number as written, else None (ask the library)."""
    if len(raw) > _MAX_INPUT_LENGTH:
        return None
    text = raw.strip(_ASCII_WS)
    if text[:1] == "+":
        digits = text[1:]
        if not (digits.isascii() and digits.isdigit()) or digits[0] == "0":
            return None
        # parse() would also reject an unsupported default region before looking at the "+".
        if _region_plan(default_region) is None:
            return None
        for size in range(1, _MAX_CC_DIGITS + 1):
            code = _CALLING_CODES.get(digits[:size])
            if code is not None:
                break
        else:
            return None  # parse() retries the digits as a national number
        country = _country_plan(code)
        nsn = digits[size:]
        rule = country.prefix_rule
        if rule is None or rule.may_change(nsn):
            return None
    else:
        if not (text.isascii() and text.isdigit()):
            return None
        region = _region_plan(default_region)
        if region is None:
            return None
        if text.startswith(region.code_digits):
            return None  # parse() may read these digits as the calling code
        if region.idd is not None and region.idd.match(text) is not None:
            return None  # parse() may read an international prefix (00, 011, ...)
        if region.prefix_rule.may_change(text):
            return None
        country = region.country
        nsn = text
    if not _MIN_NSN <= len(nsn) <= _MAX_NSN or not country.is_valid(nsn):
        return None
    return f"+{country.code}{nsn}"


def _library_phone(raw: str, default_region: str) -> str:
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidRecipient("invalid phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidRecipient("invalid phone number")
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164


def normalize_phone(raw: str, default_region: str) -> str:
    """E.164 (``+8613800138000``) for a number phonenumbers parses and calls valid.

    National input is read with ``default_region`` ("CN", "US"; upper case, as phonenumbers
    requires). Raises :class:`InvalidRecipient` otherwise.
    """
    fast = _fast_phone(raw, default_region)
    return fast if fast is not None else _library_phone(raw, default_region)


def split_e164(e164: str) -> tuple[int, str]:
    """``+8613800138000`` -> ``(86, "13800138000")``; raises ValueError if it is not ``+<cc><nsn>``."""
    split = split_calling_code(e164)
    if split is None:
        raise ValueError(f"not an E.164 number: {e164!r}")
    return split


_SINGLE_REGION: Final[dict[int, str | None]] = {
    code: (regions[0] if regions[0] != _NON_GEO else None)
    for code, regions in COUNTRY_CODE_TO_REGION_CODE.items()
    if len(regions) == 1
}


def region_of_phone(e164: str) -> str | None:
    """ISO region of a normalized number ("CN", "US", "CA"), or None.

    None for unparseable input, for non-geographic calling codes (+800, +882...; phonenumbers says
    "001") and for shared-code numbers no region claims.
    """
    split = split_calling_code(e164)
    if split is None:
        return None
    code, nsn = split
    if code in _SINGLE_REGION:
        return _SINGLE_REGION[code]
    number = phonenumbers.PhoneNumber(country_code=code, national_number=int(nsn))
    if len(nsn) > 1 and nsn[0] == "0":
        # Same leading-zero bookkeeping as parse(), so national_significant_number == nsn.
        zeros = len(nsn) - len(nsn.lstrip("0"))
        number.italian_leading_zero = True
        number.number_of_leading_zeros = min(zeros, len(nsn) - 1)
    region: str | None = phonenumbers.region_code_for_number(number)
    return region


# ---- email -----------------------------------------------------------------------------------------

_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FAST_EMAIL: Final = re.compile(
    rf"({_ATEXT}+(?:\.{_ATEXT}+)*)@((?:{_LABEL}\.)+[A-Za-z]{{2,63}})",
    re.ASCII,
)
_EMAIL_MAX_LENGTH: Final = 254
# Snapshots of email-validator's own tables (it reads SPECIAL_USE_DOMAIN_NAMES at call time).
_SPECIAL_USE: Final[frozenset[str]] = frozenset(email_validator.SPECIAL_USE_DOMAIN_NAMES)
_SPECIAL_USE_SUFFIXES: Final[tuple[str, ...]] = tuple("." + name for name in _SPECIAL_USE)
_ROLE_MAILBOXES: Final[frozenset[str]] = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


def _fast_email(text: str) -> str | None:
    if len(text) > _EMAIL_MAX_LENGTH:
        return None
    match = _FAST_EMAIL.fullmatch(text)
    if match is None:
        return None
    local, domain = match.groups()
    if "--" in domain:
        return None  # Punycode or reserved R-LDH label: email-validator decides
    domain = domain.lower()
    if domain in _SPECIAL_USE or domain.endswith(_SPECIAL_USE_SUFFIXES):
        return None
    lowered = local.lower()
    if lowered in _ROLE_MAILBOXES:
        local = lowered
    return f"{local}@{domain}"


def _library_email(text: str) -> str:
    try:
        validated = email_validator.validate_email(
            text,
            allow_smtputf8=True,
            allow_empty_local=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
            strict=False,
            check_deliverability=False,
            test_environment=False,
            globally_deliverable=True,
        )
    except email_validator.EmailNotValidError as exc:
        raise InvalidRecipient(f"invalid email address: {exc}") from exc
    return validated.normalized


def normalize_email(raw: str) -> str:
    """email-validator's normalized address (domain lowercased, local part kept) for ``raw.strip()``.

    Raises :class:`InvalidRecipient` with email-validator's message otherwise.
    """
    text = raw.strip()
    fast = _fast_email(text)
    return fast if fast is not None else _library_email(text)


def wire_address(address: str) -> str:
    """An address as it goes to a mail server or an email API: an internationalized domain in
    its ASCII (punycode) form, which every server and vendor takes; the local part as it is (a
    non-ASCII one still needs SMTPUTF8). The stored, shown form keeps the Unicode domain."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        return address  # left to the provider, which refuses what it cannot carry


# ---- keys ------------------------------------------------------------------------------------------


def recipient_key(channel: str, normalized: str) -> str:
    """Dedupe / suppression key of a normalized recipient: E.164 as is, email wholly lowercased."""
    if channel == "sms":
        return normalized
    if channel == "email":
        return normalized.lower()
    raise ValueError(f"unknown channel: {channel!r}")
