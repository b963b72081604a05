"""The generic ``webhook`` provider: an in-house gateway receives each batch as one JSON POST.

Request::

    POST <url>
    Content-Type: application/json
    X-Comms-Timestamp: 1764158400
    X-Comms-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

    {"messages": [{"id": "log_...", "channel": "sms", "to": "+8613800138000", "from": "ACME",
                   "subject": null, "text": "...", "html": null, "segments": 1,
                   "headers": [], "possible_duplicate": false}]}

``batch_size`` messages per request (default 500; 1 for gateways that take one message at a
time), up to ``concurrency`` requests in flight per process, shared by the batches in flight.
Answer: any 2xx accepts every message; a JSON body ``{"results": [{"id": "log_...", "status":
"accepted" | "retry" | "rejected" | "opted_out", "message_id": "...", "error": "..."}]}`` decides
per message (``opted_out``: refused because the recipient opted out there; comms suppresses
marketing to them as after a STOP).
429 and 5xx are transient (Retry-After honoured), other 4xx permanent. Receivers should treat
``id`` as an idempotency key: a message whose first POST got no answer is posted once more with
``possible_duplicate: true``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import aiohttp
import msgspec
from pydantic import BaseModel, ConfigDict, Field

from comms.errors import PermanentProviderError, TransientProviderError
from comms.kit.clock import unix_time
from comms.kit.urls import HttpUrl
from comms.providers.base import (
    GATEWAY_UNCERTAIN,
    DeliveryEvent,
    InboundSms,
    OutboundMessage,
    Outcome,
    Provider,
    ProviderContext,
    SendResult,
    certainly_unsent,
    client_error_text,
    gateway_uncertain,
)
from comms.providers.calls import RequestPool, send_calls

_encode = msgspec.json.Encoder().encode
_STATUS = {
    "accepted": Outcome.SENT,
    "sent": Outcome.SENT,
    "retry": Outcome.RETRY,
    "rejected": Outcome.FAILED,
    "opted_out": Outcome.FAILED,  # the recipient opted out at the gateway or the carrier
}


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(pattern=r"^https?://", examples=["https://gateway.internal/comms"])
    secret: str = Field(min_length=16, description="Signs each request (HMAC-SHA256).")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    batch_size: int = Field(
        default=500,
        ge=1,
        le=500,
        description="Messages per request (1 for gateways that take one at a time).",
    )
    concurrency: int = Field(
        default=16, ge=1, le=256, description="Requests in flight for this account, per process."
    )


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return _Signer(secret)(timestamp, body)


class _Signer:
    """``v1=`` + hex HMAC-SHA256(secret, "<timestamp>." + body), the key schedule done once per
    account (hmac.copy) instead of per request."""

    def __init__(self, secret: str) -> None:
        self._keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def __call__(self, timestamp: str, body: bytes) -> str:
        mac = self._keyed.copy()
        mac.update(timestamp.encode() + b"." + body)
        return "v1=" + mac.hexdigest()


class WebhookProvider(Provider):
    name: ClassVar[str] = "webhook"
    channels: ClassVar[frozenset[str]] = frozenset({"sms", "email"})
    Config: ClassVar[type[BaseModel]] = WebhookConfig
    secret_fields: ClassVar[frozenset[str]] = frozenset({"secret"})
    max_batch: ClassVar[int] = 500

    def __init__(self, config: WebhookConfig, http: aiohttp.ClientSession | None) -> None:
        self.config = config
        self.http = http
        # Shared by every batch in flight: the account's requests in flight in this process stay
        # at ``concurrency`` while one batch's last requests overlap the next batch's first.
        # Verification codes go first and may run beside it: a bulk holding every request slot
        # of the account (a slow gateway) must not hold back a code the express lane claimed.
        self._pool = RequestPool(config.concurrency)
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
        self._sign = _Signer(config.secret)

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        assert isinstance(config, WebhookConfig)
        return cls(config, context.http)

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        size = self.config.batch_size
        chunks = [messages[i : i + size] for i in range(0, len(messages), size)]
        return await send_calls(chunks, self._post, lambda chunk: chunk, self._pool)

    async def _post(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """One request carrying ``messages``; raises when the gateway refused it as a whole."""
        body = _encode(_Batch([_wire(m) for m in messages]))
        timestamp = str(int(unix_time()))
        headers = {
            "Content-Type": "application/json",
            "X-Comms-Timestamp": timestamp,
            "X-Comms-Signature": self._sign(timestamp, body),
        }
        if self.http is None:
            raise TransientProviderError("no HTTP session: this instance only parses callbacks")
        try:
            async with self.http.post(
                self.config.url, data=body, headers=headers, timeout=self._timeout
            ) as answer:
                status = answer.status
                text = await answer.read()
                retry_after = _retry_after(answer.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as exc:  # never connected: certainly not delivered
            raise TransientProviderError(f"cannot connect: {exc.os_error or exc}") from exc
        except (
            TimeoutError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,  # connected, then the socket failed (a reset): it may have arrived
        ) as exc:
            # The request may have arrived: unknown, never blindly re-sent as new.
            reason = (
                "no answer within the timeout" if isinstance(exc, TimeoutError) else f"connection lost: {exc}"
            )
            return [SendResult(m.id, Outcome.UNKNOWN, error=reason) for m in messages]
        except aiohttp.ClientError as exc:
            if certainly_unsent(exc):
                raise TransientProviderError(f"request failed: {client_error_text(exc)}") from exc
            error = f"unreadable answer: {client_error_text(exc)}"
            return [SendResult(m.id, Outcome.UNKNOWN, error=error) for m in messages]
        if status in GATEWAY_UNCERTAIN:
            return [
                SendResult(m.id, Outcome.UNKNOWN, error=gateway_uncertain(status, "the webhook endpoint"))
                for m in messages
            ]
        if status == 429 or status >= 500:
            raise TransientProviderError(f"HTTP {status}: {text[:200].decode(errors='replace')}", retry_after)
        if status >= 400:
            raise PermanentProviderError(f"HTTP {status}: {text[:200].decode(errors='replace')}")
        return _results(messages, text, status)

    def callback_scope(self) -> str | None:
        # One gateway (one signing secret, one origin) may post the receipts of several accounts
        # to one URL; two gateways that happen to share a secret are not one.
        parts = urlsplit(str(self.config.url))
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        return f"webhook:{origin}:" + hashlib.sha256(self.config.secret.encode()).hexdigest()

    def verify_callback(self, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        timestamp = headers.get("x-comms-timestamp", "")
        if (
            # Twelve digits reach the year 33658; far more would make int() refuse (Python
            # limits the digits it converts), a 500 for whoever sends the header.
            not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12)
            or abs(unix_time() - int(timestamp)) > CALLBACK_MAX_AGE
        ):
            return False
        expected = self._sign(timestamp, body)
        return hmac.compare_digest(
            expected.encode(), headers.get("x-comms-signature", "").encode("utf-8", "replace")
        )

    def parse_receipts(self, body: bytes) -> list[DeliveryEvent]:
        """``{"events": [{"event_id", "id" (our log id), "message_id", "status": "delivered" |
        "undelivered", "error", "bounce": "hard" | "soft" | "complaint"}]}``"""
        payload = msgspec.json.decode(body, type=_ReceiptBody)
        return [
            DeliveryEvent(
                event_key=e.event_id,
                message_id=e.id,
                provider_message_id=e.message_id,
                status=e.status,
                error=e.error,
                bounce=e.bounce,
            )
            for e in payload.events
        ]

    def parse_inbound(self, body: bytes) -> list[InboundSms]:
        """``{"messages": [{"event_id", "from", "to", "text"}]}``"""
        payload = msgspec.json.decode(body, type=_InboundBody)
        return [InboundSms(m.event_id, m.from_, m.text, m.to) for m in payload.messages]


CALLBACK_MAX_AGE = 300  # seconds a signed callback stays valid (replays later are refused)


class _Receipt(msgspec.Struct):
    event_id: str
    status: Literal["delivered", "undelivered"]
    id: str | None = None
    message_id: str | None = None
    error: str | None = None
    bounce: Literal["hard", "soft", "complaint", "opted_out"] | None = None


class _ReceiptBody(msgspec.Struct):
    events: list[_Receipt]


class _Inbound(msgspec.Struct, rename={"from_": "from"}):
    event_id: str
    from_: str
    text: str
    to: str | None = None


class _InboundBody(msgspec.Struct):
    messages: list[_Inbound]


class _Wire(msgspec.Struct, rename={"sender": "from"}):
    """One message as the gateway receives it (a Struct encodes faster than a dict)."""

    id: str
    channel: str
    category: str
    to: str
    sender: str | None
    from_name: str | None
    subject: str | None
    text: str
    html: str | None
    headers: list[tuple[str, str]]
    segments: int | None
    possible_duplicate: bool


class _Batch(msgspec.Struct):
    messages: list[_Wire]


def _wire(m: OutboundMessage) -> _Wire:
    return _Wire(
        m.id,
        m.channel,
        m.category,
        m.to,
        m.sender,
        m.sender_name,
        m.subject,
        m.text,
        m.html,
        list(m.headers),
        m.segments,
        m.possible_duplicate,
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _results(messages: Sequence[OutboundMessage], raw: bytes, status: int) -> list[SendResult]:
    accepted = f"HTTP {status}"
    if not raw.strip():
        return [SendResult.sent(m.id, None, accepted) for m in messages]
    try:
        payload = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return [SendResult.sent(m.id, None, accepted) for m in messages]
    per_id: dict[str, dict[str, Any]] = {}
    if isinstance(payload, dict) and isinstance(payload.get("results"), list):
        per_id = {
            r["id"]: r for r in payload["results"] if isinstance(r, dict) and isinstance(r.get("id"), str)
        }
    out = []
    for m in messages:
        entry = per_id.get(m.id)
        if entry is None:
            out.append(SendResult.sent(m.id, None, accepted))
            continue
        said = str(entry.get("status", "accepted"))
        outcome = _STATUS.get(said, Outcome.SENT)
        error = str(entry.get("error")) if outcome is not Outcome.SENT and entry.get("error") else None
        if said == "opted_out":
            error = error or "the recipient opted out at the gateway or the carrier"
        out.append(
            SendResult(
                m.id,
                outcome,
                provider_message_id=str(entry["message_id"]) if entry.get("message_id") else None,
                response=accepted,
                error=error,
                opted_out=said == "opted_out",
            )
        )
    return out


__all__ = ["WebhookConfig", "WebhookProvider", "signature"]
