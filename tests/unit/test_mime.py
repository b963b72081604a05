"""build_email: every message is parsed back with the standard library and compared field by field.

The parser (``BytesParser(policy=email.policy.default)``) is the reference: a header or body that
does not come back exactly as it went in is a bug in the builder, whatever the bytes look like.
"""

# Full-width CJK punctuation in the sample texts is intended.
# ruff: noqa: RUF001

from __future__ import annotations

import itertools
import re
import secrets
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser, Parser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comms.kit.clock import set_clock
from comms.providers.email import mime
from comms.providers.email.mime import EmailContent, build_email, message_id_for

FROM = "news@acme.example"
TO = "bob@example.com"
WHEN = datetime(2025, 1, 7, 9, 5, 3, tzinfo=timezone(timedelta(hours=1)))
REQUIRED = ("Date", "From", "To", "Subject", "Message-ID", "MIME-Version", "Content-Type")
ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def content(**overrides: object) -> EmailContent:
    fields: dict[str, object] = {
        "from_addr": FROM,
        "to_addr": TO,
        "subject": "Your March statement",
        "text": "Hello Bob,\nyour statement is ready.\n",
        "message_id": "log_0193abc@acme.example",
        "date": WHEN,
    }
    fields.update(overrides)
    return EmailContent(**fields)  # type: ignore[arg-type]


def canonical(text: str) -> str:
    """What the body must decode to: CRLF line breaks, a final one unless empty."""
    text = re.sub(r"\r\n|\r|\n", "\r\n", text)
    return text if not text or text.endswith("\r\n") else text + "\r\n"


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def check_wire(raw: bytes) -> None:
    """Transport-level rules that hold for every message, whatever its content."""
    assert raw.endswith(b"\r\n")
    stripped = raw.replace(b"\r\n", b"")
    assert b"\r" not in stripped and b"\n" not in stripped, "bare CR or LF"
    lines = raw.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines), "line over 998 octets"
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert body.isascii(), "body must be 7-bit clean (7bit / quoted-printable / base64)"
    for line in header_block(raw).split(b"\r\n"):
        for word in ENCODED_WORD.findall(line):
            assert len(word) <= 75, word
        if ENCODED_WORD.search(line):
            assert len(line) <= 76, line


def rfc2047_display_name(raw: bytes) -> str:
    """The From display name decoded by RFC 2047 rules, for names written as several encoded-words.

    CPython 3.11's structured address parser joins adjacent encoded-words of a phrase with a
    space; RFC 2047 6.2 (and mail clients) drop the white space between them. ``decode_header``
    follows the RFC, so it is the reference when the two disagree, and only then.
    """
    head = header_block(raw).decode("utf-8").replace("\r\n ", " ")
    field = next(line for line in head.split("\r\n") if line.startswith("From: "))
    phrase = field.removeprefix("From: ").rsplit(" <", 1)[0]
    assert ENCODED_WORD.fullmatch(phrase.split(" ")[0].encode()), "only encoded names may differ"
    assert len(phrase.split(" ")) > 1, "a single encoded-word must round-trip through the parser too"
    return str(make_header(decode_header(phrase)))


def parse(raw: bytes) -> EmailMessage:
    check_wire(raw)
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects, msg.defects
    names = Counter(name.lower() for name in msg)
    assert all(count == 1 for count in names.values()), names
    for name in REQUIRED:
        assert name in msg, name
    assert msg["MIME-Version"] == "1.0"
    return msg


def bodies(msg: EmailMessage) -> tuple[str, str | None]:
    if msg.get_content_type() == "text/plain":
        return msg.get_content(), None
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
    return parts[0].get_content(), parts[1].get_content()


