"""Fixtures shared by the integration tests: a webhook gateway (the ``webhook`` provider's
wire format, signature checked) and a tenant account that sends through it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from comms.providers.webhook import signature
from tests.conftest import Service, TenantKeys
from tests.webhook_sink import WebhookSink

SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    server = await WebhookSink(SECRET).start()
    yield server
    await server.stop()


@pytest.fixture
async def account(live_service: Service, live_tenant: TenantKeys, sink: WebhookSink) -> str:
    answer = await live_service.client.post(
        "/communication/providers",
        json={
            "channel": "sms",
            "provider": "webhook",
            "name": "gw",
            "config": {"url": sink.url, "secret": SECRET},
        },
        headers=live_tenant.headers(),
    )
    return str(answer.json()["data"]["id"])


def signed(payload: dict[str, Any], secret: str = SECRET, age: int = 0) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    timestamp = str(int(time.time()) - age)
    return body, {
        "Content-Type": "application/json",
        "X-Comms-Timestamp": timestamp,
        "X-Comms-Signature": signature(secret, timestamp, body),
    }
