"""SMTP dispatch: comms against a bare aiosmtplib loop, same sink, same connection count, one run.

Prints figures (no assertions), per run and as medians:

1. bare:     a bare aiosmtplib loop in this process sends N prebuilt messages over K persistent
             connections (K workers, each ``await smtp.sendmail(...)`` in turn). The message is
             one that comms itself sent to the sink during the warm-up (same bytes, same size),
             each copy to its own recipient. Connections are opened before the clock starts.
2. provider: comms' ``SmtpProvider`` alone in this process, as the dispatcher drives it (chunks
             of its ``max_batch``, 4 in flight), with its own pool of K sessions: the SMTP path
             without the API, the queue and the database, to tell their shares of a gap apart.
3. comms:    the same N as one bulk through a real ``comms serve`` (SQLite in a temp dir, the
             in-process dispatcher, uvloop), with an ``smtp`` provider account pointing at the
             sink with ``max_connections`` K. The clock runs from the bulk's 202 until every item
             is ``sent`` in the database. A warm-up bulk first opens the account's session pool,
             as in a running service.

The ratio comms / bare is printed per run and as the median (target >= 0.8). Each phase also
shows the cores each process kept busy (CPU seconds from /proc over the phase's wall time).

The sink is aiosmtpd (the server the tests use) in a process of its own, on uvloop, so it never
shares an event loop or a GIL with the sender it measures. It advertises PIPELINING unless
``--no-pipelining``: real MTAs (Postfix, Exim, Sendmail) do. comms then pipelines (one round
trip per message); aiosmtplib never does (four). ``--no-pipelining`` compares the two with one
command per round trip each.

    .venv/bin/python bench/smtp.py                         # N=5000, K=8, 5 runs, ~1 min on 2 cores
    .venv/bin/python bench/smtp.py --no-pipelining
    .venv/bin/python bench/smtp.py --runs 1 --profile var/smtp.prof   # comms serve under cProfile

Flags (defaults): --messages N (5000), --connections K (8), --runs R (5), --no-pipelining,
--profile PATH (write cProfile stats of the comms process to PATH; slows comms down, so its
figures are for attribution only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._server import BIN, cli, free_port  # noqa: E402

SENDER = "news@acme.example"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the sink: aiosmtpd in a process of its own ---------------------------------------------


class SinkHandler:
    def __init__(self, count: Any, sample: Path, pipelining: bool) -> None:
        self.count = count
        self.sample = sample
        self.pipelining = pipelining

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.sample.exists():  # the bench deletes it to ask for the next message
            self.sample.write_bytes(envelope.original_content)
        self.count.value += 1  # only this process writes it
        return "250 2.0.0 queued"


def sink_main(port: int, count: Any, sample: Path, pipelining: bool, ready: Any) -> None:
    import uvloop
    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").disabled = True
    handler = SinkHandler(count, sample, pipelining)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink", ident="bench sink"), "127.0.0.1", port
        )
        ready.set()
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


@dataclass
class Sink:
    process: multiprocessing.process.BaseProcess
    port: int
    count: Any
    sample: Path

    @classmethod
    def start(cls, folder: Path, pipelining: bool) -> Sink:
        context = multiprocessing.get_context("spawn")
        count: Any = context.Value("q", 0, lock=False)
        ready = context.Event()
        port = free_port()
        sample = folder / "sample.eml"
        process = context.Process(
            target=sink_main, args=(port, count, sample, pipelining, ready), name="smtp-sink", daemon=True
        )
        process.start()
        if not ready.wait(30):
            process.kill()
            raise RuntimeError("the sink did not start")
        return cls(process, port, count, sample)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


# ---- CPU accounting --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class Cores:
    """Cores each process kept busy between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.started = 0.0
        self.busy: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.started = time.monotonic()

    def stop(self) -> None:
        wall = time.monotonic() - self.started
        self.busy = {name: (cpu_seconds(pid) - self.before[name]) / wall for name, pid in self.pids.items()}

    def __str__(self) -> str:
        return ", ".join(f"{name} {value:.2f}" for name, value in self.busy.items())


# ---- comms -----------------------------------------------------------------------------------


