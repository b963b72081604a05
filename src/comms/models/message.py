from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, SmallInteger, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from comms.kit.db import JSONText, UTCDateTime
from comms.models.base import Base

# Statuses the dispatcher may claim once ``due_at`` has passed (messages/status.py PENDING).
CLAIMABLE = ("queued", "scheduled", "deferred")
# Written out as literals, in queries exactly as in the partial indexes: a planner can only use a
# partial index when the query's WHERE provably implies the index's, and with bound parameters
# (status IN (?, ?, ?)) neither SQLite nor a prepared PostgreSQL plan can prove it. Measured: the
# claim scanned the whole table, 60 ms at 300k rows instead of 0.1 ms.
CLAIMABLE_SQL = text("status IN ('queued', 'scheduled', 'deferred')")
SENDING_SQL = text("status = 'sending'")
_CLAIMABLE_SQL = CLAIMABLE_SQL
_SENDING_SQL = SENDING_SQL
_HAS_PROVIDER_ID = text("provider_message_id IS NOT NULL")
_UNKNOWN_SQL = text("status = 'unknown'")


class Message(Base):
    """One recipient of one batch: the log item AND the work queue entry.

    Due time, attempt count and lease live on the row, so scheduling, retries, quiet-hours
    deferral and crash recovery are all the same claim query.
    """

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_tenant_id_id", "tenant_id", "id"),
        # A batch's counts per status, read from the index alone. (Its items are listed through the
        # primary key: they share one id prefix, see MessageRepository.list. An index on
        # (batch_id, id, status) listed them too, but cost every claim and completion ~10-25%
        # more PostgreSQL CPU: its keys never repeat, where these deduplicate.)
        Index("ix_messages_batch_id_status", "batch_id", "status"),
        Index("ix_messages_tenant_id_recipient_key", "tenant_id", "recipient_key"),
        Index(
            "ix_messages_claim",
            "priority",
            "queue_rank",
            postgresql_where=_CLAIMABLE_SQL,
            sqlite_where=_CLAIMABLE_SQL,
        ),
        Index("ix_messages_lease", "lease_until", postgresql_where=_SENDING_SQL, sqlite_where=_SENDING_SQL),
        # Dispatcher.recheck_unknown looks for these every reaper round: never a table scan.
        Index("ix_messages_unknown", "updated_at", postgresql_where=_UNKNOWN_SQL, sqlite_where=_UNKNOWN_SQL),
        Index(
            "ix_messages_provider_message_id",
            "provider_account_id",
            "provider_message_id",
            postgresql_where=_HAS_PROVIDER_ID,
            sqlite_where=_HAS_PROVIDER_ID,
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # No foreign keys on the hottest table: checking two of them per row cost a third of a 100k
    # bulk's insert on PostgreSQL. Rows are only ever written with ids taken from the batch row
    # written in the same transaction.
    tenant_id: Mapped[str] = mapped_column(String(40))
    batch_id: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(10))
    category: Mapped[str] = mapped_column(String(20))
    recipient: Mapped[str] = mapped_column(String(320))
    recipient_key: Mapped[str] = mapped_column(String(320))
    user_id: Mapped[str | None] = mapped_column(String(200))
    template_id: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    # Per-recipient variables merged over the batch's; secret values encrypted.
    variables: Mapped[dict[str, str] | None] = mapped_column(JSONText)
    # The rendered content with secret values redacted, recorded when the provider accepts.
    content: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(String(40))
    provider_account_id: Mapped[str | None] = mapped_column(String(40))
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    response: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(SmallInteger)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    segments: Mapped[int | None] = mapped_column(Integer)
    possible_duplicate: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Times the provider's flow control held this message back (Outcome.DEFERRED): each deferral
    # waits twice as long as the one before, and the message fails after MAX_PROVIDER_DEFERRALS.
    deferrals: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The claim order within a priority (epoch ms): a batch's rows are spread over virtual time at
    # FAIR_RATE (messages/fairness.py), so a later, smaller batch's rows interleave with a big
    # bulk's instead of waiting behind all of it. Never before due_at: the claim can stop early.
    queue_rank: Mapped[int | None] = mapped_column(BigInteger)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
