"""`comms worker` processes on a PostgreSQL database of a test's own, for the end-to-end tests
that start, kill and stop them (tests/e2e/test_chaos.py, test_clock_skew.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from sqlalchemy import func, select

from comms.app import create_app
from comms.config import Settings
from comms.kit.db import Database
from comms.migrations.runner import upgrade
from comms.models import Message
from tests.conftest import TenantKeys, _admin, need_postgres
from tests.webhook_sink import WebhookSink

SECRET_KEY = "e2e-secret-key-shared-by-app-and-workers"


def api_settings(database_url: str, tmp_path: Path) -> Settings:
    """The in-process API's settings beside the workers: same database and key, no dispatcher
    and no express lane (only the worker processes send)."""
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "api",
        database_url=database_url,
        secret_key=SECRET_KEY,
        public_url="https://comms.test",
        express_lane=False,
    )


async def add_sink_account(
    client: httpx.AsyncClient, tenant: TenantKeys, sink: WebhookSink, **config: Any
) -> None:
    """The tenant's SMS goes to ``sink`` through a ``webhook`` provider account."""
    answer = await client.post(
        "/communication/providers",
        json={
            "channel": "sms",
            "provider": "webhook",
            "name": "sink",
            "config": {"url": sink.url, "secret": sink.secret, **config},
        },
        headers=tenant.headers(),
    )
    assert answer.status_code == 201, answer.text


def workers_in(database_url: str, tmp_path: Path) -> Workers:
    """No worker yet; each started one logs to tmp_path/workers/worker-N.log."""
    (tmp_path / "workers").mkdir()
    return Workers(worker_env(database_url, tmp_path / "workers"), tmp_path / "workers")


COMMS = Path(sys.executable).parent / "comms"


@pytest.fixture
def worker_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own, migrated; dropped at the end."""
    base = need_postgres()
    name = f"comms_e2e_{os.getpid()}"
    url = base.rsplit("/", 1)[0] + "/" + name

    asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Workers:
    """The `comms worker` processes this test started (and only those)."""

    env: dict[str, str]
    cwd: Path
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _log_paths: dict[int, Path] = field(default_factory=dict)

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """One more worker (a child of this process, so that killing it kills the worker);
        ``env`` adds to its environment."""
        path = self.cwd / f"worker-{len(self._logs) + 1}.log"
        log = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        process = subprocess.Popen(
            [str(COMMS), "worker"],
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.running.append(process)
        self._log_paths[process.pid] = path
        return process

    def ready(self) -> list[subprocess.Popen[bytes]]:
        """Running workers whose dispatcher has started (startup takes seconds on a busy machine)."""
        return [
            p
            for p in self.running
            if p.poll() is None and b"dispatcher started" in self._log_paths[p.pid].read_bytes()
        ]

    def check_alive(self) -> None:
        for process in self.running:
            assert process.poll() is None, (
                f"worker {process.pid} exited ({process.returncode})\n{self.log_tails()}"
            )

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        self.running.remove(process)
        self.killed.append(process)

    def terminate(self, process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        """SIGTERM one worker; its exit code once it drained (it is no longer running)."""
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=timeout)
        self.running.remove(process)
        return code

    async def stop(self, timeout: float = 30.0) -> list[int | None]:
        """SIGTERM every running worker and wait (bounded) for it to drain and exit."""
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.running) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        codes = [p.poll() for p in self.running]
        self.close()
        return codes

    def close(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        for log in self._logs:
            log.close()

    def log_tails(self, chars: int = 1500) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
            for path in sorted(self.cwd.glob("worker-*.log"))
        )


def worker_env(database_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMS_")}
    env.update(
        {
            "COMMS_DATABASE_URL": database_url,
            "COMMS_SECRET_KEY": SECRET_KEY,
            "COMMS_DATA_DIR": str(data_dir),
            "COMMS_LEASE_SECONDS": "2",
            "COMMS_DISPATCH_BATCH_SIZE": "200",
            "COMMS_POLL_INTERVAL_SECONDS": "0.2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def status_counts(db: Database) -> dict[str, int]:
    async with db.read() as session:
        rows = (await session.execute(select(Message.status, func.count()).group_by(Message.status))).all()
    return {str(status): int(count) for status, count in rows}


async def held_by(db: Database, pid: int) -> int:
    """Rows the worker with this pid holds in `sending` (its worker id is host:pid:suffix)."""
    async with db.read() as session:
        count = await session.scalar(
            select(func.count()).where(Message.status == "sending", Message.lease_owner.like(f"%:{pid}:%"))
        )
    return int(count or 0)


@contextlib.asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    """The app in this process, WITHOUT a dispatcher: only the worker processes send."""
    app = create_app(settings, dispatcher=False)
    async with app.router.lifespan_context(app):
        assert app.state.dispatcher is None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://comms.test", timeout=120
        ) as client:
            yield client, app.state.comms.db
