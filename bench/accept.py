"""Acceptance and outbox dispatch of a 100,000-recipient bulk through a real `comms serve`.

Prints, per run and as medians: seconds from POST to 202 (recipients/s), seconds from the 202
until every item is `sent` through the outbox provider (recipients/s), and the API's peak RSS.

    .venv/bin/python bench/accept.py [--recipients 100000] [--runs 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._server import start_server


def phones(run: int, count: int) -> list[str]:
    base = 13_000_000_000 + run * 1_000_000
    return [str(base + i * 7) for i in range(count)]


def single_send_latencies(client: httpx.Client, data_dir: Path, samples: int) -> list[float]:
    """Seconds from each single-recipient 202 until its message is in the outbox (the provider)."""
    out: list[float] = []
    for i in range(samples):
        answer = client.post(
            "/communication/bulk",
            json={
                "channel": "sms",
                "category": "verification",
                "content": "Code {{ code }}",
                "variables": {"code": "1"},
                "recipients": [str(13_900_000_000 + i * 13)],
            },
        )
        accepted = time.perf_counter()
        path = data_dir / "outbox" / "sms" / f"{answer.json()['items'][0]['id']}.json"
        deadline = accepted + 5
        while not path.exists() and time.perf_counter() < deadline:
            time.sleep(0.0005)
        out.append(time.perf_counter() - accepted)
        time.sleep(0.05)  # let the dispatcher go idle again: measure the wake-up, not a busy loop
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--no-dispatch", action="store_true", help="measure acceptance only")
    parser.add_argument("--latency-samples", type=int, default=50, help="single-send latency samples")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="comms-bench-") as tmp:
        extra = {"COMMS_DATABASE_URL": args.database_url} if args.database_url else {}
        server = start_server(Path(tmp), extra_env=extra, dispatcher=not args.no_dispatch)
        accept_s: list[float] = []
        dispatch_s: list[float] = []
        try:
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=300
            ) as c:
                for run in range(args.runs):
                    body = json.dumps(
                        {
                            "channel": "sms",
                            "category": "transactional",
                            "content": "Your parcel {{ parcel }} arrives today",
                            "variables": {"parcel": "PX-1"},
                            "recipients": phones(run, args.recipients),
                        }
                    ).encode()
                    started = time.perf_counter()
                    answer = c.post(
                        "/communication/bulk", content=body, headers={"Content-Type": "application/json"}
                    )
                    accepted = time.perf_counter()
                    assert answer.status_code == 202, answer.text[:500]
                    payload = answer.json()
                    assert payload["total"] == args.recipients, payload["counts"]
                    accept_s.append(accepted - started)
                    line = f"run {run + 1}: accept {accept_s[-1]:.3f} s ({args.recipients / accept_s[-1]:,.0f} rcpt/s)"
                    if not args.no_dispatch:
                        batch = payload["batch_id"]
                        while True:
                            data = c.get(f"/communication/batches/{batch}").json()["data"]
                            if data["done"]:
                                break
                            time.sleep(0.05)
                        dispatch_s.append(time.perf_counter() - accepted)
                        assert data["counts"] == {"sent": args.recipients}, data["counts"]
                        line += f", dispatch {dispatch_s[-1]:.2f} s ({args.recipients / dispatch_s[-1]:,.0f} msg/s)"
                    print(line, flush=True)
                latencies = (
                    []
                    if args.no_dispatch
                    else single_send_latencies(c, server.data_dir, args.latency_samples)
                )
            rss = server.peak_rss_mb()
        finally:
            server.stop()
    accept = statistics.median(accept_s)
    print(f"\nrecipients per bulk:    {args.recipients:,}")
    print(
        f"accept (median):        {accept:.3f} s  = {args.recipients / accept:,.0f} recipients/s  (target <= 1.0 s)"
    )
    if dispatch_s:
        dispatch = statistics.median(dispatch_s)
        print(f"outbox dispatch (med.): {dispatch:.2f} s  = {args.recipients / dispatch:,.0f} messages/s")
    print(f"API peak RSS:           {rss:.0f} MiB  (target <= 300 MiB)")
    if latencies:
        ordered = sorted(latencies)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        print(
            f"single SMS, 202 -> outbox file: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(ordered)} sends"
            "  (target: within 50 ms)"
        )


if __name__ == "__main__":
    main()
