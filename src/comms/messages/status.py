"""The per-item state machine (CONTRACT.md "Log statuses").

    scheduled -> queued -> sending -> sent -> delivered | undelivered
    queued | sending -> failed            (permanent error, or retries exhausted)
    scheduled | queued | deferred -> cancelled
    queued -> deferred -> queued          (quiet hours, provider flow limits)
    sending -> unknown -> sent | failed | queued (reconciled, or re-sent once as a possible duplicate)
    queued | deferred -> delivered | undelivered   (only a possible duplicate: the receipt of the
                                          earlier attempt arrived before the re-send)
    suppressed, rejected                  (final at acceptance)

The dispatcher moves rows with guarded SQL (``WHERE status = 'sending' AND lease_owner = ...``),
including one move no API action may make: a claimed row whose batch was cancelled before its
request left ends ``cancelled`` (``unknown`` if an earlier attempt may have reached the provider);
receipts and API actions ask :func:`can_transition` so that terminal states never regress: a
late or duplicate receipt cannot move ``delivered`` back to ``sent``, nor ``failed`` to ``delivered``.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    DEFERRED = "deferred"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


_NEXT: dict[Status, frozenset[Status]] = {
    Status.SCHEDULED: frozenset({Status.QUEUED, Status.SENDING, Status.CANCELLED, Status.SUPPRESSED}),
    Status.QUEUED: frozenset(
        {Status.SENDING, Status.DEFERRED, Status.CANCELLED, Status.FAILED, Status.SUPPRESSED, Status.REJECTED}
    ),
    Status.DEFERRED: frozenset({Status.QUEUED, Status.SENDING, Status.CANCELLED}),
    Status.SENDING: frozenset(
        {
            Status.SENT,
            Status.DELIVERED,  # a receipt that overtakes the provider's answer
            Status.UNDELIVERED,
            Status.QUEUED,  # a transient failure: retried later
            Status.FAILED,
            Status.UNKNOWN,
            Status.SUPPRESSED,  # an unsubscribe between acceptance and dispatch wins
            Status.REJECTED,
            Status.DEFERRED,
        }
    ),
    Status.SENT: frozenset({Status.DELIVERED, Status.UNDELIVERED}),
    Status.UNKNOWN: frozenset(
        {Status.SENT, Status.FAILED, Status.QUEUED, Status.DELIVERED, Status.UNDELIVERED}
    ),
    # A retry of a batch re-queues what failed or bounced: a new attempt under the same log id.
    Status.FAILED: frozenset({Status.QUEUED}),
    Status.UNDELIVERED: frozenset({Status.QUEUED}),
    Status.DELIVERED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.SUPPRESSED: frozenset(),
    Status.REJECTED: frozenset(),
}

# States from which the dispatcher can still pick an item up.
PENDING = frozenset({Status.SCHEDULED, Status.QUEUED, Status.DEFERRED})
# States no further event of the send itself changes (a batch retry may re-queue failures).
FINAL = frozenset(
    {
        Status.SENT,
        Status.DELIVERED,
        Status.UNDELIVERED,
        Status.FAILED,
        Status.CANCELLED,
        Status.SUPPRESSED,
        Status.REJECTED,
        Status.UNKNOWN,
    }
)
RETRYABLE = frozenset({Status.FAILED, Status.UNDELIVERED})


def can_transition(current: str, new: str) -> bool:
    """Whether ``current -> new`` is a move the state machine allows (same state: no)."""
    try:
        return Status(new) in _NEXT[Status(current)]
    except ValueError:
        return False


def allowed_sources(new: Status) -> frozenset[Status]:
    """Every state from which ``new`` may be entered (for guarded UPDATEs)."""
    return frozenset(s for s, targets in _NEXT.items() if new in targets)
