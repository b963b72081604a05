"""Database plumbing shared by every domain package: engine, sessions, column types, bulk writes.

SQLite (embedded default) and PostgreSQL (scale-out) run the same code. Two details differ:

* SQLite allows one writer. Write transactions start with ``BEGIN IMMEDIATE`` so a transaction
  that reads first never fails to upgrade its lock; read-only sessions use a deferred ``BEGIN``
  and, in WAL mode, never wait for a writer.
* Bulk writes of log items bypass the ORM: one JSON parameter expanded by ``json_each`` on SQLite,
  ``COPY`` on PostgreSQL (see messages/repository.py and dispatch/queue.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ARRAY, DateTime, Text, any_, bindparam, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

from comms.kit import clock

SQLITE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
WAL_RESET_BYTES = 64 * 1024 * 1024
SQLITE_PAGE_SIZE = 16384


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python; ``timestamptz`` on PostgreSQL, sortable text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONText(TypeDecorator[Any]):
    """JSON kept as text on both databases, so bulk paths can hand over pre-encoded strings."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


def is_sqlite(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def one_of(column: Any, name: str, pg: bool) -> Any:
    """``column`` is one of the list bound as ``name``.

    On PostgreSQL ``column = ANY(:name)`` with the list as one array parameter: the SQL is the same
    for any number of values, so the driver's prepared statement is reused and nothing is rendered
    per value (an expanding IN renders a placeholder and a cast per value, every execution: 500
    keys per claimed batch cost the dispatcher ~3% of its time). SQLite has no arrays: an
    expanding IN there."""
    if pg:
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


def raw_datetime(value: datetime, is_sqlite: bool) -> Any:
    """A datetime in the form the raw driver expects for a UTCDateTime column."""
    value = value.astimezone(UTC)
    return value.replace(tzinfo=None).strftime(SQLITE_DATETIME_FORMAT) if is_sqlite else value


class Database:
    """Engine plus the two session factories (write and read)."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            # Few connections: SQLite has one writer anyway, and each connection keeps its own page cache.
            self.engine: AsyncEngine = create_async_engine(
                url, echo=echo, pool_size=3, max_overflow=3, pool_pre_ping=False, hide_parameters=True
            )
            _configure_sqlite(self.engine)
        else:
            self.engine = create_async_engine(
                url,
                echo=echo,
                pool_size=pool_size,
                max_overflow=10,
                pool_recycle=1800,
                hide_parameters=True,  # statement parameters hold addresses: never in error text
                # A server that stops answering without closing the connection (its host gone, a
                # network partition) must not hold a request, a claim or a heartbeat until TCP
                # gives up (~15 minutes): a statement waits at most this long, a connection
                # attempt CONNECT_TIMEOUT; the error is then a 503 like any other outage.
                connect_args={"command_timeout": STATEMENT_TIMEOUT, "timeout": CONNECT_TIMEOUT},
            )
            _check_on_checkout(self.engine)
        self._write = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None
        self._sqlite_path = make_url(url).database if self.is_sqlite else None
        read_engine = self.engine.execution_options(sqlite_begin="DEFERRED")
        self._read = async_sessionmaker(read_engine, expire_on_commit=False, autoflush=False)
        # One statement needs no transaction around it: on PostgreSQL that saves the BEGIN and
        # the COMMIT, two of the three round trips of a single read.
        single_engine = (
            read_engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._single = async_sessionmaker(single_engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        """A write unit of work: commits on success, rolls back on any exception.

        On SQLite, write transactions of this process queue on an asyncio lock: SQLite admits one
        writer, and connections that collide fall into its busy handler, which sleeps in steps of
        up to 100 ms (measured: dispatch throughput fell 3x). Other processes still meet the busy
        timeout. Never nest ``begin()`` inside ``begin()``.
        """
        if self._write_lock is None:
            async with self._write() as session, session.begin():
                yield session
            return
        async with self._write_lock, self._write() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write_one(self) -> AsyncIterator[AsyncSession]:
        """For writes that are each complete in one statement (a claim: UPDATE ... RETURNING):
        on PostgreSQL every statement commits by itself, without BEGIN and COMMIT round trips;
        on SQLite a write transaction as :meth:`begin`."""
        if self.is_sqlite:
            async with self.begin() as session:
                yield session
            return
        async with self._single() as session:
            yield session

    @asynccontextmanager
    async def read_one(self) -> AsyncIterator[AsyncSession]:
        """For a single read statement (the API key of every request), or reads that need not
        see one snapshot: no transaction around them on PostgreSQL, each its own."""
        if self.is_sqlite:
            async with self.read() as session:
                yield session
            return
        async with self._single() as session:
            yield session

    async def checkpoint(self) -> None:
        """Keep the SQLite WAL short.

        Automatic checkpoints are off: they made the commit of a 100k-recipient bulk pay for
        copying the whole WAL. But a WAL left to grow is worse: with a few hundred MB of it, every
        query slowed to ~60 ms (measured), because readers search the WAL for each page. So every
        few seconds :func:`run_maintenance` copies the WAL back with a PASSIVE checkpoint, and once
        it passes WAL_RESET_BYTES, resets it with a TRUNCATE checkpoint while holding this
        process's write lock (it waits for readers, which are short).
        """
        if not self.is_sqlite:
            return
        wal = Path(f"{self._sqlite_path}-wal") if self._sqlite_path else None
        big = wal is not None and wal.exists() and wal.stat().st_size > WAL_RESET_BYTES
        if big and self._write_lock is not None:
            async with self._write_lock:
                await self._pragma("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            await self._pragma("PRAGMA wal_checkpoint(PASSIVE)")

    async def _pragma(self, statement: str) -> None:
        async with self.engine.connect() as conn:
            # On the driver connection directly: SQLAlchemy would open a transaction first, and a
            # checkpoint inside a transaction does nothing.
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.execute(statement)

    async def dispose(self) -> None:
        await self.engine.dispose()


PING_AFTER_IDLE_SECONDS = 5.0
# The longest a statement may wait for PostgreSQL's answer, and a connection attempt: a server that
# stops answering without closing the connection then costs a request a 503 after this, not ~15
# minutes. The service's own statements take milliseconds; maintenance works in chunks
# (compliance/retention.py); migrations run on an engine of their own, without it.
STATEMENT_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0


def _check_on_checkout(engine: AsyncEngine) -> None:
    """Hand out only connections that still work, without a round trip on every checkout.

    SQLAlchemy's ``pool_pre_ping`` costs three round trips per checkout on asyncpg (BEGIN, a
    query, ROLLBACK): a worker checks a connection out a few times per claimed batch and the API
    once per request, always from a connection that was in use a moment ago. Instead, a
    connection whose socket the server closed (a restart, a cut proxy) is known to the driver
    without asking, and only one that sat idle in the pool for a while is pinged. A connection
    that dies between two uses a moment apart fails its statement: SQLAlchemy then invalidates
    the pool, the request answers 503 (the worker retries), and the next checkout connects anew.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the server closed this connection")
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since > PING_AFTER_IDLE_SECONDS:
            try:
                dbapi_connection.ping()  # bounded by the connection's command_timeout
            except Exception as exc:
                raise DisconnectionError(f"ping failed: {exc}") from exc


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the sqlite3 module; "begin" below issues BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            # Before anything is written to a new file (a no-op on an existing one): 16 KiB pages
            # make a 100k bulk's six b-tree inserts ~10% cheaper than the default 4 KiB.
            f"PRAGMA page_size={SQLITE_PAGE_SIZE}",
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA busy_timeout=30000",
            "PRAGMA foreign_keys=ON",
            "PRAGMA temp_store=MEMORY",
            "PRAGMA wal_autocheckpoint=0",
            "PRAGMA journal_size_limit=67108864",
            "PRAGMA cache_size=-8192",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


