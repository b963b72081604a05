"""Alembic environment: runs migrations on the async engine for the configured database URL."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from comms.kit.db import SQLITE_PAGE_SIZE
from comms.models import Base

config = context.config
target_metadata = Base.metadata


# Every `comms serve` and `comms worker` migrates at start-up, so several processes of a deploy
# can run this at once. All migrations run in ONE transaction that first takes a lock: the others
# wait, then find the database at head and do nothing; and a migration that fails half-way
# leaves nothing behind (on SQLite too, whose driver would otherwise commit each DDL statement).
MIGRATION_LOCK = 0x636F6D6D73  # "comms": pg_advisory_xact_lock's key


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=sqlite,
        compare_type=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if not sqlite:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Before the first table: a new file gets the 16 KiB pages kit/db.py asks for (a
            # no-op on an existing file).
            dbapi_connection.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
            dbapi_connection.execute("PRAGMA busy_timeout=60000")
            dbapi_connection.isolation_level = None  # BEGIN below, not the driver's own

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock: one migrator at a time

    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is set by comms.migrations.runner"
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async(url))


run_migrations_online()
