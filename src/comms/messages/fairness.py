"""Fair share of the dispatchers between batches (and so between tenants).

Rows are claimed by (priority, queue_rank). A batch's rows get ranks spread over virtual time,
as if the batch were sent at FAIR_RATE messages per second from the moment it is due: row i of a
batch due at t ranks at t + (i // FAIR_SLICE) * FAIR_STEP_MS. A bulk alone still goes as fast as
the workers can send (the rank only orders, the due time decides eligibility), but a batch of the
same priority accepted 2 s into a 100k bulk ranks ahead of the bulk's rows past its first ~2 s
worth, so it waits for about one claim instead of the whole bulk (virtual clock scheduling).

A batch retry re-queues its failed rows spread the same way from the moment of the retry, and
rows held back for quiet hours from the time the window opens (messages/repository.py). A row
re-queued on its own (a retry of one message, a deferral, a reaped lease) ranks at its new due time.
"""

from __future__ import annotations

from datetime import datetime

from comms.kit.clock import epoch_ms

FAIR_SLICE = 500  # rows that share one rank step (one claim's worth)
FAIR_STEP_MS = 50  # 500 rows per 50 ms: a virtual 10,000 messages/s per batch
MAX_SLICES = 200  # a batch spreads over at most 10 s of virtual time (100,000 rows)
# Every claimable row ranks within this of its due time, so a claim can stop its index scan at
# now + FAIR_HORIZON_MS instead of reading every scheduled row beyond it.
FAIR_HORIZON_MS = MAX_SLICES * FAIR_STEP_MS


def rank_of(due: datetime, position: int = 0) -> int:
    """The rank of the row at ``position`` within its batch, due at ``due``."""
    return epoch_ms(due) + min(position // FAIR_SLICE, MAX_SLICES) * FAIR_STEP_MS


__all__ = ["FAIR_HORIZON_MS", "FAIR_SLICE", "FAIR_STEP_MS", "MAX_SLICES", "rank_of"]
