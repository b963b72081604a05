"""A `comms worker` is the process that sends in a scale-out deployment: it serves its own
/metrics (--metrics-port) with what it sent, per tenant, channel, provider and status, and
/healthz and /readyz for its supervisor."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from bench._server import free_port

from comms.config import Settings
from tests.conftest import Service, TenantKeys, make_tenant, need_postgres, statuses, wait_until

COMMS = Path(sys.executable).parent / "comms"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_worker_serves_its_own_metrics(service: Service, settings: Settings, tmp_path: Path) -> None:
    need_postgres()
    tenant: TenantKeys = await make_tenant(service.db)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMS_")}
    env.update(
        {
            "COMMS_DATABASE_URL": settings.resolved_database_url,
            "COMMS_SECRET_KEY": "test-secret-key",
            "COMMS_DATA_DIR": str(tmp_path / "worker"),
            "COMMS_POLL_INTERVAL_SECONDS": "0.2",
        }
    )
    worker = subprocess.Popen(
        [str(COMMS), "worker", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        answer = await service.client.post(
            "/communication/bulk",
            json={
                "channel": "sms",
                "category": "transactional",
                "content": "Hi",
                "recipients": ["13800138000"],
            },
            headers=tenant.headers(),
        )

        async def sent() -> bool:
            return await statuses(service, answer.json()["batch_id"]) == {"sent": 1}

        await wait_until(sent, timeout=30)
        deadline = time.monotonic() + 10
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    scraped = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the worker's metrics port never opened"
                    await asyncio.sleep(0.05)
        line = (
            f'comms_messages_dispatched_total{{channel="sms",provider="outbox",status="sent",'
            f'tenant="{tenant.tenant_id}"}} 1.0'
        )
        assert line in scraped and "comms_queue_due_messages" in scraped
        assert "comms_reaper_rounds_total" in scraped and "comms_clock_offset_seconds" in scraped
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health, ready = await client.get("/healthz"), await client.get("/readyz")
        assert (health.status_code, health.json()["message"]) == (200, "ok")
        assert (ready.status_code, ready.json()["message"]) == (200, "ready")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:  # never left running to claim in later tests
            worker.kill()
            worker.wait()
