"""Operations: rate limits (429 + Retry-After, shared through Redis), /metrics, LISTEN/NOTIFY
wake-up across processes, and the database going away and coming back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench._server import free_port
from sqlalchemy import select, text

from comms.config import Settings
from comms.dispatch.dispatcher import Dispatcher
from comms.dispatch.observe import serve_worker_metrics
from comms.dispatch.routing import Router
from comms.kit.db import Database
from comms.kit.ratelimit import LocalLimiter, RedisLimiter
from comms.kit.secretbox import SecretBox
from comms.models import Message
from tests.conftest import Service, TenantKeys, need_postgres, need_redis, wait_until
from tests.integration.conftest import standalone_dispatcher


def verification(to: str = "13800138000") -> dict[str, Any]:
    return {
        "channel": "sms",
        "category": "verification",
        "content": "c {{ code }}",
        "variables": {"code": "1"},
        "recipients": [to],
    }


async def test_tenant_rate_limit_answers_429_with_retry_after(service: Service, tenant: TenantKeys) -> None:
    service.settings.rate_limit_per_second = 1
    service.settings.rate_limit_burst = 3
    codes = [
        (await service.client.get("/communication/logs", headers=tenant.headers())).status_code
        for _ in range(5)
    ]
    assert codes[:3] == [200, 200, 200] and codes[3] == 429
    limited = await service.client.get("/communication/logs", headers=tenant.headers())
    assert limited.status_code == 429 and limited.json()["code"] == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # Another tenant has its own budget.
    from tests.conftest import make_tenant

    other = await make_tenant(service.db, "Other")
    assert (await service.client.get("/communication/logs", headers=other.headers())).status_code == 200


async def test_local_limiter_gcra() -> None:
    limiter = LocalLimiter()
    assert [await limiter.acquire("k", rate=10, burst=2) for _ in range(2)] == [0.0, 0.0]
    wait = await limiter.acquire("k", rate=10, burst=2)
    assert 0 < wait <= 0.1
    assert await limiter.acquire("other", rate=10, burst=2) == 0.0
    assert await limiter.acquire("batch", rate=100, burst=100, cost=100) == 0.0
    assert await limiter.acquire("batch", rate=100, burst=100, cost=50) > 0


@pytest.mark.redis
async def test_redis_limiter_is_shared_between_processes() -> None:
    url = need_redis()
    first, second = RedisLimiter(url), RedisLimiter(url)  # two clients, as two processes would have
    key = f"test:{id(first)}"
    try:
        allowed = [await (first if i % 2 else second).acquire(key, rate=5, burst=4) for i in range(4)]
        assert allowed == [0.0, 0.0, 0.0, 0.0]
        assert await first.acquire(key, rate=5, burst=4) > 0
        assert await second.acquire(key, rate=5, burst=4) > 0
    finally:
        await first.close()
        await second.close()


async def test_with_redis_away_limits_hold_per_process_and_nothing_fails(
    service: Service, tenant: TenantKeys
) -> None:
    """Redis unreachable (nothing listens on its port): the API keeps answering, and the tenant's
    limit is still enforced, by this process alone, until Redis answers again."""
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
    state = service.app.state.comms
    shared, state.limiter = state.limiter, limiter
    service.settings.rate_limit_per_second = 1
    service.settings.rate_limit_burst = 3
    try:
        codes = [
            (await service.client.get("/communication/logs", headers=tenant.headers())).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        sent = await service.client.post("/communication/bulk", json=verification(), headers=tenant.headers())
        assert sent.status_code == 429  # still limited, not a 500
        scraped = (await service.client.get("/metrics")).text
        assert "comms_rate_limit_fallbacks_total" in scraped
        assert "comms_rate_limit_fallbacks_total 0.0" not in scraped
    finally:
        state.limiter = shared
        await limiter.close()


async def test_metrics_expose_counts_queue_and_breakers(service: Service, tenant: TenantKeys) -> None:
    await service.client.post("/communication/bulk", json=verification(), headers=tenant.headers())
    text = (await service.client.get("/metrics")).text
    assert (
        f'comms_messages_accepted_total{{channel="sms",status="queued",tenant="{tenant.tenant_id}"}}' in text
    )
    assert "comms_queue_due_messages 1.0" in text
    assert "comms_queue_oldest_due_seconds" in text
    assert 'comms_http_requests_total{method="POST",route="/communication/bulk",status="202"}' in text


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_notify_wakes_a_worker_in_another_process_at_once(service: Service, tenant: TenantKeys) -> None:
    need_postgres()
    settings = service.settings.model_copy(update={"poll_interval_seconds": 30.0})
    db = Database(settings.resolved_database_url)
    secrets = SecretBox(settings.resolved_secret_key)
    router = Router.from_settings(settings, db, secrets)
    worker = Dispatcher(db, settings, secrets, router)  # its own pool and listener: another process's view
    worker.start()
    try:
        assert worker._listener is not None
        await asyncio.wait_for(worker._listener.connected.wait(), timeout=10)
        await asyncio.sleep(0.2)  # let the worker finish its first (empty) claim and go idle
        answer = await service.client.post(
            "/communication/bulk", json=verification(), headers=tenant.headers()
        )
        log_id = answer.json()["items"][0]["id"]

        async def sent() -> bool:
            async with service.db.read() as session:
                row = await session.get(Message, log_id)
            return row is not None and row.status == "sent"

        await wait_until(sent, timeout=5.0)  # far under the 30 s poll: the NOTIFY woke it
    finally:
        await worker.stop()
        await router.close()
        await db.dispose()


class Proxy:
    """A TCP proxy in front of PostgreSQL that a test can cut and restore, or freeze: bytes stop
    flowing both ways while every connection stays open (a NAT timeout, a failover without reset)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.links.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxied_service(postgres_database: str, tmp_path: Any) -> AsyncIterator[tuple[Service, Proxy]]:
    # postgres_database as an argument: set up before this fixture's event loop runs (asyncio.run)
    from sqlalchemy.engine import make_url

    from tests.conftest import _service, _truncate

    url = postgres_database
    await _truncate(url)
    parsed = make_url(url)
    proxy = Proxy(parsed.port or 5432)
    await proxy.start()
    proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "var",
        database_url=proxied,
        secret_key="k",
        public_url="https://comms.test",
        poll_interval_seconds=0.2,
        retry_base_seconds=0.05,
        # A claim whose answer the cut lost (committed by the server, never seen by the worker)
        # is recovered by the reaper once its lease expires: 2 s here, not the default minute.
        lease_seconds=2.0,
    )
    async for service in _service(settings, dispatcher=True):
        yield service, proxy
    await proxy.cut()


