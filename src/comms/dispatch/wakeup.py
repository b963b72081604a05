"""Cross-process wake-up on PostgreSQL: LISTEN/NOTIFY.

An API process that commits due work sends ``NOTIFY comms_work`` in the same transaction (so it
is delivered exactly when the rows become visible); every dispatcher LISTENs on a connection of
its own and claims at once instead of waiting for its next poll. Polling stays as the fallback:
a notification lost while the listener reconnects costs at most one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from comms.kit.db import is_sqlite

CHANNEL = "comms_work"
log = logging.getLogger("comms.dispatch")


async def notify_work(session: AsyncSession) -> None:
    """Within the caller's transaction: wake every dispatcher when it commits (PostgreSQL only)."""
    if not is_sqlite(session):
        await session.execute(text(f"NOTIFY {CHANNEL}"))


class WakeListener:
    """LISTENs on a connection of its own, opened exactly as the engine opens its connections
    (the URL's query options, ``ssl=require`` among them, read by SQLAlchemy's asyncpg dialect),
    and probed every ``probe_seconds``: a connection dropped without a word (a NAT timeout, a
    failover without a reset) delivers nothing and would never report itself lost."""

    def __init__(
        self,
        database_url: str,
        on_notify: Callable[[], None],
        retry_seconds: float = 1.0,
        probe_seconds: float = 30.0,
    ) -> None:
        self._url = database_url
        self._on_notify = on_notify
        self._retry = retry_seconds
        self._probe = probe_seconds
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="comms-wake-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        engine = create_async_engine(self._url, poolclass=NullPool)
        try:
            while True:
                try:
                    await self._listen(engine)
                    log.warning("wake-up listener lost its connection; polling until it is back")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "wake-up listener disconnected; polling until it is back: %s", type(exc).__name__
                    )
                await asyncio.sleep(self._retry)
        finally:
            await engine.dispose()

    async def _listen(self, engine: AsyncEngine) -> None:
        """Listen until the connection is lost (returns) or fails (raises)."""
        connection: AsyncConnection | None = None
        raw: Any = None
        try:
            connection = await engine.connect()
            raw = (await connection.get_raw_connection()).driver_connection
            lost = asyncio.Event()
            raw.add_termination_listener(lambda _conn: lost.set())
            await raw.add_listener(CHANNEL, lambda *_args: self._on_notify())
            self.connected.set()
            self._on_notify()  # anything committed while we were not listening
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self._probe)
                if not lost.is_set():
                    await raw.execute("SELECT 1", timeout=min(5.0, self._probe))
        finally:
            self.connected.clear()
            if raw is not None and not raw.is_closed():
                raw.terminate()  # no goodbye over a connection that may be dead
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.invalidate()