def roundtrip(item: EmailContent) -> EmailMessage:
    raw = build_email(item)
    msg = parse(raw)
    assert str(msg["Subject"]) == item.subject
    (sender,) = msg["From"].addresses
    assert sender.addr_spec == item.from_addr
    expected_name = " ".join((item.from_name or "").split())
    if sender.display_name != expected_name:
        assert rfc2047_display_name(raw) == expected_name
    assert [a.addr_spec for a in msg["To"].addresses] == [item.to_addr]
    if item.message_id:
        assert str(msg["Message-ID"]) == f"<{item.message_id}>"
    if item.date is not None:
        assert msg["Date"].datetime == item.date.replace(microsecond=0)
    if item.reply_to is not None:
        assert [a.addr_spec for a in msg["Reply-To"].addresses] == [item.reply_to]
    else:
        assert "Reply-To" not in msg
    for name, value in item.extra_headers:
        assert str(msg[name]) == value.strip(" \t")
    text, html = bodies(msg)
    assert text == canonical(item.text)
    if item.html is None:
        assert html is None
    else:
        assert html == canonical(item.html)
    return msg


def cte(msg: EmailMessage) -> str:
    return str(msg["Content-Transfer-Encoding"])


# ------------------------------------------------------------------------------------------------
# headers


def test_plain_ascii_message() -> None:
    raw = build_email(content())
    msg = roundtrip(content())
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert cte(msg) == "7bit"
    assert b"Date: Tue, 07 Jan 2025 09:05:03 +0100\r\n" in raw
    assert b"Message-ID: <log_0193abc@acme.example>\r\n" in raw
    assert b"Subject: Your March statement\r\n" in raw  # plain ASCII stays readable
    assert "Auto-Submitted" not in msg  # the caller decides that


def test_header_order_and_no_extras_by_default() -> None:
    head = header_block(build_email(content())).decode()
    names = [line.split(":", 1)[0] for line in head.split("\r\n") if not line.startswith(" ")]
    assert names == [
        "Date",
        "From",
        "To",
        "Subject",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]


def test_extra_headers_and_reply_to_round_trip() -> None:
    extras = (
        (
            "List-Unsubscribe",
            "<https://acme.example/u/" + "t" * 70 + ">, <mailto:unsub@acme.example?subject=u>",
        ),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("List-Id", "Acme News <news.acme.example>"),
        ("Auto-Submitted", "auto-generated"),
        ("Feedback-ID", "cmp_42:tenant_7:comms"),
    )
    msg = roundtrip(content(extra_headers=extras, reply_to="help@acme.example"))
    assert str(msg["Auto-Submitted"]) == "auto-generated"
    raw = build_email(content(extra_headers=extras))
    # The long List-Unsubscribe is folded at the blank after the comma.
    assert b">,\r\n <mailto:unsub@acme.example?subject=u>\r\n" in raw


def test_extra_header_non_ascii_is_encoded_unstructured_text() -> None:
    extras = (("X-Campaign", "Frühjahrs-Aktion 春季"),)
    raw = build_email(content(extra_headers=extras))
    assert b"X-Campaign: =?utf-8?" in raw
    roundtrip(content(extra_headers=extras))


def test_extra_headers_as_lists_are_accepted() -> None:
    extras = [["Feedback-ID", "a:b:c"]]
    msg = parse(build_email(content(extra_headers=extras)))
    assert str(msg["Feedback-ID"]) == "a:b:c"


def test_non_ascii_subject_uses_short_encoded_words() -> None:
    subject = "Grüße aus Köln — 限时优惠，仅限今日！" * 4
    raw = build_email(content(subject=subject))
    assert b"Subject: =?utf-8?" in raw
    roundtrip(content(subject=subject))
    for line in header_block(raw).split(b"\r\n"):
        assert len(line) <= 78


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "  leading blanks",
        "trailing blanks  ",
        "two  blanks   inside",
        "tab\tinside",
        "=?utf-8?q?not_an_encoded_word?=",
        "looks like =?utf-8?b?SGk=?= an encoded word",
        "a " * 200,
        "word" * 300,  # 1200 characters without a blank: cannot fold, must be encoded
        "Ünïcödé " * 30,
        "emoji 😀🎉 and ZWJ 👩‍👩‍👧",
        "控制\x00字符\x1b",
        '= ? _ \\ " ( ) < > , ; :',
    ],
)
def test_subject_round_trip(subject: str) -> None:
    raw = build_email(content(subject=subject))
    roundtrip(content(subject=subject))
    for line in header_block(raw).split(b"\r\n"):
        assert len(line) <= 78, line


