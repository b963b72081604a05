"""Dispatch throughput and verification latency against one local webhook sink, on PostgreSQL.

Prints figures (no assertions), per run and as medians:

1. bare:    a bare aiohttp send loop posts N messages in batches of the webhook provider's
            max_batch (500), same JSON shape (a message comms itself sent, copied) and HMAC
            signature as ``comms.providers.webhook``, at the same concurrency (batches in flight).
2. comms:   the same N through a real ``comms worker`` on PostgreSQL with a ``webhook`` provider
            account pointing at the sink: seconds from the bulk's 202 until every item is ``sent``,
            messages/s, and the ratio comms/bare (target >= 0.8).
3. scaling: the same N with 2 ``comms worker`` processes: messages/s and the speed-up over 1.
4. latency: a single verification SMS, from its POST to the sink receiving it, first on an idle
            system, then while a 100,000-message transactional bulk is being dispatched (by one
            worker); p50/p99 (targets p50 <= 50 ms, p99 <= 200 ms).

Each phase also prints the cores it kept busy per process (CPU seconds from /proc over the phase's
wall time) and the share of the time each waited for a core (run-queue time from
/proc/<pid>/schedstat): on a small machine the sink, PostgreSQL and the workers share the cores,
and this shows who had them. "pg" is the backends of the bench's database, "pg-other" every other postgres
process (WAL writer, checkpointer, autovacuum, and other users' backends on a shared machine).

Topology: ``comms serve --no-dispatcher`` (the API, bench/_server.py), ``comms worker`` process(es),
and the sink (tests/webhook_sink.py's WebhookSink) in a process of its own, so it never shares an
event loop or a GIL with the sender it measures; the bare loop runs in this process, which is
otherwise idle while it runs. The sink's receive times use CLOCK_MONOTONIC (time.monotonic(),
system-wide on Linux), so they compare with this process's.

Table state: before every timed bulk the message table holds --history already-sent rows and
nothing else, statistics taken while nothing is pending (as autovacuum leaves a production log
table), and autovacuum is off for that table in the bench database, so PostgreSQL never re-plans in
the middle of a phase. The claim's and the completion's plans depend on these statistics (see
docs/benchmarks.md); --history 0 shows a new, small table.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, trust auth; the database given by
--database is dropped and created again, and dropped at the end):

    .venv/bin/python bench/dispatch.py                            # everything, ~2 min on 2 cores
    .venv/bin/python bench/dispatch.py --steps --profile          # + where a worker's time goes, ~2.5 min
    .venv/bin/python bench/dispatch.py --runs 1 --skip-latency    # throughput only, ~30 s
    .venv/bin/python bench/dispatch.py --smtp [bench/smtp.py flags]   # email: comms vs bare aiosmtplib

Flags (defaults):
  --messages N (20000)          messages per timed bulk (phases 1-3)
  --runs R (5)                  repetitions of phases 1-3; medians are printed at the end
  --concurrency C (4)           batches in flight, for the bare loop and COMMS_DISPATCH_CONCURRENCY
  --latency-messages (100000)   the bulk dispatched during phase 4
  --latency-samples (40)        verification SMS sent during it; --idle-samples (10) before it
  --skip-latency, --skip-scaling  leave out phase 4 / the 2-worker phase
  --minimal                     also time a minimal persistent queue between phases 1 and 2 (its own
                                process: claim 100 rows, post, mark sent; minimal_worker_main): the
                                floor any design that keeps each message's state in PostgreSQL
                                meets on this machine, printed as minimal/bare and comms/minimal
  --steps                       one more 1-worker dispatch with timers around the dispatcher's steps
                                and the garbage collector's pauses
  --profile [--py-spy PATH]     one more 1-worker dispatch sampled by py-spy (PATH, or on PATH),
                                else under cProfile; --profile-out FILE keeps py-spy's stacks
  --history (100000)            sent rows in the table before each timed bulk
  --analyze-after-accept        experiment: ANALYZE messages right after each 202 (comms does not)
  --sink-delay-ms (0)           the sink answers every POST this much later (a slow provider)
  --batch-size B (500)          messages per HTTP request: the webhook account's batch_size, and
                                the bare loop's; 1 is the shape of per-message vendor APIs
  --request-concurrency K (16)  the account's bulk requests in flight per process (webhook
                                `concurrency`); with B < 500 the bare loop keeps K in flight too
  --database (comms_bench_dispatch)  --pg (postgresql://root@127.0.0.1:5432)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._server import BIN, Server, start_server  # noqa: E402

SINK_SECRET = "bench-dispatch-sink-secret"
MAX_BATCH = 500  # comms.providers.webhook.WebhookProvider.max_batch
BARE_REPEATS = 3  # the bare loop is fast: each run takes the median of this many
CLK_TCK = os.sysconf("SC_CLK_TCK")
_encode = msgspec.json.Encoder().encode


# ---- the sink (its own process) ------------------------------------------------------------------


def sink_main() -> None:
    """`bench/dispatch.py --sink`: WebhookSink plus a small control API; prints both ports."""
    from aiohttp import web
    from tests.webhook_sink import WebhookSink

    class TimedSink(WebhookSink):
        """Also records when each verification message arrived, and keeps one message as a sample."""

        arrivals: dict[str, float]
        sample: dict[str, Any] | None
        waiters: list[tuple[int, asyncio.Future[None]]]

        def _wake_waiters(self) -> None:
            if self.waiters:
                seen = len(self.received)
                for target, waiter in self.waiters:
                    if seen >= target and not waiter.done():
                        waiter.set_result(None)

        async def _handle(self, request: web.Request) -> web.Response:
            body = await request.read()  # aiohttp caches it: the parent's read() gets it again
            if self.sample is None or b'"verification"' in body:
                now = time.monotonic()
                with contextlib.suppress(Exception):
                    messages = msgspec.json.decode(body)["messages"]
                    if self.sample is None and messages:
                        self.sample = messages[0]
                    for m in messages:
                        if m.get("category") == "verification":
                            self.arrivals[m["id"]] = now
            try:
                return await super()._handle(request)
            finally:
                self._wake_waiters()

    delay_ms = float(sys.argv[sys.argv.index("--sink") + 1])

    async def serve() -> None:
        sink = TimedSink(SINK_SECRET, keep_bodies=False, hang_seconds=delay_ms / 1000)
        sink.arrivals, sink.sample, sink.waiters = {}, None, []
        await sink.start()

        async def progress(_: web.Request) -> web.Response:
            return web.json_response({"unique": len(sink.received), "requests": sink.requests})

        async def seen(request: web.Request) -> web.Response:
            """Answers once ``n`` distinct messages arrived, or after ``timeout`` seconds: the
            bench waits on one request instead of polling (which took CPU from what it measures)."""
            target = int(request.query["n"])
            waiter = asyncio.get_running_loop().create_future()
            entry = (target, waiter)
            sink.waiters.append(entry)
            sink._wake_waiters()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, float(request.query.get("timeout", "1")))
            finally:
                sink.waiters.remove(entry)
            return web.json_response({"unique": len(sink.received)})

        async def stats(_: web.Request) -> web.Response:
            counts = sink.received.values()
            return web.json_response(
                {
                    "unique": len(sink.received),
                    "messages": sum(counts),
                    "duplicates": sum(1 for c in counts if c > 1),
                    "flagged": len(sink.flagged),
                    "bad_signatures": sink.bad_signatures,
                    "requests": sink.requests,
                }
            )

        async def reset(_: web.Request) -> web.Response:
            sink.received.clear()
            sink.flagged.clear()
            sink.arrivals.clear()
            sink.requests = sink.bad_signatures = 0
            return web.json_response({})

        async def arrivals(_: web.Request) -> web.Response:
            return web.json_response(sink.arrivals)

        async def sample(_: web.Request) -> web.Response:
            return web.json_response(sink.sample)

        control = web.Application()
        control.router.add_get("/progress", progress)
        control.router.add_get("/seen", seen)
        control.router.add_get("/stats", stats)
        control.router.add_post("/reset", reset)
        control.router.add_get("/arrivals", arrivals)
        control.router.add_get("/sample", sample)
        runner = web.AppRunner(control, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        control_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(sink.port, control_port, os.getpid(), flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
        await sink.stop()

    run_loop(serve())


def run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


@dataclass
class SinkProcess:
    process: subprocess.Popen[bytes]
    url: str  # where providers post
    control: str  # the control API

    @classmethod
    def start(cls, log_path: Path, delay_ms: float = 0.0) -> SinkProcess:
        log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--sink", str(delay_ms)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert process.stdout is not None
        line = process.stdout.readline().decode().split()
        if len(line) != 3:
            process.kill()
            raise RuntimeError(f"the sink did not start: {log_path.read_text()[-2000:]}")
        return cls(process, f"http://127.0.0.1:{line[0]}/send", f"http://127.0.0.1:{line[1]}")

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---- a `comms worker` with timers around its steps (--steps) ---------------------------------------


def timed_worker_main() -> None:
    """`bench/dispatch.py --timed-worker`: `comms worker` with wall-clock timers around the
    dispatcher's steps, written as JSON to $BENCH_STEPS_OUT when it exits. Wraps functions only;
    no product code changes."""
    import atexit
    from collections import defaultdict
    from contextlib import asynccontextmanager

    import comms.dispatch.dispatcher as dispatcher
    from comms.cli import main as comms_main
    from comms.kit.db import Database
    from comms.providers.webhook import WebhookProvider

    steps: dict[str, list[float]] = defaultdict(list)

    def timer(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                steps[label].append(time.perf_counter() - started)
                if args and hasattr(args[0], "info") and label in ("claim", "complete"):
                    args[0].info["bench_step"] = label  # the session: labels its commit

        setattr(owner, name, wrapper)

    timer(dispatcher, "claim_due", "claim")
    timer(dispatcher, "complete", "complete")
    timer(dispatcher.Dispatcher, "_deliver", "deliver (gate, compose, send)")
    timer(dispatcher.Dispatcher, "_process", "batch in flight (deliver + complete)")
    timer(WebhookProvider, "send", "provider.send (one POST)")
    original_begin = Database.begin

    @asynccontextmanager
    async def begin(self: Database) -> Any:
        async with original_begin(self) as session:
            yield session
            committing = time.perf_counter()
        steps[f"commit after {session.info.get('bench_step', 'other')}"].append(
            time.perf_counter() - committing
        )

    Database.begin = begin  # type: ignore[method-assign]
    original_start = dispatcher.Dispatcher.start
    import gc

    collecting: list[float] = []

    def gc_timer(phase: str, info: dict[str, Any]) -> None:  # the collector's pauses, per generation
        if phase == "start":
            collecting.append(time.perf_counter())
        elif collecting:
            steps[f"gc pause, generation {info['generation']}"].append(time.perf_counter() - collecting.pop())

    gc.callbacks.append(gc_timer)

    def start(self: Any) -> None:
        async def probe() -> None:  # how late a 5 ms sleep wakes: time the loop was busy
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.005)
                steps["event loop lag"].append(time.perf_counter() - started - 0.005)

        original_start(self)
        self._bench_probe = asyncio.get_running_loop().create_task(probe())

    dispatcher.Dispatcher.start = start  # type: ignore[method-assign]

    @atexit.register
    def dump() -> None:
        Path(os.environ["BENCH_STEPS_OUT"]).write_text(json.dumps(steps))

    sys.argv = ["comms", "worker"]
    comms_main()


# ---- a minimal persistent queue, for scale (--minimal) ---------------------------------------------


MINIMAL_CLAIM = 100  # rows per claim, as PERFORMANCE.md's "table -> POST -> mark sent" floor


def minimal_worker_main() -> None:
    """`bench/dispatch.py --minimal-worker DSN URL CONCURRENCY BATCH`: the least a persistent queue
    can do per message, in a process of its own as a comms worker is. It claims
    max(MINIMAL_CLAIM, BATCH) rows of ``bench_minimal`` at a time (FOR UPDATE SKIP LOCKED, one
    commit), posts their messages (decoded from the rows, encoded and signed as the bare loop does)
    BATCH per request with CONCURRENCY requests in flight, and marks each claim's rows sent in one
    UPDATE. No compliance, no rendering, no routing, no events, no leases: what comms does beyond
    this is comms' own cost."""
    dsn, url, concurrency, batch = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    claim = max(MINIMAL_CLAIM, batch)

    async def run() -> None:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, ttl_dns_cache=300)
        slots = asyncio.Semaphore(concurrency)
        timeout = aiohttp.ClientTimeout(total=10.0)
        claims: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:

            async def post(raws: list[str]) -> None:
                async with slots:
                    body = _encode({"messages": [msgspec.json.decode(raw) for raw in raws]})
                    headers = _signed_headers(body)
                    async with http.post(url, data=body, headers=headers, timeout=timeout) as answer:
                        await answer.read()
                        if answer.status != 200:
                            raise RuntimeError(f"sink answered {answer.status}")

            async def deliver(rows: list[Any]) -> None:
                bodies = [r["body"] for r in rows]
                await asyncio.gather(*(post(bodies[i : i + batch]) for i in range(0, len(bodies), batch)))
                await pool.execute(
                    "UPDATE bench_minimal SET status = 'sent' WHERE id = ANY($1::text[])",
                    [r["id"] for r in rows],
                )

            print("minimal worker ready", flush=True)
            while True:
                # Keep about two claims' worth ahead of the requests in flight.
                while len(claims) * claim >= concurrency * batch + 2 * claim:
                    await asyncio.wait(claims, return_when=asyncio.FIRST_COMPLETED)
                rows = await pool.fetch(
                    "UPDATE bench_minimal SET status = 'sending' WHERE id IN (SELECT id FROM bench_minimal"
                    " WHERE status = 'queued' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                    " RETURNING id, body",
                    claim,
                )
                if not rows:
                    if claims:
                        await asyncio.wait(claims, return_when=asyncio.FIRST_COMPLETED)
                    else:
                        await asyncio.sleep(0.005)
                    continue
                task = asyncio.get_running_loop().create_task(deliver(rows))
                claims.add(task)
                task.add_done_callback(claims.discard)

    run_loop(run())


