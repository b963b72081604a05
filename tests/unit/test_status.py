"""The per-item state machine (status.py docstring; CONTRACT.md "Log statuses").

The full 12 x 12 table is spelled out here independently of ``_NEXT`` so that any change to the
machine shows up as a failing case naming the exact move.
"""

from __future__ import annotations

import itertools

import pytest

from comms.messages.status import FINAL, PENDING, RETRYABLE, Status, allowed_sources, can_transition

S = Status

# Every allowed move, with the reason it exists. Everything not listed is refused.
ALLOWED: dict[Status, set[Status]] = {
    # scheduled -> queued; -> cancelled; straight to sending when due; an unsubscribe wins.
    S.SCHEDULED: {S.QUEUED, S.SENDING, S.CANCELLED, S.SUPPRESSED},
    # queued -> sending | deferred | cancelled | failed; suppression/rejection before dispatch.
    S.QUEUED: {S.SENDING, S.DEFERRED, S.CANCELLED, S.FAILED, S.SUPPRESSED, S.REJECTED},
    # deferred -> queued (quiet hours over) | cancelled; or picked up directly.
    S.DEFERRED: {S.QUEUED, S.SENDING, S.CANCELLED},
    # sending -> sent | failed | unknown; queued (transient failure, retried); deferred (flow limit);
    # suppressed (unsubscribe between acceptance and dispatch wins); rejected; delivered/undelivered
    # when a receipt overtakes the provider's own answer.
    S.SENDING: {
        S.SENT,
        S.DELIVERED,
        S.UNDELIVERED,
        S.QUEUED,
        S.FAILED,
        S.UNKNOWN,
        S.SUPPRESSED,
        S.REJECTED,
        S.DEFERRED,
    },
    # A receipt or bounce.
    S.SENT: {S.DELIVERED, S.UNDELIVERED},
    # Reconciled with the provider, or re-sent once as a possible duplicate.
    S.UNKNOWN: {S.SENT, S.FAILED, S.QUEUED, S.DELIVERED, S.UNDELIVERED},
    # A batch retry re-queues failed/undelivered items (new attempt, same log id).
    S.FAILED: {S.QUEUED},
    S.UNDELIVERED: {S.QUEUED},
    # Terminal.
    S.DELIVERED: set(),
    S.CANCELLED: set(),
    S.SUPPRESSED: set(),
    S.REJECTED: set(),
}

ALL_PAIRS = list(itertools.product(Status, Status))


def test_the_expected_table_covers_every_status() -> None:
    assert set(ALLOWED) == set(Status)
    assert len(Status) == 12


@pytest.mark.parametrize(("current", "new"), ALL_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in ALL_PAIRS])
def test_full_transition_table(current: Status, new: Status) -> None:
    assert can_transition(current, new) is (new in ALLOWED[current])


# The moves the docstring and CONTRACT.md draw, one by one.
DOCUMENTED_MOVES = [
    ("scheduled", "queued"),
    ("queued", "sending"),
    ("sending", "sent"),
    ("sent", "delivered"),
    ("sent", "undelivered"),
    ("queued", "failed"),
    ("sending", "failed"),
    ("scheduled", "cancelled"),
    ("queued", "cancelled"),
    ("deferred", "cancelled"),
    ("queued", "deferred"),
    ("deferred", "queued"),
    ("sending", "unknown"),
    ("unknown", "sent"),
    ("unknown", "failed"),
    ("unknown", "queued"),
    ("failed", "queued"),  # batch retry
    ("undelivered", "queued"),  # batch retry
]


@pytest.mark.parametrize(("current", "new"), DOCUMENTED_MOVES)
def test_documented_moves_are_allowed_with_plain_strings(current: str, new: str) -> None:
    assert can_transition(current, new) is True


@pytest.mark.parametrize(
    ("current", "new"),
    [
        # A late or duplicate receipt cannot regress a terminal state.
        ("delivered", "sent"),
        ("delivered", "undelivered"),
        ("delivered", "failed"),
        ("delivered", "queued"),
        ("failed", "delivered"),
        ("failed", "sent"),
        ("failed", "undelivered"),
        ("undelivered", "delivered"),
        ("undelivered", "sent"),
        ("sent", "sending"),
        ("sent", "queued"),
        ("sent", "failed"),
        ("sent", "unknown"),
        ("unknown", "sending"),
        # Skipping steps.
        ("scheduled", "sent"),
        ("queued", "sent"),
        ("queued", "delivered"),
        ("scheduled", "failed"),
        ("deferred", "failed"),
        # Cancelling once the request has left.
        ("sending", "cancelled"),
        ("sent", "cancelled"),
        ("unknown", "cancelled"),
    ],
)
def test_regressions_and_skips_are_refused(current: str, new: str) -> None:
    assert can_transition(current, new) is False


