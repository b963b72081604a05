"""Recipient normalization: documented examples plus differential tests against the libraries.

The differential tests feed thousands of seeded-random inputs (well-formed, near-miss and
malformed) to the module and to the plain library path and require the same verdict and the same
output. They also check the fast paths on their own (``_fast_phone`` / ``_fast_email``): whatever
they accept must be exactly what the library returns, and they must actually serve the common
shapes, or the speed claim is hollow.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

import email_validator
import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from comms.messages import recipients
from comms.messages.recipients import (
    InvalidRecipient,
    normalize_email,
    normalize_phone,
    recipient_key,
    region_of_phone,
    split_e164,
)

# ---- reference (library-only) implementations ------------------------------------------------------


def reference_phone(raw: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    e164: str = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    return e164


def reference_email(raw: str) -> str | None:
    try:
        return email_validator.validate_email(raw.strip(), check_deliverability=False).normalized
    except email_validator.EmailNotValidError:
        return None


def module_phone(raw: str, region: str) -> str | None:
    try:
        return normalize_phone(raw, region)
    except InvalidRecipient:
        return None


def module_email(raw: str) -> str | None:
    try:
        return normalize_email(raw)
    except InvalidRecipient:
        return None


# ---- documented examples ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("13800138000", "CN", "+8613800138000"),
        ("+86 138 0013 8000", "CN", "+8613800138000"),
        ("+8613800138000", "US", "+8613800138000"),
        ("008613800138000", "CN", "+8613800138000"),
        ("8613800138000", "CN", "+8613800138000"),  # country code without '+'
        ("010 1234 5678", "CN", "+861012345678"),  # national prefix 0 stripped
        ("(415) 555-2671", "US", "+14155552671"),
        ("+14155552671", "CN", "+14155552671"),
        ("1 415 555 2671", "US", "+14155552671"),
        ("07911 123456", "GB", "+447911123456"),
        ("+44 (0)7911 123456", "US", "+447911123456"),
        ("030 123456", "DE", "+4930123456"),
        ("  13800138000\t", "CN", "+8613800138000"),
    ],
)
def test_normalize_phone_examples(raw: str, region: str, expected: str) -> None:
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("", "CN"),
        ("hello", "CN"),
        ("12345", "CN"),
        ("1380013800", "CN"),  # one digit short
        ("138001380001", "CN"),  # one digit long
        ("+999 1234567", "CN"),  # no such calling code
        ("13800138000", "ZZ"),  # national input needs a real region
        ("13800138000", "cn"),  # ... spelled the way phonenumbers knows it
        ("555-2671", "US"),  # local-only
    ],
)
def test_normalize_phone_rejects(raw: str, region: str) -> None:
    with pytest.raises(InvalidRecipient) as caught:
        normalize_phone(raw, region)
    assert caught.value.reason == "invalid phone number"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("john@example.com", "john@example.com"),
        ("John.Doe@Example.COM", "John.Doe@example.com"),  # local part kept, domain lowercased
        ("  someone+tag@mail.example.org \n", "someone+tag@mail.example.org"),
        ("Postmaster@Example.com", "postmaster@example.com"),  # RFC 2142 role names are lowercased
        ("user@xn--bcher-kva.ch", "user@bücher.ch"),  # Punycode comes back as Unicode
        ("user@Bücher.CH", "user@bücher.ch"),
        ('"john"@example.com', None),  # quoted local parts are refused by default
    ],
)
def test_normalize_email_examples(raw: str, expected: str | None) -> None:
    assert module_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "john",
        "john@",
        "@example.com",
        "a..b@example.com",
        "a@b",
        "a@example",
        "a@b.local",
        "a@localhost",
        "a@x.test",
        "a@foo.invalid",
        "a@example.com.",
        "John <john@example.com>",
        "a@[127.0.0.1]",
    ],
)
def test_normalize_email_rejects(raw: str) -> None:
    with pytest.raises(InvalidRecipient) as caught:
        normalize_email(raw)
    assert caught.value.reason.startswith("invalid email address: ")
    assert len(caught.value.reason) > len("invalid email address: ")


def test_email_reason_is_email_validators_message() -> None:
    with pytest.raises(InvalidRecipient) as caught:
        normalize_email("a@b.local")
    with pytest.raises(email_validator.EmailNotValidError) as library:
        email_validator.validate_email("a@b.local", check_deliverability=False)
    assert caught.value.reason == f"invalid email address: {library.value}"


def test_recipient_key() -> None:
    assert recipient_key("sms", "+8613800138000") == "+8613800138000"
    assert recipient_key("email", "John.Doe@example.com") == "john.doe@example.com"
    with pytest.raises(ValueError):
        recipient_key("fax", "x")


def test_split_e164() -> None:
    assert split_e164("+8613800138000") == (86, "13800138000")
    assert split_e164("+14155552671") == (1, "4155552671")
    assert split_e164("+447911123456") == (44, "7911123456")
    assert split_e164("+390612345678") == (39, "0612345678")  # Italian leading zero kept
    assert split_e164("+35312345678") == (353, "12345678")
    for bad in ["", "+", "8613800138000", "+0123", "+86", "+86 138", "+999123456"]:
        with pytest.raises(ValueError):
            split_e164(bad)


def test_region_of_phone() -> None:
    assert region_of_phone("+8613800138000") == "CN"
    assert region_of_phone("+14155552671") == "US"
    assert region_of_phone("+16135550123") == "CA"  # shared +1, decided by the number
    assert region_of_phone("+447400123456") == "GB"
    assert region_of_phone("+447911123456") == "GG"  # the classic UK example is a Guernsey range
    assert region_of_phone("+77011234567") == "KZ"
    assert region_of_phone("+79161234567") == "RU"
    assert region_of_phone("+80012345678") is None  # non-geographic
    assert region_of_phone("not a number") is None


def test_fast_paths_serve_the_common_shapes() -> None:
    assert recipients._fast_phone("13800138000", "CN") == "+8613800138000"
    assert recipients._fast_phone("+8613800138000", "CN") == "+8613800138000"
    assert recipients._fast_phone("4155552671", "US") == "+14155552671"
    assert recipients._fast_phone("+14155552671", "CN") == "+14155552671"
    assert recipients._fast_phone("+447911123456", "CN") == "+447911123456"
    assert recipients._fast_email("john@example.com") == "john@example.com"
    assert recipients._fast_email("Info@Example.COM") == "info@example.com"
    # ... and leave everything else to the libraries.
    assert recipients._fast_phone("013800138000", "CN") is None
    assert recipients._fast_phone("8613800138000", "CN") is None
    assert recipients._fast_phone("+86 138 0013 8000", "CN") is None
    assert recipients._fast_email("a@xn--bcher-kva.ch") is None
    assert recipients._fast_email("a@b.local") is None


# ---- differential: phones --------------------------------------------------------------------------

REGIONS = ["CN", "US", "GB", "DE", "CA", "RU", "KZ", "IT", "AR", "GG", "JE", "FR", "IN", "BR", "JP", "AU"]


FULL_WIDTH_DIGITS = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _phone_bodies(rng: random.Random) -> Iterator[tuple[str, str]]:
    """(digits, a region they are meant for) -- some valid, many near misses."""
    while True:
        kind = rng.randrange(9)
        if kind == 0:  # CN mobile
            yield "1" + rng.choice("3456789") + _digits(rng, 9), "CN"
        elif kind == 1:  # CN landline, with or without trunk 0
            area = rng.choice(["10", "20", "21", "22", "311", "351", "571", "755", "851", "898"])
            yield rng.choice(["", "0"]) + area + _digits(rng, rng.choice([7, 8])), "CN"
        elif kind == 2:  # NANP
            yield (
                rng.choice(["", "1"])
                + rng.choice("23456789")
                + _digits(rng, 2)
                + rng.choice("23456789")
                + _digits(rng, 6),
                rng.choice(["US", "CA"]),
            )
        elif kind == 3:  # UK mobile / London / Guernsey
            body = rng.choice(["7", "20", "1481", "1534", "1624"]) + _digits(rng, rng.choice([6, 8, 9]))
            yield rng.choice(["", "0"]) + body, rng.choice(["GB", "GG", "JE"])
        elif kind == 4:  # DE
            body = rng.choice(["15", "16", "17", "30", "40", "89", "221"]) + _digits(rng, rng.randint(5, 9))
            yield rng.choice(["", "0"]) + body, "DE"
        elif kind == 5:  # RU / KZ
            yield rng.choice(["", "8"]) + rng.choice("3478969") + _digits(rng, 9), rng.choice(["RU", "KZ"])
        elif kind == 6:  # IT, AR, others with odd prefix rules
            region = rng.choice(["IT", "AR", "FR", "IN", "BR", "JP", "AU"])
            yield rng.choice(["", "0", "15", "9"]) + _digits(rng, rng.randint(6, 11)), region
        elif kind == 7:  # carrier-code and IDD look-alikes for CN
            yield (
                rng.choice(["11", "12", "179", "00", "17951", "12593"]) + _digits(rng, rng.randint(6, 11)),
                "CN",
            )
        else:  # anything
            yield _digits(rng, rng.randint(1, 19)), rng.choice(REGIONS)


def _calling_code(region: str) -> str:
    return str(phonenumbers.country_code_for_region(region))


def _decorate_phone(rng: random.Random, body: str, region: str) -> str:
    cc = _calling_code(region)
    style = rng.randrange(16)
    if style <= 4:
        return body
    if style == 5:
        return "+" + cc + body
    if style == 6:
        return "00" + cc + body
    if style == 7:
        return cc + body  # country code without '+'
    if style == 8:
        return "+" + cc + " " + body[:3] + " " + body[3:7] + " " + body[7:]
    if style == 9:
        return body[:3] + "-" + body[3:6] + "-" + body[6:]
    if style == 10:
        return "(" + body[:3] + ") " + body[3:]
    if style == 11:
        return rng.choice([" ", "\t", "  ", "\n"]) + body + rng.choice(["", " ", "\r\n"])
    if style == 12:
        cut = rng.randrange(len(body) + 1)
        return body[:cut] + rng.choice(["x", "a", "ext. 12", "#", "*"]) + body[cut:]
    if style == 13:
        return rng.choice(["++", "+0", "+", "011", "+" + cc + "0"]) + body
    if style == 14:
        return body.translate(FULL_WIDTH_DIGITS)  # full-width digits
    return rng.choice(["tel:+" + cc + body, "+" + cc + body + ";ext=1", " " * 245 + body])


def _example_numbers() -> Iterator[tuple[str, str]]:
    """phonenumbers' own example number for every region and type, as national and + input."""
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (
            PhoneNumberType.MOBILE,
            PhoneNumberType.FIXED_LINE,
            PhoneNumberType.TOLL_FREE,
            PhoneNumberType.PREMIUM_RATE,
            PhoneNumberType.SHARED_COST,
            PhoneNumberType.VOIP,
            PhoneNumberType.PERSONAL_NUMBER,
            PhoneNumberType.PAGER,
            PhoneNumberType.UAN,
            PhoneNumberType.VOICEMAIL,
        ):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            nsn = phonenumbers.national_significant_number(number)
            yield nsn, region
            yield f"+{number.country_code}{nsn}", region
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        number = phonenumbers.example_number_for_non_geo_entity(code)
        if number is not None:
            yield f"+{code}{phonenumbers.national_significant_number(number)}", "US"


