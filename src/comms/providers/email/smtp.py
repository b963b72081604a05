"""The ``smtp`` provider: the tenant's own MTA or relay, over a pool of persistent connections.

Each account keeps up to ``max_connections`` open SMTP sessions (aiosmtplib), reused across
messages and batches; a dropped session is reopened on the next use. Messages are built by
providers/email/mime.py and DKIM-signed when the account has a key. Reply codes map per message:
5xx permanent (the server's words in ``error``), 4xx transient (retried with backoff). A session
that breaks while a message is in flight makes that message UNKNOWN: the server may have taken it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import aiosmtplib
from pydantic import BaseModel, ConfigDict, Field

from comms.errors import TransientProviderError
from comms.providers.base import OutboundMessage, Outcome, Provider, ProviderContext, SendResult
from comms.providers.email.dkim_signing import DkimSigner
from comms.providers.email.mime import message_id_for
from comms.providers.email.outbound import email_bytes


class SmtpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    max_connections: int = Field(default=4, ge=1, le=64)
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key: str | None = None
    verify_tls: bool = Field(default=True, description="Check the server's certificate.")


class SmtpProvider(Provider):
    name: ClassVar[str] = "smtp"
    channels: ClassVar[frozenset[str]] = frozenset({"email"})
    Config: ClassVar[type[BaseModel]] = SmtpConfig
    secret_fields: ClassVar[frozenset[str]] = frozenset({"password", "dkim_private_key"})
    max_batch: ClassVar[int] = 200

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._slots = asyncio.Semaphore(config.max_connections)
        self.connections_opened = 0
        self._signer = (
            DkimSigner(config.dkim_domain, config.dkim_selector, config.dkim_private_key)
            if config.dkim_domain and config.dkim_selector and config.dkim_private_key
            else None
        )

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        assert isinstance(config, SmtpConfig)
        return cls(config)

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        return list(await asyncio.gather(*(self._send_one(m) for m in messages)))

    def render(self, message: OutboundMessage) -> bytes:
        raw = email_bytes(message)
        return self._signer.sign(raw) if self._signer is not None else raw

    async def _send_one(self, message: OutboundMessage) -> SendResult:
        if not message.sender:
            return SendResult(message.id, Outcome.FAILED, error="no sender address")
        try:
            raw = self.render(message)
        except ValueError as exc:
            return SendResult(message.id, Outcome.FAILED, error=f"message not buildable: {exc}")
        async with self._slots:
            try:
                client = await self._checkout()
            except (aiosmtplib.SMTPException, OSError) as exc:
                return SendResult(message.id, Outcome.RETRY, error=f"cannot connect: {exc}")
            try:
                _refusals, reply = await client.sendmail(message.sender, [message.to], raw)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                self._checkin(client)
                refusal = exc.recipients[0] if exc.recipients else None
                code = refusal.code if refusal is not None else 550
                text = refusal.message if refusal is not None else str(exc)
                return self._refused(message.id, code, text)
            except aiosmtplib.SMTPResponseException as exc:
                self._checkin(client)
                return self._refused(message.id, exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                await _close(client)
                # The session broke mid-transaction: the server may or may not have the message.
                return SendResult(message.id, Outcome.UNKNOWN, error=f"connection lost while sending: {exc}")
            self._checkin(client)
            return SendResult.sent(message.id, message_id_for(message.id, message.sender), reply[:200])

    @staticmethod
    def _refused(message_id: str, code: int, text: str) -> SendResult:
        answer = f"{code} {text}"[:300]
        outcome = Outcome.FAILED if code >= 500 else Outcome.RETRY
        return SendResult(message_id, outcome, response=answer, error=f"SMTP {answer}")

    async def _checkout(self) -> aiosmtplib.SMTP:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                return client
            await _close(client)
        config = self.config
        context = ssl.create_default_context()
        if not config.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",
            tls_context=context if config.security != "none" else None,
            timeout=config.timeout_seconds,
        )
        try:
            await client.connect()
            if config.username and config.password:
                await client.login(config.username, config.password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _close(client)
            raise TransientProviderError(f"authentication failed: {exc}") from exc
        self.connections_opened += 1
        return client

    def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle.put_nowait(client)

    async def close(self) -> None:
        while not self._idle.empty():
            await _close(self._idle.get_nowait())


async def _close(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        if client.is_connected:
            await client.quit()
    with contextlib.suppress(Exception):
        client.close()
