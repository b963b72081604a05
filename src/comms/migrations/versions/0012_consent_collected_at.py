"""``consents.collected_at``: when the person gave (or withdrew) the consent

An opt-in recorded through the API lifts an earlier opt-out of the person's own (an unsubscribe, a
STOP, an objection) only if it was collected after that opt-out: a CRM that syncs its old consent
records again must not undo an unsubscribe. Rows recorded before this revision have none.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 05:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("consents", sa.Column("collected_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("consents") as batch:
        batch.drop_column("collected_at")
