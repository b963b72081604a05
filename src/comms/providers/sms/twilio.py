"""Twilio Programmable Messaging: one REST call per message, issued concurrently.

Send (one per message)::

    POST {endpoint}/2010-04-01/Accounts/{AccountSid}/Messages.json
    Authorization: Basic base64(AccountSid:AuthToken)
    Content-Type: application/x-www-form-urlencoded

    To=+14155550100&Body=...&From=+15017122661 (or MessagingServiceSid=MG...)&StatusCallback=<status url>

Answer: 201 with the Message resource (``sid`` "SM...", ``status`` "queued"/"accepted"), or an
error object ``{"code": 21211, "message": "...", "more_info": "...", "status": 400}``. Error codes
map per message (:data:`ERROR_CODES`); an account-wide refusal (20003 bad credentials) or an
outage of every call raises, so the dispatcher fails over.

Callbacks are form posts signed with ``X-Twilio-Signature`` = base64(HMAC-SHA1(auth token, the
full URL Twilio called + every POST parameter name and value, sorted by name)). Status callbacks
(``MessageSid``, ``MessageStatus``, ``ErrorCode``) carry Twilio's sid only, never our id: a
receipt names the message by ``provider_message_id``. Inbound messages (``MessageSid``,
``From``, ``To``, ``Body``) are answered with empty TwiML so Twilio sends no reply of its own.

Reconciliation: Twilio has no client reference field, so a message whose create call got no
answer is looked up by listing the account's messages to the same number sent since the day
our log item was created (``To`` + ``DateSent>``) and matching the exact body and a creation
time not before our log item's. Not found means UNKNOWN (the dispatcher sends it once more,
flagged possible_duplicate). Honest limits: a message still queued at Twilio has no
``date_sent`` and may not be listed yet; bodies Twilio rewrote (Smart Encoding) or redacted do
not match; two identical bodies to one number on one day are indistinguishable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from comms.errors import PermanentProviderError, TransientProviderError
from comms.kit.clock import service_now
from comms.kit.ids import id_time
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
from comms.providers.calls import RequestPool, bounded_map, fault, is_code

API_VERSION = "2010-04-01"

# What an error code in a create answer means. "failed": this message can never go (FAILED);
# "retry": try this message later (RETRY); "account": the account itself is refused (bad
# credentials, unusable sender): every message would fail the same way, so the dispatcher
# should fail over. Codes not listed fall back on the HTTP status (4xx failed, 429/5xx retry).
ERROR_CODES: dict[int, Literal["failed", "retry", "account"]] = {
    20003: "account",  # authentication failed
    20005: "account",  # account not active
    20404: "account",  # resource not found: wrong account sid or endpoint
    20429: "retry",  # too many requests
    14107: "retry",  # message rate limit exceeded
    21211: "failed",  # invalid 'To' phone number
    21214: "failed",  # 'To' number cannot be reached
    21217: "failed",  # phone number does not appear to be valid
    21408: "failed",  # permission to send to this region is not enabled
    21602: "failed",  # message body is required
    21604: "failed",  # 'To' is required
    21610: "failed",  # recipient unsubscribed (replied STOP): see ERROR_EXPLANATIONS
    21611: "retry",  # the sender has too many queued messages
    21612: "failed",  # 'To' is not reachable via SMS from this sender
    21614: "failed",  # 'To' is not a mobile number
    21617: "failed",  # body exceeds 1600 characters
    21635: "failed",  # 'To' cannot be a landline
    21603: "account",  # 'From' is required: the account's sender is missing, for every message
    21606: "account",  # 'From' is not a message-capable Twilio number of this account
    21212: "account",  # invalid 'From' number
    21659: "account",  # 'From' is not a Twilio number
    21703: "account",  # messaging service has no phone numbers
    21704: "account",  # messaging service has no senders
    21705: "account",  # invalid messaging service sid
    30001: "retry",  # queue overflow
}

# What an error code means for the tenant, beyond Twilio's own short message.
# Refusals because the recipient replied STOP to this sender (Twilio's own opt-out handling).
OPTED_OUT_CODES = frozenset({21610})
ERROR_EXPLANATIONS: dict[int, str] = {
    21610: "the recipient unsubscribed from this sender at Twilio/the carrier (replied STOP); "
    "nothing reaches them from it until they reply START",
}

# MessageStatus in a status callback -> our receipt status. Others (queued, accepted,
# scheduled, sending, sent, receiving, received, canceled) produce no delivery event.
RECEIPT_STATUS: dict[str, str] = {
    "delivered": "delivered",
    "read": "delivered",  # read implies delivered (channels with read receipts)
    "undelivered": "undelivered",
    "failed": "undelivered",
}

# Delivery error codes (ErrorCode in a status callback) that say the number itself is dead.
HARD_BOUNCE_CODES: frozenset[str] = frozenset({"30005", "30006"})

DELIVERY_ERRORS: dict[str, str] = {
    "30003": "unreachable destination handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "message filtered by the carrier",
    "30008": "unknown error",
    "21610": "recipient unsubscribed",
}

# Statuses of a listed/fetched message that mean it will never be delivered.
FAILED_STATUSES: frozenset[str] = frozenset({"failed", "undelivered", "canceled"})

EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class TwilioConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$", examples=["AC" + "0" * 32])
    auth_token: str = Field(min_length=16, description="Signs callbacks; the API password.")
    from_number: str | None = Field(
        default=None,
        pattern=r"^(\+[1-9][0-9]{6,14}|[A-Za-z0-9 ]{1,11})$",
        description="A Twilio number (E.164) or an alphanumeric sender id.",
        examples=["+15017122661"],
    )
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    endpoint: HttpUrl = Field(default="https://api.twilio.com", pattern=r"^https?://")
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    concurrency: int = Field(
        default=10, ge=1, le=100, description="Create calls in flight for this account, per process."
    )

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioConfig:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("give exactly one of from_number or messaging_service_sid")
        return self


def signature(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature over ``url`` and the POST parameters."""
    grouped: dict[str, set[str]] = {}
    for name, value in params:  # a repeated name counts each distinct value once, sorted
        grouped.setdefault(name, set()).add(value)
    data = url + "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def form(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode(), keep_blank_values=True)


