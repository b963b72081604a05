"""A `comms worker` on a machine whose clock runs 10 minutes ahead of the database server's.

Workers on several machines write and compare lease times, and sign vendor requests with the time.
Every process follows the database server's clock (kit/clock.py, kit/db.py::sync_clock), so the
skewed worker (run under Debian's libfaketime) must neither take back a live lease of a worker with
a right clock, nor sign its requests with a time the gateway refuses. Before it did both: its reaper
saw the other worker's leases as expired ten minutes ago and sent those messages a second time,
flagged, and the sink (which, as vendors do, refuses a signature more than 300 s old) answered 401.
"""

from __future__ import annotations

import asyncio
import glob
import re
from pathlib import Path

import httpx
import pytest
from bench._server import free_port
from sqlalchemy import func, select

from comms.models import Message
from tests.conftest import REQUIRE_SERVICES, make_tenant, wait_until
from tests.e2e.workers import add_sink_account, api, api_settings, held_by, status_counts, workers_in
from tests.webhook_sink import WebhookSink

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

AHEAD = "+10m"
SINK_SECRET = "skew-sink-secret-0123456789"


def faketime(offset: str) -> dict[str, str]:
    """The environment that runs a process under libfaketime with its clock ``offset`` off. Not
    the ``faketime`` command: it forks, and killing it would leave the worker running."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        message = "libfaketime (Debian package faketime) is not installed"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (COMMS_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    # Monotonic time stays real: a constant offset there would change nothing anyway.
    return {"LD_PRELOAD": found[0], "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}


async def scrape(port: int, name: str) -> float | None:
    """One sample of the worker's /metrics, or None while its port is not open yet."""
    async with httpx.AsyncClient() as client:
        try:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.TransportError:
            return None
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


async def test_a_worker_whose_clock_runs_ahead_takes_no_live_lease_and_signs_on_time(
    worker_database: str, tmp_path: Path
) -> None:
    ahead = faketime(AHEAD)
    settings = api_settings(worker_database, tmp_path)
    workers = workers_in(worker_database, tmp_path)
    hold = asyncio.Event()
    sink = await WebhookSink(SINK_SECRET, hold=hold).start()
    metrics_port = free_port()
    try:
        async with api(settings) as (client, db):
            tenant = await make_tenant(db, "Skew")
            # A's request is held while B starts (seconds on a busy machine): no timeout
            await add_sink_account(client, tenant, sink, timeout_seconds=120)

            async def bulk(count: int, first: int) -> None:
                answer = await client.post(
                    "/communication/bulk",
                    json={
                        "channel": "sms",
                        "category": "transactional",
                        "content": "Parcel arriving",
                        "recipients": [f"1380{first + i:07d}" for i in range(count)],
                    },
                    headers=tenant.headers(),
                )
                assert answer.status_code == 202, answer.text

            # A, with the machine's clock, claims 40 messages; the sink holds its request, so A
            # keeps them `sending` under a 2 s lease it renews.
            right = workers.start()
            await wait_until(lambda: asyncio.sleep(0, bool(workers.ready())), timeout=60)
            await bulk(40, 0)

            async def a_holds_all() -> bool:
                workers.check_alive()
                return sink.requests >= 1 and await held_by(db, right.pid) == 40

            await wait_until(a_holds_all, timeout=30)

            # B runs 10 minutes ahead. Its reaper looks every second (half the lease): three
            # rounds while A's leases are live.
            workers.start(env={**ahead, "COMMS_WORKER_METRICS_PORT": str(metrics_port)})

            async def three_rounds() -> bool:
                workers.check_alive()
                rounds = await scrape(metrics_port, "comms_reaper_rounds_total")
                return rounds is not None and rounds >= 3

            await wait_until(three_rounds, timeout=60)
            offset = await scrape(metrics_port, "comms_clock_offset_seconds")
            assert offset is not None and 590 < offset < 610, offset  # B knows it is 10 min ahead
            assert await scrape(metrics_port, "comms_leases_expired_total") == 0
            assert await held_by(db, right.pid) == 40, "B took live leases back"
            async with db.read() as session:
                flagged = await session.scalar(
                    select(func.count()).where(Message.possible_duplicate.is_(True))
                )
            assert flagged == 0

            hold.set()

            async def all_sent(total: int) -> bool:
                workers.check_alive()
                return await status_counts(db) == {"sent": total}

            await wait_until(lambda: all_sent(40), timeout=30)

            # A stops; B alone sends the next 10, signed with the database server's time.
            assert workers.terminate(right) == 0
            await bulk(10, 40)
            await wait_until(lambda: all_sent(50), timeout=30)
    finally:
        hold.set()  # a held request would keep the sink from stopping
        workers.close()
        await sink.stop()
    assert sink.bad_signatures == 0
    assert len(sink.received) == 50 and set(sink.received.values()) == {1}, "a message was sent twice"
    assert not sink.flagged