@pytest.mark.postgres
async def test_database_outage_is_503_then_recovers_without_losing_anything(
    proxied_service: tuple[Service, Proxy],
) -> None:
    service, proxy = proxied_service
    from tests.conftest import make_tenant

    tenant = await make_tenant(service.db)
    accepted = await service.client.post("/communication/bulk", json=verification(), headers=tenant.headers())
    assert accepted.status_code == 202
    await proxy.cut()
    down = await service.client.post(
        "/communication/bulk", json=verification("13900139000"), headers=tenant.headers()
    )
    assert down.status_code == 503 and down.json()["code"] == 503 and "Retry-After" in down.headers
    ready = await service.client.get("/readyz")
    assert ready.status_code == 503
    assert (await service.client.get("/healthz")).status_code == 200  # alive, just not ready
    await proxy.start()  # the database is back (same port)

    async def ready_again() -> bool:
        return (await service.client.get("/readyz")).status_code == 200

    await wait_until(ready_again, timeout=15)
    again = await service.client.post(
        "/communication/bulk", json=verification("13700137000"), headers=tenant.headers()
    )
    assert again.status_code == 202

    async def all_sent() -> bool:
        async with service.db.read() as session:
            rows = (await session.scalars(select(Message.status))).all()
        return sorted(rows) == ["sent", "sent"]

    await wait_until(all_sent, timeout=15)


async def _backend_pid(db: Database) -> int:
    async with db.read() as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