# The server's clock, not now(): now() is the start of the transaction.
_SERVER_TIME = text("SELECT clock_timestamp()")
CLOCK_READINGS = 3  # the one with the shortest round trip is kept: its midpoint is the closest
CLOCK_RESYNC_SECONDS = 60.0
CLOCK_WARN_SECONDS = 1.0
CLOCK_START_TIMEOUT = 5.0
_clock_log = logging.getLogger("comms.clock")
_warned_offset: list[float] = []  # the offset last warned about, so a steady one is told once


async def sync_clock(db: Database) -> float:
    """Put this process's clock (kit/clock.py) on the PostgreSQL server's; returns how many
    seconds this machine's clock is ahead of it. SQLite: the database is on this machine, whose
    clock it uses: nothing to do (0.0). Raises when the database cannot be read."""
    if db.is_sqlite:
        clock.unfollow()
        return 0.0
    best: tuple[datetime, float, float] | None = None
    async with db.read_one() as session:
        for _ in range(CLOCK_READINGS):
            before = time.monotonic()
            reading = (await session.execute(_SERVER_TIME)).scalar_one()
            after = time.monotonic()
            if best is None or after - before < best[2]:
                best = (reading, (before + after) / 2, after - before)
    assert best is not None
    offset = clock.follow(best[0], best[1])
    if abs(offset) > CLOCK_WARN_SECONDS and (
        not _warned_offset or abs(offset - _warned_offset[-1]) > CLOCK_WARN_SECONDS
    ):
        _warned_offset[:] = [offset]
        _clock_log.warning(
            "this machine's clock is off the database server's; following the server's",
            extra={"offset_seconds": round(offset, 3)},
        )
    return offset


async def try_sync_clock(db: Database) -> bool:
    """:func:`sync_clock` at a process's start: a database that is away is logged, not raised
    (:func:`run_maintenance` tries again, and the reaper takes no lease back until it succeeds)."""
    try:
        # Bounded: a database host that drops packets must not hold a process's start for the
        # driver's connect timeout (a minute).
        await asyncio.wait_for(sync_clock(db), timeout=CLOCK_START_TIMEOUT)
    except Exception:
        _clock_log.warning("could not read the database server's clock", exc_info=True)
        return False
    return True


async def run_maintenance(db: Database, stop: asyncio.Event, interval: float = 5.0) -> None:
    """Background upkeep for as long as the process runs: WAL checkpoints on SQLite; on
    PostgreSQL, this process's clock read again from the server's every minute (every
    ``interval`` seconds until a first reading succeeds)."""
    if not db.is_sqlite:
        while not stop.is_set():
            wait = CLOCK_RESYNC_SECONDS if clock.following() else interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
            if stop.is_set():
                return
            try:
                await sync_clock(db)
            except Exception:  # the database is away: the last reading holds meanwhile
                _clock_log.warning("could not read the database server's clock", exc_info=True)
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        try:
            await db.checkpoint()
        except Exception:  # a busy or vanished database: try again next round
            logging.getLogger("comms.db").warning("WAL checkpoint failed", exc_info=True)
