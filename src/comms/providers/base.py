"""The provider protocol: what the dispatcher hands a provider and what it gets back.

A provider is one module per vendor. It knows the vendor's wire format for sending AND for
parsing receipts, and nothing about the database. Capabilities are class attributes the
dispatcher reads (batch size, rate, body length, template requirement), so no code outside
``providers/`` ever asks which vendor it is talking to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from pydantic import BaseModel


class Outcome(StrEnum):
    SENT = "sent"  # the provider accepted it
    RETRY = "retry"  # transient: try again later
    FAILED = "failed"  # permanent: give up
    UNKNOWN = "unknown"  # the request left but no answer came
    # The vendor's flow control for this recipient (e.g. Aliyun isv.BUSINESS_LIMIT_CONTROL): not a
    # failure; recorded ``deferred`` until ``retry_after`` and never counted against max_attempts.
    DEFERRED = "deferred"
    # Never a vendor's answer: the dispatcher did not send it, because its batch was cancelled
    # while the batch's earlier requests went out (recorded ``cancelled``).
    CANCELLED = "cancelled"


# A proxy's or load balancer's answer for a request it passed on and got no (timely) answer to
# (RFC 9110 15.6.3 Bad Gateway, 15.6.5 Gateway Timeout): the vendor behind it may have taken the
# request, so its messages are UNKNOWN (looked up, or re-sent once flagged), never failed over to
# another account as though nothing had left. 500 and 503 come from the vendor itself: not taken.
GATEWAY_UNCERTAIN = frozenset({502, 504})


def gateway_uncertain(status: int, vendor: str) -> str:
    """The error of a message whose call got a GATEWAY_UNCERTAIN answer."""
    return f"HTTP {status} from a gateway in front of {vendor}: the request may have reached it"


def certainly_unsent(exc: BaseException) -> bool:
    """Whether an aiohttp error proves the request never reached the vendor: no connection was
    made, or the URL could not be used. Any other, once connected (a garbled status line, a bad
    header in the answer, too many redirects), came after the request may have been read: its
    messages are UNKNOWN, never refused (which would send them again, or through another vendor)."""
    return isinstance(
        exc,
        (
            aiohttp.ClientConnectorError,
            aiohttp.ConnectionTimeoutError,
            aiohttp.InvalidURL,
            aiohttp.ServerFingerprintMismatch,
        ),
    )


def client_error_text(exc: BaseException) -> str:
    """An aiohttp error as a log item may show it: its type and message, never its repr (which
    names the request's headers: credentials, callback tokens)."""
    return f"{type(exc).__name__}: {exc}"


# Per-message values: not frozen, because a frozen dataclass is built through object.__setattr__
# per field (measured 2.6 µs against 0.23 µs for 12 fields) and a few are built per message
# sent. They are never changed after construction.
@dataclass(slots=True)
class OutboundMessage:
    """One rendered message for one recipient. ``id`` is our log id (Aliyun OutId, custom_args, ...)."""

    id: str
    tenant_id: str
    channel: str
    category: str
    to: str
    text: str
    sender: str | None = None
    sender_name: str | None = None
    subject: str | None = None
    html: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    # Decrypted variables, for vendors that render server-side from a registered template.
    variables: Mapping[str, str] = field(default_factory=dict)
    provider_template: Mapping[str, Any] | None = None
    segments: int | None = None
    possible_duplicate: bool = False


@dataclass(slots=True)
class SendResult:
    message_id: str
    outcome: Outcome
    provider_message_id: str | None = None
    response: str | None = None
    error: str | None = None
    retry_after: float | None = None
    # FAILED because the recipient opted out of this sender at the vendor or the carrier (replied
    # STOP there): comms suppresses marketing to them too, as if the STOP had come to it.
    opted_out: bool = False

    @classmethod
    def sent(
        cls, message_id: str, provider_message_id: str | None = None, response: str | None = None
    ) -> SendResult:
        return cls(message_id, Outcome.SENT, provider_message_id, response)


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """A delivery receipt or bounce, in our terms. ``event_key`` is unique per event at the vendor."""

    event_key: str
    message_id: str | None  # our log id, where the vendor echoes it back
    provider_message_id: str | None
    status: str  # "delivered" | "undelivered"
    error: str | None = None
    # "hard" | "soft" | "complaint" | "opted_out" (the recipient opted out of the sender at the
    # vendor or carrier): all but "soft" also suppress
    bounce: str | None = None
    # E.164 or email: tells apart the recipients of one vendor id (Aliyun's BizId covers a call).
    recipient: str | None = None
    # Where the vendor's form of the number has more than one reading (Aliyun writes +1 and +86
    # numbers alike): the vendor id under the other readings, tried when the first finds nothing.
    other_provider_message_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundSms:
    event_key: str
    from_number: str
    text: str
    to: str | None = None
    # Other numbers the vendor's form of the sender can be (Aliyun writes +1 and +86 numbers
    # alike); the tenant's own messages decide (receipts/service.py sender_of).
    other_readings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a provider instance gets: the process's HTTP pool, the outbox folder, and the public
    URLs of its account's callbacks (for vendors told per request where to report, e.g. Twilio's
    StatusCallback or Kannel's dlr-url)."""

    http: aiohttp.ClientSession | None  # None where the instance only verifies and parses callbacks
    outbox_dir: Path
    status_url: str | None = None
    inbound_url: str | None = None
    # COMMS_PROVIDER_ALLOW_PRIVATE: False keeps connections off private addresses (kit/netguard.py);
    # the HTTP pool resolves so already, a provider opening its own sockets (SMTP) checks itself.
    allow_private: bool = True


class Provider:
    """Base class with the default capabilities; vendors override what differs.

    ``send`` returns one result per message. It raises (TransientProviderError,
    PermanentProviderError) only when the call certainly did not reach the vendor, and the
    dispatcher then offers those messages to the next route; a request that may have arrived
    but got no answer (a timeout after sending) is a per-message UNKNOWN result instead, so it
    is never blindly sent twice.
    """

    name: ClassVar[str]
    channels: ClassVar[frozenset[str]]
    # The account's ``config`` model; fields named in ``secret_fields`` are write-only, encrypted at rest.
    Config: ClassVar[type[BaseModel]]
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    max_batch: ClassVar[int] = 100
    rate_per_second: ClassVar[float | None] = None
    max_body_length: ClassVar[int | None] = None
    requires_template: ClassVar[bool] = False
    can_reconcile: ClassVar[bool] = False

    @classmethod
    def callback_query(cls, config: Any) -> dict[str, str]:
        """Query parameters the vendor's callback URLs carry: the account's secret
        ``callback_token`` for vendors that sign nothing they push (Aliyun, Tencent, Kannel)."""
        token = getattr(config, "callback_token", None)
        return {"token": token} if isinstance(token, str) and token else {}

    @classmethod
    def dkim_signer(cls, config: Any) -> tuple[str, str, str] | None:
        """(domain, selector, public key as DNS publishes it) of the DKIM key this account signs
        mail with itself, for the sending-domain check to compare; None when it signs nothing, or
        the vendor signs with keys of its own."""
        return None

    @classmethod
    def dkim_hosts(cls, config: Any) -> tuple[str, ...]:
        """The DNS domains under which the vendor publishes the DKIM keys it signs the customer's
        mail with, once the customer authenticated its domain there (a CNAME from the customer's
        selector into them); empty when the vendor signs no mail of the customer's domain, or
        comms itself signs (:meth:`dkim_signer`)."""
        return ()

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        """An instance for one account, from its validated (and decrypted) config."""
        raise NotImplementedError

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        raise NotImplementedError

    # What the vendor expects back from a callback: status, content type, body.
    callback_answer: ClassVar[tuple[int, str, bytes]] = (200, "application/json", b'{"ok":true}')

    def verify_callback(self, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        """Whether a callback really comes from the vendor (its own signature scheme).

        ``headers`` have lower-case names; ``body`` is the request body, or the query string for
        a GET callback (Kannel's dlr-url); ``url`` is the public URL the vendor called (our
        ``public_url`` + path + query), which is what URL-signing vendors sign.
        """
        return False

    def callback_scope(self) -> str | None:
        """Where the vendor posts this account's callbacks, when that is set per vendor account
        rather than per message: two comms accounts of a tenant with the same scope (two API keys
        of one SendGrid account, one SNS topic, one Tencent SdkAppId) get each other's receipts
        on either URL, and each is applied to the message whichever of them carried it. None:
        the callback URL goes with each message (Twilio, Kannel), or there are no callbacks."""
        return None

    async def prepare_callback(self, headers: Mapping[str, str], body: bytes) -> None:
        """Fetch what :meth:`verify_callback` needs and cannot fetch itself, being synchronous
        (e.g. the certificate an SNS message names). Awaited before it; must never raise."""
        return None

    async def handle_control(self, headers: Mapping[str, str], body: bytes) -> bool:
        """Handle a vendor's control message on a callback URL, e.g. an SNS subscription
        confirmation; True when ``body`` was one (and carries no events). Runs after
        :meth:`verify_callback` succeeded."""
        return False

    def parse_receipts(self, body: bytes) -> list[DeliveryEvent]:
        raise NotImplementedError(f"{self.name} has no delivery receipts")

    def parse_inbound(self, body: bytes) -> list[InboundSms]:
        raise NotImplementedError(f"{self.name} has no inbound messages")

    async def reconcile(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Ask the vendor what became of messages whose outcome is unknown."""
        return [SendResult(m.id, Outcome.UNKNOWN, error="provider cannot be asked") for m in messages]

    async def close(self) -> None:
        return None
