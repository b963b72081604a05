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


@pytest.mark.parametrize(
    "text",
    [
        "Don't stop",
        "STOPP",
        "",
        "T T",
        "tea",
        "Stopped by the store",
        "when does the sale end?",
        "HELP me",
        "yes please",
    ],
)
def test_help_start_and_the_chinese_letters_must_be_the_whole_message(text: str) -> None:
    assert classify(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "stop please",
        "STOP ALL",
        "Stop texting me",
        "Unsubscribe me",
        "cancel my subscription",
        "please stop texting me about this",
        "remove me from your list",
        "don't text me",
        "Don\u2019t text me anymore",
        "opt-out please",
        "no more messages!",
        "\u6211\u8981\u9000\u8ba2",  # 我要退订
    ],
)
def test_an_opt_out_in_more_words_opts_out(text: str) -> None:
    """47 CFR 64.1200(a)(10): consent is taken back by any reasonable means, not only the keyword."""
    assert classify(text) is Keyword.STOP
