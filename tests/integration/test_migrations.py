"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command

from comms.migrations.runner import alembic_config, upgrade


def test_sqlite_migrations_match_the_models(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    command.check(alembic_config(url))  # raises when the models and the migrated schema differ


@pytest.mark.postgres
def test_postgres_migrations_match_the_models(postgres_database: str) -> None:
    command.check(alembic_config(postgres_database))
