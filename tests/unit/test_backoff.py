"""Retry and deferral waits (dispatch/backoff.py)."""

from __future__ import annotations

import pytest

from comms.dispatch.backoff import DEFAULT_DEFERRAL, MAX_DEFERRAL_WAIT, deferral_wait, retry_delay


def test_retry_delay_grows_is_capped_and_honours_a_longer_hint() -> None:
    for attempt, (low, high) in {1: (5, 10), 2: (10, 20), 3: (20, 40), 10: (150, 300)}.items():
        assert all(low <= retry_delay(attempt, 10, 300) <= high for _ in range(50))
    assert all(retry_delay(1, 10, 300, hint=120) == 120 for _ in range(20))
    assert all(retry_delay(1, 10, 300, hint=9999) == 300 for _ in range(20))  # capped even then


@pytest.mark.parametrize(
    ("retry_after", "deferrals", "wait"),
    [
        (None, 0, DEFAULT_DEFERRAL),
        (None, 1, 2 * DEFAULT_DEFERRAL),
        (60.0, 3, 8 * 60.0),
        (30.0, 0, 30.0),  # the provider's own wait first (Tencent: 30 s)
        (30.0, 1, 60.0),
        (0.0, 0, 1.0),  # "now" is a second: never a busy loop
        (0.0, 3, 8.0),
        (None, 6, MAX_DEFERRAL_WAIT),  # 64 minutes: the hour is the most it backs off to
        (None, 500, MAX_DEFERRAL_WAIT),  # no overflow however often
        (7200.0, 0, 7200.0),  # a provider asking for longer is believed
    ],
)
def test_deferral_wait_doubles_up_to_an_hour(retry_after: float | None, deferrals: int, wait: float) -> None:
    assert deferral_wait(retry_after, deferrals) == wait
