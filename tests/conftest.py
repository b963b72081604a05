"""Shared fixtures: a migrated database per test (SQLite by default, PostgreSQL where asked),
the app with its lifespan, an HTTP client, and a tenant with API keys.

PostgreSQL and Redis URLs come from the environment (COMMS_TEST_POSTGRES_URL, COMMS_TEST_REDIS_URL).
Without them those tests skip, unless COMMS_REQUIRE_SERVICES=1 (set by .ci/run), which turns a
skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from comms.app import create_app
from comms.config import Settings
from comms.kit import clock
from comms.kit.db import Database
from comms.migrations.runner import upgrade
from comms.tenants.scopes import ALL_SCOPES, DEFAULT_SCOPES
from comms.tenants.service import create_api_key, create_tenant

POSTGRES_URL = os.environ.get("COMMS_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("COMMS_TEST_REDIS_URL")
REQUIRE_SERVICES = os.environ.get("COMMS_REQUIRE_SERVICES") == "1"

TABLES = (
    "receipt_events",
    "provider_accounts",
    "messages",
    "batches",
    "idempotency_keys",
    "audit_events",
    "suppressions",
    "consents",
    "templates",
    "api_keys",
    "tenants",
)


@pytest.fixture(autouse=True)
def own_clock() -> Iterator[None]:
    """Each test starts on this machine's clock: an app or dispatcher on PostgreSQL makes the
    process follow the server's (kit/clock.py), which must not carry over into the next test."""
    clock.unfollow()
    clock.set_clock(None)
    yield
    clock.unfollow()
    clock.set_clock(None)


def need_postgres() -> str:
    if not POSTGRES_URL:
        if REQUIRE_SERVICES:
            pytest.fail("COMMS_TEST_POSTGRES_URL is not set but services are required")
        pytest.skip("PostgreSQL not configured (COMMS_TEST_POSTGRES_URL)")
    return POSTGRES_URL


def need_redis() -> str:
    if not REDIS_URL:
        if REQUIRE_SERVICES:
            pytest.fail("COMMS_TEST_REDIS_URL is not set but services are required")
        pytest.skip("Redis not configured (COMMS_TEST_REDIS_URL)")
    return REDIS_URL


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per test session; each test gets a copy (migrating costs ~0.3 s)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


def unique_database_name(purpose: str = "test") -> str:
    """Unique to this test run and xdist worker: two runs on one server never share a database."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:8] or f"p{os.getpid()}"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"comms_{purpose}_{run}_{worker}"


async def _admin(base: str, statement: str) -> None:
    engine = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of this xdist worker's own, migrated once, dropped at the end."""
    base = need_postgres()
    name = unique_database_name()
    asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        # A connection a failed test left in a transaction must fail this one, not hang the run.
        await conn.execute(text("SET LOCAL lock_timeout = '30s'"))
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "comms.db"
        shutil.copy(template, path)
        yield f"sqlite+aiosqlite:///{path}"
    else:
        url: str = request.getfixturevalue("postgres_database")
        asyncio.run(_truncate(url))
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "var",
        database_url=database_url,
        secret_key="test-secret-key",
        public_url="https://comms.test",
        poll_interval_seconds=0.2,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        express_lane=False,  # `service` (no dispatcher) keeps what it accepts queued
        event_webhook_allow_private=True,  # the tests' receivers listen on 127.0.0.1
    )


@dataclass
class TenantKeys:
    tenant_id: str
    token: str
    read_only_token: str
    pii_token: str
    region: str

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


async def make_tenant(db: Database, name: str = "Acme", region: str = "CN", **settings: Any) -> TenantKeys:
    tenant_settings = {
        "sender_identities": ["news@acme.example", "ACME"],
        "postal_address": "1 Main St, Springfield",
        # acme.example has no DNS: tests of marketing email turn the M5 check off, except the
        # tests of that check (which run a DNS server of their own).
        "require_dns_authentication": False,
    }
    tenant_settings.update(settings)
    async with db.begin() as session:
        tenant = await create_tenant(session, name, region, tenant_settings)
        _, token = await create_api_key(session, tenant.id, DEFAULT_SCOPES)
        _, read_only = await create_api_key(session, tenant.id, ["logs:read"])
        _, pii = await create_api_key(session, tenant.id, ALL_SCOPES)
    return TenantKeys(tenant.id, token, read_only, pii, region)


@dataclass
class Service:
    app: Any
    client: httpx.AsyncClient
    settings: Settings
    db: Database

    @property
    def outbox(self) -> Path:
        return self.settings.resolved_outbox_dir


async def _service(settings: Settings, dispatcher: bool) -> AsyncIterator[Service]:
    app = create_app(settings, dispatcher=dispatcher)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://comms.test") as client:
            yield Service(app, client, settings, app.state.comms.db)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    """The API without a dispatcher: what is accepted stays queued."""
    async for svc in _service(settings, dispatcher=False):
        yield svc


@pytest.fixture
async def live_service(settings: Settings) -> AsyncIterator[Service]:
    """The API with its in-process dispatcher."""
    async for svc in _service(settings, dispatcher=True):
        yield svc


@pytest.fixture
async def tenant(service: Service) -> TenantKeys:
    return await make_tenant(service.db)


@pytest.fixture
async def live_tenant(live_service: Service) -> TenantKeys:
    return await make_tenant(live_service.db)


async def statuses(service: Service, batch_id: str) -> dict[str, int]:
    """Count of a batch's log items per status, straight from the database."""
    from sqlalchemy import select

    from comms.models import Message

    async with service.db.read() as session:
        rows = (await session.scalars(select(Message.status).where(Message.batch_id == batch_id))).all()
    counts: dict[str, int] = {}
    for status in rows:
        counts[status] = counts.get(status, 0) + 1
    return counts


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll an async predicate until it is true (never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await predicate():
            return
        if loop.time() > deadline:
            raise AssertionError("condition not met within timeout")
        await asyncio.sleep(interval)


async def wait_for_message(service: Service, log_id: str, condition: Callable[[Any], bool]) -> Any:
    """Wait until the log item ``log_id`` meets ``condition``; return it (a ``Message`` row)."""
    from comms.models import Message

    async def row() -> Any:
        async with service.db.read() as session:
            return await session.get(Message, log_id)

    async def met() -> bool:
        found = await row()
        return found is not None and condition(found)

    await wait_until(met)
    return await row()