# ---- CPU accounting from /proc ---------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _queued_seconds(pid: int) -> float:
    """Seconds the process's main thread was ready to run but waited for a core (schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _postgres_processes() -> dict[int, float]:
    """CPU seconds of every process named postgres, by pid."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = _cpu_seconds(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds per named process between start() and stop(), plus PostgreSQL split in two:
    "pg" = the backends connected to the bench's database, "pg-other" = every other postgres
    process (checkpointer, WAL writer, autovacuum, and other users' backends on a shared host).
    A process that started inside the window counts whole; one that ended inside it is lost."""

    def __init__(self, pids: dict[str, int], db: Any) -> None:
        self.pids = pids
        self.db = db
        self._named: dict[str, float] = {}
        self._pg: dict[int, float] = {}
        self.used: dict[str, float] = {}
        self._queued: dict[str, float] = {}
        self.queued: dict[str, float] = {}  # seconds each named process waited for a core

    async def _ours(self) -> set[int]:
        rows = await self.db.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return {int(r[0]) for r in rows}

    async def start(self) -> None:
        self._named = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        self._queued = {name: _queued_seconds(pid) for name, pid in self.pids.items()}
        self._pg = _postgres_processes()

    async def stop(self) -> None:
        named = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        self.queued = {
            name: max(0.0, _queued_seconds(pid) - self._queued.get(name, 0.0))
            for name, pid in self.pids.items()
        }
        pg = _postgres_processes()
        ours = await self._ours()
        self.used = {k: max(0.0, named[k] - self._named.get(k, 0.0)) for k in named}
        deltas = {pid: max(0.0, cpu - self._pg.get(pid, 0.0)) for pid, cpu in pg.items()}
        self.used["pg"] = sum(v for pid, v in deltas.items() if pid in ours)
        self.used["pg-other"] = sum(v for pid, v in deltas.items() if pid not in ours)

    def describe(self, wall: float) -> str:
        parts = [f"{k} {v / wall:.2f}" for k, v in self.used.items() if v / wall >= 0.005]
        waits = [f"{k} {v / wall:.0%}" for k, v in self.queued.items() if v / wall >= 0.01]
        waited = f"; waited for a core: {', '.join(waits)} of the time" if waits else ""
        return "cores: " + ", ".join(parts) + f" (total {sum(self.used.values()) / wall:.2f}){waited}"


# ---- 1. the bare loop ----------------------------------------------------------------------------


def _signature(secret: str, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _signed_headers(body: bytes) -> dict[str, str]:
    """The headers comms' webhook provider sends with ``body``, signed for the sink."""
    timestamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-Comms-Timestamp": timestamp,
        "X-Comms-Signature": _signature(SINK_SECRET, timestamp, body),
    }