def _mutations(rng: random.Random, raw: str) -> list[str]:
    head, digits = ("+", raw[1:]) if raw.startswith("+") else ("", raw)
    position = rng.randrange(len(digits))
    return [
        raw,
        head + digits[:-1],
        head + digits + rng.choice(string.digits),
        head + digits[:position] + rng.choice(string.digits) + digits[position + 1 :],
    ]


def _assert_same_phone(raw: str, region: str) -> bool:
    expected = reference_phone(raw, region)
    fast = recipients._fast_phone(raw, region)
    assert fast is None or fast == expected, (raw, region, fast, expected)
    assert module_phone(raw, region) == expected, (raw, region)
    if expected is not None:
        # The stored form is stable: normalizing it again, from any region, gives it back.
        assert module_phone(expected, rng_region(expected)) == expected
    return fast is not None


def rng_region(e164: str) -> str:
    return REGIONS[len(e164) % len(REGIONS)]


def test_phone_differential_generated() -> None:
    rng = random.Random(20240611)
    bodies = _phone_bodies(rng)
    accepted = fast = 0
    for _ in range(4000):
        body, region = next(bodies)
        if rng.random() < 0.1:
            region = rng.choice([*REGIONS, "cn", "ZZ", "001"])
        raw = _decorate_phone(rng, body, region)
        fast += _assert_same_phone(raw, region)
        accepted += reference_phone(raw, region) is not None
    # Sanity of the generator: plenty of valid numbers, many of them through the fast path.
    assert accepted > 1000
    assert fast > 300


