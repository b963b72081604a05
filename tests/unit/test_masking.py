from __future__ import annotations

import ast
import random
from pathlib import Path

import phonenumbers
import pytest

from comms.kit import masking
from comms.kit.masking import mask_recipient, split_calling_code


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+8613800138000", "138****8000"),  # the API's documented example
        ("+14155552671", "415***2671"),
        ("+447400123456", "740***3456"),
        ("+4930123456", "30****56"),  # 8 digits: first 2, last 2 (3 + 4 would hide one digit)
        ("+3721234567", "12***67"),  # 7 digits: first 2, last 2
        ("+35312345", "1***5"),  # 5 digits: first 1, last 1
        ("+2901234", "***"),  # 4 digits: nothing can be shown
        ("+390612345678", "061***5678"),  # Italian leading zero is part of the national number
    ],
)
def test_mask_phone(value: str, expected: str) -> None:
    assert mask_recipient("sms", value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("john@example.com", "j***@example.com"),
        ("J@Example.COM", "J***@Example.COM"),
        ("a.b+tag@mail.example.org", "a***@mail.example.org"),
        ('"john doe"@example.com', "j***@example.com"),
        ("用户@例え.jp", "用***@例え.jp"),
    ],
)
def test_mask_email(value: str, expected: str) -> None:
    assert mask_recipient("email", value) == expected


@pytest.mark.parametrize(
    ("channel", "value"),
    [
        ("sms", ""),
        ("sms", "+"),
        ("sms", "13800138000"),  # not E.164
        ("sms", "+0123456789"),
        ("sms", "+999123456789"),  # no such calling code
        ("sms", "+86 138 0013 8000"),
        ("sms", "+86"),
        ("email", ""),
        ("email", "john"),
        ("email", "@example.com"),
        ("email", "john@"),
        ("email", '""@example.com'),
        ("fax", "+8613800138000"),
    ],
)
def test_unparseable_is_fully_masked(channel: str, value: str) -> None:
    assert mask_recipient(channel, value) == "***"


def test_split_calling_code_matches_phonenumbers() -> None:
    rng = random.Random(5)
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        nsn = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 14)))
        assert split_calling_code(f"+{code}{nsn}") == (code, nsn)
    assert split_calling_code("+1") is None


def test_phone_mask_hides_the_middle_of_real_numbers() -> None:
    rng = random.Random(9)
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        number = phonenumbers.example_number_for_type(region, rng.choice([0, 1, 2]))
        if number is None:
            continue
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        nsn = phonenumbers.national_significant_number(number)
        masked = mask_recipient("sms", e164)
        if len(nsn) < 5:
            assert masked == "***"
            continue
        assert len(masked) == len(nsn)
        assert "*" in masked
        keep = (3, 4) if len(nsn) >= 10 else (2, 2) if len(nsn) >= 7 else (1, 1)
        assert len(nsn) - sum(keep) >= 3  # never fewer than three digits hidden
        assert masked == nsn[: keep[0]] + "*" * (len(nsn) - sum(keep)) + nsn[-keep[1] :]


def test_kit_imports_nothing_from_comms() -> None:
    tree = ast.parse(Path(masking.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(alias.name.split(".")[0] == "comms" for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            assert (node.module or "").split(".")[0] != "comms"
