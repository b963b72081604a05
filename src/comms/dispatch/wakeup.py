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

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from comms.kit.db import is_sqlite

CHANNEL = "comms_work"
log = logging.getLogger("comms.dispatch")


async def notify_work(session: AsyncSession) -> None:
    """Within the caller's transaction: wake every dispatcher when it commits (PostgreSQL only)."""
    if not is_sqlite(session):
        await session.execute(text(f"NOTIFY {CHANNEL}"))


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class WakeListener:
    def __init__(self, database_url: str, on_notify: Callable[[], None], retry_seconds: float = 1.0) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._on_notify = on_notify
        self._retry = retry_seconds
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
        while True:
            connection: Any = None
            try:
                connection = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, lambda *_args: self._on_notify())
                self.connected.set()
                self._on_notify()  # anything committed while we were not listening
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("wake-up listener disconnected; polling until it is back: %s", type(exc).__name__)
            finally:
                self.connected.clear()
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            await asyncio.sleep(self._retry)
