"""Build the exact bytes of an outgoing email, without ``email.message``.

Why not the standard library: ``EmailMessage()`` + ``set_content()`` + ``as_bytes()`` costs about
a third of a millisecond per message (header objects, the policy machinery, the generator and its
re-folding). For bulk sends that is more than the SMTP round trip itself, so this module writes the
bytes directly. It produces a small, fixed shape of message and nothing else:

* header block: ``Date``, ``From``, ``To``, ``Subject``, ``Message-ID``, optional ``Reply-To``, the
  caller's extra headers (List-Unsubscribe, Feedback-ID, Auto-Submitted...), ``MIME-Version``,
  ``Content-Type`` and (single part) ``Content-Transfer-Encoding``;
* body: ``text/plain; charset=utf-8``, or ``multipart/alternative`` with the text part first and
  the HTML part second (RFC 2046 5.1.4: the last part is the preferred one).

Standards the output keeps, and how:

* RFC 5322: CRLF line endings everywhere; every line at most 998 octets; header lines folded at
  whitespace to at most 78 characters where that is possible; at most one of each generated field.
  Header values are rejected with :class:`ValueError` when they contain CR or LF (header injection),
  or when an extra header's name is not a valid field name or repeats a generated field.
* RFC 2047: non-ASCII text in ``Subject``, in display names and in extra headers is written as
  UTF-8 encoded-words, ``Q`` or ``B`` whichever is shorter, each at most 75 characters and never
  splitting a character, on lines of at most 76 characters. An ASCII subject that could be mistaken
  for an encoded-word (``=?``), has edge blanks (which parsers strip) or control characters, or
  cannot be folded to 78 characters is encoded as well, so it survives the round trip exactly.
* RFC 5322 3.2.4 / 3.4: printable ASCII display names stay readable: a plain phrase of atoms as
  is, anything else as a quoted-string with ``"`` and ``\\`` escaped; other names are encoded-words.
  Runs of white space in a name become one space and edge white space goes, as phrase semantics
  have it (parsers do it anyway, inconsistently between the forms).
  (A name too long for one encoded-word becomes several; RFC 2047 6.2 has decoders drop the blank
  between them, but CPython 3.11's structured ``From`` parser keeps it as one space.)
* RFC 6532: addresses with non-ASCII characters (SMTPUTF8) are written as raw UTF-8; they are
  never encoded-words, which are not allowed in addresses.
* RFC 2045: the body is ``7bit`` when it is ASCII without NUL and no line is longer than 998
  octets, else ``quoted-printable`` when most of it is ASCII, else ``base64`` (e.g. Chinese, where
  quoted-printable would triple the size). The message is therefore always 7-bit clean below the
  headers and needs no 8BITMIME.
* RFC 2046: the multipart boundary contains ``=_``, which neither quoted-printable nor base64 can
  produce, and it is checked against the 7bit parts, so it cannot occur in the content.

Bodies are normalised the way ``set_content`` does it: CR, LF and CRLF all become CRLF, and a
non-empty body always ends with a line break (the SMTP ``DATA`` payload must end with CRLF anyway).
No dot-stuffing is applied: that is the SMTP client's job (RFC 5321 4.5.2), and doing it here too
would double the dots.

What is cached: everything that typically repeats across a batch (the encoded Subject, the From and
Reply-To lines, the extra headers block and the encoded body of identical content) is memoised, so
a message of a batch costs little more than its Date, To, Message-ID and a few string joins.
"""

from __future__ import annotations

import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

from comms.kit.clock import utcnow

__all__ = ["EmailContent", "build_email", "message_id_for"]


@dataclass(frozen=True, slots=True)
class EmailContent:
    from_addr: str  # "news@acme.example"
    to_addr: str
    subject: str
    text: str
    html: str | None = None
    from_name: str | None = None
    reply_to: str | None = None
    message_id: str = ""  # without angle brackets, e.g. "log_0193...@acme.example"; builder adds <>
    date: datetime | None = None  # aware datetime; None -> now (UTC)
    # e.g. List-Unsubscribe, List-Unsubscribe-Post, List-Id, Auto-Submitted, Feedback-ID
    extra_headers: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------------------------------
# limits (RFC 5322 2.1.1, RFC 2047 2)

_SOFT_LIMIT: Final = 78  # SHOULD: characters per header line, excluding CRLF
_HARD_LIMIT: Final = 998  # MUST: octets per line, excluding CRLF
_EW_LINE_LIMIT: Final = 76  # RFC 2047: a line holding an encoded-word
_EW_MAX: Final = 75  # RFC 2047: one encoded-word

# --------------------------------------------------------------------------------------------------
# validation