def test_phone_differential_metadata_examples() -> None:
    rng = random.Random(7)
    fast = total = 0
    for raw, region in _example_numbers():
        for candidate in _mutations(rng, raw):
            total += 1
            fast += _assert_same_phone(candidate, region)
            # The same digits read in another region exercise other prefix rules.
            fast += _assert_same_phone(candidate, rng.choice(REGIONS))
    assert total > 2000
    assert fast > total // 4


def test_region_of_phone_matches_phonenumbers() -> None:
    rng = random.Random(11)
    seen: set[str] = set()
    for raw, region in _example_numbers():
        for candidate in _mutations(rng, raw):
            e164 = reference_phone(candidate, region)
            if e164 is None or e164 in seen:
                continue
            seen.add(e164)
            expected = phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
            assert region_of_phone(e164) == (None if expected == "001" else expected), e164
            code, nsn = split_e164(e164)
            assert f"+{code}{nsn}" == e164
            assert phonenumbers.parse(e164, None).country_code == code
    assert len(seen) > 500


# ---- differential: emails --------------------------------------------------------------------------

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"


def _local_part(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind <= 3:
        return ".".join(
            "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(1, 8)))
            for _ in range(rng.randint(1, 3))
        )
    if kind == 4:
        return "".join(rng.choice(ATEXT + "..") for _ in range(rng.randint(1, 12)))  # odd dots
    if kind == 5:
        return '"' + "".join(rng.choice(ATEXT + ' .@\\"') for _ in range(rng.randint(0, 8))) + '"'
    if kind == 6:
        return rng.choice(["postmaster", "Postmaster", "INFO", "Sales", "webMaster", "abuse", "noc"])
    if kind == 7:
        return rng.choice(["jürgen", "用户", "José", "ñ.n", "a\u0301b", "e\u200bx"])
    if kind == 8:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.choice([1, 63, 64, 65, 200])))
    return "".join(rng.choice(ATEXT + " ,;:<>()[]\\") for _ in range(rng.randint(1, 10)))


