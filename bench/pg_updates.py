"""What one claim and one completion cost PostgreSQL per message, and which index costs what.

Every message is updated twice while it is sent: the claim (queued -> sending, with its lease) and
the completion (sending -> sent). ``status`` is in index keys and partial-index predicates, so no
such update is HOT: each writes a new entry into every index of ``messages``. This bench runs
comms' own claim and completion statements (comms.dispatch.queue) against a migrated database and
prints, per message, the wall time and the PostgreSQL backend's CPU; then it drops the secondary
indexes one at a time (cumulatively) and measures again, to show what each costs.

Recipients are random mobile numbers (real traffic), so their index entries land on random pages.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, trust auth; the database is dropped
and created again, and dropped at the end):

    .venv/bin/python bench/pg_updates.py [--history 100000] [--messages 20000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from comms.dispatch.queue import claim_due, complete  # noqa: E402
from comms.kit.clock import utcnow  # noqa: E402
from comms.kit.db import Database  # noqa: E402
from comms.migrations.runner import upgrade  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Dropped in this order, each on top of the ones before (the primary key and the queue's partial
# indexes stay: the claim and the reaper cannot work without them).
SECONDARY = ("ix_messages_tenant_id_recipient_key", "ix_messages_tenant_id_id", "ix_messages_batch_id_status")
_COLUMNS = """id, tenant_id, batch_id, channel, category, recipient, recipient_key, status, priority,
    attempts, possible_duplicate, due_at, created_at, updated_at, queue_rank"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def seed(admin: asyncpg.Connection, history: int, queued: int) -> None:
    """``history`` sent rows and ``queued`` due ones, random numbers, statistics taken."""
    await admin.execute("TRUNCATE messages")
    number = "'+86' || (13000000000 + floor(random() * 999999999))::bigint"
    await admin.execute(
        f"""INSERT INTO messages ({_COLUMNS}, provider, sent_at, content)
        SELECT 'log_h' || lpad(g::text, 28, '0'), 'tnt_bench', 'bat_h' || (g / 1000), 'sms', 'transactional',
               n, n, 'sent', 2, 1, false, now(), now(), now(), 0, 'webhook', now(), 'Your parcel arrives today.'
        FROM (SELECT g, {number} AS n FROM generate_series(1, $1) g) s""",
        history,
    )
    await admin.execute(
        f"""INSERT INTO messages ({_COLUMNS})
        SELECT 'log_q' || lpad(g::text, 28, '0'), 'tnt_bench', 'bat_q', 'sms', 'transactional',
               n, n, 'queued', 2, 0, false, now() - interval '1 s', now(), now(), g
        FROM (SELECT g, {number} AS n FROM generate_series(1, $1) g) s""",
        queued,
    )
    await admin.execute("VACUUM ANALYZE messages")


async def measure(db: Database, messages: int, batch: int) -> dict[str, float]:
    """Claim and complete every queued row in batches; µs per message: wall and backend CPU."""
    async with db.engine.connect() as probe:
        backend = (await probe.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
    wall = {"claim": 0.0, "complete": 0.0}
    cpu = {"claim": 0.0, "complete": 0.0}
    done = 0
    while done < messages:
        before, started = _cpu_seconds(backend), time.perf_counter()
        async with db.begin() as session:
            claimed = await claim_due(session, "bench", batch, utcnow(), timedelta(seconds=60))
        wall["claim"] += time.perf_counter() - started
        cpu["claim"] += _cpu_seconds(backend) - before
        if not claimed:
            break
        now = utcnow()
        rows = [
            {
                "id": c.id,
                "status": "sent",
                "error": None,
                "provider": "webhook",
                "account": "acc_bench",
                "pmid": None,
                "response": "HTTP 200",
                "content": "Your parcel arrives today.",
                "segments": 1,
                "variables": None,
                "sent_at": now.isoformat(),
                "due_at": None,
                "rank": None,
                "possible_duplicate": False,
                "deferrals": 0,
                "attempts": c.attempts,
            }
            for c in claimed
        ]
        before, started = _cpu_seconds(backend), time.perf_counter()
        async with db.begin() as session:
            await complete(session, "bench", now, rows)
        wall["complete"] += time.perf_counter() - started
        cpu["complete"] += _cpu_seconds(backend) - before
        async with db.begin() as session:  # untimed: a completion that matched no row measures nothing
            left = await session.scalar(text("SELECT count(*) FROM messages WHERE status = 'sending'"))
        assert left == 0, f"{left} claimed rows were not completed"
        done += len(claimed)
    per = 1e6 / max(done, 1)
    return {f"{k} wall": v * per for k, v in wall.items()} | {f"{k} pg cpu": v * per for k, v in cpu.items()}


async def run(args: argparse.Namespace) -> None:
    admin_dsn = f"{args.pg}/postgres"
    server = await asyncpg.connect(admin_dsn)
    await server.execute(f'DROP DATABASE IF EXISTS "{args.database}"')
    await server.execute(f'CREATE DATABASE "{args.database}"')
    url = f"{args.pg.replace('postgresql://', 'postgresql+asyncpg://')}/{args.database}"
    try:
        await asyncio.to_thread(upgrade, url)
        admin = await asyncpg.connect(f"{args.pg}/{args.database}")
        # One pooled connection, so the backend whose CPU is read is the one doing the work.
        db = Database(url, pool_size=1)
        print(
            f"history {args.history:,} sent rows; {args.messages:,} queued, claimed and completed "
            f"{args.batch} at a time; medians of {args.runs} runs; µs per message"
        )
        print(
            f"  {'indexes on messages':66s} {'claim':>7s} {'(pg cpu)':>9s} {'complete':>9s} {'(pg cpu)':>9s}"
        )
        dropped: list[str] = []
        for step in range(len(SECONDARY) + 1):
            results = []
            for _ in range(args.runs):
                await seed(admin, args.history, args.messages)
                results.append(await measure(db, args.messages, args.batch))
            med = {k: statistics.median(r[k] for r in results) for k in results[0]}
            label = (
                "all"
                if not dropped
                else "without " + ", ".join(d.removeprefix("ix_messages_") for d in dropped)
            )
            print(
                f"  {label:66s} {med['claim wall']:7.1f} {med['claim pg cpu']:9.1f}"
                f" {med['complete wall']:9.1f} {med['complete pg cpu']:9.1f}"
            )
            if step < len(SECONDARY):
                await admin.execute(f"DROP INDEX {SECONDARY[step]}")
                dropped.append(SECONDARY[step])
        await db.dispose()
        await admin.close()
    finally:
        await server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", args.database
        )
        await server.execute(f'DROP DATABASE IF EXISTS "{args.database}"')
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg", default="postgresql://root@127.0.0.1:5432")
    parser.add_argument("--database", default="comms_bench_updates")
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
