"""Superseded by 0014 (kept so that databases migrated to it move on)

This revision once replaced ``ix_messages_batch_id_status`` with ``ix_messages_batch_id_id``
(batch_id, id, status), to list a batch's items newest first. That index cost every claim and
completion 10-25% more PostgreSQL CPU (its keys never repeat, so nothing deduplicates), and the
batch's items can be listed through the primary key instead (they share one id prefix). It now
changes nothing; 0014 puts back the index wherever it was replaced.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 07:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
