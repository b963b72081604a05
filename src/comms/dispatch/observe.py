"""What /metrics reports beyond the counters: gauges read when scraped, and the worker's own
metrics endpoint (a `comms worker` serves no API, but it is the process that sends)."""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy import text

from comms import metrics
from comms.dispatch.dispatcher import Dispatcher
from comms.dispatch.queue import due_stats
from comms.kit import clock
from comms.kit.clock import utcnow
from comms.kit.db import Database
from comms.kit.http import encode_json, envelope

log = logging.getLogger("comms.metrics")


async def refresh_gauges(db: Database, dispatcher: Dispatcher | None) -> None:
    """Queue depth and age from the database; this process's circuit breakers and clock."""
    metrics.CLOCK_OFFSET.set(clock.offset())
    try:
        async with db.read() as session:
            depth, oldest = await due_stats(session, utcnow())
        metrics.QUEUE_DEPTH.set(depth)
        metrics.QUEUE_AGE.set(max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0.0)
    except Exception:  # the database is down: report what this process knows
        log.warning("queue metrics unavailable")
    if dispatcher is not None:
        for account, breaker_state in dispatcher.router.breaker_states().items():
            metrics.BREAKER.labels(account).set(metrics.BREAKER_VALUES[breaker_state.value])


async def database_problem(db: Database) -> str | None:
    """Why this process is not ready, or None: the database answers and takes writes (a
    read-only standby, say a failover target still recovering, does not)."""
    try:
        async with db.read() as session:
            if db.is_sqlite:
                await session.execute(text("SELECT 1"))
            elif await session.scalar(text("SELECT pg_is_in_recovery()")):
                return "database is a read-only standby"
    except Exception as exc:
        log.warning("readiness check failed: %s", type(exc).__name__)
        return "database unreachable"
    return None


async def serve_worker_metrics(db: Database, dispatcher: Dispatcher, host: str, port: int) -> web.AppRunner:
    """``GET /metrics``, ``/healthz`` and ``/readyz`` of a `comms worker` (``--metrics-port``),
    answered in the API's envelope; the caller cleans the runner up."""

    async def scrape(_: web.Request) -> web.Response:
        await refresh_gauges(db, dispatcher)
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def answer(code: int, message: str) -> web.Response:
        return web.Response(
            body=encode_json(envelope(code, message)), status=code, content_type="application/json"
        )

    async def healthz(_: web.Request) -> web.Response:
        # Answering at all shows the event loop is not blocked; a task that ended by itself (a
        # bug) leaves a process that runs and sends nothing: restart it.
        stopped = dispatcher.stopped_tasks()
        if stopped:
            return answer(503, f"dispatcher task ended: {', '.join(stopped)}")
        return answer(200, "ok")

    async def readyz(_: web.Request) -> web.Response:
        problem = await database_problem(db)
        if problem is None and not db.is_sqlite and not clock.following():
            problem = "waiting for a first reading of the database server's clock"
        return answer(200, "ready") if problem is None else answer(503, problem)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("worker metrics listening", extra={"host": host, "port": port})
    return runner


__all__ = ["database_problem", "refresh_gauges", "serve_worker_metrics"]