async def bare_send(
    url: str, template: dict[str, Any], n: int, concurrency: int, tag: int, batch: int = MAX_BATCH
) -> float:
    """Seconds to post ``n`` messages shaped like ``template`` in ``batch``-sized requests,
    ``concurrency`` requests in flight, through an aiohttp session configured like comms' Router.
    The messages exist before the clock starts; encoding, signing, posting and reading every
    answer is timed."""
    messages = [
        {**template, "id": f"log_bare{tag:04d}{i:024x}", "to": f"+86{13_100_000_000 + tag * 100_000 + i}"}
        for i in range(n)
    ]
    chunks = [messages[i : i + batch] for i in range(0, n, batch)]
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, ttl_dns_cache=300)
    accepted = 0
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:
        timeout = aiohttp.ClientTimeout(total=10.0)

        async def post(chunk: list[dict[str, Any]]) -> None:
            nonlocal accepted
            body = _encode({"messages": chunk})
            headers = _signed_headers(body)
            async with http.post(url, data=body, headers=headers, timeout=timeout) as answer:
                raw = await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"sink answered {answer.status}: {raw[:200]!r}")
            results = msgspec.json.decode(raw)["results"]
            accepted += sum(1 for r in results if r.get("status") == "accepted")

        queue = iter(chunks)

        async def lane() -> None:
            for chunk in queue:
                await post(chunk)

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if accepted != n:
        raise RuntimeError(f"bare loop: {accepted} of {n} accepted")
    return elapsed