def test_long_ascii_subject_is_folded_not_encoded() -> None:
    subject = "This month: " + " ".join(f"offer{i}" for i in range(40))
    raw = build_email(content(subject=subject))
    head = header_block(raw)
    assert b"=?" not in head
    assert b"\r\n offer" in head
    roundtrip(content(subject=subject))


@pytest.mark.parametrize(
    "name",
    [
        "Acme News",
        "Acme, Inc.",
        'The "Best" Shop',
        "back\\slash",
        "  spaced  name ",
        "tab\tand  runs ",
        " Jürgen \t Müller ",
        "Acme\u00a0Corp\u2003\x1f Ltd",
        "   ",
        "Jürgen Müller",
        "极客商城",
        "=?utf-8?q?fake?=",
        "O'Brien & Sons",
        "x" * 120,
        "Very Long Display Name That Goes On " * 4,
        "a <b@c.d>, e@f.g",
    ],
)
def test_display_names_round_trip(name: str) -> None:
    raw = build_email(content(from_name=name))
    roundtrip(content(from_name=name))
    for line in header_block(raw).split(b"\r\n"):
        # Only an unbreakable ASCII word may exceed 78 (as the standard library does too).
        assert len(line) <= 78 or b" " not in line.removeprefix(b"From: ").strip(), line


def test_display_name_quoting() -> None:
    assert b"From: Acme News <news@acme.example>\r\n" in build_email(content(from_name="Acme News"))
    assert b'From: "Acme, Inc." <news@acme.example>\r\n' in build_email(content(from_name="Acme, Inc."))
    raw = build_email(content(from_name='Say "hi"\\'))
    assert b'From: "Say \\"hi\\"\\\\" <news@acme.example>\r\n' in raw


def test_smtputf8_addresses_are_raw_utf8() -> None:
    item = content(from_addr="nachrichten@bücher.example", to_addr="jürgen@例え.jp", from_name="Bücher")
    raw = build_email(item)
    assert "To: jürgen@例え.jp\r\n".encode() in raw
    assert "<nachrichten@bücher.example>".encode() in raw
    check_wire(raw)
    # BytesParser keeps undecoded 8-bit header octets as surrogates; parse the UTF-8 text instead.
    msg = Parser(policy=policy.default).parsestr(raw.decode("utf-8"))
    assert msg["To"].addresses[0].addr_spec == "jürgen@例え.jp"
    assert msg["From"].addresses[0].addr_spec == "nachrichten@bücher.example"
    assert msg["From"].addresses[0].display_name == "Bücher"


def test_date_formats_and_defaults() -> None:
    msg = parse(build_email(content(date=datetime(2024, 2, 29, 23, 59, 59, 999, tzinfo=UTC))))
    assert str(msg["Date"]) == "Thu, 29 Feb 2024 23:59:59 +0000"
    west = timezone(-timedelta(hours=3, minutes=30))
    msg = parse(build_email(content(date=datetime(2025, 7, 1, 8, 0, tzinfo=west))))
    assert str(msg["Date"]) == "Tue, 01 Jul 2025 08:00:00 -0330"
    # Offsets with seconds have no RFC 5322 form: written in UTC, same instant.
    odd = timezone(timedelta(minutes=19, seconds=32))
    msg = parse(build_email(content(date=datetime(1937, 5, 1, 12, 0, tzinfo=odd))))
    assert msg["Date"].datetime == datetime(1937, 5, 1, 12, 0, tzinfo=odd)

    fixed = datetime(2030, 3, 4, 5, 6, 7, tzinfo=UTC)
    set_clock(lambda: fixed)
    try:
        msg = parse(build_email(content(date=None)))
    finally:
        set_clock(None)
    assert msg["Date"].datetime == fixed

    with pytest.raises(ValueError, match="timezone-aware"):
        build_email(content(date=datetime(2025, 1, 1)))