def _label(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind <= 3:
        return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(1, 10)))
    if kind == 4:
        return "".join(rng.choice(string.ascii_lowercase + "-") for _ in range(rng.randint(1, 8)))
    if kind == 5:
        return rng.choice(["xn--bcher-kva", "xn--80ak6aa92e", "xn--abc", "ab--cd", "a--b", "XN--BCHER-KVA"])
    if kind == 6:
        return rng.choice(["bücher", "例え", "пример", "ÉCOLE", "ß"])
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.choice([62, 63, 64])))


def _domain(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind <= 4:
        labels = [_label(rng) for _ in range(rng.randint(1, 3))]
        return ".".join([*labels, rng.choice(["com", "COM", "org", "io", "de", "cn", "c0m", "1", "x"])])
    if kind == 5:
        return rng.choice(["example.com", "Example.COM", "example", "EXAMPLE.ORG", "mail.example.net"])
    if kind == 6:  # special-use and reserved
        return rng.choice(
            [
                "localhost",
                "x.local",
                "LOCAL",
                "foo.test",
                "a.invalid",
                "b.onion",
                "home.arpa",
                "1.in-addr.arpa",
                "test",
                "local.com",
                "notlocal",
                "testing.com",
                "arpa.org",
            ]
        )
    if kind == 7:  # dots in odd places
        return rng.choice(["example.com.", ".example.com", "example..com", "-a.com", "a-.com", "a.-com"])
    if kind == 8:
        return rng.choice(["[127.0.0.1]", "[IPv6:::1]", "1.2.3.4", "exa_mple.com", "exa mple.com"])
    return ".".join(_label(rng) for _ in range(rng.randint(3, 6))) + ".com"


def _emails(rng: random.Random) -> Iterator[str]:
    while True:
        address = _local_part(rng) + "@" + _domain(rng)
        style = rng.randrange(12)
        if style == 0:
            address = " " + address + "\t"
        elif style == 1:
            address = "John <" + address + ">"
        elif style == 2:
            address = address.replace("@", rng.choice(["@@", "", "\uff20", "@a@"]), 1)
        elif style == 3:
            address = address.upper()
        yield address


def _assert_same_email(raw: str) -> bool:
    expected = reference_email(raw)
    fast = recipients._fast_email(raw.strip())
    assert fast is None or fast == expected, (raw, fast, expected)
    assert module_email(raw) == expected, raw
    return fast is not None


def test_email_differential_generated() -> None:
    rng = random.Random(424242)
    emails = _emails(rng)
    fast = accepted = 0
    for _ in range(5000):
        raw = next(emails)
        fast += _assert_same_email(raw)
        accepted += reference_email(raw) is not None
    assert accepted > 1000
    assert fast > 800


@pytest.mark.parametrize(
    "length",
    [250, 253, 254, 255, 256],
)
def test_email_total_length_limit(length: int) -> None:
    domain = "a" * 60 + "." + "b" * 60 + "." + "c" * 60 + ".com"
    local = "x" * (length - len(domain) - 1)
    assert _assert_same_email(f"{local}@{domain}") == (length <= 254)


def test_domain_length_limits() -> None:
    for label in (62, 63, 64):
        _assert_same_email("x@" + "a" * label + ".com")
    for size in (252, 253, 254):
        # 63-character labels, then one to make up the size: the whole domain is `size` long.
        labels = ["a" * 63, "b" * 63, "c" * 63]
        rest = size - 3 * 64 - 4
        domain = ".".join([*labels, "d" * rest, "com"])
        assert len(domain) == size
        _assert_same_email("x@" + domain)