# ---- comms: processes, API, database --------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    server: Server
    sink: SinkProcess
    dsn: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api: httpx.AsyncClient = field(init=False)
    ctl: httpx.AsyncClient = field(init=False)
    db: Any = None
    phone_base: int = 13_000_000_000

    def worker_env(self) -> dict[str, str]:
        env = dict(self.server.env)
        env["COMMS_DISPATCH_CONCURRENCY"] = str(self.args.concurrency)
        return env

    def start_worker(self, mode: str = "plain", output: Path | None = None) -> subprocess.Popen[bytes]:
        """A `comms worker` (mode "plain"), or one under cProfile ("cprofile") or the step timer
        ("steps"), which write to ``output`` when the worker exits. Returns once it is claiming."""
        index = len(self.workers) + 1
        log_path = self.server.data_dir / f"worker-{index}-{time.monotonic_ns()}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
        env = self.worker_env()
        command = [str(BIN / "comms"), "worker"]
        if mode == "cprofile":
            command = [sys.executable, "-m", "cProfile", "-o", str(output), "-m", "comms.cli", "worker"]
        elif mode == "steps":
            command = [sys.executable, str(Path(__file__).resolve()), "--timed-worker"]
            env["BENCH_STEPS_OUT"] = str(output)
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.workers.append(process)
        deadline = time.monotonic() + 60
        while b"dispatcher started" not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"comms worker did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(0.3)  # its LISTEN connection comes up just after
        return process

    def stop_worker(self, process: subprocess.Popen[bytes]) -> None:
        stop_process(process)
        self.workers.remove(process)

    def phones(self, n: int) -> list[str]:
        start = self.phone_base
        self.phone_base += n + 1000
        return [str(start + i) for i in range(n)]

    async def open(self) -> None:
        headers = {"Authorization": f"Bearer {self.server.token}"}
        self.api = httpx.AsyncClient(base_url=self.server.url, headers=headers, timeout=300)
        self.ctl = httpx.AsyncClient(base_url=self.sink.control, timeout=60)
        self.db = await asyncpg.connect(self.dsn)

    async def close(self) -> None:
        await self.api.aclose()
        await self.ctl.aclose()
        await self.db.close()

    async def add_account(self) -> None:
        body = {
            "channel": "sms",
            "provider": "webhook",
            "name": "bench-sink",
            "config": {
                "url": self.sink.url,
                "secret": SINK_SECRET,
                "batch_size": self.args.batch_size,
                "concurrency": self.args.request_concurrency,
            },
        }
        answer = await self.api.post("/communication/providers", json=body)
        if answer.status_code != 201:
            raise RuntimeError(f"creating the provider account: {answer.status_code} {answer.text[:500]}")

    async def sink_reset(self) -> None:
        (await self.ctl.post("/reset")).raise_for_status()

    async def sink_unique(self) -> int:
        return int((await self.ctl.get("/progress")).json()["unique"])

    async def post_bulk(self, n: int, category: str = "transactional") -> tuple[str, float, float]:
        """(batch id, monotonic time of the POST, of its 202)."""
        body = _encode(
            {
                "channel": "sms",
                "category": category,
                "content": "Your parcel {{ parcel }} arrives today between 9:00 and 12:00.",
                "variables": {"parcel": "PX-4711"},
                "recipients": self.phones(n),
            }
        )
        started = time.monotonic()
        answer = await self.api.post(
            "/communication/bulk", content=body, headers={"Content-Type": "application/json"}
        )
        accepted = time.monotonic()
        payload = answer.json()
        if answer.status_code != 202 or payload.get("counts") != {"queued": n}:
            raise RuntimeError(f"bulk not accepted as queued: {answer.status_code} {answer.text[:500]}")
        return payload["batch_id"], started, accepted

    async def pending(self, batch_id: str) -> int:
        return int(
            await self.db.fetchval(
                "SELECT count(*) FROM messages WHERE batch_id = $1"
                " AND status IN ('queued', 'scheduled', 'deferred', 'sending')",
                batch_id,
            )
        )

    async def wait_done(self, batch_id: str, n: int, timeout: float = 900) -> float:
        """Monotonic time when no item of the batch is pending any more. Waits on the sink (one
        request that answers once it has seen ``n`` messages, or after a second: the database is
        then looked at, in case some never reach it) and, once it has them all, polls the
        database every 20 ms. Polling the sink over httpx every 20 ms instead cost ~0.09 of a
        core, taken from the processes measured."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = await self.ctl.get("/seen", params={"n": n, "timeout": 1.0})
            if int(answer.json()["unique"]) >= n:
                break
            if await self.pending(batch_id) == 0:
                return time.monotonic()
        while time.monotonic() < deadline:
            if await self.pending(batch_id) == 0:
                return time.monotonic()
            await asyncio.sleep(0.02)
        raise RuntimeError(f"batch {batch_id} not done after {timeout} s")

    async def statuses(self, batch_id: str) -> dict[str, int]:
        rows = await self.db.fetch(
            "SELECT status, count(*) FROM messages WHERE batch_id = $1 GROUP BY status", batch_id
        )
        return {r[0]: r[1] for r in rows}

    def meter(self) -> CpuMeter:
        pids = {"bench": os.getpid(), "sink": self.sink.process.pid, "api": self.server.process.pid}
        for i, w in enumerate(self.workers, 1):
            pids[f"worker{i}"] = w.pid
        return CpuMeter(pids, self.db)

    async def comms_dispatch(self, n: int) -> tuple[float, float, CpuMeter]:
        """(seconds from 202 to all sent, seconds to accept, cpu) for one bulk of n."""
        await self.fresh_table()
        await self.sink_reset()
        batch_id, posted, accepted = await self.post_bulk(n)
        meter = self.meter()  # from the 202: the acceptance's own CPU (COPY etc.) is left out
        await meter.start()
        if self.args.analyze_after_accept:
            await self.db.execute("ANALYZE messages")
        done = await self.wait_done(batch_id, n)
        await meter.stop()
        counts = await self.statuses(batch_id)
        if counts != {"sent": n}:
            print(f"    !! batch {batch_id} ended with {counts}", flush=True)
        stats = (await self.ctl.get("/stats")).json()
        if stats["duplicates"] or stats["bad_signatures"]:
            print(f"    !! sink: {stats}", flush=True)
        return done - accepted, accepted - posted, meter

    async def minimal_dispatch(self, template: dict[str, Any], n: int, tag: int) -> tuple[float, CpuMeter]:
        """(seconds until all n are marked sent, cpu) through minimal_worker_main's queue."""
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS bench_minimal (id text PRIMARY KEY, body text NOT NULL,"
            " status text NOT NULL)"
        )
        await self.db.execute(
            "CREATE INDEX IF NOT EXISTS bench_minimal_queued ON bench_minimal (id) WHERE status = 'queued'"
        )
        await self.db.execute("TRUNCATE bench_minimal")
        rows = [
            (
                f"log_mini{tag:04d}{i:024x}",
                _encode(
                    {
                        **template,
                        "id": f"log_mini{tag:04d}{i:024x}",
                        "to": f"+86{13_200_000_000 + tag * 100_000 + i}",
                    }
                ).decode(),
                "held",
            )
            for i in range(n)
        ]
        await self.db.copy_records_to_table("bench_minimal", records=rows, columns=["id", "body", "status"])
        await self.db.execute("VACUUM ANALYZE bench_minimal")
        await self.sink_reset()
        args = self.args
        process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--minimal-worker",
                self.dsn,
                self.sink.url,
                str(args.request_concurrency if args.batch_size < MAX_BATCH else args.concurrency),
                str(args.batch_size),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            if process.stdout.readline().strip() != b"minimal worker ready":
                raise RuntimeError("the minimal worker did not start")
            pids = {"bench": os.getpid(), "sink": self.sink.process.pid, "minimal": process.pid}
            meter = CpuMeter(pids, self.db)
            await meter.start()
            await self.db.execute("UPDATE bench_minimal SET status = 'queued'")
            started = time.monotonic()
            while int((await self.ctl.get("/seen", params={"n": n, "timeout": 5.0})).json()["unique"]) < n:
                if process.poll() is not None:
                    raise RuntimeError("the minimal worker died")
            while await self.db.fetchval("SELECT count(*) FROM bench_minimal WHERE status <> 'sent'"):
                await asyncio.sleep(0.005)
            elapsed = time.monotonic() - started
            await meter.stop()
        finally:
            stop_process(process)
        return elapsed, meter

    async def seed_history(self, rows: int) -> None:
        """The table state every timed bulk starts from: ``rows`` already-sent messages (copies of
        one the warm-up sent), statistics taken while nothing is pending, as autovacuum leaves a
        production log table, and no autovacuum/autoanalyze in the middle of a phase (they would
        change the plans at a random moment). See docs/benchmarks.md for why this matters."""
        await self.db.execute(
            "ALTER TABLE messages SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
        )
        columns = [
            r["column_name"]
            for r in await self.db.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'messages' ORDER BY ordinal_position"
            )
        ]
        # Column by column rather than through a jsonb record per row: 100k rows in ~2 s, not ~45 s.
        values = ", ".join(
            "'log_hist' || lpad(g::text, 28, '0')" if c == "id" else f'm."{c}"' for c in columns
        )
        await self.db.execute(
            f"""INSERT INTO messages ({", ".join(f'"{c}"' for c in columns)})
               SELECT {values}
               FROM (SELECT * FROM messages WHERE status = 'sent' LIMIT 1) AS m, generate_series(1, $1) AS g""",
            rows,
        )
        await self.fresh_table()

    async def fresh_table(self) -> None:
        """Back to the seeded state: only the history rows, vacuumed and analyzed."""
        await self.db.execute("DELETE FROM messages WHERE id NOT LIKE 'log\\_hist%'")
        await self.db.execute("VACUUM ANALYZE messages")

    async def warm_up(self, n: int = 1000) -> None:
        await self.sink_reset()
        batch_id, _, _ = await self.post_bulk(n)
        await self.wait_done(batch_id, n)

    async def template(self) -> dict[str, Any]:
        sample = (await self.ctl.get("/sample")).json()
        if not sample:
            raise RuntimeError("the sink has no sample message (the warm-up sent nothing?)")
        return dict(sample)

    # ---- 4. latency ------------------------------------------------------------------------------

    async def verification(self) -> tuple[str, float, float]:
        """POST one verification SMS; (log id, monotonic POST time, seconds to its 202)."""
        body = {
            "channel": "sms",
            "category": "verification",
            "content": "Your verification code is {{ code }}",
            "variables": {"code": "493817"},
            "recipients": self.phones(1),
        }
        started = time.monotonic()
        answer = await self.api.post("/communication/bulk", json=body)
        elapsed = time.monotonic() - started
        payload = answer.json()
        if answer.status_code != 202 or payload.get("counts") != {"queued": 1}:
            raise RuntimeError(f"verification not queued: {answer.status_code} {answer.text[:300]}")
        return payload["items"][0]["id"], started, elapsed

    async def arrivals(self, ids: list[str], timeout: float = 30) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            got: dict[str, float] = (await self.ctl.get("/arrivals")).json()
            if all(i in got for i in ids) or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.05)