@dataclass
class Comms:
    process: subprocess.Popen[bytes]
    url: str
    token: str

    @classmethod
    def start(cls, data_dir: Path, profile: Path | None) -> Comms:
        """`comms serve` on SQLite with its dispatcher, as bench/_server.py starts it (optionally
        under cProfile)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMMS_")}
        env.update({"COMMS_DATA_DIR": str(data_dir), "COMMS_SECRET_KEY": "bench-secret"})
        tenant = json.loads(cli(["tenant", "create", "--name", "Bench", "--json", "--sender", SENDER], env))
        token = json.loads(cli(["apikey", "create", "--tenant", tenant["id"], "--json"], env))["token"]
        port = free_port()
        serve = ["serve", "--port", str(port)]
        if profile is None:
            command = [str(BIN / "comms"), *serve]
        else:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--profiled-serve",
                str(profile),
                *serve,
            ]
        log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"comms serve exited: {(data_dir / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    return cls(process, url, token)
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        process.kill()
        raise RuntimeError("comms serve did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def profiled_serve(out: str, args: list[str]) -> None:
    """`bench/smtp.py --profiled-serve OUT serve ...`: comms' CLI under cProfile, stats to OUT."""
    import cProfile
    import signal

    from comms.cli import main as comms_main

    profiler = cProfile.Profile()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.argv = ["comms", *args]
    profiler.enable()
    try:
        comms_main()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)


