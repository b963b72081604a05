"""The smtp provider against a real SMTP server (aiosmtpd): pooled connections, DKIM over the
one-click headers verified by dkimpy on the received bytes, 4xx retried, 5xx failed."""

from __future__ import annotations

import base64
import contextlib
import re
import socket
from collections.abc import Iterator
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from comms.models import Message
from comms.providers.email.smtp import SmtpProvider
from tests.conftest import Service, TenantKeys, statuses, wait_until


class Handler:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.temporary: set[str] = set()  # recipients answered 451 once
        self.refused: set[str] = set()  # recipients answered 550

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refused:
            return "550 5.1.1 mailbox unavailable"
        if address in self.temporary:
            self.temporary.discard(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.received.append(envelope.original_content)
        return "250 2.0.0 queued"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Controller, Handler]]:
    handler = Handler()
    with socket.socket() as probe:  # aiosmtpd's readiness check needs a real port, not 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield controller, handler
    finally:
        with contextlib.suppress(AssertionError):  # a test may have stopped it already
            controller.stop()


@pytest.fixture(scope="module")
def dkim_key() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


async def add_smtp_account(service: Service, tenant: TenantKeys, port: int, **config: Any) -> str:
    body = {
        "channel": "email",
        "provider": "smtp",
        "name": "relay",
        "config": {"host": "127.0.0.1", "port": port, "security": "none", "max_connections": 2, **config},
    }
    answer = await service.client.post("/communication/providers", json=body, headers=tenant.headers())
    assert answer.status_code == 201, answer.text
    assert "dkim_private_key" not in answer.json()["data"]["config"]
    return str(answer.json()["data"]["id"])


async def test_marketing_mail_over_pooled_smtp_with_dkim(
    live_service: Service,
    live_tenant: TenantKeys,
    smtp_server: tuple[Controller, Handler],
    dkim_key: tuple[str, bytes],
) -> None:
    controller, handler = smtp_server
    pem, dns_record = dkim_key
    account = await add_smtp_account(
        live_service,
        live_tenant,
        controller.port,
        dkim_domain="acme.example",
        dkim_selector="s1",
        dkim_private_key=pem,
    )
    recipients = [f"person{i}@example.com" for i in range(40)]
    for address in recipients:
        await live_service.client.post(
            "/communication/consents",
            json={"channel": "email", "address": address, "status": "opted_in", "basis": "opt_in"},
            headers=live_tenant.headers(),
        )
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "email",
            "category": "marketing",
            "subject": "Winter sale, {{ name }}",
            "content": "Hi {{ name }}",
            "variables": {"name": "friend"},
            "recipients": recipients,
        },
        headers=live_tenant.headers(),
    )
    batch = answer.json()["batch_id"]

    async def sent() -> bool:
        return await statuses(live_service, batch) == {"sent": 40}

    await wait_until(sent)
    assert len(handler.received) == 40
    for raw in handler.received:
        assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: dns_record)
        signature = raw.split(b"\r\n\r\n", 1)[0].decode()
        header = re.search(r"DKIM-Signature:(.*?)\r\n(?=\S)", signature, re.S)
        assert header is not None
        signed = re.search(
            r"h=([^;]+)", header.group(1).replace("\r\n", "").replace(" ", "").replace("\t", "")
        )
        assert signed is not None
        names = signed.group(1).lower().split(":")
        assert "list-unsubscribe" in names and "list-unsubscribe-post" in names and "from" in names
    provider = next(
        p for (acc, _), p in live_service.app.state.dispatcher.router._instances.items() if acc == account
    )
    assert isinstance(provider, SmtpProvider)
    assert provider.connections_opened <= 2  # pooled: 40 messages over at most max_connections sessions


async def test_smtp_4xx_is_retried_and_5xx_fails_with_the_servers_reply(
    live_service: Service, live_tenant: TenantKeys, smtp_server: tuple[Controller, Handler]
) -> None:
    controller, handler = smtp_server
    await add_smtp_account(live_service, live_tenant, controller.port)
    handler.temporary.add("later@example.com")
    handler.refused.add("gone@example.com")
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "email",
            "category": "transactional",
            "subject": "Receipt",
            "content": "Thanks",
            "recipients": ["later@example.com", "gone@example.com", "fine@example.com"],
        },
        headers=live_tenant.headers(),
    )
    batch = answer.json()["batch_id"]

    async def settled() -> bool:
        return await statuses(live_service, batch) == {"sent": 2, "failed": 1}

    await wait_until(settled)
    async with live_service.db.read() as session:
        later = await session.get(Message, answer.json()["items"][0]["id"])
        gone = await session.get(Message, answer.json()["items"][1]["id"])
    assert later is not None and later.status == "sent" and later.attempts == 2
    assert (
        gone is not None
        and gone.status == "failed"
        and "550" in (gone.error or "")
        and "unavailable" in (gone.error or "")
    )


async def test_smtp_server_down_then_back(
    live_service: Service, live_tenant: TenantKeys, smtp_server: tuple[Controller, Handler]
) -> None:
    controller, handler = smtp_server
    port = controller.port
    await add_smtp_account(live_service, live_tenant, port)
    controller.stop()  # connection refused: retried, nothing lost
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "email",
            "category": "transactional",
            "subject": "S",
            "content": "x",
            "recipients": ["a@example.com"],
        },
        headers=live_tenant.headers(),
    )
    log_id = answer.json()["items"][0]["id"]

    async def retrying() -> bool:
        async with live_service.db.read() as session:
            row = await session.get(Message, log_id)
        return row is not None and row.attempts >= 1 and row.status == "queued"

    await wait_until(retrying)
    restarted = Controller(handler, hostname="127.0.0.1", port=port)
    restarted.start()
    try:

        async def sent() -> bool:
            async with live_service.db.read() as session:
                row = await session.get(Message, log_id)
            return row is not None and row.status == "sent"

        await wait_until(sent)
        assert len(handler.received) == 1
    finally:
        restarted.stop()
