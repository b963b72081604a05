"""Fixtures shared by the integration tests: a webhook gateway (the ``webhook`` provider's
wire format, signature checked) and a tenant account that sends through it."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from comms.dispatch.dispatcher import Dispatcher
from comms.dispatch.routing import Router
from comms.kit.secretbox import SecretBox
from comms.providers.webhook import signature
from tests.conftest import Service, TenantKeys
from tests.webhook_sink import WebhookSink

SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    server = await WebhookSink(SECRET).start()
    yield server
    await server.stop()


async def add_account(
    service: Service,
    tenant: TenantKeys,
    url: str,
    channel: str = "sms",
    secret: str = SECRET,
    name: str = "gateway",
    **extra: Any,
) -> dict[str, Any]:
    """A ``webhook`` provider account of ``tenant`` posting to ``url``: the API's data for it."""
    body = {
        "channel": channel,
        "provider": "webhook",
        "name": name,
        "config": {"url": url, "secret": secret},
        **extra,
    }
    answer = await service.client.post("/communication/providers", json=body, headers=tenant.headers())
    assert answer.status_code == 201, answer.text
    return dict(answer.json()["data"])


@pytest.fixture
async def account(live_service: Service, live_tenant: TenantKeys, sink: WebhookSink) -> str:
    return str((await add_account(live_service, live_tenant, sink.url, name="gw"))["id"])


def signed(payload: dict[str, Any], secret: str = SECRET, age: int = 0) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    timestamp = str(int(time.time()) - age)
    return body, {
        "Content-Type": "application/json",
        "X-Comms-Timestamp": timestamp,
        "X-Comms-Signature": signature(secret, timestamp, body),
    }


@contextlib.asynccontextmanager
async def standalone_dispatcher(service: Service) -> AsyncIterator[Dispatcher]:
    """A dispatcher beside `service` (which has none), as another worker process would be."""
    settings = service.settings
    secrets = SecretBox(settings.resolved_secret_key)
    router = Router.from_settings(settings, service.db, secrets)
    try:
        yield Dispatcher(service.db, settings, secrets, router)
    finally:
        await router.close()