async def wait_for(predicate: Callable[[], Any], timeout: float, interval: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


class Bench:
    def __init__(self, args: argparse.Namespace, sink: Sink, comms: Comms) -> None:
        self.args = args
        self.sink = sink
        self.comms = comms
        self.api = httpx.AsyncClient(
            base_url=comms.url, headers={"Authorization": f"Bearer {comms.token}"}, timeout=300
        )
        self.bulks = 0

    async def add_account(self) -> None:
        body = {
            "channel": "email",
            "provider": "smtp",
            "name": "bench-sink",
            "config": {
                "host": "127.0.0.1",
                "port": self.sink.port,
                "security": "none",
                "max_connections": self.args.connections,
            },
        }
        answer = await self.api.post("/communication/providers", json=body)
        if answer.status_code != 201:
            raise RuntimeError(f"creating the provider account: {answer.status_code} {answer.text[:500]}")

    async def comms_run(self, n: int) -> tuple[float, float]:
        """(seconds from the 202 until all N are sent, until the sink had all N)."""
        self.bulks += 1
        recipients = [f"user{self.bulks}.{i}@example.com" for i in range(n)]
        received = self.sink.count.value
        answer = await self.api.post(
            "/communication/bulk",
            json={
                "channel": "email",
                "category": "transactional",
                "subject": "Your order {{ order }} has shipped",
                "content": "Hello,\n\nyour order {{ order }} left our warehouse today.\n\nThanks!",
                "variables": {"order": "A-1042"},
                "recipients": recipients,
            },
        )
        accepted = time.monotonic()
        payload = answer.json()
        if answer.status_code != 202 or payload.get("counts") != {"queued": n}:
            raise RuntimeError(f"bulk not accepted as queued: {answer.status_code} {answer.text[:500]}")
        batch = payload["batch_id"]

        async def at_sink() -> bool:
            return bool(self.sink.count.value - received >= n)

        await wait_for(at_sink, 600, 0.005)  # shared memory: polling costs comms nothing
        arrived = time.monotonic()

        async def all_sent() -> bool:
            data = (await self.api.get(f"/communication/batches/{batch}")).json()["data"]
            return bool(data["counts"] == {"sent": n})

        await wait_for(all_sent, 600, 0.005)
        return time.monotonic() - accepted, arrived - accepted

    async def bare_run(self, messages: list[tuple[str, bytes]]) -> float:
        import aiosmtplib

        clients = [
            aiosmtplib.SMTP(hostname="127.0.0.1", port=self.sink.port, start_tls=False, timeout=60)
            for _ in range(self.args.connections)
        ]
        await asyncio.gather(*(client.connect() for client in clients))
        work = iter(messages)

        async def worker(client: aiosmtplib.SMTP) -> None:
            for recipient, raw in work:
                await client.sendmail(SENDER, [recipient], raw)

        received = self.sink.count.value
        started = time.monotonic()
        await asyncio.gather(*(worker(client) for client in clients))
        elapsed = time.monotonic() - started
        assert self.sink.count.value - received == len(messages)
        await asyncio.gather(*(client.quit() for client in clients))
        return elapsed

    async def provider_run(self, provider: Any, n: int) -> float:
        """comms' SmtpProvider alone, as the dispatcher drives it: chunks of its max_batch,
        COMMS_DISPATCH_CONCURRENCY (4) of them in flight; messages rendered by the provider."""
        from comms.providers.base import OutboundMessage

        self.bulks += 1
        messages = [
            OutboundMessage(
                id=f"log_bench{self.bulks:04d}{i:012d}",
                tenant_id="ten_bench",
                channel="email",
                category="transactional",
                to=f"provider{i}@example.com",
                text="Hello,\n\nyour order A-1042 left our warehouse today.\n\nThanks!",
                sender=SENDER,
                subject="Your order A-1042 has shipped",
            )
            for i in range(n)
        ]
        size = provider.max_batch
        chunks = [messages[i : i + size] for i in range(0, n, size)]
        in_flight = asyncio.Semaphore(4)

        async def send(chunk: list[Any]) -> None:
            async with in_flight:
                results = await provider.send(chunk)
                assert all(r.outcome == "sent" for r in results), results[0]

        started = time.monotonic()
        await asyncio.gather(*(send(chunk) for chunk in chunks))
        return time.monotonic() - started


async def run(args: argparse.Namespace, sink: Sink, comms: Comms) -> None:
    from comms.providers.email.smtp import SmtpConfig, SmtpProvider

    bench = Bench(args, sink, comms)
    n = args.messages
    await bench.add_account()
    sink.sample.unlink(missing_ok=True)
    warm, _ = await bench.comms_run(min(n, 500))  # opens the pool; gives the bare loop its message
    sample = sink.sample.read_bytes()
    print(f"warm-up: 500 through comms in {warm:.2f} s; message size {len(sample)} bytes", flush=True)
    messages = [(f"bare{i}@example.com", sample) for i in range(n)]
    provider = SmtpProvider(
        SmtpConfig(host="127.0.0.1", port=sink.port, security="none", max_connections=args.connections)
    )
    await bench.provider_run(provider, 100)  # opens its pool
    pids = {"bench": os.getpid(), "sink": sink.process.pid or 0, "comms": comms.process.pid}
    rates: dict[str, list[float]] = {"bare": [], "provider": [], "comms": []}
    ratios: list[float] = []
    for number in range(1, args.runs + 1):
        line: list[str] = []
        for phase in ("bare", "provider", "comms"):
            cores = Cores(pids)
            cores.start()
            extra = ""
            if phase == "bare":
                took = await bench.bare_run(messages)
            elif phase == "provider":
                took = await bench.provider_run(provider, n)
            else:
                took, at_sink = await bench.comms_run(n)
                extra = f" (sink had all at {at_sink:.2f} s of {took:.2f} s)"
            cores.stop()
            rates[phase].append(n / took)
            line.append(f"{phase} {n / took:,.0f} msg/s{extra} [{cores}]")
        ratios.append(rates["comms"][-1] / rates["bare"][-1])
        print(f"run {number}: " + " | ".join(line) + f" | ratio {ratios[-1]:.2f}", flush=True)
    await provider.close()
    await bench.api.aclose()
    pipelining = "offered" if not args.no_pipelining else "not offered"
    print(f"\nN = {n:,} messages, K = {args.connections} connections, PIPELINING {pipelining}; medians:")
    print(f"bare aiosmtplib loop:          {statistics.median(rates['bare']):,.0f} msg/s")
    print(f"SmtpProvider alone:            {statistics.median(rates['provider']):,.0f} msg/s")
    print(f"comms smtp dispatch:           {statistics.median(rates['comms']):,.0f} msg/s")
    print(
        f"ratio comms / bare:            {statistics.median(ratios):.2f}"
        f"  (per run {min(ratios):.2f}-{max(ratios):.2f}; target >= 0.8)"
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--profiled-serve":
        profiled_serve(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-pipelining", action="store_true", help="the sink does not offer PIPELINING")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile stats of comms serve to this file"
    )
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="comms-bench-smtp-") as tmp:
        sink = Sink.start(Path(tmp), pipelining=not args.no_pipelining)
        comms = Comms.start(Path(tmp), args.profile.resolve() if args.profile else None)
        try:
            import uvloop

            uvloop.run(run(args, sink, comms))
        finally:
            comms.stop()
            sink.stop()
    if args.profile:
        import pstats

        stats = pstats.Stats(str(args.profile))
        stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
