"""How many SMS segments (billable parts) a text takes, and in which encoding.

Why it matters: carriers bill, and throttle, per segment, so the count is shown before a send, is
priced per recipient, and must match what the SMSC will actually send. A plain division gets it
wrong at the part boundaries, so this module packs the parts the way the handset/SMSC does.

The rules (3GPP TS 23.038 and TS 23.040):

* GSM-7 when every character is in the GSM 03.38 default alphabet or its extension table. Basic
  characters take 1 septet; extension characters (``^ { } \\ [ ~ ] |``, ``€`` and form feed) take 2,
  an ESC septet plus the character. Anything else means UCS-2, counted in UTF-16 code units (what
  every SMSC really sends), so a character outside the BMP (most emoji) takes 2, a surrogate pair.
* One part holds 160 septets or 70 UCS-2 units. A concatenated message spends 6 octets of each part
  on the user data header, leaving 153 septets or 67 units per part.
* A part must not end between an ESC and its character, nor between the two halves of a surrogate
  pair: such a 2-unit character moves whole to the next part, leaving a 1-unit gap. That is why
  ``"a" * 152 + "€" + "a" * 152`` (306 septets) takes three parts, not two.

Speed: this runs for every recipient of a bulk send, so the common case (ASCII text made of basic
GSM characters) is one ``bytes.translate`` that deletes the basic alphabet and finds nothing left.
Other text takes one regex scan for a non-GSM character. Packing is skipped whenever the bounds
agree (each part but the last holds at least limit - 1 units), and otherwise jumps from one 2-unit
character to the next with a regex instead of walking every character. Results are shared
instances of the frozen :class:`SegmentInfo`, so a call costs well under a microsecond for
typical texts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

__all__ = ["SegmentInfo", "count_segments"]


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    encoding: Literal["GSM-7", "UCS-2"]
    units: int  # septets for GSM-7 (extension-table chars count 2), UTF-16 code units for UCS-2
    segments: int


# GSM 03.38 default alphabet, in code order 0x00-0x7F, without 0x1B (ESC, the extension escape).
GSM_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ" + "ÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# The extension table: each costs ESC + one septet.
GSM_EXTENSION: Final = "\f^{}\\[~]|€"

GSM_SINGLE: Final = 160
GSM_PART: Final = 153
UCS2_SINGLE: Final = 70
UCS2_PART: Final = 67

_BASIC_ASCII: Final = "".join(char for char in GSM_BASIC if char.isascii()).encode("ascii")
_EXTENSION_ASCII: Final = "".join(char for char in GSM_EXTENSION if char.isascii()).encode("ascii")
_NOT_GSM_RE: Final = re.compile("[^" + re.escape(GSM_BASIC + GSM_EXTENSION) + "]")
_EXTENSION_RE: Final = re.compile("[" + re.escape(GSM_EXTENSION) + "]")
_ASTRAL_RE: Final = re.compile("[\U00010000-\U0010ffff]")


@lru_cache(maxsize=4096)
def _info(encoding: Literal["GSM-7", "UCS-2"], units: int, segments: int) -> SegmentInfo:
    # Immutable, so one instance per distinct answer can be shared; a cache hit costs a quarter
    # of a frozen dataclass's __init__, which would otherwise dominate the fast path.
    return SegmentInfo(encoding, units, segments)


def _parts(text: str, units: int, wide: int, wide_re: re.Pattern[str], single: int, part: int) -> int:
    """Parts for ``units`` units of which ``wide`` characters take 2 and may not be split."""
    if units <= single:
        return 1
    fewest = -(-units // part)  # every part full
    if not wide:
        return fewest
    # A 2-unit character that does not fit wastes 1 unit, so each part but the last holds at
    # least part - 1: when that bound gives the same count, no packing is needed.
    most = (units - 1) // (part - 1) + 1
    return fewest if most == fewest else _pack(text, wide_re, part)


def _pack(text: str, wide: re.Pattern[str], part: int) -> int:
    """Parts needed when the characters ``wide`` matches take 2 units and may not be split.

    Runs of 1-unit characters fill parts arithmetically; only the 2-unit characters are visited.
    """
    segments = 1
    used = 0
    pos = 0
    for match in wide.finditer(text):
        used += match.start() - pos  # the run of 1-unit characters before this one
        if used > part:
            full, used = divmod(used, part)
            if used == 0:
                full, used = full - 1, part
            segments += full
        if used + 2 > part:  # would straddle the boundary: start a new part
            segments += 1
            used = 0
        used += 2
        pos = match.end()
    used += len(text) - pos
    if used > part:
        segments += (used - 1) // part
    return segments


def count_segments(text: str) -> SegmentInfo:
    """Encoding, units and parts of ``text`` as an SMS. The empty text is one (empty) GSM-7 part."""
    if text.isascii():
        rest = text.encode("ascii").translate(None, _BASIC_ASCII)
        gsm = not rest.translate(None, _EXTENSION_ASCII)
        extension = len(rest)
    else:
        gsm = _NOT_GSM_RE.search(text) is None
        extension = sum(map(text.count, GSM_EXTENSION)) if gsm else 0

    if gsm:
        units = len(text) + extension
        return _info("GSM-7", units, _parts(text, units, extension, _EXTENSION_RE, GSM_SINGLE, GSM_PART))

    units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    pairs = units - len(text)
    return _info("UCS-2", units, _parts(text, units, pairs, _ASTRAL_RE, UCS2_SINGLE, UCS2_PART))