def test_message_ids() -> None:
    assert message_id_for("log_0193abc", "news@acme.example") == "log_0193abc@acme.example"
    assert message_id_for("log_1", "ops@mail.acme.example") == "log_1@mail.acme.example"
    with pytest.raises(ValueError):
        message_id_for("log_1", "no-at-sign")
    with pytest.raises(ValueError):
        message_id_for("bad id", FROM)
    with pytest.raises(ValueError):
        message_id_for("a@b", FROM)

    # No id given: one is generated in the sender's domain, still exactly one header.
    first = parse(build_email(content(message_id="")))
    second = parse(build_email(content(message_id="")))
    assert str(first["Message-ID"]).endswith("@acme.example>")
    assert str(first["Message-ID"]) != str(second["Message-ID"])

    for bad in ("<log_1@acme.example>", "log_1", "log 1@acme.example", "log_1@acme.example\r\nBcc: x@y.z"):
        with pytest.raises(ValueError):
            build_email(content(message_id=bad))


# ------------------------------------------------------------------------------------------------
# header injection and invalid input


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nthere"},
        {"subject": "Hi\rthere"},
        {"from_name": "Acme\r\nBcc: victim@example.com"},
        {"from_addr": "news@acme.example\r\nBcc: victim@example.com"},
        {"to_addr": "bob@example.com\nBcc: victim@example.com"},
        {"reply_to": "help@acme.example\rX: y"},
        {"extra_headers": (("X-Ok", "fine\r\nBcc: victim@example.com"),)},
        {"extra_headers": (("X-Ok\r\nBcc", "victim@example.com"),)},
        {"message_id": "a@b\r\nBcc: victim@example.com"},
    ],
)
def test_header_injection_is_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_email(content(**overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        {"to_addr": "bob@example.com, eve@example.com"},
        {"to_addr": "Bob <bob@example.com>"},
        {"to_addr": "bob"},
        {"to_addr": ""},
        {"from_addr": "news at acme"},
        {"reply_to": "a@b; c@d"},
        {"extra_headers": (("Subject", "second subject"),)},
        {"extra_headers": (("message-id", "<x@y>"),)},
        {"extra_headers": (("Content-Type", "text/html"),)},
        {"extra_headers": (("Bad Name", "x"),)},
        {"extra_headers": (("Bad:Name", "x"),)},
        {"extra_headers": (("", "x"),)},
        {"extra_headers": (("X-" + "n" * 53, "x"),)},
        {"extra_headers": (("Cc", "a@b.c"), ("cc", "d@e.f"))},
        {"extra_headers": (("X-Long", "y" * 1000),)},
        {"text": "lone surrogate \udcff"},
    ],
)
def test_invalid_input_is_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_email(content(**overrides))


# ------------------------------------------------------------------------------------------------
# bodies


def test_chinese_body_is_base64() -> None:
    text = "您好，您的三月账单已经生成，请登录查看详情。\n" * 20
    msg = roundtrip(content(text=text, subject="您的账单"))
    assert cte(msg) == "base64"


def test_mostly_ascii_body_is_quoted_printable() -> None:
    text = "Hello Jürgen,\nyour café order is on its way.\n" * 5
    msg = roundtrip(content(text=text))
    assert cte(msg) == "quoted-printable"


def test_long_ascii_line_is_quoted_printable() -> None:
    text = "x" * 5000 + "\nshort line\n" + "y" * 999
    msg = roundtrip(content(text=text))
    assert cte(msg) == "quoted-printable"
    ok = "x" * 998 + "\n" + "y" * 998
    assert cte(roundtrip(content(text=ok))) == "7bit"


def test_long_non_ascii_line_round_trips() -> None:
    roundtrip(content(text="é" * 3000))
    roundtrip(content(text="中" * 3000))


