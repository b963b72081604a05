"""What /metrics reports beyond the counters: gauges read when scraped, and the worker's own
metrics endpoint (a `comms worker` serves no API, but it is the process that sends)."""

from __future__ import annotations

import logging

from aiohttp import web

from comms import metrics
from comms.dispatch.dispatcher import Dispatcher
from comms.dispatch.queue import due_stats
from comms.kit import clock
from comms.kit.clock import utcnow
from comms.kit.db import Database

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


async def serve_worker_metrics(db: Database, dispatcher: Dispatcher, host: str, port: int) -> web.AppRunner:
    """``GET /metrics`` of a `comms worker` (``--metrics-port``); the caller cleans the runner up."""

    async def scrape(_: web.Request) -> web.Response:
        await refresh_gauges(db, dispatcher)
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("worker metrics listening", extra={"host": host, "port": port})
    return runner


__all__ = ["refresh_gauges", "serve_worker_metrics"]