# ---- the program ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def ms(v: float) -> str:
    return f"{v * 1000:.0f} ms"


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


async def run_all(bench: Bench) -> None:
    args = bench.args
    n = args.messages
    await bench.open()
    try:
        await bench.add_account()
        first = bench.start_worker()
        await bench.warm_up()
        template = await bench.template()
        await bench.seed_history(args.history)
        print(f"message shape (copied from what comms sent): {json.dumps(template)[:300]}", flush=True)

        bare_rate: list[float] = []
        one_rate: list[float] = []
        two_rate: list[float] = []
        minimal_rate: list[float] = []
        ratios: list[float] = []
        speedups: list[float] = []
        # comms: C batches of 500 in flight; their requests share the account's K slots.
        in_flight = args.concurrency if args.batch_size >= MAX_BATCH else args.request_concurrency
        for run in range(args.runs):
            print(
                f"\nrun {run + 1}/{args.runs}  (N = {n:,}, {args.batch_size} per request, "
                f"{in_flight} requests in flight)"
            )
            bare_times: list[float] = []
            meter = bench.meter()
            await meter.start()
            for repeat in range(BARE_REPEATS):  # a short phase: the median of a few
                await bench.sink_reset()
                bare_times.append(
                    await bare_send(
                        bench.sink.url, template, n, in_flight, run * 10 + repeat, args.batch_size
                    )
                )
            await meter.stop()
            bare_s = statistics.median(bare_times)
            meter.used = {k: v * bare_s / sum(bare_times) for k, v in meter.used.items()}
            bare_rate.append(n / bare_s)
            print(
                f"  bare aiohttp loop:   {bare_s:6.2f} s  {n / bare_s:8,.0f} msg/s   {meter.describe(bare_s)}"
            )

            if args.minimal:
                minimal_s, meter = await bench.minimal_dispatch(template, n, run)
                minimal_rate.append(n / minimal_s)
                print(
                    f"  minimal queue:       {minimal_s:6.2f} s  {n / minimal_s:8,.0f} msg/s   "
                    f"{meter.describe(minimal_s)}"
                )
                print(f"  ratio minimal/bare:  {minimal_rate[-1] / bare_rate[-1]:.2f}")

            one_s, accept_s, meter = await bench.comms_dispatch(n)
            one_rate.append(n / one_s)
            ratios.append(one_rate[-1] / bare_rate[-1])
            print(
                f"  comms, 1 worker:     {one_s:6.2f} s  {n / one_s:8,.0f} msg/s   {meter.describe(one_s)}"
                f"  [accept {accept_s:.2f} s]"
            )
            print(f"  ratio comms/bare:    {ratios[-1]:.2f}")
            if minimal_rate:
                print(f"  ratio comms/minimal: {one_rate[-1] / minimal_rate[-1]:.2f}")
            if not args.skip_scaling:
                second = bench.start_worker()
                await bench.warm_up()
                two_s, accept_s, meter = await bench.comms_dispatch(n)
                bench.stop_worker(second)
                two_rate.append(n / two_s)
                speedups.append(two_rate[-1] / one_rate[-1])
                print(
                    f"  comms, 2 workers:    {two_s:6.2f} s  {n / two_s:8,.0f} msg/s   {meter.describe(two_s)}"
                    f"  [accept {accept_s:.2f} s]"
                )
                print(f"  speed-up 2 vs 1:     {speedups[-1]:.2f}x")

        latency: dict[str, Any] = {}
        if not args.skip_latency:
            latency = await measure_latency(bench, statistics.median(one_rate))

        if args.profile or args.steps:
            bench.stop_worker(first)
        if args.steps:
            await time_steps(bench, n)
        if args.profile:
            await profile_worker(bench, n)

        med = statistics.median
        print("\n==== medians ====")
        print(
            f"messages per bulk:        {n:,} (sink in its own process, answering after "
            f"{args.sink_delay_ms:g} ms; {args.runs} run(s))"
        )
        print(f"bare aiohttp loop:        {med(bare_rate):,.0f} msg/s")
        print(f"comms, 1 worker:          {med(one_rate):,.0f} msg/s")
        print(
            f"ratio comms/bare:         {med(ratios):.2f}  (target >= 0.8: {verdict(med(ratios) >= 0.8)}; "
            f"per run {', '.join(f'{r:.2f}' for r in ratios)})"
        )
        if minimal_rate:
            minimal_ratios = [m / b for m, b in zip(minimal_rate, bare_rate, strict=True)]
            print(
                f"minimal queue:            {med(minimal_rate):,.0f} msg/s; minimal/bare "
                f"{med(minimal_ratios):.2f} (per run {', '.join(f'{r:.2f}' for r in minimal_ratios)}); "
                f"comms/minimal {med(o / m for o, m in zip(one_rate, minimal_rate, strict=True)):.2f}"
            )
        if two_rate:
            print(f"comms, 2 workers:         {med(two_rate):,.0f} msg/s")
            print(
                f"speed-up 2 vs 1 workers:  {med(speedups):.2f}x  "
                f"(per run {', '.join(f'{s:.2f}' for s in speedups)})"
            )
        if latency:
            idle, busy = latency["idle"], latency["busy"]
            print(
                f"verification latency, idle system:  p50 {ms(pct(idle, 50))}  p99 {ms(pct(idle, 99))}"
                f"  ({len(idle)} samples)"
            )
            p50, p99 = pct(busy, 50), pct(busy, 99)
            print(
                f"verification latency, during a {args.latency_messages:,} bulk:  p50 {ms(p50)} "
                f"({verdict(p50 <= 0.050)}, target <= 50 ms)  p99 {ms(p99)} "
                f"({verdict(p99 <= 0.200)}, target <= 200 ms)  ({len(busy)} samples)"
            )
    finally:
        await bench.close()


