"""Prometheus metrics (``GET /metrics``), per process.

Counters and histograms are updated where things happen; queue depth and age are read from
the database when Prometheus scrapes, so every API process reports the shared queue.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

ACCEPTED = Counter(
    "comms_messages_accepted_total", "Log items created by bulk requests, by initial status.",
    ["tenant", "channel", "status"],
)  # fmt: skip
FINISHED = Counter(
    "comms_messages_dispatched_total", "Outcomes recorded by the dispatcher.",
    ["tenant", "channel", "provider", "status"],
)  # fmt: skip
PROVIDER_LATENCY = Histogram(
    "comms_provider_call_seconds", "One call to a provider (a batch of messages).", ["provider", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
CLAIM_LATENCY = Histogram(
    "comms_claim_seconds", "One claim of due messages from the queue.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)  # fmt: skip
RECONCILED = Counter(
    "comms_messages_reconciled_total",
    "Possible duplicates looked up at the provider before any re-send.",
    ["provider"],
)
CLAIMED = Counter("comms_messages_claimed_total", "Messages claimed by this process's dispatcher.")
REAPER_ROUNDS = Counter("comms_reaper_rounds_total", "Looks for expired leases by this process's dispatcher.")
LEASES_EXPIRED = Counter(
    "comms_leases_expired_total",
    "Claimed messages this process's reaper took back: their worker died, hung or lost the database.",
)
CLOCK_OFFSET = Gauge(
    "comms_clock_offset_seconds",
    "How far this machine's clock is ahead of the database server's, which the process follows.",
)
RATE_LIMIT_FALLBACKS = Counter(
    "comms_rate_limit_fallbacks_total",
    "Rate-limit checks answered in-process because Redis could not be reached.",
)
QUEUE_DEPTH = Gauge("comms_queue_due_messages", "Messages due now and waiting to be sent.")
QUEUE_AGE = Gauge("comms_queue_oldest_due_seconds", "How long the oldest due message has waited.")
BREAKER = Gauge(
    "comms_provider_breaker_state", "Circuit breaker per provider account: 0 closed, 1 half-open, 2 open.",
    ["account"],
)  # fmt: skip
COMPLAINT_RATE = Gauge(
    "comms_tenant_complaint_rate", "Spam complaints per email sent over the last 30 days.", ["tenant"]
)
REQUESTS = Counter("comms_http_requests_total", "API requests.", ["method", "route", "status"])

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