@pytest.mark.postgres
async def test_a_connection_the_server_closed_is_replaced_before_it_is_used(postgres_database: str) -> None:
    """The server ends a pooled connection (a restart, an administrator): the next session gets a
    new connection at once instead of failing on the dead one."""
    db = Database(postgres_database)
    try:
        first = await _backend_pid(db)
        admin = Database(postgres_database)
        try:
            async with admin.read() as session:
                await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})

            async def gone() -> bool:
                async with admin.read() as session:
                    alive = await session.execute(
                        text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": first}
                    )
                    return alive.first() is None

            await wait_until(gone, timeout=5)  # polled with sleeps: this loop reads the socket's end
        finally:
            await admin.dispose()
        pids = {await _backend_pid(db) for _ in range(3)}
        assert first not in pids
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_a_connection_is_pinged_only_after_sitting_idle(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No round trip before each use of a connection used a moment ago (pool_pre_ping cost three:
    BEGIN, a query, ROLLBACK); one that sat idle past PING_AFTER_IDLE_SECONDS is pinged first."""
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

    from comms.kit import db as db_module

    pings: list[int] = []
    real_ping = AsyncAdapt_asyncpg_connection.ping

    def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        pings.append(1)
        real_ping(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)
    db = Database(postgres_database)
    try:
        for _ in range(5):
            await _backend_pid(db)
        assert pings == []
        monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.0)  # every connection is "idle"
        await _backend_pid(db)
        assert pings == [1]
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_single_statements_go_without_begin_and_commit(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API key read of every request is one statement: on PostgreSQL it is sent without a
    transaction around it (no BEGIN and COMMIT: two round trips of three); reads of several
    statements still share one transaction."""
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

    begun: list[int] = []
    real_start = AsyncAdapt_asyncpg_connection._start_transaction

    async def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        if self.isolation_level != "autocommit":  # what sends a BEGIN
            begun.append(1)
        await real_start(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "_start_transaction", counted)
    db = Database(postgres_database)
    try:
        async with db.read() as session:  # (the first connection's set-up has a transaction too)
            await session.execute(text("SELECT 1"))
            await session.execute(text("SELECT 2"))
        begun.clear()
        async with db.read_one() as session:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        assert begun == []
        async with db.read() as session:
            await session.execute(text("SELECT 1"))
            await session.execute(text("SELECT 2"))
        assert begun == [1]
        # A claim is one UPDATE ... RETURNING: it commits by itself (another connection sees it
        # at once), with no BEGIN or COMMIT around it.
        async with db.write_one() as session:
            await session.execute(text("CREATE TABLE IF NOT EXISTS comms_probe (v int)"))
        begun.clear()
        async with db.write_one() as session:
            await session.execute(text("INSERT INTO comms_probe VALUES (1)"))
            assert begun == []
            async with db.read() as other:
                assert (await other.execute(text("SELECT count(*) FROM comms_probe"))).scalar_one() == 1
        async with db.write_one() as session:
            await session.execute(text("DROP TABLE comms_probe"))
    finally:
        await db.dispose()


async def test_a_hung_redis_costs_one_timeout_then_is_left_alone_for_a_while() -> None:
    """Redis accepts connections but never answers: the first check waits for its timeout, then
    the limiter answers locally without asking Redis again (no new connection) for a while,
    instead of paying the timeout on every request."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0")
    try:
        assert await limiter.acquire("hung", rate=10, burst=2) == 0.0  # after the timeout
        assert len(held) == 1
        assert await limiter.acquire("hung", rate=10, burst=2) == 0.0
        assert await limiter.acquire("hung", rate=10, burst=2) > 0  # the local limit holds
        assert len(held) == 1  # Redis was not asked again
    finally:
        await limiter.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_wake_listener_connects_as_the_engine_does_and_notices_a_silent_drop(
    postgres_database: str,  # as an argument: set up before the test's loop runs (it uses asyncio.run)
) -> None:
    """The listener opens its connection with the URL's query options read as the engine reads
    them (asyncpg would take them for server settings), and a connection that stops carrying
    bytes without closing is found by the probe and replaced; NOTIFY works again after."""
    need_postgres()
    import asyncpg
    from sqlalchemy.engine import make_url

    from comms.dispatch.wakeup import CHANNEL, WakeListener

    url = make_url(postgres_database)
    proxy = Proxy(url.port or 5432)
    await proxy.start()
    proxied = url.set(
        host="127.0.0.1",
        port=proxy.port,
        query={"prepared_statement_cache_size": "100", "command_timeout": "30"},
    ).render_as_string(hide_password=False)
    woken: list[int] = []
    listener = WakeListener(proxied, lambda: woken.append(1), retry_seconds=0.05, probe_seconds=0.3)
    listener.start()
    direct = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await asyncio.wait_for(listener.connected.wait(), timeout=10)
        proxy.flowing.clear()

        async def dropped() -> bool:
            return not listener.connected.is_set()

        await wait_until(dropped)
        proxy.flowing.set()
        await asyncio.wait_for(listener.connected.wait(), timeout=10)
        before = len(woken)
        await direct.execute(f"NOTIFY {CHANNEL}")

        async def woke() -> bool:
            return len(woken) > before

        await wait_until(woke)
    finally:
        await direct.close()
        await listener.stop()
        await proxy.cut()


async def test_a_worker_answers_health_and_readiness_on_its_metrics_port(service: Service) -> None:
    port = free_port()
    async with standalone_dispatcher(service) as dispatcher:
        dispatcher.start()
        runner = await serve_worker_metrics(service.db, dispatcher, "127.0.0.1", port)
        unreachable = Database("postgresql+asyncpg://nobody@127.0.0.1:1/none")
        away = await serve_worker_metrics(unreachable, dispatcher, "127.0.0.1", 0)
        away_port = away.addresses[0][1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                health = await client.get("/healthz")
                assert (health.status_code, health.json()["message"]) == (200, "ok")
                ready = await client.get("/readyz")
                assert (ready.status_code, ready.json()["code"], ready.json()["message"]) == (
                    200,
                    200,
                    "ready",
                )
                # The claim loop ended by itself (a bug): the process runs but sends nothing.
                assert dispatcher._loop_task is not None
                dispatcher._loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher._loop_task
                health = await client.get("/healthz")
                assert health.status_code == 503
                assert health.json()["message"] == "dispatcher task ended: comms-dispatcher"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{away_port}") as client:
                ready = await client.get("/readyz")
                assert (ready.status_code, ready.json()["message"]) == (503, "database unreachable")
        finally:
            await away.cleanup()
            await runner.cleanup()
            await unreachable.dispose()
            await dispatcher.stop()
    assert dispatcher.stopped_tasks() == []  # a stopped dispatcher is not a crashed one


async def test_comms_status_shows_the_queue_across_tenants_and_workers(
    service: Service, tenant: TenantKeys
) -> None:
    """`comms status`: due now and later, what each worker holds (expired leases counted), unknown
    rows, and the tenants with the most due messages, from a real process on the same database."""
    from datetime import timedelta

    from sqlalchemy import update

    from comms.dispatch.queue import claim_due
    from comms.kit.clock import isoformat, utcnow

    async def bulk(count: int, **extra: Any) -> None:
        body = {
            "channel": "sms",
            "category": "transactional",
            "content": "Parcel",
            "recipients": [f"1380013{i:04d}" for i in range(count)],
            **extra,
        }
        answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
        assert answer.status_code == 202, answer.text

    await bulk(5)
    await bulk(2, send_at=isoformat(utcnow() + timedelta(hours=2)))
    now = utcnow()
    async with service.db.begin() as session:
        held = await claim_due(session, "host-a:11:aaaa", 3, now, timedelta(seconds=60))
        assert len(held) == 3
        # one of them belonged to a worker that died long ago, and one answer never came twice
        await session.execute(
            update(Message).where(Message.id == held[0].id).values(lease_until=now - timedelta(minutes=5))
        )
        await session.execute(update(Message).where(Message.id == held[1].id).values(status="unknown"))
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "comms"), "status", "--json",
        env={**os.environ, "COMMS_DATABASE_URL": service.settings.resolved_database_url,
             "COMMS_DATA_DIR": str(service.settings.data_dir)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    status = json.loads(out)
    assert (status["due"], status["later"], status["sending"], status["unknown"]) == (2, 2, 2, 1)
    assert status["expired_leases"] == 1 and status["oldest_due_seconds"] >= 0
    assert [(w["worker"], w["messages"], w["expired"]) for w in status["workers"]] == [
        ("host-a:11:aaaa", 2, 1)
    ]
    assert status["tenants"] == [{"id": tenant.tenant_id, "name": "Acme", "due": 2}]
    away = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "comms"), "status",
        env={**os.environ, "COMMS_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
             "COMMS_DATA_DIR": str(service.settings.data_dir)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(away.communicate(), timeout=60)
    assert away.returncode == 1 and err.decode().startswith("error: cannot read the queue: ")


async def test_comms_apikey_revoke_refuses_the_key_from_then_on(service: Service, tenant: TenantKeys) -> None:
    """A leaked key is revoked from the command line: the next request with it is a 401, the
    tenant's other keys still work, the revocation is in the audit trail; revoking again says so,
    and an unknown id exits 2 with one line."""
    from comms.models import AuditEvent

    key_id = tenant.token.removeprefix("comms_")[: len("key_") + 32]
    assert (await service.client.get("/communication/logs", headers=tenant.headers())).status_code == 200

    async def revoke(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "comms"), "apikey", "revoke", *args,
            env={**os.environ, "COMMS_DATABASE_URL": service.settings.resolved_database_url,
                 "COMMS_DATA_DIR": str(service.settings.data_dir)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        return int(process.returncode or 0), out.decode(), err.decode()

    code, out, _ = await revoke(key_id, "--json")
    assert code == 0 and json.loads(out) == {"id": key_id, "revoked": True, "message": "revoked"}
    refused = await service.client.get("/communication/logs", headers=tenant.headers())
    assert refused.status_code == 401 and refused.json()["code"] == 401
    other = await service.client.get("/communication/logs", headers=tenant.headers(tenant.read_only_token))
    assert other.status_code == 200
    code, out, _ = await revoke(key_id)
    assert code == 0 and out.strip() == f"{key_id}: already revoked"
    code, _, err = await revoke("key_" + "0" * 32)
    assert code == 2 and err.strip() == f"error: no API key key_{'0' * 32}"
    async with service.db.read() as session:
        actions = list(
            await session.scalars(select(AuditEvent.action).where(AuditEvent.tenant_id == tenant.tenant_id))
        )
    assert actions.count("apikey.revoked") == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_comms_status_reads_the_partial_indexes_on_sqlite(service: Service) -> None:
    """Nothing runs ANALYZE on SQLite, and without statistics its planner counted the queue by
    walking an index of every row (0.4 s at 300k rows): each statement names its partial index,
    and the plan uses it."""
    from comms.dispatch.status import statements
    from comms.kit.clock import utcnow
    from comms.kit.db import raw_datetime

    params = {"now": raw_datetime(utcnow(), True), "top": 10}
    async with service.db.read() as session:
        for name, statement in statements(True).items():
            plan = (await session.execute(text(f"EXPLAIN QUERY PLAN {statement.element.text}"), params)).all()
            details = " | ".join(str(row[-1]) for row in plan)
            index = {"unknown": "ix_messages_unknown", "held": "ix_messages_lease"}.get(
                name, "ix_messages_claim"
            )
            assert f"USING INDEX {index}" in details or f"USING COVERING INDEX {index}" in details, (
                name,
                details,
            )


async def test_a_server_that_cannot_take_work_is_a_503_not_a_500(
    service: Service, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL starting up or shutting down (SQLSTATE 57P03, 57P01), a connection failure (08...)
    or too many clients (53300) reach the app as a plain DBAPIError, not as a lost connection:
    each is the database's outage, a 503 with Retry-After in the envelope; another database error
    stays a 500."""
    from sqlalchemy.exc import DBAPIError

    from comms.messages.repository import MessageRepository

    class Refusal(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__("refused")
            self.sqlstate = sqlstate

    state = {"code": ""}

    async def refused(*_: Any, **__: Any) -> Any:
        raise DBAPIError("SELECT 1", {}, Refusal(state["code"]))

    monkeypatch.setattr(MessageRepository, "list", refused)
    for code, expected in (("57P03", 503), ("57P01", 503), ("08006", 503), ("53300", 503), ("42703", 500)):
        state["code"] = code
        answer = await service.client.get("/communication/logs", headers=tenant.headers())
        assert answer.status_code == expected and answer.json()["code"] == expected, (code, answer.text)
        if expected == 503:
            assert answer.headers["Retry-After"] == "5"


async def test_a_statement_the_server_never_answers_ends_at_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that stops answering without closing the connection (a partition) costs a
    statement STATEMENT_TIMEOUT, not the ~15 minutes TCP takes to give up; the TimeoutError that
    ends it is answered as an outage (503) like any other."""
    from comms.kit import db as db_module

    monkeypatch.setattr(db_module, "STATEMENT_TIMEOUT", 0.5)
    database = Database(need_postgres())
    try:
        with pytest.raises(TimeoutError):
            async with database.read() as session:
                await session.execute(text("SELECT pg_sleep(5)"))
        async with database.read() as session:  # and the pool goes on with a sound connection
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await database.dispose()