@pytest.mark.parametrize(
    "text",
    [
        "From here on\nFrom the start\n>From quoted\n",
        ".\n..\n.leading dot\n.",
        "trailing blanks   \ntrailing tab\t\n \n\t\n",
        "",
        "\n",
        "\n\n\n",
        "no final newline",
        "mixed\r\nline\rendings\nhere\r\r\n\n",
        "NUL \x00 and controls \x01\x0b\x0c\x1b\x7f",
        "= equals =3D and =\n=",
        "unicode line separators \u2028 \u2029 \x85 stay",
        "😀 emoji and 中文 and Ünïcödé",
    ],
)
def test_body_round_trip(text: str) -> None:
    roundtrip(content(text=text))
    roundtrip(content(text=text, html=text))


def test_empty_bodies() -> None:
    raw = build_email(content(text=""))
    assert raw.endswith(b"Content-Transfer-Encoding: 7bit\r\n\r\n")
    msg = roundtrip(content(text="", html=""))
    assert bodies(msg) == ("", "")


def test_multipart_alternative_layout() -> None:
    html = "<html><body><p>Grüße, <b>Bob</b></p></body></html>"
    msg = roundtrip(content(html=html))
    assert msg.get_content_type() == "multipart/alternative"
    assert "Content-Transfer-Encoding" not in msg
    html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html_part is not None and text_part is not None
    assert html_part.get_content() == canonical(html)
    assert text_part.get_content() == canonical(content().text)


def test_boundary_never_occurs_in_content(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first boundary drawn is one the 7bit text contains; the builder must draw again.
    tokens = itertools.cycle(["deadbeef" * 3, "cafebabe" * 3])
    monkeypatch.setattr(secrets, "token_hex", lambda _n: next(tokens))
    text = "--=_" + "deadbeef" * 3 + "\nsneaky\n--=_" + "deadbeef" * 3 + "--\n"
    raw = build_email(content(text=text, html="<p>x</p>"))
    assert b'boundary="=_' + b"cafebabe" * 3 + b'"' in raw
    roundtrip(content(text=text, html="<p>x</p>"))


def test_crlf_everywhere() -> None:
    raw = build_email(content(text="a\nb\rc\r\nd", html="<p>\n</p>\r"))
    assert re.search(rb"(?<!\r)\n", raw) is None
    assert re.search(rb"\r(?!\n)", raw) is None


# ------------------------------------------------------------------------------------------------
# property-based round trips

header_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=120)
display_names = st.one_of(
    st.none(),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), min_size=1, max_size=80),
)
body_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=1500)
long_lines = st.builds(
    lambda n, c, tail: c * n + tail,
    st.integers(900, 2500),
    st.sampled_from(["a", " ", "é", "中", "😀", "."]),
    body_text,
)
addresses = st.sampled_from(
    ["bob@example.com", "o'brien+tag@sub.example.org", "x@y.z", "first.last@acme.example"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=header_text,
    from_name=display_names,
    text=st.one_of(body_text, long_lines),
    html=st.one_of(st.none(), body_text, long_lines),
    to_addr=addresses,
)
def test_random_messages_round_trip(
    subject: str, from_name: str | None, text: str, html: str | None, to_addr: str
) -> None:
    roundtrip(content(subject=subject, from_name=from_name, text=text, html=html, to_addr=to_addr))


@settings(max_examples=100, deadline=None)
@given(name=st.from_regex(r"[!-9;-~]{1,54}", fullmatch=True), value=header_text)
def test_random_extra_headers_round_trip(name: str, value: str) -> None:
    if name.lower() in mime._GENERATED_FIELDS | mime._ADDRESS_FIELDS:
        with pytest.raises(ValueError):
            build_email(content(extra_headers=((name, value),)))
        return
    msg = parse(build_email(content(extra_headers=((name, value),))))
    assert str(msg[name]) == value.strip(" \t")


# Speed is measured by bench/mime.py (figures in docs/benchmarks.md), not asserted here.


@pytest.mark.parametrize("name", ["Cc", "BCC", "Sender", "Resent-To"])
def test_address_headers_are_not_accepted_as_extras(name: str) -> None:
    with pytest.raises(ValueError, match="address header"):
        build_email(content(extra_headers=((name, "someone@example.com"),)))
