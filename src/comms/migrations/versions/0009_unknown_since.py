"""``unknown`` rows carry when they became unknown in ``due_at``

The re-check of ``unknown`` rows asks for a day from that moment (dispatch/queue.py
``unknown_to_recheck``); rows that became unknown before this revision have no ``due_at``: their
last update is the best estimate of it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 00:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE messages SET due_at = updated_at WHERE status = 'unknown' AND due_at IS NULL")


def downgrade() -> None:
    pass  # due_at of an unknown row means nothing to the earlier code: nothing to undo
