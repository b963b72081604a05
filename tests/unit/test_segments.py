"""count_segments: known boundary cases, plus a slow reference packer compared on random text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comms.providers.sms.segments import GSM_BASIC, GSM_EXTENSION, SegmentInfo, count_segments

EMOJI = "\U0001f600"  # 😀, outside the BMP: a UTF-16 surrogate pair


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SegmentInfo("GSM-7", 0, 1)),
        ("a", SegmentInfo("GSM-7", 1, 1)),
        ("a" * 160, SegmentInfo("GSM-7", 160, 1)),
        ("a" * 161, SegmentInfo("GSM-7", 161, 2)),
        ("a" * 306, SegmentInfo("GSM-7", 306, 2)),
        ("a" * 307, SegmentInfo("GSM-7", 307, 3)),
        ("a" * 459, SegmentInfo("GSM-7", 459, 3)),
        ("a" * 460, SegmentInfo("GSM-7", 460, 4)),
        ("中" * 70, SegmentInfo("UCS-2", 70, 1)),
        ("中" * 71, SegmentInfo("UCS-2", 71, 2)),
        ("中" * 134, SegmentInfo("UCS-2", 134, 2)),
        ("中" * 135, SegmentInfo("UCS-2", 135, 3)),
        ("€", SegmentInfo("GSM-7", 2, 1)),
        ("€" * 80, SegmentInfo("GSM-7", 160, 1)),
        ("€" * 81, SegmentInfo("GSM-7", 162, 2)),
        ("\f", SegmentInfo("GSM-7", 2, 1)),
        (EMOJI, SegmentInfo("UCS-2", 2, 1)),
        (EMOJI * 35, SegmentInfo("UCS-2", 70, 1)),
        (EMOJI * 36, SegmentInfo("UCS-2", 72, 2)),
        # 67 units per part hold only 33 pairs: 36 pairs need two parts, 67 pairs three.
        (EMOJI * 67, SegmentInfo("UCS-2", 134, 3)),
        # One non-GSM character makes the whole message UCS-2.
        ("a" * 69 + "中", SegmentInfo("UCS-2", 70, 1)),
        ("a" * 70 + "中", SegmentInfo("UCS-2", 71, 2)),
        ("a" * 159 + "`", SegmentInfo("UCS-2", 160, 3)),  # backtick is not GSM
        ("Ω Σ Δ é ü ß £ ¥ § ¿ ¡", SegmentInfo("GSM-7", 21, 1)),  # basic-table non-ASCII
        ("Ç", SegmentInfo("GSM-7", 1, 1)),
        ("ç", SegmentInfo("UCS-2", 1, 1)),  # only the capital is in the table
        ("\x1b", SegmentInfo("UCS-2", 1, 1)),  # ESC itself is not a character
        ("\r\n", SegmentInfo("GSM-7", 2, 1)),
    ],
)
def test_known_counts(text: str, expected: SegmentInfo) -> None:
    assert count_segments(text) == expected


def test_every_extension_character_costs_two_septets() -> None:
    for char in "^{}\\[~]|€\f":
        assert count_segments(char) == SegmentInfo("GSM-7", 2, 1), repr(char)
        assert count_segments("a" * 158 + char) == SegmentInfo("GSM-7", 160, 1)
        assert count_segments("a" * 159 + char) == SegmentInfo("GSM-7", 161, 2)


def test_escape_pair_is_not_split_across_parts() -> None:
    # Septet 153 would be the ESC of '€': the pair moves to part 2, leaving 152 in part 1.
    text = "a" * 152 + "€" + "a" * 152
    assert count_segments(text) == SegmentInfo("GSM-7", 306, 3)  # a division would say 2
    # Same 306 septets with the '€' not on a boundary: two full parts.
    assert count_segments("a" * 151 + "€" + "a" * 153) == SegmentInfo("GSM-7", 306, 2)
    assert count_segments("€" + "a" * 304) == SegmentInfo("GSM-7", 306, 2)
    # Boundary of the second part too: 153 + 152, then the pair opens part 3.
    assert count_segments("a" * 305 + "{" + "a" * 151) == SegmentInfo("GSM-7", 458, 3)
    assert count_segments("a" * 305 + "{" + "a" * 152) == SegmentInfo("GSM-7", 459, 4)  # not 3


def test_surrogate_pair_is_not_split_across_parts() -> None:
    text = "中" * 66 + EMOJI + "中" * 66
    assert count_segments(text) == SegmentInfo("UCS-2", 134, 3)  # a division would say 2
    assert count_segments("中" * 65 + EMOJI + "中" * 67) == SegmentInfo("UCS-2", 134, 2)
    assert count_segments("a" * 66 + EMOJI + "a" * 66) == SegmentInfo("UCS-2", 134, 3)


def test_alphabet_tables() -> None:
    assert len(GSM_BASIC) == 127 == len(set(GSM_BASIC))  # 128 codes less ESC
    assert len(GSM_EXTENSION) == 10
    assert not set(GSM_BASIC) & set(GSM_EXTENSION)
    assert count_segments(GSM_BASIC) == SegmentInfo("GSM-7", 127, 1)


def test_lone_surrogate_is_counted_not_rejected() -> None:
    assert count_segments("\ud83d") == SegmentInfo("UCS-2", 1, 1)


# ------------------------------------------------------------------------------------------------
# reference: walk character by character, exactly as the rules read


def reference(text: str) -> SegmentInfo:
    basic, extension = set(GSM_BASIC), set(GSM_EXTENSION)
    if all(c in basic or c in extension for c in text):
        widths = [2 if c in extension else 1 for c in text]
        encoding, single, part = "GSM-7", 160, 153
    else:
        widths = [2 if ord(c) > 0xFFFF else 1 for c in text]
        encoding, single, part = "UCS-2", 70, 67
    units = sum(widths)
    if units <= single:
        return SegmentInfo(encoding, units, 1)  # type: ignore[arg-type]
    segments, used = 1, 0
    for width in widths:
        if used + width > part:
            segments, used = segments + 1, 0
        used += width
    return SegmentInfo(encoding, units, segments)  # type: ignore[arg-type]


gsm_text = st.text(st.sampled_from(GSM_BASIC + GSM_EXTENSION * 3), max_size=700)
basic_text = st.text(st.sampled_from(GSM_BASIC), max_size=700)
ucs2_text = st.text(st.sampled_from("中文ab€😀🎉\U00010348 "), max_size=300)
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=400)


@settings(max_examples=400, deadline=None)
@given(st.one_of(gsm_text, basic_text, ucs2_text, any_text))
def test_matches_reference_packer(text: str) -> None:
    assert count_segments(text) == reference(text)
