"""Chaos: 3 `comms worker` processes on PostgreSQL, one SIGKILLed at random moments, several times.

20,000 SMS go through the ``webhook`` provider to a local sink (``tests.webhook_sink``, in this
process). Workers run with a 2 s lease, so the rows a killed worker held come back through the
survivors' reaper flagged ``possible_duplicate``. At the end:

- every item is in a final state (``sent``; at worst ``unknown`` or ``failed``, with a reason);
- lost == 0: every item the log calls ``sent`` reached the sink;
- every id the sink received more than once is flagged ``possible_duplicate`` in the log (and
  arrived flagged on the wire at least once).

The counts are printed (``pytest -s`` shows them). ``COMMS_CHAOS_SEED`` replays a run's kill
schedule (the moments still depend on timing).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from comms.models import CLAIMABLE, Message
from tests.conftest import make_tenant
from tests.e2e.workers import add_sink_account, api, api_settings, held_by, status_counts, workers_in
from tests.webhook_sink import WebhookSink

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

MESSAGES = 20_000
WORKERS = 3
KILLS = 5
KILL_DELAY = (0.2, 0.9)  # seconds between kills, uniform
DEADLINE = 110.0  # seconds, from the first worker's start to the last item's final state
SINK_SECRET = "chaos-sink-secret-0123456789"
SEED = int(os.environ.get("COMMS_CHAOS_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)
PENDING = (*CLAIMABLE, "sending")


async def test_sigkilled_workers_lose_nothing_and_flag_every_duplicate(
    worker_database: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    deadline = started + DEADLINE
    settings = api_settings(worker_database, tmp_path)
    workers = workers_in(worker_database, tmp_path)
    sink = await WebhookSink(SINK_SECRET, keep_bodies=False).start()
    kills: list[tuple[float, int]] = []  # (seconds since the bulk was accepted, rows the victim held)
    exit_codes: list[int | None] = []
    try:
        async with api(settings) as (client, db):
            tenant = await make_tenant(db, "Chaos")
            await add_sink_account(client, tenant, sink)

            for _ in range(WORKERS):
                workers.start()
            body: dict[str, Any] = {
                "channel": "sms",
                "category": "transactional",
                "content": "Chaos parcel {{ p }}",
                "variables": {"p": "PX"},
                "recipients": [f"1380{i:07d}" for i in range(MESSAGES)],
            }
            answer = await client.post("/communication/bulk", json=body, headers=tenant.headers())
            assert answer.status_code == 202, answer.text
            assert answer.json()["total"] == MESSAGES
            assert answer.json()["counts"] == {"queued": MESSAGES}, answer.json()["counts"]
            accepted = time.monotonic()

            # The first kill only once sending has begun, so that the kills hit work in flight.
            while not sink.received:
                assert time.monotonic() < deadline, "no message reached the sink\n" + workers.log_tails()
                workers.check_alive()
                await asyncio.sleep(0.05)
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(*KILL_DELAY))
                if time.monotonic() > deadline:
                    break
                # The victim is a random worker among those dispatching: one still importing
                # holds nothing, and killing it would test nothing.
                while not (candidates := workers.ready()):
                    assert time.monotonic() < deadline, "no worker came up\n" + workers.log_tails()
                    workers.check_alive()
                    await asyncio.sleep(0.05)
                victim = candidates[rng.randrange(len(candidates))]
                held = await held_by(db, victim.pid)
                workers.kill(victim)
                kills.append((time.monotonic() - accepted, held))
                workers.start()

            counts = await status_counts(db)
            while any(counts.get(s) for s in PENDING):
                assert time.monotonic() < deadline, f"items still pending: {counts}\n" + workers.log_tails()
                workers.check_alive()
                await asyncio.sleep(0.2)
                counts = await status_counts(db)
            finished = time.monotonic()
            # SIGTERM only once every worker is up: one still starting has no handler yet and dies
            # of the signal (-15), which says nothing about draining.
            while len(workers.ready()) < WORKERS:
                assert time.monotonic() < deadline, "a replacement never came up\n" + workers.log_tails()
                workers.check_alive()
                await asyncio.sleep(0.05)
            exit_codes = await workers.stop()

            async with db.read() as session:
                rows = (
                    await session.execute(
                        select(Message.id, Message.status, Message.possible_duplicate, Message.error)
                    )
                ).all()
    finally:
        workers.close()
        await sink.stop()

    statuses = {row.id: row.status for row in rows}
    flagged = {row.id for row in rows if row.possible_duplicate}
    sent = {i for i, s in statuses.items() if s == "sent"}
    not_final = {i for i, s in statuses.items() if s in PENDING}
    never_received = sent - set(sink.received)
    lost = len(never_received) + len(not_final)
    duplicated = {i for i, n in sink.received.items() if n > 1}
    unflagged = duplicated - flagged
    not_flagged_on_the_wire = duplicated - sink.flagged
    other = {row.id: (row.status, row.error) for row in rows if row.status != "sent"}
    unknown_unreceived = sum(1 for i, (s, _) in other.items() if s == "unknown" and i not in sink.received)

    print(
        f"\nchaos seed={SEED}: {MESSAGES} messages, {WORKERS} workers, {len(kills)} SIGKILLs "
        f"at {', '.join(f'{t:.1f}s (held {h})' for t, h in kills)}"
    )
    print(
        f"chaos: lost={lost} duplicated={len(duplicated)} flagged={len(flagged)} "
        f"unflagged_duplicates={len(unflagged)} statuses={counts} "
        f"unknown_never_received={unknown_unreceived} sink_requests={sink.requests} "
        f"dispatch={finished - accepted:.1f}s total={time.monotonic() - started:.1f}s "
        f"exit_codes={exit_codes}"
    )

    assert len(rows) == MESSAGES
    assert len(kills) == KILLS, f"only {len(kills)} kills before the deadline"
    assert any(held for _at, held in kills), "no kill hit a worker with messages in flight"
    assert not not_final, f"{len(not_final)} items not in a final state"
    assert set(statuses.values()) <= {"sent", "unknown", "failed"}, counts
    assert all(error for _status, error in other.values()), "an unknown/failed item without a reason"
    assert not never_received, f"{len(never_received)} items logged sent never reached the sink"
    assert lost == 0
    assert set(sink.received) <= set(statuses), "the sink received ids that are not in the log"
    assert not unflagged, f"received twice but not flagged possible_duplicate: {sorted(unflagged)[:10]}"
    assert not not_flagged_on_the_wire, (
        f"no copy posted with possible_duplicate: {sorted(not_flagged_on_the_wire)[:10]}"
    )
    assert max(sink.received.values()) <= 2, "a message was posted more than twice"
    assert sink.bad_signatures == 0
    assert exit_codes == [0] * WORKERS, f"workers did not drain and exit cleanly on SIGTERM: {exit_codes}"