async def measure_latency(bench: Bench, rate_1w: float) -> dict[str, Any]:
    args = bench.args
    print(f"\nlatency of a verification SMS (POST -> sink), 1 worker, {args.latency_messages:,}-message bulk")
    await bench.sink_reset()
    idle: list[float] = []
    idle_api: list[float] = []
    for _ in range(args.idle_samples):
        log_id, posted, api_s = await bench.verification()
        got = await bench.arrivals([log_id], timeout=10)
        if log_id in got:
            idle.append(got[log_id] - posted)
            idle_api.append(api_s)
        await asyncio.sleep(0.1)
    print(
        f"  idle system: POST -> sink p50 {ms(pct(idle, 50))}  p99 {ms(pct(idle, 99))}  max {ms(max(idle))}; "
        f"of which POST -> 202 p50 {ms(pct(idle_api, 50))}",
        flush=True,
    )

    await bench.fresh_table()
    await bench.sink_reset()
    batch_id, posted, accepted = await bench.post_bulk(args.latency_messages)
    meter = bench.meter()
    await meter.start()
    print(f"  bulk accepted in {accepted - posted:.2f} s; sampling while it is dispatched", flush=True)
    if args.analyze_after_accept:
        await bench.db.execute("ANALYZE messages")
    done_at: float | None = None

    async def watch() -> None:
        nonlocal done_at
        done_at = await bench.wait_done(batch_id, args.latency_messages)

    watcher = asyncio.create_task(watch())
    # Space the samples over the dispatch: its length is estimated from its first second (the
    # rate falls as the backlog drains, so the estimate is long rather than short).
    await asyncio.sleep(1.0)
    early = await bench.sink_unique()
    elapsed = time.monotonic() - accepted
    expected = args.latency_messages / max(early / elapsed, rate_1w / 20)
    interval = max(0.05, (expected - elapsed) * 0.9 / args.latency_samples)
    samples: list[tuple[str, float, float, int]] = []  # id, posted, api seconds, sink count at post
    start = time.monotonic()
    for k in range(args.latency_samples):
        delay = start + k * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if watcher.done():
            break
        progress = await bench.sink_unique()
        log_id, sent_at, api_s = await bench.verification()
        samples.append((log_id, sent_at, api_s, progress))
    await watcher
    await meter.stop()
    assert done_at is not None
    dispatch_s = done_at - accepted
    got = await bench.arrivals([s[0] for s in samples])
    busy: list[float] = []
    api: list[float] = []
    lost = 0
    for log_id, sent_at, api_s, _progress in samples:
        if sent_at >= done_at:
            continue
        if log_id not in got:
            lost += 1
            continue
        busy.append(got[log_id] - sent_at)
        api.append(api_s)
    counts = await bench.statuses(batch_id)
    print(
        f"  bulk dispatched in {dispatch_s:.1f} s ({args.latency_messages / dispatch_s:,.0f} msg/s) {counts}; "
        f"{meter.describe(dispatch_s)}"
    )
    if samples:
        spread = [s[3] / args.latency_messages for s in samples if s[1] < done_at]
        print(
            f"  {len(busy)} samples during the bulk (posted at {min(spread):.0%}..{max(spread):.0%} of it), "
            f"{lost} never arrived"
        )
    if busy:
        print(
            f"  POST -> sink: p50 {ms(pct(busy, 50))}  p90 {ms(pct(busy, 90))}  p99 {ms(pct(busy, 99))}  "
            f"max {ms(max(busy))}"
        )
        print(f"  of which POST -> 202 (the API): p50 {ms(pct(api, 50))}  p99 {ms(pct(api, 99))}")
    return {"idle": idle, "busy": busy}


