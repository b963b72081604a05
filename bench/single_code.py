"""One verification code at a time through a real `comms serve --no-dispatcher` (the API and its
express lane) on PostgreSQL: POST -> 202, and 202 -> the outbox provider's file.

Prints medians and p90 over --codes codes sent one after another on an otherwise idle system:
what a user waiting for a login code sees of comms itself, without a provider's latency.

    .venv/bin/python bench/single_code.py [--codes 200] [--database-url URL]

The database given is used as it is (create it first; the default is comms_bench on
127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._server import start_server


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--codes", type=int, default=200)
    parser.add_argument("--database-url", default="postgresql+asyncpg://root@127.0.0.1:5432/comms_bench")
    args = parser.parse_args()
    env = {
        "COMMS_DATABASE_URL": args.database_url,
        # Hundreds of requests a second from one client: not what the tenant limit is for.
        "COMMS_RATE_LIMIT_PER_SECOND": "1000",
        "COMMS_RATE_LIMIT_BURST": "1000",
    }
    with tempfile.TemporaryDirectory(prefix="comms-bench-") as tmp:
        server = start_server(Path(tmp), extra_env=env, dispatcher=False)
        try:
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30
            ) as client:

                def one(i: int) -> tuple[float, float]:
                    body = {
                        "channel": "sms",
                        "category": "verification",
                        "content": "Your code is {{ code }}",
                        "variables": {"code": str(100000 + i)},
                        "recipients": [str(13_900_000_000 + i * 7)],
                    }
                    started = time.perf_counter()
                    answer = client.post("/communication/bulk", json=body)
                    accepted = time.perf_counter()
                    assert answer.status_code == 202, answer.text[:300]
                    path = server.data_dir / "outbox" / "sms" / f"{answer.json()['items'][0]['id']}.json"
                    deadline = accepted + 5
                    while not path.exists() and time.perf_counter() < deadline:
                        time.sleep(0.0002)
                    return accepted - started, time.perf_counter() - accepted

                for i in range(20):  # warm-up: connections, caches, prepared statements
                    one(i)
                samples = []
                for i in range(args.codes):
                    samples.append(one(1000 + i))
                    time.sleep(0.01)  # let the express lane go idle: measure the wake-up too
        finally:
            server.stop()
    for name, values in (
        ("POST -> 202", [s[0] for s in samples]),
        ("202 -> outbox file", [s[1] for s in samples]),
    ):
        ordered = sorted(values)
        p50, p90 = ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.9)] * 1000
        print(f"{name:20s} p50 {p50:5.1f} ms  p90 {p90:5.1f} ms  ({len(ordered)} codes)")


if __name__ == "__main__":
    main()