class TwilioProvider(Provider):
    name: ClassVar[str] = "twilio"
    channels: ClassVar[frozenset[str]] = frozenset({"sms"})
    Config: ClassVar[type[BaseModel]] = TwilioConfig
    secret_fields: ClassVar[frozenset[str]] = frozenset({"auth_token"})
    max_batch: ClassVar[int] = 100
    # Twilio queues what a sender cannot pass at once (1 segment/s for a US long code, 3 for
    # toll-free, 100 for a short code; more with a Messaging Service pool). 10/s keeps the queue
    # short for a small pool; set the account's rate_per_second to its real throughput.
    rate_per_second: ClassVar[float | None] = 10.0
    max_body_length: ClassVar[int | None] = 1600
    can_reconcile: ClassVar[bool] = True
    callback_answer: ClassVar[tuple[int, str, bytes]] = (200, "text/xml", EMPTY_TWIML)

    def __init__(self, config: TwilioConfig, context: ProviderContext) -> None:
        self.config = config
        # The account's requests in flight in this process (see RequestPool).
        self._pool = RequestPool(config.concurrency)
        self.http = context.http
        self.status_url = context.status_url
        self.base = f"{config.endpoint.rstrip('/')}/{API_VERSION}/Accounts/{config.account_sid}"
        credentials = f"{config.account_sid}:{config.auth_token}".encode()
        self.headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        assert isinstance(config, TwilioConfig)
        return cls(config, context)

    # ---- sending -------------------------------------------------------------------------------

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        if self.http is None:
            raise TransientProviderError("no HTTP session: this instance only parses callbacks")
        stop: list[_Answer] = []  # once the account is refused or throttled, start no more calls

        async def one(message: OutboundMessage) -> _Answer:
            if stop:
                return _Answer("skipped", reason=f"not attempted: {stop[0].reason}")
            try:
                answer = await self._create(message)
            except Exception as exc:  # a fault of ours mid-call: this message only, UNKNOWN
                return _Answer("result", SendResult(message.id, Outcome.UNKNOWN, error=fault(exc)))
            if answer.kind == "refused" or answer.halts:
                stop.append(answer)
            return answer

        answers = await self._pool.map(messages, one, is_code)
        return _settle(messages, answers)

    async def _create(self, message: OutboundMessage) -> _Answer:
        assert self.http is not None
        data = {"To": message.to, "Body": message.text}
        if self.config.messaging_service_sid:
            data["MessagingServiceSid"] = self.config.messaging_service_sid
        else:
            assert self.config.from_number is not None
            data["From"] = self.config.from_number
        if self.status_url:
            data["StatusCallback"] = self.status_url
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds)
        try:
            async with self.http.post(
                f"{self.base}/Messages.json", data=data, headers=self.headers, timeout=timeout
            ) as answer:
                status = answer.status
                raw = await answer.read()
                retry_after = _retry_after(answer.headers.get("Retry-After"))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            return _Answer("transient", reason=f"cannot connect: {exc}", halts=True)
        except (TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            reason = (
                "no answer within the timeout" if isinstance(exc, TimeoutError) else f"connection lost: {exc}"
            )
            return _Answer("result", SendResult(message.id, Outcome.UNKNOWN, error=reason))
        except aiohttp.ClientOSError as exc:  # connected, then the socket failed: it may have arrived
            return _Answer("result", SendResult(message.id, Outcome.UNKNOWN, error=f"connection lost: {exc}"))
        except aiohttp.ClientError as exc:
            if certainly_unsent(exc):
                return _Answer("transient", reason=f"request failed: {client_error_text(exc)}", halts=True)
            error = f"unreadable answer: {client_error_text(exc)}"
            return _Answer("result", SendResult(message.id, Outcome.UNKNOWN, error=error))
        return _classify(message, status, raw, retry_after)

    # ---- callbacks -----------------------------------------------------------------------------

    def verify_callback(self, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        given = headers.get("x-twilio-signature", "")
        if not given:
            return False
        try:
            params = form(body)
        except UnicodeDecodeError:
            return False
        # Bytes, not str: compare_digest refuses a str with non-ASCII characters (a header is
        # decoded as latin-1), which must be a mismatch, not an error.
        given_bytes = given.encode("utf-8", "replace")
        return any(
            hmac.compare_digest(signature(self.config.auth_token, candidate, params).encode(), given_bytes)
            for candidate in _url_variants(url)
        )

    def parse_receipts(self, body: bytes) -> list[DeliveryEvent]:
        params = dict(form(body))
        sid = params.get("MessageSid") or params.get("SmsSid")
        raw_status = params.get("MessageStatus") or params.get("SmsStatus") or ""
        if not sid:
            raise ValueError("a status callback without MessageSid")
        status = RECEIPT_STATUS.get(raw_status)
        if status is None:
            return []  # queued, sent, accepted...: progress, not an outcome
        code = params.get("ErrorCode") or None
        error = None
        bounce = None
        if status == "undelivered":
            error = f"Twilio {raw_status}"
            if code:
                error += (
                    f" {code}: {DELIVERY_ERRORS.get(code, 'see https://www.twilio.com/docs/errors/' + code)}"
                )
            if code is not None and code.isascii() and code.isdigit() and int(code) in OPTED_OUT_CODES:
                bounce = "opted_out"  # replied STOP to the sender at Twilio: suppressed here too
            else:
                bounce = "hard" if code in HARD_BOUNCE_CODES else "soft"
        return [
            DeliveryEvent(
                event_key=f"{sid}:{raw_status}",
                message_id=None,  # Twilio never echoes our id: match by provider_message_id
                provider_message_id=sid,
                status=status,
                error=error,
                bounce=bounce,
            )
        ]

    def parse_inbound(self, body: bytes) -> list[InboundSms]:
        params = dict(form(body))
        sid = params.get("MessageSid") or params.get("SmsMessageSid") or params.get("SmsSid")
        sender = params.get("From")
        if not sid or not sender:
            raise ValueError("an inbound message without MessageSid or From")
        return [
            InboundSms(event_key=sid, from_number=sender, text=params.get("Body", ""), to=params.get("To"))
        ]

    # ---- reconciliation ------------------------------------------------------------------------

    async def reconcile(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        if self.http is None:
            return [SendResult(m.id, Outcome.UNKNOWN, error="no HTTP session") for m in messages]
        return await bounded_map(messages, self._find, self.config.concurrency)

    async def _find(self, message: OutboundMessage) -> SendResult:
        """List the messages to ``message.to`` sent since our log item's day; match the body."""
        assert self.http is not None
        since = created_at(message.id)
        day = (since or service_now()).date().isoformat()
        url: str | None = f"{self.base}/Messages.json"
        params: dict[str, str] | None = {"To": message.to, "DateSent>": day, "PageSize": "100"}
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds)
        for _ in range(MAX_LIST_PAGES):
            assert url is not None
            try:
                async with self.http.get(url, params=params, headers=self.headers, timeout=timeout) as answer:
                    status = answer.status
                    raw = await answer.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                return SendResult(message.id, Outcome.UNKNOWN, error=f"cannot ask Twilio: {exc}")
            if status != 200:
                return SendResult(
                    message.id, Outcome.UNKNOWN, error=f"cannot ask Twilio: {_error_text(status, raw)}"
                )
            try:
                page = msgspec.json.decode(raw, type=_MessagePage)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return SendResult(message.id, Outcome.UNKNOWN, error=f"cannot read Twilio's list: {exc}")
            for found in page.messages:
                if _matches(found, message, since):
                    return _reconciled(message, found)
            if not page.next_page_uri:
                break
            url, params = f"{self.config.endpoint.rstrip('/')}{page.next_page_uri}", None
        return SendResult(message.id, Outcome.UNKNOWN, error="Twilio has no such message")


MAX_LIST_PAGES = 5
CLOCK_SKEW = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class _Answer:
    """One create call: a per-message ``result``, or a whole-call ``transient`` failure (nothing
    sent), an account ``refused``, or ``skipped`` (not attempted after either)."""

    kind: Literal["result", "transient", "refused", "skipped"]
    result: SendResult | None = None
    reason: str = ""
    retry_after: float | None = None
    halts: bool = False  # start no further calls in this send (throttled, unreachable)


class _TwilioMessage(msgspec.Struct):
    sid: str
    status: str = ""
    to: str | None = None
    body: str | None = None
    direction: str | None = None
    date_created: str | None = None
    error_code: int | None = None
    error_message: str | None = None


class _MessagePage(msgspec.Struct):
    messages: list[_TwilioMessage] = []
    next_page_uri: str | None = None


class _TwilioError(msgspec.Struct):
    code: int | None = None
    message: str | None = None
    more_info: str | None = None
    status: int | None = None


def _classify(message: OutboundMessage, status: int, raw: bytes, retry_after: float | None) -> _Answer:
    if status in (200, 201):
        try:
            created = msgspec.json.decode(raw, type=_TwilioMessage)
        except msgspec.DecodeError:
            return _Answer(
                "result", SendResult(message.id, Outcome.UNKNOWN, error=f"unreadable answer: HTTP {status}")
            )
        response = f"HTTP {status} {created.sid} {created.status}".strip()
        if created.status in FAILED_STATUSES:
            error = f"Twilio {created.error_code}: {created.error_message or created.status}"
            opted_out = created.error_code in OPTED_OUT_CODES
            return _Answer(
                "result",
                SendResult(message.id, Outcome.FAILED, created.sid, response, error, opted_out=opted_out),
            )
        return _Answer("result", SendResult.sent(message.id, created.sid, response))
    text = _error_text(status, raw)
    code = _error_code(raw)
    if status in GATEWAY_UNCERTAIN and code is None:
        return _Answer(
            "result", SendResult(message.id, Outcome.UNKNOWN, error=gateway_uncertain(status, "Twilio"))
        )
    kind = ERROR_CODES.get(code) if code is not None else None
    if kind is None:
        if status in (401, 403):
            kind = "account"
        elif status == 429 or status >= 500:
            kind = "retry"
        else:
            kind = "failed"
    if kind == "account":
        return _Answer("refused", reason=text)
    if kind == "retry":
        # Throttling (429/20429) halts this send; a 5xx is this call's trouble only.
        return _Answer(
            "transient", reason=text, retry_after=retry_after, halts=status == 429 or code == 20429
        )
    if code in ERROR_EXPLANATIONS:
        text = f"{text}: {ERROR_EXPLANATIONS[code]}"
    result = SendResult(
        message.id, Outcome.FAILED, response=f"HTTP {status}", error=text, opted_out=code in OPTED_OUT_CODES
    )
    return _Answer("result", result)


def _settle(messages: Sequence[OutboundMessage], answers: Sequence[_Answer]) -> list[SendResult]:
    """Per-message results; raise when no call got through (so the dispatcher fails over)."""
    if not any(a.kind == "result" for a in answers):
        refused = next((a for a in answers if a.kind == "refused"), None)
        if refused is not None:
            raise PermanentProviderError(refused.reason)
        reason = next((a.reason for a in answers if a.kind == "transient"), "no call got through")
        waits = [a.retry_after for a in answers if a.retry_after is not None]
        raise TransientProviderError(reason, max(waits) if waits else None)
    results = []
    for message, answer in zip(messages, answers, strict=True):
        if answer.result is not None:
            results.append(answer.result)
        else:  # not sent: try again later (an account refusal will raise on the next attempt)
            results.append(
                SendResult(message.id, Outcome.RETRY, error=answer.reason, retry_after=answer.retry_after)
            )
    return results


def _error_code(raw: bytes) -> int | None:
    try:
        return msgspec.json.decode(raw, type=_TwilioError).code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _error_text(status: int, raw: bytes) -> str:
    try:
        error = msgspec.json.decode(raw, type=_TwilioError)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}"
    if error.code is None:
        return f"HTTP {status}: {error.message or raw[:200].decode(errors='replace')}"
    return f"Twilio {error.code}: {error.message or 'no message'} (HTTP {status})"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _url_variants(url: str) -> list[str]:
    """The URL as given; with any explicit port removed; without one, with the scheme's default
    port added. Twilio's own validator (twilio-python RequestValidator) accepts a signature over
    either form, since Twilio signs the URL as configured and a proxy in front of us may add or
    drop the port (e.g. Twilio calls https://host/path, we see https://host:8443/path)."""
    parts = urlsplit(url)
    variants = [url]
    if parts.hostname is None:
        return variants
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range: no other form
        return variants
    if port is not None:
        variants.append(urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])))
        return variants
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if default is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}")))
    return variants


def created_at(message_id: str) -> datetime | None:
    """When our log item was created."""
    return id_time(message_id, "log")


def _matches(found: _TwilioMessage, message: OutboundMessage, since: datetime | None) -> bool:
    if found.body != message.text or found.to != message.to:
        return False
    if found.direction is not None and not found.direction.startswith("outbound"):
        return False
    if since is not None and found.date_created:
        try:
            created = parsedate_to_datetime(found.date_created)
        except (TypeError, ValueError):
            return True
        return created >= since - CLOCK_SKEW
    return True


def _reconciled(message: OutboundMessage, found: _TwilioMessage) -> SendResult:
    response = f"found {found.sid} {found.status}"
    if found.status in FAILED_STATUSES:
        error = f"Twilio {found.error_code}: {found.error_message or found.status}"
        opted_out = found.error_code in OPTED_OUT_CODES
        return SendResult(message.id, Outcome.FAILED, found.sid, response, error, opted_out=opted_out)
    return SendResult.sent(message.id, found.sid, response)


__all__ = [
    "ERROR_CODES",
    "RECEIPT_STATUS",
    "TwilioConfig",
    "TwilioProvider",
    "created_at",
    "form",
    "signature",
]