@pytest.mark.parametrize("terminal", ["delivered", "cancelled", "suppressed", "rejected"])
@pytest.mark.parametrize("new", [s.value for s in Status])
def test_terminal_states_never_move(terminal: str, new: str) -> None:
    assert can_transition(terminal, new) is False


@pytest.mark.parametrize("status", list(Status))
def test_same_state_is_not_a_transition(status: Status) -> None:
    assert can_transition(status, status) is False


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ("bogus", "queued"),
        ("queued", "bogus"),
        ("bogus", "bogus"),
        ("", "queued"),
        ("queued", ""),
        ("QUEUED", "sending"),  # statuses are lower-case
        ("queued", "SENDING"),
        (" queued", "sending"),
        ("queued", "sending "),
        ("pending", "queued"),
        ("sent", "read"),
    ],
)
def test_unknown_status_strings_are_refused(current: str, new: str) -> None:
    assert can_transition(current, new) is False


def test_can_transition_accepts_enum_members_and_strings_alike() -> None:
    assert can_transition(Status.QUEUED, Status.SENDING) is True
    assert can_transition("queued", Status.SENDING) is True
    assert can_transition(Status.QUEUED, "sending") is True


@pytest.mark.parametrize("new", list(Status))
def test_allowed_sources_is_consistent_with_can_transition(new: Status) -> None:
    sources = allowed_sources(new)
    assert isinstance(sources, frozenset)
    assert sources == {current for current in Status if can_transition(current, new)}
    assert sources == {current for current, targets in ALLOWED.items() if new in targets}


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (S.QUEUED, {S.SCHEDULED, S.DEFERRED, S.SENDING, S.UNKNOWN, S.FAILED, S.UNDELIVERED}),
        (S.SENDING, {S.SCHEDULED, S.QUEUED, S.DEFERRED}),
        (S.SENT, {S.SENDING, S.UNKNOWN}),
        (S.DELIVERED, {S.SENDING, S.SENT, S.UNKNOWN}),
        (S.CANCELLED, {S.SCHEDULED, S.QUEUED, S.DEFERRED}),
        (S.SCHEDULED, set()),  # only ever an initial state
    ],
)
def test_allowed_sources_examples(new: Status, expected: set[Status]) -> None:
    assert allowed_sources(new) == expected


def test_no_status_is_its_own_source() -> None:
    for status in Status:
        assert status not in allowed_sources(status)


def test_pending_and_final_are_disjoint_and_with_sending_cover_everything() -> None:
    assert PENDING.isdisjoint(FINAL)
    assert Status.SENDING not in PENDING
    assert Status.SENDING not in FINAL
    assert PENDING | FINAL | {Status.SENDING} == set(Status)


def test_pending_states() -> None:
    assert {S.SCHEDULED, S.QUEUED, S.DEFERRED} == PENDING


def test_every_pending_state_can_still_be_picked_up_or_cancelled() -> None:
    for status in PENDING:
        assert can_transition(status, S.SENDING) or can_transition(status, S.QUEUED)
        assert can_transition(status, S.CANCELLED)


def test_terminal_states_are_final() -> None:
    for status in (S.DELIVERED, S.CANCELLED, S.SUPPRESSED, S.REJECTED):
        assert status in FINAL


def test_retryable_states_are_final_and_can_be_requeued() -> None:
    assert {S.FAILED, S.UNDELIVERED} == RETRYABLE
    assert RETRYABLE <= FINAL
    for status in RETRYABLE:
        assert can_transition(status, S.QUEUED)


def test_status_values_are_the_contract_strings() -> None:
    assert {s.value for s in Status} == {
        "scheduled",
        "queued",
        "deferred",
        "sending",
        "sent",
        "delivered",
        "undelivered",
        "failed",
        "cancelled",
        "suppressed",
        "rejected",
        "unknown",
    }
    assert Status.SENT == "sent"  # StrEnum: compares and serialises as its value