async def profile_worker(bench: Bench, n: int) -> None:
    """One 1-worker dispatch of n with the worker profiled: sampled by py-spy when it is found
    (--py-spy, or on PATH), else under cProfile (which slows it down: for where, not how fast)."""
    spy = bench.args.py_spy or shutil.which("py-spy")
    if spy:
        worker = bench.start_worker()
        await bench.warm_up()
        out = bench.server.data_dir / "worker.pyspy"
        recorder = subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(worker.pid),
                "-r",
                "250",
                "--format",
                "raw",
                "-o",
                str(out),
                *(["--idle"] if os.environ.get("BENCH_SPY_IDLE") else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # py-spy attaches
        seconds, _, meter = await bench.comms_dispatch(n)
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
        bench.stop_worker(worker)
        print(f"\nprofile: py-spy on 1 worker, {n:,} messages in {seconds:.2f} s; {meter.describe(seconds)}")
        summarize_py_spy(out)
        if bench.args.profile_out:
            shutil.copyfile(out, bench.args.profile_out)
        return
    import pstats

    out = bench.server.data_dir / "worker.prof"
    worker = bench.start_worker("cprofile", out)
    await bench.warm_up()
    seconds, _, _ = await bench.comms_dispatch(n)
    bench.stop_worker(worker)
    print(f"\nprofile: 1 worker under cProfile dispatched {n:,} in {seconds:.2f} s; top by own time:")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats("comms/", 30)


async def time_steps(bench: Bench, n: int) -> None:
    """One 1-worker dispatch of n with timers around the dispatcher's steps (--steps)."""
    out = bench.server.data_dir / "steps.json"
    worker = bench.start_worker("steps", out)
    await bench.warm_up()
    seconds, _, meter = await bench.comms_dispatch(n)
    bench.stop_worker(worker)
    steps: dict[str, list[float]] = json.loads(out.read_text())
    print(
        f"\nsteps: 1 timed worker, {n:,} messages in {seconds:.2f} s ({n / seconds:,.0f} msg/s); "
        f"{meter.describe(seconds)}"
    )
    print(f"  {'step':40s} {'count':>6s} {'mean':>8s} {'p50':>8s} {'p90':>8s} {'sum':>8s}")
    for name, values in sorted(steps.items(), key=lambda kv: -sum(kv[1])):
        if values:
            print(
                f"  {name:40s} {len(values):6d} {ms(statistics.mean(values)):>8s} {ms(pct(values, 50)):>8s}"
                f" {ms(pct(values, 90)):>8s} {sum(values):7.2f}s"
            )
    claims = steps.get("claim", [])
    if claims:
        serial = statistics.mean(claims) + statistics.mean(steps.get("commit after claim") or [0.0])
        print(
            f"  the loop claims one batch at a time: claim + its commit = {ms(serial)} per batch of "
            f"{MAX_BATCH}, a ceiling of {MAX_BATCH / serial:,.0f} msg/s per worker"
        )


def summarize_py_spy(path: Path, top: int = 25) -> None:
    """py-spy's raw (collapsed) stacks: CPU share per function, inclusive and own."""
    if not path.exists():
        print("  (py-spy wrote nothing: attaching needs ptrace permission)")
        return
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.replace(str(ROOT) + "/", "") for f in stack.split(";")]
        frames = [f.split(" (", 1)[0] + " (" + _short(f) + ")" if " (" in f else f for f in frames]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        print("  (no samples)")
        return
    print(f"  {total} samples of the worker's busy time; share of them, inclusive (comms frames):")
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
    for frame, count in [kv for kv in ranked if "comms/" in kv[0]][:top]:
        print(f"    {count / total:6.1%}  {frame}")
    print("  own time (leaf frames):")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {count / total:6.1%}  {frame}")


