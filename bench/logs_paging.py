"""Reading a big batch's log items page by page: page numbers (OFFSET) against cursors (a keyset).

A real `comms serve` (no dispatcher) accepts one bulk of --recipients; the bench then walks the
batch's items with `pagination.next_cursor`, keeping the cursor of every page, and times single
pages deep in the list read both ways: `?page=K` and `?cursor=<the cursor that leads to page K>`,
with and without `count=false`, filtered by `batch_id` and unfiltered (the tenant's whole log).
Prints median milliseconds per page request (round trip through the API), no assertions. On
PostgreSQL the table is analyzed after the bulk, as autovacuum does within its first minute: a
table never analyzed makes PostgreSQL sort the tenant's every row for the first unfiltered page.

    .venv/bin/python bench/logs_paging.py [--recipients 100000] [--page-size 200] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._server import start_server


def timed(client: httpx.Client, url: str, repeats: int) -> float:
    """Median milliseconds of ``repeats`` GETs of ``url``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        answer = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text[:300]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    size = args.page_size
    with tempfile.TemporaryDirectory(prefix="comms-bench-") as tmp:
        # Hundreds of reads in a few seconds: the tenant's API rate limit is not what is measured.
        extra = {"COMMS_RATE_LIMIT_PER_SECOND": "100000", "COMMS_RATE_LIMIT_BURST": "100000"}
        if args.database_url:
            extra["COMMS_DATABASE_URL"] = args.database_url
        server = start_server(Path(tmp), extra_env=extra, dispatcher=False)
        try:
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=300
            ) as client:
                body = {
                    "channel": "sms",
                    "category": "transactional",
                    "content": "Your parcel {{ parcel }} arrives today",
                    "variables": {"parcel": "PX-1"},
                    "recipients": [str(13_000_000_000 + i * 7) for i in range(args.recipients)],
                }
                answer = client.post(
                    "/communication/bulk",
                    content=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                )
                assert answer.status_code == 202, answer.text[:300]
                batch = answer.json()["batch_id"]
                if args.database_url:
                    asyncio.run(analyze(args.database_url))
                for scope, base in (
                    ("batch_id filter", f"/communication/logs?batch_id={batch}&page_size={size}"),
                    ("no filter (the tenant's log)", f"/communication/logs?page_size={size}"),
                ):
                    cursors = walk(client, base)
                    pages = len(cursors)
                    print(f"\n{scope}: {pages} pages of {size}")
                    print(
                        f"  {'page':>6}  {'?page=K':>10}  {'?cursor':>10}  {'?page=K count=false':>20}  {'?cursor count=false':>20}"
                    )
                    for page in sorted({1, 2, pages // 4, pages // 2, pages}):
                        if page < 1:
                            continue
                        by_number = timed(client, f"{base}&page={page}", args.repeats)
                        lean_number = timed(client, f"{base}&page={page}&count=false", args.repeats)
                        if page == 1:
                            by_cursor, lean_cursor = by_number, lean_number
                        else:
                            cursor = cursors[page - 2]
                            by_cursor = timed(client, f"{base}&cursor={cursor}", args.repeats)
                            lean_cursor = timed(client, f"{base}&cursor={cursor}&count=false", args.repeats)
                        print(
                            f"  {page:>6}  {by_number:>8.1f}ms  {by_cursor:>8.1f}ms  {lean_number:>18.1f}ms  {lean_cursor:>18.1f}ms"
                        )
        finally:
            server.stop()


async def analyze(url: str) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await connection.execute("ANALYZE messages")
    finally:
        await connection.close()


def walk(client: httpx.Client, base: str) -> list[str | None]:
    """The next_cursor of every page, from the first to the last (None there)."""
    cursors: list[str | None] = []
    url = f"{base}&count=false"
    while True:
        answer = client.get(url)
        assert answer.status_code == 200, answer.text[:300]
        info = answer.json()["pagination"]
        cursors.append(info["next_cursor"])
        if info["next_cursor"] is None:
            return cursors
        url = f"{base}&count=false&cursor={info['next_cursor']}"


if __name__ == "__main__":
    main()