# A deliberately plain addr-spec: no whitespace or control characters anywhere, nothing that
# would let one value smuggle in another address or a comment (``<>,;"()[]\``), one ``@`` with
# something either side. Non-ASCII letters are allowed (RFC 6532, SMTPUTF8).
_ADDR_RE: Final = re.compile(r"[^@\s<>,;:\"()\[\]\\\x00-\x1f\x7f]+@[^@\s<>,;:\"()\[\]\\\x00-\x1f\x7f]+")
# ftext (RFC 5322 3.6.8): printable ASCII except ':'. At most 54 characters, so that "Name: " and
# a first encoded-word of 20 still fit the 76 characters RFC 2047 allows such a line. (Starting the
# value on a continuation line instead would be read back with a leading space by CPython.)
_FIELD_NAME_RE: Final = re.compile(r"[!-9;-~]{1,54}")
# A phrase that needs no quoting: atoms (atext) separated by single spaces.
_ATOM_PHRASE_RE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?: [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
# One run of optional blanks plus the non-blank text after it: the units header folding moves.
_FOLD_CHUNK_RE: Final = re.compile(r"[ \t]*[^ \t]+")

# Fields this module writes itself; an extra header with one of these names would duplicate it.
_GENERATED_FIELDS: Final = frozenset(
    {
        "date",
        "from",
        "to",
        "subject",
        "message-id",
        "reply-to",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
# Address fields a message from comms never carries as extras: its recipient and sender are the
# builder's (an extra Cc or Bcc would also be parsed by mail software as more recipients).
_ADDRESS_FIELDS: Final = frozenset(
    {
        "cc",
        "bcc",
        "sender",
        "return-path",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "resent-bcc",
    }
)
# Other fields RFC 5322 3.6 allows at most once: an extra header may carry each of them only once.
_SINGLE_FIELDS: Final = frozenset({"sender", "cc", "bcc", "in-reply-to", "references"})


def _reject_newlines(value: str, what: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} contains CR or LF (header injection)")


def _check_addr(addr: str, what: str) -> str:
    _reject_newlines(addr, what)
    if _ADDR_RE.fullmatch(addr) is None:
        raise ValueError(f"{what} is not a plain address: {addr!r}")
    return addr


def _domain_of(addr: str) -> str:
    return _check_addr(addr, "from_addr").rpartition("@")[2]


def message_id_for(log_id: str, from_addr: str) -> str:
    """``{log_id}@{domain of from_addr}``: unique per message, and in the sender's namespace."""
    _check_msg_id_left(log_id)
    return f"{log_id}@{_domain_of(from_addr)}"


def _check_msg_id_left(log_id: str) -> None:
    _reject_newlines(log_id, "log_id")
    if not log_id or "@" in log_id or _ADDR_RE.fullmatch(log_id + "@x") is None:
        raise ValueError(f"not usable as the left part of a Message-ID: {log_id!r}")


# --------------------------------------------------------------------------------------------------
# RFC 2047 encoded-words

_EW_Q_PREFIX: Final = "=?utf-8?q?"
_EW_B_PREFIX: Final = "=?utf-8?b?"
_EW_OVERHEAD: Final = len(_EW_Q_PREFIX) + 2  # prefix + "?="

# Q characters that may stand for themselves in every context, including phrases (RFC 2047 5(3)).
_Q_LITERAL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")


@lru_cache(maxsize=4096)
def _q_char(char: str) -> str:
    if char in _Q_LITERAL:
        return char
    if char == " ":
        return "_"
    return "".join(f"={byte:02X}" for byte in char.encode("utf-8"))


def _utf8_len(char: str) -> int:
    code = ord(char)
    return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4


def _encoded_words(text: str, first_width: int) -> list[str]:
    """Encode ``text`` as UTF-8 encoded-words; the first at most ``first_width`` characters long,
    the others at most 75. Words end on character boundaries, so each decodes on its own."""
    text.encode("utf-8")  # lone surrogates: UnicodeEncodeError (a ValueError) here, not later
    first_width = min(_EW_MAX, first_width)
    q_pieces = [_q_char(char) for char in text]
    q_len = sum(map(len, q_pieces))
    sizes = [_utf8_len(char) for char in text]
    b_len = (sum(sizes) + 2) // 3 * 4
    words: list[str] = []
    budget = first_width - _EW_OVERHEAD
    if q_len <= b_len:
        current: list[str] = []
        used = 0
        for piece in q_pieces:
            if used + len(piece) > budget and current:
                words.append(_EW_Q_PREFIX + "".join(current) + "?=")
                current, used, budget = [], 0, _EW_MAX - _EW_OVERHEAD
            current.append(piece)
            used += len(piece)
        words.append(_EW_Q_PREFIX + "".join(current) + "?=")
        return words
    start = 0
    used = 0
    for index, size in enumerate(sizes):
        if used + size > budget // 4 * 3 and index > start:
            chunk = text[start:index].encode("utf-8")
            words.append(_EW_B_PREFIX + binascii.b2a_base64(chunk, newline=False).decode("ascii") + "?=")
            start, used, budget = index, 0, _EW_MAX - _EW_OVERHEAD
        used += size
    chunk = text[start:].encode("utf-8")
    words.append(_EW_B_PREFIX + binascii.b2a_base64(chunk, newline=False).decode("ascii") + "?=")
    return words


def _encoded_field(name: str, text: str) -> str:
    """``Name: =?..?=`` folded one encoded-word per line."""
    prefix = f"{name}: "
    words = _encoded_words(text, _EW_LINE_LIMIT - len(prefix))
    return prefix + "\r\n ".join(words) + "\r\n"


# --------------------------------------------------------------------------------------------------
# plain (ASCII) header text


def _is_plain_text(value: str) -> bool:
    """ASCII text a parser gives back unchanged when written raw: printable, no edge blanks,
    nothing that looks like the start of an encoded-word."""
    return (
        value.isascii()
        and value.isprintable()
        and not value.startswith(" ")
        and not value.endswith(" ")
        and "=?" not in value
    )


def _fold(prefix: str, value: str) -> list[str]:
    """Fold ``prefix + value`` before blank runs so lines stay within 78 characters where the
    words allow it. Continuation lines start with the blanks, so unfolding restores ``value``."""
    lines: list[str] = []
    line = prefix
    has_text = False  # never fold straight after the field name: the line would hold no text
    for chunk in _FOLD_CHUNK_RE.findall(value):
        if has_text and len(line) + len(chunk) > _SOFT_LIMIT:
            lines.append(line)
            line = chunk
        else:
            line += chunk
            has_text = True
    lines.append(line)
    return lines


@lru_cache(maxsize=1024)
def _subject_field(subject: str) -> str:
    _reject_newlines(subject, "subject")
    if _is_plain_text(subject):
        lines = _fold("Subject: ", subject)
        if max(map(len, lines)) <= _SOFT_LIMIT:
            return "\r\n".join(lines) + "\r\n"
    return _encoded_field("Subject", subject)


def _display_name(name: str) -> str | None:
    """The name as a phrase or quoted-string, or None when it must be encoded-words."""
    if not (name.isascii() and name.isprintable()) or "=?" in name:
        return None
    if _ATOM_PHRASE_RE.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=1024)
def _mailbox_field(field: str, name: str | None, addr: str) -> str:
    _check_addr(addr, field)
    if name:
        _reject_newlines(name, f"{field} display name")
        # White space in a phrase is not significant (RFC 5322 3.2.2), and parsers collapse runs
        # of it, Unicode spaces included, even inside encoded-words: normalise it once here so
        # the name reads back the same whichever form it is written in.
        name = " ".join(name.split())
    if not name:
        return f"{field}: {addr}\r\n"
    prefix = f"{field}: "
    angle = f"<{addr}>"
    phrase = _display_name(name)
    if phrase is not None:
        # Folded at its blanks (inside a quoted-string too: RFC 5322 3.2.4 makes the CRLF of
        # such FWS invisible); an unbreakable word may leave a line over 78 but never over 998.
        lines = _fold(prefix, f"{phrase} {angle}")
        if max(map(len, lines)) <= _HARD_LIMIT:
            return "\r\n".join(lines) + "\r\n"
    words = _encoded_words(name, _EW_LINE_LIMIT - len(prefix))
    lines = [prefix + words[0], *(" " + word for word in words[1:])]
    if len(lines[-1]) + 1 + len(angle) <= _EW_LINE_LIMIT:
        lines[-1] += " " + angle
    else:
        lines.append(" " + angle)
    return "\r\n".join(lines) + "\r\n"


@lru_cache(maxsize=256)
def _extra_fields(extra_headers: tuple[tuple[str, str], ...]) -> str:
    seen: set[str] = set()
    out: list[str] = []
    for name, raw_value in extra_headers:
        if _FIELD_NAME_RE.fullmatch(name) is None:
            raise ValueError(f"invalid header field name: {name!r}")
        key = name.lower()
        if key in _GENERATED_FIELDS:
            raise ValueError(f"{name} is generated by the builder; it cannot be an extra header")
        if key in _ADDRESS_FIELDS:
            raise ValueError(f"{name} is an address header; recipients and senders are not extra headers")
        if key in _SINGLE_FIELDS and key in seen:
            raise ValueError(f"{name} may occur only once")
        seen.add(key)
        _reject_newlines(raw_value, f"header {name}")
        value = raw_value.strip(" \t")
        if value.isascii() and value.replace("\t", " ").isprintable():
            lines = _fold(f"{name}: ", value)
            if max(map(len, lines)) > _HARD_LIMIT:
                raise ValueError(f"header {name} has a word too long to fold within 998 octets")
            out.append("\r\n".join(lines) + "\r\n")
        else:
            # Non-ASCII or control characters: RFC 2047 unstructured text, as the standard
            # library does for any header it has no structured class for.
            out.append(_encoded_field(name, value))
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Date

_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _format_date(when: datetime) -> str:
    """RFC 5322 3.3 date-time, e.g. ``Tue, 07 Jan 2025 09:05:00 +0100``."""
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("date must be timezone-aware")
    minutes, seconds = divmod(int(offset.total_seconds()), 60)
    if seconds:  # a zone offset with seconds (historic LMT) has no RFC 5322 form: write UTC
        when, minutes = when.astimezone(UTC), 0
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return (
        f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} {when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hours:02d}{minutes:02d}"
    )


# --------------------------------------------------------------------------------------------------
# body

_ASCII_BYTES: Final = bytes(range(128))
_B64_LINE: Final = 76


def _canonical_body(text: str) -> str:
    """CR, LF and CRLF to CRLF, and a final line break on a non-empty body."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    return text.replace("\n", "\r\n")


@lru_cache(maxsize=64)
def _encode_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, encoded body). The body ends with CRLF unless it is empty."""
    body = _canonical_body(text)
    if (
        body.isascii()
        and "\x00" not in body
        and (len(body) <= _HARD_LIMIT or max(map(len, body.split("\r\n"))) <= _HARD_LIMIT)
    ):
        return "7bit", body.encode("ascii")
    data = body.encode("utf-8")
    non_ascii = len(data.translate(None, _ASCII_BYTES))
    # Quoted-printable writes each non-ASCII octet as 3 characters, base64 every octet as 4/3:
    # QP is smaller (and stays readable) while fewer than about 1 octet in 6 is non-ASCII.
    if non_ascii * 6 < len(data):
        # istext=True keeps the CRLF line breaks, soft-breaks lines at 76, and encodes "=",
        # controls, trailing blanks and a lone "." line.
        return "quoted-printable", binascii.b2a_qp(data, istext=True)
    b64 = binascii.b2a_base64(data, newline=False)
    lines = [b64[i : i + _B64_LINE] for i in range(0, len(b64), _B64_LINE)]
    lines.append(b"")
    return "base64", b"\r\n".join(lines)


def _new_boundary(parts: tuple[bytes, ...]) -> str:
    while True:
        # "=_" cannot occur in quoted-printable or base64 output; 7bit parts are checked.
        boundary = "=_" + secrets.token_hex(12)
        marker = boundary.encode("ascii")
        if not any(marker in part for part in parts):
            return boundary


# --------------------------------------------------------------------------------------------------
# the message


def build_email(content: EmailContent) -> bytes:
    """The message as sent after SMTP ``DATA`` (before dot-stuffing), CRLF line endings.

    Raises :class:`ValueError` for header injection (CR/LF in a header value), malformed
    addresses or Message-ID, a naive ``date``, or an extra header that is invalid or would
    duplicate a generated one.
    """
    if content.message_id:
        message_id = _check_addr(content.message_id, "message_id")  # id-left "@" id-right
    else:
        message_id = message_id_for(secrets.token_hex(16), content.from_addr)

    try:
        extras = _extra_fields(content.extra_headers)
    except TypeError:  # lists instead of tuples: unhashable, so not cacheable
        extras = _extra_fields.__wrapped__(tuple((name, value) for name, value in content.extra_headers))

    head = [
        "Date: ",
        _format_date(content.date if content.date is not None else utcnow()),
        "\r\n",
        _mailbox_field("From", content.from_name, content.from_addr),
        "To: ",
        _check_addr(content.to_addr, "To"),
        "\r\n",
        _subject_field(content.subject),
        "Message-ID: <",
        message_id,
        ">\r\n",
    ]
    if content.reply_to is not None:
        head.append(_mailbox_field("Reply-To", None, content.reply_to))
    head.append(extras)
    head.append("MIME-Version: 1.0\r\n")

    text_cte, text_body = _encode_body(content.text)
    if content.html is None:
        head += (
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: ",
            text_cte,
            "\r\n\r\n",
        )
        return "".join(head).encode("utf-8") + text_body

    html_cte, html_body = _encode_body(content.html)
    boundary = _new_boundary((text_body, html_body))
    head += ('Content-Type: multipart/alternative; boundary="', boundary, '"\r\n\r\n')
    delimiter = f"--{boundary}\r\n"
    body = b"".join(
        (
            f"{delimiter}Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: {text_cte}\r\n\r\n".encode("ascii"),
            text_body,
            f"\r\n{delimiter}Content-Type: text/html; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: {html_cte}\r\n\r\n".encode("ascii"),
            html_body,
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        )
    )
    return "".join(head).encode("utf-8") + body