def _short(frame: str) -> str:
    """'fn (/long/path/site-packages/pkg/mod.py:12)' -> 'pkg/mod.py' (line numbers dropped)."""
    location = frame.rsplit(" (", 1)[1].rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in location:
            return location.split(marker, 1)[1]
    return location


def recreate_database(pg: str, name: str, drop_only: bool = False) -> None:
    async def go() -> None:
        connection = await asyncpg.connect(f"{pg}/postgres")
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if not drop_only:
                await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(go())


def main() -> None:
    if sys.argv[1:2] == ["--smtp"]:
        # The email half of this benchmark (comms SMTP dispatch vs a bare aiosmtplib loop with
        # the same connections) lives in bench/smtp.py; the rest of the arguments go to it.
        os.execv(sys.executable, [sys.executable, str(Path(__file__).with_name("smtp.py")), *sys.argv[2:]])
    if "--sink" in sys.argv[1:]:
        sink_main()
        return
    if "--timed-worker" in sys.argv[1:]:
        timed_worker_main()
        return
    if sys.argv[1:2] == ["--minimal-worker"]:
        minimal_worker_main()
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--concurrency", type=int, default=int(os.environ.get("COMMS_DISPATCH_CONCURRENCY", "4"))
    )
    parser.add_argument("--latency-messages", type=int, default=100_000)
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--idle-samples", type=int, default=10)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true", help="no 2-worker phase")
    parser.add_argument(
        "--minimal",
        action="store_true",
        help="also time a minimal persistent queue (claim, post, mark sent) against the same sink",
    )
    parser.add_argument("--profile", action="store_true", help="end with a profiled 1-worker dispatch")
    parser.add_argument("--steps", action="store_true", help="end with a step-timed 1-worker dispatch")
    parser.add_argument(
        "--py-spy", default=None, help="py-spy binary for --profile (else PATH, else cProfile)"
    )
    parser.add_argument(
        "--profile-out", default=None, help="also keep py-spy's collapsed stacks (--profile) in this file"
    )
    parser.add_argument("--history", type=int, default=100_000, help="sent rows in the table")
    parser.add_argument(
        "--sink-delay-ms", type=float, default=0.0, help="the sink answers each POST this much later"
    )
    parser.add_argument(
        "--analyze-after-accept",
        action="store_true",
        help="experiment: ANALYZE messages right after each timed bulk's 202 (not what comms does)",
    )
    parser.add_argument("--batch-size", type=int, default=MAX_BATCH)
    parser.add_argument("--request-concurrency", type=int, default=16)
    parser.add_argument("--database", default="comms_bench_dispatch")
    parser.add_argument("--pg", default="postgresql://root@127.0.0.1:5432")
    args = parser.parse_args()

    print(
        f"machine: {os.cpu_count()} cores (nproc), Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    recreate_database(args.pg, args.database)
    tmp = Path(tempfile.mkdtemp(prefix="comms-bench-dispatch-"))
    sink: SinkProcess | None = None
    server: Server | None = None
    bench: Bench | None = None
    try:
        sink = SinkProcess.start(tmp / "sink.log", args.sink_delay_ms)
        url = args.pg.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + args.database
        server = start_server(tmp, extra_env={"COMMS_DATABASE_URL": url}, dispatcher=False)
        bench = Bench(args, server, sink, f"{args.pg}/{args.database}")
        run_loop(run_all(bench))
    finally:
        for worker in list(bench.workers if bench else []):
            stop_process(worker)
        if server is not None:
            server.stop()
        if sink is not None:
            sink.stop()
        recreate_database(args.pg, args.database, drop_only=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
