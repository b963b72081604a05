"""Tencent Cloud SMS (API 2021-01-11): ``SendSms`` with a registered template, signed TC3-HMAC-SHA256.

Request (one per group of up to 200 numbers sharing template, signature and parameter values)::

    POST https://sms.tencentcloudapi.com/
    Content-Type: application/json; charset=utf-8
    Host: sms.tencentcloudapi.com
    X-TC-Action: SendSms
    X-TC-Version: 2021-01-11
    X-TC-Timestamp: 1551113065
    X-TC-Region: ap-guangzhou
    Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/<date>/sms/tc3_request,
                   SignedHeaders=content-type;host, Signature=<hex>

    {"PhoneNumberSet": ["+8613800000000", ...], "SmsSdkAppId": "1400006666", "TemplateId": "1110",
     "TemplateParamSet": ["123456"], "SignName": "Acme", "SessionContext": "log_..."}

The text is Tencent's registered template: ``provider_templates.tencent`` names it
(``template_id``; ``params`` = the variable names whose values fill the template's {1}, {2}... in
order; optional ``sign_name`` and ``international_template_id``). Messages whose values differ
go in separate calls; one call holds either Chinese mainland numbers or others, never both, and
never the same number twice. ``SessionContext`` carries our log id when a call holds one message
(Tencent echoes it in the answer; its documented receipts do not carry it).

Answer: ``Response.SendStatusSet`` has one status per number (``Code`` "Ok" and a ``SerialNo``,
or an error code, mapped by :data:`NUMBER_ERRORS`); ``Response.Error`` refuses the whole call
(:data:`CALL_ERRORS`). Tencent also reports refusals of the whole account (an empty SMS package,
arrears, a request IP outside the whitelist) per number: such a code is read as the same refusal
of the call (:func:`_read_answer`), never as a failure of the message. Marketing SMS go out only
08:00-22:00 Beijing time (``FailedOperation.MarketingSendTimeConstraint``): deferred until 08:00,
per number or for the whole call.

Receipts are a JSON array of ``{sid, report_status: SUCCESS|FAIL, errmsg, description, mobile,
nationcode, user_receive_time}`` where ``sid`` is the SerialNo; replies are
``{mobile, nationcode, text, sign, time, extend}``. Tencent signs neither: the callback URLs carry
a secret ``token`` query parameter (the account's ``callback_token``), compared in constant time.
A token in the URL proves who knows the URL, not the body's integrity (TLS covers that).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

import aiohttp
import msgspec
from pydantic import BaseModel, ConfigDict, Field

from comms.errors import PermanentProviderError, TransientProviderError
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
    gateway_uncertain,
)
from comms.providers.calls import RequestPool, carries_code, fault

ACTION = "SendSms"
VERSION = "2021-01-11"
SERVICE = "sms"
CONTENT_TYPE = "application/json; charset=utf-8"
MAX_NUMBERS = 200  # PhoneNumberSet per call
MAX_SESSION_CONTEXT = 511  # bytes

CallKind = Literal["account", "transient", "deferred", "failed"]

# Response.Error.Code for a whole call, by dotted prefix (the longest listed prefix wins).
# "account": this account cannot send at all (credentials, permissions, balance) -> fail over;
# "transient": try again later; "deferred": flow control, each message waits (never a refusal);
# "failed": this call's content is refused (template, signature).
# The "account" codes mean the same when Tencent reports them per number in SendStatusSet
# (UnauthorizedOperation.ServiceSuspendDueToArrears, .RequestIpNotInWhitelist,
# .IndividualUserMarketingSmsPermissionDeny, FailedOperation.InsufficientBalanceInSmsPackage...).
CALL_ERRORS: dict[str, CallKind] = {
    "AuthFailure": "account",
    "UnauthorizedOperation": "account",
    "FailedOperation.InsufficientBalanceInSmsPackage": "account",
    "InvalidParameterValue.SdkAppIdNotExist": "account",
    "FailedOperation.MarketingSendTimeConstraint": "deferred",
    "InternalError": "transient",
    "RequestLimitExceeded": "transient",
    "LimitExceeded": "transient",
    "ResourceUnavailable": "transient",
    "FailedOperation": "failed",
    "InvalidParameter": "failed",
    "InvalidParameterValue": "failed",
    "MissingParameter": "failed",
    "UnsupportedOperation": "failed",
}

# SendStatusSet[].Code per number, by dotted prefix: "retry" later or "failed" for good. Codes
# CALL_ERRORS reads "account" or "deferred" are read so first (see _per_number).
NUMBER_ERRORS: dict[str, Literal["retry", "failed"]] = {
    "LimitExceeded": "retry",
    "LimitExceeded.AppCountryOrRegionInBlacklist": "failed",
    "LimitExceeded.PhoneNumberCountLimit": "failed",
    "InternalError": "retry",
    "FailedOperation": "failed",
    "InvalidParameter": "failed",
    "InvalidParameterValue": "failed",
    "MissingParameter": "failed",
    "UnsupportedOperation": "failed",
}

# How long a per-number limit holds (seconds); the daily ones last until midnight in Beijing.
LIMIT_WAITS: dict[str, float] = {
    "LimitExceeded.PhoneNumberThirtySecondLimit": 30.0,
    "LimitExceeded.PhoneNumberOneHourLimit": 3600.0,
    "LimitExceeded.DeliveryFrequencyLimit": 60.0,
}
DAILY_LIMITS: frozenset[str] = frozenset(
    {
        "LimitExceeded.DailyLimit",
        "LimitExceeded.AppDailyLimit",
        "LimitExceeded.AppGlobalDailyLimit",
        "LimitExceeded.AppMainlandChinaDailyLimit",
        "LimitExceeded.AppCountryOrRegionDailyLimit",
        "LimitExceeded.PhoneNumberDailyLimit",
        "LimitExceeded.PhoneNumberSameContentDailyLimit",
    }
)
BEIJING = timezone(timedelta(hours=8))  # Asia/Shanghai: UTC+8, no daylight saving time
# Marketing SMS are refused outside 08:00-22:00 Beijing time (MarketingSendTimeConstraint).
MARKETING_OPENS = 8  # hour, Beijing time
# A refusal this soon after 08:00 by our clock means Tencent's clock is behind ours: try again
# shortly rather than the next morning.
CLOCK_SKEW = timedelta(minutes=5)
SKEWED_WAIT = 60.0

RECEIPT_STATUS: dict[str, str] = {"SUCCESS": "delivered", "FAIL": "undelivered"}


class TencentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret_id: str = Field(min_length=1, examples=["AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"])
    secret_key: str = Field(min_length=1, description="Signs each request (TC3-HMAC-SHA256).")
    sdk_app_id: str = Field(pattern=r"^[0-9]{4,20}$", examples=["1400006666"])
    sign_name: str | None = Field(
        default=None,
        max_length=50,
        description="The approved SMS signature (required for Chinese mainland numbers); a template's "
        "provider_templates.tencent.sign_name overrides it.",
    )
    region: str = Field(default="ap-guangzhou", pattern=r"^[a-z]+-[a-z]+(-[0-9a-z]+)*$")
    endpoint: HttpUrl = Field(default="https://sms.tencentcloudapi.com", pattern=r"^https?://")
    callback_token: str = Field(
        min_length=16,
        description="Tencent does not sign callbacks: configure the receipt and reply URLs with "
        "?token=<this value>.",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    concurrency: int = Field(
        default=5, ge=1, le=50, description="SendSms calls in flight for this account, per process."
    )


# ---- TC3-HMAC-SHA256, as published (cloud.tencent.com/document/api/382/52072) -------------------


def canonical_request(host: str, payload: bytes, content_type: str = CONTENT_TYPE) -> str:
    return "\n".join(
        [
            "POST",
            "/",
            "",
            f"content-type:{content_type.strip().lower()}\nhost:{host.strip().lower()}\n",
            "content-type;host",
            hashlib.sha256(payload).hexdigest(),
        ]
    )


def credential_scope(timestamp: int, service: str = SERVICE) -> str:
    return f"{datetime.fromtimestamp(timestamp, UTC):%Y-%m-%d}/{service}/tc3_request"


def string_to_sign(timestamp: int, canonical: str, service: str = SERVICE) -> str:
    hashed = hashlib.sha256(canonical.encode()).hexdigest()
    return f"TC3-HMAC-SHA256\n{timestamp}\n{credential_scope(timestamp, service)}\n{hashed}"


def tc3_signature(secret_key: str, timestamp: int, to_sign: str, service: str = SERVICE) -> str:
    def mac(key: bytes, text: str) -> bytes:
        return hmac.new(key, text.encode(), hashlib.sha256).digest()

    day = f"{datetime.fromtimestamp(timestamp, UTC):%Y-%m-%d}"
    signing_key = mac(mac(mac(("TC3" + secret_key).encode(), day), service), "tc3_request")
    return hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()


def authorization(
    secret_id: str,
    secret_key: str,
    host: str,
    payload: bytes,
    timestamp: int,
    service: str = SERVICE,
    content_type: str = CONTENT_TYPE,
) -> str:
    to_sign = string_to_sign(timestamp, canonical_request(host, payload, content_type), service)
    return (
        f"TC3-HMAC-SHA256 Credential={secret_id}/{credential_scope(timestamp, service)}, "
        f"SignedHeaders=content-type;host, Signature={tc3_signature(secret_key, timestamp, to_sign, service)}"
    )


# ---- the provider --------------------------------------------------------------------------------


class TencentProvider(Provider):
    name: ClassVar[str] = "tencent"
    channels: ClassVar[frozenset[str]] = frozenset({"sms"})
    Config: ClassVar[type[BaseModel]] = TencentConfig
    secret_fields: ClassVar[frozenset[str]] = frozenset({"secret_key", "callback_token"})
    max_batch: ClassVar[int] = MAX_NUMBERS
    # Tencent limits calls (3000/s per action), not messages; its per-number frequency limits
    # answer LimitExceeded.* per number, which is retried after the wait it implies.
    rate_per_second: ClassVar[float | None] = None
    requires_template: ClassVar[bool] = True
    callback_answer: ClassVar[tuple[int, str, bytes]] = (
        200,
        "application/json",
        b'{"result":0,"errmsg":"OK"}',
    )

    def __init__(self, config: TencentConfig, http: aiohttp.ClientSession | None) -> None:
        self.config = config
        # The account's requests in flight in this process (see RequestPool).
        self._pool = RequestPool(config.concurrency)
        self.http = http
        self.host = urlsplit(config.endpoint).netloc

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        assert isinstance(config, TencentConfig)
        return cls(config, context.http)

    # ---- sending -------------------------------------------------------------------------------

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        if self.http is None:
            raise TransientProviderError("no HTTP session: this instance only parses callbacks")
        results: list[SendResult | None] = [None] * len(messages)
        groups: dict[tuple[str, str | None, bool, tuple[str, ...]], list[int]] = {}
        for index, message in enumerate(messages):
            prepared = _prepare(message, self.config)
            if isinstance(prepared, str):
                results[index] = SendResult(message.id, Outcome.FAILED, error=prepared)
            else:
                groups.setdefault(prepared, []).append(index)
        calls = [
            _Call(template, sign, params, [messages[i] for i in chunk], chunk)
            for (template, sign, _, params), members in groups.items()
            for chunk in _chunks(members, [messages[i].to for i in members])
        ]
        stop: list[_Answer] = []

        async def one(call: _Call) -> _Answer:
            if stop:
                return _Answer("skipped", reason=f"not attempted: {stop[0].reason}")
            try:
                answer = await self._send_call(call)
            except Exception as exc:  # a fault of ours mid-call: this call's messages, UNKNOWN
                error = fault(exc)
                return _Answer(
                    "results", [SendResult(m.id, Outcome.UNKNOWN, error=error) for m in call.messages]
                )
            if answer.kind in ("refused", "transient") or answer.halts:
                stop.append(answer)
            return answer

        answers = await self._pool.map(calls, one, lambda call: carries_code(call.messages))
        return _settle(messages, results, calls, answers)

    async def _send_call(self, call: _Call) -> _Answer:
        assert self.http is not None
        body: dict[str, Any] = {
            "PhoneNumberSet": [m.to for m in call.messages],
            "SmsSdkAppId": self.config.sdk_app_id,
            "TemplateId": call.template_id,
            "TemplateParamSet": list(call.params),
        }
        if call.sign_name:
            body["SignName"] = call.sign_name
        if len(call.messages) == 1 and len(call.messages[0].id.encode()) <= MAX_SESSION_CONTEXT:
            body["SessionContext"] = call.messages[0].id
        payload = msgspec.json.encode(body)
        timestamp = int(time.time())
        headers = {
            "Authorization": authorization(
                self.config.secret_id, self.config.secret_key, self.host, payload, timestamp
            ),
            "Content-Type": CONTENT_TYPE,
            "Host": self.host,
            "X-TC-Action": ACTION,
            "X-TC-Version": VERSION,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Region": self.config.region,
        }
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds)
        try:
            async with self.http.post(
                self.config.endpoint, data=payload, headers=headers, timeout=timeout
            ) as answer:
                status = answer.status
                raw = await answer.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            return _Answer("transient", reason=f"cannot connect: {exc}")
        except (TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            reason = (
                "no answer within the timeout" if isinstance(exc, TimeoutError) else f"connection lost: {exc}"
            )
            return _Answer(
                "results", [SendResult(m.id, Outcome.UNKNOWN, error=reason) for m in call.messages]
            )
        except aiohttp.ClientOSError as exc:  # connected, then the socket failed: it may have arrived
            error = f"connection lost: {exc}"
            return _Answer("results", [SendResult(m.id, Outcome.UNKNOWN, error=error) for m in call.messages])
        except aiohttp.ClientError as exc:
            return _Answer("transient", reason=f"request failed: {exc}")
        return _read_answer(call, status, raw)

    # ---- callbacks -----------------------------------------------------------------------------

    def verify_callback(self, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        tokens = parse_qs(urlsplit(url).query).get("token", [])
        if len(tokens) != 1:
            return False
        return hmac.compare_digest(tokens[0].encode(), self.config.callback_token.encode())

    def parse_receipts(self, body: bytes) -> list[DeliveryEvent]:
        decoded = msgspec.json.decode(body, type=list[_Receipt] | _Receipt)
        events = []
        for receipt in decoded if isinstance(decoded, list) else [decoded]:
            status = RECEIPT_STATUS.get(receipt.report_status.upper())
            if not receipt.sid:
                raise ValueError("a receipt without sid")
            if status is None:
                continue
            error = None
            if status == "undelivered":
                error = f"Tencent {receipt.errmsg or 'FAIL'}" + (
                    f": {receipt.description}" if receipt.description else ""
                )
            events.append(
                DeliveryEvent(
                    event_key=f"{receipt.sid}:{receipt.report_status.upper()}",
                    message_id=None,  # receipts carry Tencent's SerialNo only
                    provider_message_id=receipt.sid,
                    status=status,
                    error=error,
                )
            )
        return events

    def parse_inbound(self, body: bytes) -> list[InboundSms]:
        decoded = msgspec.json.decode(body, type=list[_Reply] | _Reply)
        out = []
        for reply in decoded if isinstance(decoded, list) else [decoded]:
            if not reply.mobile:
                raise ValueError("a reply without mobile")
            sender = _e164(reply.nationcode, reply.mobile)
            key = hashlib.sha256(f"{sender}\n{reply.time}\n{reply.text}".encode()).hexdigest()[:40]
            out.append(InboundSms(event_key=key, from_number=sender, text=reply.text, to=None))
        return out


@dataclass(frozen=True, slots=True)
class _Call:
    template_id: str
    sign_name: str | None
    params: tuple[str, ...]
    messages: list[OutboundMessage]
    indexes: list[int]


@dataclass(frozen=True, slots=True)
class _Answer:
    """One SendSms call: per-message ``results``, or the whole call ``transient`` (nothing sent),
    ``refused`` (the account cannot send), ``failed`` (content refused), or ``skipped``.

    A call refused per number (an account-level Code in SendStatusSet, none of its numbers
    taken) is ``refused`` with ``results`` too: those stand when another call of the send got
    through, so the send does not raise."""

    kind: Literal["results", "transient", "refused", "failed", "skipped"]
    results: list[SendResult] | None = None
    reason: str = ""
    retry_after: float | None = None
    halts: bool = False  # start no further calls in this send (the account was refused midway)


class _Error(msgspec.Struct, rename="pascal"):
    code: str = ""
    message: str = ""


class _SendStatus(msgspec.Struct, rename="pascal"):
    phone_number: str = ""
    code: str = ""
    message: str = ""
    serial_no: str = ""
    fee: int = 0


class _Response(msgspec.Struct, rename="pascal"):
    request_id: str = ""
    error: _Error | None = None
    send_status_set: list[_SendStatus] = []


class _Envelope(msgspec.Struct, rename="pascal"):
    response: _Response


class _Receipt(msgspec.Struct):
    sid: str = ""
    report_status: str = ""
    errmsg: str = ""
    description: str = ""
    mobile: str = ""
    nationcode: str = ""
    user_receive_time: str = ""


class _Reply(msgspec.Struct):
    mobile: str = ""
    nationcode: str = ""
    text: str = ""
    sign: str = ""
    time: int | str = 0
    extend: str | None = None


def _prepare(
    message: OutboundMessage, config: TencentConfig
) -> tuple[str, str | None, bool, tuple[str, ...]] | str:
    """The message's group key (template, signature, mainland, parameter values), or why it
    cannot be sent through Tencent."""
    spec = (message.provider_template or {}).get("tencent")
    if not isinstance(spec, Mapping) or not spec.get("template_id"):
        return "tencent needs a registered template: set provider_templates.tencent.template_id"
    names = spec.get("params", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "provider_templates.tencent.params must be a list of variable names"
    missing = [n for n in names if n not in message.variables]
    if missing:
        return f"no value for template variable {missing[0]!r} (provider_templates.tencent.params)"
    mainland = message.to.startswith("+86")
    template = str(
        spec.get("template_id") if mainland else spec.get("international_template_id") or spec["template_id"]
    )
    sign = spec.get("sign_name") or config.sign_name
    return template, str(sign) if sign else None, mainland, tuple(str(message.variables[n]) for n in names)


def _chunks(members: list[int], numbers: list[str]) -> list[list[int]]:
    """Split a group into calls of at most 200 numbers, never the same number twice in one call."""
    chunks: list[list[int]] = []
    seen: list[set[str]] = []
    for index, number in zip(members, numbers, strict=True):
        for chunk, numbers_in in zip(chunks, seen, strict=True):
            if len(chunk) < MAX_NUMBERS and number not in numbers_in:
                chunk.append(index)
                numbers_in.add(number)
                break
        else:
            chunks.append([index])
            seen.append({number})
    return chunks


def _lookup(table: Mapping[str, Any], code: str) -> Any:
    """The entry for ``code`` or its longest listed dotted prefix."""
    parts = code.split(".")
    for n in range(len(parts), 0, -1):
        found = table.get(".".join(parts[:n]))
        if found is not None:
            return found
    return None


def _limit_wait(code: str, now: datetime | None = None) -> float | None:
    if code in LIMIT_WAITS:
        return LIMIT_WAITS[code]
    if code in DAILY_LIMITS:
        local = (now or datetime.now(UTC)).astimezone(BEIJING)
        midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return (midnight - local).total_seconds()
    return None


def marketing_wait(now: datetime | None = None) -> float:
    """Seconds until marketing SMS may go again: the next 08:00 Beijing time (UTC+8, no DST)."""
    local = (now or datetime.now(UTC)).astimezone(BEIJING)
    opens = local.replace(hour=MARKETING_OPENS, minute=0, second=0, microsecond=0)
    if opens <= local < opens + CLOCK_SKEW:
        return SKEWED_WAIT  # open by our clock, not yet by Tencent's
    if opens <= local:
        opens += timedelta(days=1)
    return (opens - local).total_seconds()


def _is_account_refusal(code: str) -> bool:
    """A Code that refuses the account as a whole, wherever Tencent reports it."""
    kind: CallKind | None = _lookup(CALL_ERRORS, code)
    return kind == "account"


def _is_marketing_hours(code: str) -> bool:
    kind: CallKind | None = _lookup(CALL_ERRORS, code)
    return kind == "deferred"


def _read_answer(call: _Call, status: int, raw: bytes) -> _Answer:
    if status in GATEWAY_UNCERTAIN:
        error = gateway_uncertain(status, "Tencent")
        return _Answer("results", [SendResult(m.id, Outcome.UNKNOWN, error=error) for m in call.messages])
    if status == 429 or status >= 500:
        return _Answer("transient", reason=f"HTTP {status}: {raw[:200].decode(errors='replace')}")
    try:
        response = msgspec.json.decode(raw, type=_Envelope).response
    except (msgspec.DecodeError, msgspec.ValidationError):
        if status != 200:
            return _Answer("refused", reason=f"HTTP {status}: {raw[:200].decode(errors='replace')}")
        error = f"unreadable answer: {raw[:200].decode(errors='replace')}"
        return _Answer("results", [SendResult(m.id, Outcome.UNKNOWN, error=error) for m in call.messages])
    if response.error is not None:
        reason = f"Tencent {response.error.code}: {response.error.message} (RequestId {response.request_id})"
        kind: CallKind = _lookup(CALL_ERRORS, response.error.code) or "failed"
        if kind == "transient":
            return _Answer("transient", reason=reason, retry_after=_limit_wait(response.error.code))
        if kind == "deferred":  # flow control: nothing was sent, and nothing is wrong with it
            wait = marketing_wait()
            return _Answer(
                "results",
                [SendResult(m.id, Outcome.DEFERRED, None, None, reason, wait) for m in call.messages],
            )
        return _Answer("refused" if kind == "account" else "failed", reason=reason)
    by_number: dict[str, list[_SendStatus]] = {}
    for entry in response.send_status_set:
        by_number.setdefault(_number_key(entry.phone_number), []).append(entry)
    results = []
    refusal: str | None = None  # the first account-level Code among the numbers
    for message in call.messages:
        entries = by_number.get(_number_key(message.to))
        if not entries:
            error = f"no status for this number in the answer (RequestId {response.request_id})"
            results.append(SendResult(message.id, Outcome.UNKNOWN, error=error))
            continue
        entry = entries.pop(0)
        if refusal is None and _is_account_refusal(entry.code):
            refusal = f"Tencent {entry.code}: {entry.message} (RequestId {response.request_id})"
        results.append(_per_number(message, entry, response.request_id))
    if refusal is None:
        return _Answer("results", results)
    # The account itself is refused (an empty SMS package, arrears...), reported per number. When
    # none of the call's numbers was taken (or may have been), nothing left: the call is refused as
    # a whole, like the same Code in Response.Error, and may fail over. Otherwise some went out,
    # so none of the call's messages may be offered to another account: the refused ones RETRY
    # (the next attempt is refused as a whole), and no further call of this send starts.
    if not any(r.outcome in (Outcome.SENT, Outcome.UNKNOWN) for r in results):
        return _Answer("refused", results, reason=refusal)
    return _Answer("results", results, reason=refusal, halts=True)


def _per_number(message: OutboundMessage, entry: _SendStatus, request_id: str) -> SendResult:
    response = " ".join(
        p for p in (entry.code, entry.serial_no, f"fee={entry.fee}", f"RequestId={request_id}") if p
    )
    if entry.code == "Ok":
        return SendResult.sent(message.id, entry.serial_no or None, response)
    error = f"Tencent {entry.code}: {entry.message}"
    if _is_account_refusal(entry.code):  # not this message's fault: the account cannot send now
        return SendResult(message.id, Outcome.RETRY, None, response, f"{error} (the account is refused)")
    if _is_marketing_hours(entry.code):
        return SendResult(message.id, Outcome.DEFERRED, None, response, error, marketing_wait())
    if (_lookup(NUMBER_ERRORS, entry.code) or "failed") == "retry":
        # A per-number frequency limit is flow control (deferred), anything else a transient error.
        outcome = Outcome.DEFERRED if entry.code.startswith("LimitExceeded.") else Outcome.RETRY
        return SendResult(message.id, outcome, None, response, error, _limit_wait(entry.code))
    return SendResult(message.id, Outcome.FAILED, None, response, error)


def _settle(
    messages: Sequence[OutboundMessage],
    early: list[SendResult | None],
    calls: list[_Call],
    answers: Sequence[_Answer],
) -> list[SendResult]:
    """Per-message results; raise when calls were made and none got through, so the dispatcher
    fails over (an account refusal first, then an outage, then refused content). Once one call
    got through, nothing raises: the messages of a call that was answered per number keep those
    results (an account refusal among them is RETRY, never FAILED), the others RETRY."""
    if answers and not any(a.kind == "results" for a in answers):
        refused = next((a for a in answers if a.kind == "refused"), None)
        if refused is not None:
            raise PermanentProviderError(refused.reason)
        transient = next((a for a in answers if a.kind == "transient"), None)
        if transient is not None:
            waits = [a.retry_after for a in answers if a.retry_after is not None]
            raise TransientProviderError(transient.reason, max(waits) if waits else None)
        failed = next((a for a in answers if a.kind == "failed"), None)
        if failed is not None and all(r is None for r in early):
            raise PermanentProviderError(failed.reason)
    results = list(early)
    for call, answer in zip(calls, answers, strict=True):
        for position, index in enumerate(call.indexes):
            message = messages[index]
            if answer.results is not None:
                results[index] = answer.results[position]
            elif answer.kind == "failed":
                results[index] = SendResult(message.id, Outcome.FAILED, error=answer.reason)
            else:  # not sent: later (an account refusal raises on the next attempt)
                results[index] = SendResult(
                    message.id, Outcome.RETRY, error=answer.reason, retry_after=answer.retry_after
                )
    return [
        r or SendResult(m.id, Outcome.UNKNOWN, error="no result")
        for m, r in zip(messages, results, strict=True)
    ]


def _number_key(number: str) -> str:
    """A number as digits with its country code, however Tencent wrote it (+86..., 0086..., or a
    bare mainland mobile number)."""
    digits = "".join(c for c in number if c.isascii() and c.isdigit())
    if number.strip().startswith("+"):
        return digits
    if digits.startswith("00"):
        return digits[2:]
    if len(digits) == 11 and digits.startswith("1"):
        return "86" + digits
    return digits


def _e164(nationcode: str, mobile: str) -> str:
    if mobile.startswith("+"):
        return mobile
    code = nationcode.lstrip("+0") or "86"
    return f"+{code}{mobile}"


__all__ = [
    "CALL_ERRORS",
    "NUMBER_ERRORS",
    "TencentConfig",
    "TencentProvider",
    "authorization",
    "canonical_request",
    "marketing_wait",
    "string_to_sign",
    "tc3_signature",
]
