"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command

from comms.migrations.runner import alembic_config, upgrade
from tests.conftest import _admin, need_postgres, unique_database_name


def test_sqlite_migrations_match_the_models(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    command.check(alembic_config(url))  # raises when the models and the migrated schema differ


@pytest.mark.postgres
def test_postgres_migrations_match_the_models(postgres_database: str) -> None:
    command.check(alembic_config(postgres_database))


def test_a_migration_that_fails_half_way_leaves_nothing_behind_on_sqlite(tmp_path: Path) -> None:
    """All migrations run in one transaction (the sqlite3 driver would otherwise commit each DDL
    statement): after a failure the file is as it was, and the next start migrates cleanly."""
    import sqlite3

    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url, "0005")
    with sqlite3.connect(path) as db:  # a row for 0006's UPDATE, and a trigger that makes it fail
        db.execute(
            "INSERT INTO messages (id, tenant_id, batch_id, channel, category, recipient, recipient_key,"
            " status, priority, attempts, possible_duplicate, created_at, updated_at, due_at)"
            " VALUES ('log_1', 'tnt_1', 'bat_1', 'sms', 'transactional', '+8613800138000',"
            " '+8613800138000', 'queued', 1, 0, 0, '2026-11-26 00:00:00', '2026-11-26 00:00:00',"
            " '2026-11-26 00:00:00')"
        )
        db.execute(
            "CREATE TRIGGER boom BEFORE UPDATE ON messages BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(Exception, match="disk full"):
        upgrade(url)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0005",)]
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        assert "queue_rank" not in columns  # 0006's first step was rolled back with the rest
        db.execute("DROP TRIGGER boom")
    upgrade(url)
    command.check(alembic_config(url))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_processes_starting_together_all_migrate(tmp_path: Path, backend: str) -> None:
    """Every process migrates at start-up: started together on an empty database, they wait for
    each other's lock, and all of them succeed."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    if backend == "postgres":
        base = need_postgres()
        name = unique_database_name("migrate")
        asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
        url = base.rsplit("/", 1)[0] + "/" + name
    env = {
        **os.environ,
        "COMMS_DATABASE_URL": url,
        "COMMS_DATA_DIR": str(tmp_path / "var"),
        "COMMS_SECRET_KEY": "k",
    }
    comms = Path(sys.executable).parent / "comms"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes = [
            subprocess.Popen([str(comms), "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(3)
        ]
        outcomes = [
            (p.wait(timeout=120), p.stderr.read().decode()[-500:] if p.stderr else "") for p in processes
        ]
        assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
        command.check(alembic_config(url))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        if backend == "postgres":
            asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
