"""Inbound SMS keywords (COMPLIANCE.md S3, S4, S6): what counts as STOP, HELP and START."""

from __future__ import annotations

import pytest

from comms.compliance.keywords import Keyword, classify


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        " Stop! ",
        "opt out",
        "OPT-OUT",
        "optout",
        "T",
        "td",
        "\u9000\u8ba2",  # 退订
        "\u9000\u8ba2\u3002",  # 退订 with the ideographic full stop
        "\uff33\uff34\uff2f\uff30",  # full-width STOP, as a Chinese input method types it
        "\uff54\uff44",  # full-width td
        "STOP\uff01",  # full-width exclamation mark
    ],
)
def test_opt_out_keywords_in_any_width_and_case(text: str) -> None:
    assert classify(text) is Keyword.STOP


@pytest.mark.parametrize(
    ("text", "keyword"),
    [("HELP", Keyword.HELP), ("\uff29\uff2e\uff26\uff2f", Keyword.HELP), ("start", Keyword.START)],
)
def test_help_and_start(text: str, keyword: Keyword) -> None:
    assert classify(text) is keyword


@pytest.mark.parametrize("text", ["stop please", "Don't stop", "STOPP", "", "T T", "tea"])
def test_a_keyword_must_be_the_whole_message(text: str) -> None:
    assert classify(text) is None
