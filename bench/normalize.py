"""Per-recipient cost of recipient normalization: fast path vs the plain library path.

    .venv/bin/python bench/normalize.py [count]

100,000 random CN mobiles (national format, region "CN") and 100,000 plain email addresses by
default. The library path is timed on a tenth of them (it is ~15-20x slower). Each figure is the
best of three passes and includes the call overhead of the public function.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence

import email_validator
import phonenumbers

from comms.messages.recipients import normalize_email, normalize_phone

# Prefixes of CN mobile ranges (13x, 15x, 18x, 19x...).
CN_MOBILE_PREFIXES = ["130", "135", "138", "139", "150", "158", "166", "177", "186", "188", "199"]


def cn_mobiles(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(CN_MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}" for _ in range(count)]


def emails(rng: random.Random, count: int) -> list[str]:
    domains = ["example.com", "Example.org", "mail.example.net", "corp.example.co.uk", "qq.com", "163.com"]
    first = ["john", "Mary", "li.wei", "zhang_san", "a.b.c", "sales+cn", "O'Neil"]
    return [f"{rng.choice(first)}{rng.randrange(100000)}@{rng.choice(domains)}" for _ in range(count)]


def library_phone(raw: str) -> str:
    number = phonenumbers.parse(raw, "CN")
    if not phonenumbers.is_valid_number(number):
        raise ValueError(raw)
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164


def library_email(raw: str) -> str:
    return email_validator.validate_email(raw.strip(), check_deliverability=False).normalized


def per_item_us(fn: Callable[[str], str], items: Sequence[str], repeat: int = 3) -> float:
    """Best of ``repeat`` passes (the machine is shared; the minimum is the least noisy figure)."""
    for item in items[:100]:  # warm caches (compiled metadata, regexes)
        fn(item)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rng = random.Random(2024)
    phones = cn_mobiles(rng, count)
    plus_phones = ["+86" + phone for phone in phones]
    addresses = emails(rng, count)
    sample = max(1, count // 10)

    rows = [
        ("CN mobile, national  fast path", per_item_us(lambda raw: normalize_phone(raw, "CN"), phones)),
        ("CN mobile, +86       fast path", per_item_us(lambda raw: normalize_phone(raw, "CN"), plus_phones)),
        ("CN mobile, national  library  ", per_item_us(library_phone, phones[:sample])),
        ("email                fast path", per_item_us(normalize_email, addresses)),
        ("email                library  ", per_item_us(library_email, addresses[:sample])),
    ]
    print(f"{count:,} recipients per set (library path timed on {sample:,})")
    for label, micros in rows:
        print(f"  {label}  {micros:7.2f} us/recipient  ({micros * count / 1e6:6.3f} s per {count:,})")


if __name__ == "__main__":
    main()
