"""The circuit breaker per provider account (dispatch/breaker.py)."""

from __future__ import annotations

from comms.dispatch.breaker import Breaker, BreakerState


def opened(at: float = 0.0) -> Breaker:
    breaker = Breaker(threshold=2, cooldown=30.0)
    breaker.failed(at)
    breaker.failed(at)
    assert breaker.state(at) is BreakerState.OPEN
    return breaker


def test_it_opens_after_threshold_consecutive_failures_and_turns_calls_away() -> None:
    breaker = Breaker(threshold=2, cooldown=30.0)
    breaker.failed(0.0)
    assert breaker.allows(1.0)
    breaker.failed(1.0)
    assert not breaker.allows(2.0) and not breaker.allows(30.9)


def test_half_open_lets_one_probe_through_until_it_reports() -> None:
    breaker = opened()
    assert breaker.state(31.0) is BreakerState.HALF_OPEN
    assert breaker.allows(31.0)  # the probe
    assert not any(breaker.allows(31.0 + i) for i in range(20))  # everyone else waits for its word
    breaker.succeeded()
    assert breaker.state(40.0) is BreakerState.CLOSED and breaker.allows(40.0) and breaker.allows(40.0)


def test_a_failed_probe_opens_it_again_for_a_full_cooldown() -> None:
    breaker = opened()
    assert breaker.allows(31.0)
    breaker.failed(32.0)
    assert breaker.state(32.0) is BreakerState.OPEN and not breaker.allows(61.0)
    assert breaker.allows(62.0)  # the next probe, after another cooldown


def test_a_probe_that_never_reports_is_given_up_after_a_cooldown() -> None:
    breaker = opened()
    assert breaker.allows(31.0)
    assert not breaker.allows(60.0)
    assert breaker.allows(61.0)
