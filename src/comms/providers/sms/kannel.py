"""The ``kannel`` provider: SMS through a Kannel gateway's smsbox ``sendsms`` HTTP interface.

Kannel (kannel.org) is an open-source SMS gateway: ``bearerbox`` holds the SMSC links (SMPP, EMI,
modems, ...), ``smsbox`` offers the HTTP interface. One request per message, smsbox's POST form::

    POST <sendsms_url>
    Content-Type: text/plain; charset=UTF-8
    X-Kannel-Username: ...            X-Kannel-Password: ...
    X-Kannel-To: 8613800138000        X-Kannel-From: ACME
    X-Kannel-Coding: 0 | 2            X-Kannel-SMSC: <smsc-id>
    X-Kannel-DLR-Mask: 31
    X-Kannel-DLR-URL: <status URL>?token=<callback_token>&id=<log id>&type=%d&smsc=%i&ts=%T&answer=%A&to=%p

    <the text, UTF-8>

Why POST and not the GET form (``?username=...&text=...``): an HTTP client may re-send a GET by
itself when the connection drops after sending (aiohttp does, once), and a re-sent sendsms is a
second SMS. A POST is never repeated; a lost answer is ``UNKNOWN``. The password also stays out of
URLs (and so out of access logs).

smsbox waits for bearerbox's acknowledgement and answers (gw/smsbox.c)::

    202  0: Accepted for delivery          -> SENT
    202  3: Queued for later delivery      -> SENT (no SMSC link up; bearerbox keeps it)
    403  Authorization failed for sendsms  -> PermanentProviderError (the whole call)
    4xx  anything else (missing or misformed field, "Not routable. Do not try again.") -> FAILED
    5xx  "Temporal failure, try again later." / "Sending failed." -> transient (nothing was queued)

``X-Kannel-To`` is the recipient in the form ``to_format`` names: ``plus`` (default, E.164 as is,
``+8613800138000``), ``digits`` (without the ``+``) or ``00`` (``008613800138000``). Why ``plus``:
Kannel's SMPP driver strips a leading ``+`` and sends the number with TON international, while a
number without it goes with TON national unless the smsc group sets ``dest-addr-ton`` (smsc_smpp.c,
msg_to_pdu). The POST form passes the ``+`` as is (in a GET query it would read as a space). The text goes
as UTF-8 with ``coding`` 0 (GSM 7-bit) when every character is in the GSM alphabet and 2 (UCS-2)
otherwise, as :mod:`comms.providers.sms.segments` decides; smsbox converts it.

Delivery reports: Kannel calls the dlr-url once per report type the dlr-mask asks for,
substituting ``%d`` (type), ``%i`` (smsc-id), ``%T`` (unix time), ``%A`` (the SMSC's answer text)
and ``%p`` (the recipient). The ``token`` in that URL is the account's ``callback_token`` (generated
by comms when the account is created without one); a callback without it is refused. Types are
mapped by :data:`DLR_TYPES`.

Inbound: an ``sms-service`` whose ``get-url`` is this account's inbound URL (it carries the token)
with ``&from=%p&to=%P&text=%a&id=%I&ts=%t`` appended, and ``max-messages = 0``, or Kannel texts our
``OK`` answer back to the phone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, parse_qsl, quote, urlsplit

import aiohttp
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

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
    client_error_text,
    gateway_uncertain,
)
from comms.providers.calls import RequestPool, fault, is_code
from comms.providers.sms.segments import count_segments

# Kannel's delivery report types (the ``%d`` of a dlr-url; gw/dlr.h): what each one means and
# which status it gives the message (None: an intermediate state, no event).
DLR_TYPES: dict[int, tuple[str, str | None]] = {
    1: ("delivered to phone", "delivered"),
    2: ("non-delivered to phone", "undelivered"),
    4: ("queued on SMSC", None),
    8: ("delivered to SMSC", None),
    16: ("non-delivered to SMSC", "undelivered"),
    32: ("intermediate notification", None),
}

# smsbox's answer when the username/password pair is wrong: the whole account is unusable.
AUTH_FAILED = "Authorization failed"

# The recipient as Kannel gets it, from our E.164 ``+<digits>``.
_TO_FORMATS: dict[str, str] = {"digits": "", "plus": "+", "00": "00"}

# What a header value may hold (no control characters).
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"

# The escapes Kannel substitutes in a dlr-url (the status callback's query).
_DLR_QUERY = "type=%d&smsc=%i&ts=%T&answer=%A&to=%p"


class KannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    sendsms_url: HttpUrl = Field(
        pattern=r"^https?://\S+$",
        examples=["http://127.0.0.1:13013/cgi-bin/sendsms"],
        description="smsbox's sendsms interface (sendsms-port, sendsms-url).",
    )
    username: str = Field(min_length=1, pattern=_PRINTABLE, description="A sendsms-user's username.")
    password: str = Field(min_length=1, pattern=_PRINTABLE, description="That sendsms-user's password.")
    smsc: str | None = Field(
        default=None, pattern=r"^[^\s;]+$", description="smsc-id to route through (Kannel's `smsc`)."
    )
    # ``from`` in the API and as stored (sendsms's own name); ``from_number``, its earlier name, is
    # still read (accounts stored with it keep loading).
    from_number: str | None = Field(
        default=None,
        validation_alias=AliasChoices("from", "from_number"),
        serialization_alias="from",
        min_length=1,
        max_length=20,
        pattern=_PRINTABLE,
        description="`from`: the sender (sendsms `from`, X-Kannel-From) when the message names none "
        "(else the sendsms-user's default). `from_number` is accepted for it too.",
    )
    to_format: Literal["plus", "digits", "00"] = Field(
        default="plus",
        description="How `to` is written: E.164 with `+` (Kannel's SMPP: TON international), "
        "the digits without `+`, or with a `00` prefix.",
    )
    dlr_mask: int = Field(default=31, ge=0, le=63, description="Which delivery reports Kannel sends.")
    callback_token: str = Field(
        min_length=16,
        max_length=128,
        pattern=r"^[A-Za-z0-9._~-]+$",
        description="A random string the dlr-url and get-url carry back; callbacks without it are "
        "refused. Generated by comms when an account is created without it.",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    concurrency: int = Field(
        default=10, ge=1, le=100, description="Requests in flight for this account, per process."
    )


@dataclass(frozen=True, slots=True)
class _Refused:
    """The message was certainly not queued by Kannel, for a reason that holds for the whole call
    (cannot connect, smsbox's 5xx or 429, bad credentials)."""

    message_id: str
    reason: str
    permanent: bool = False
    retry_after: float | None = None
    attempted: bool = True  # False: not sent because an earlier request of the call was refused


class KannelProvider(Provider):
    name: ClassVar[str] = "kannel"
    channels: ClassVar[frozenset[str]] = frozenset({"sms"})
    Config: ClassVar[type[BaseModel]] = KannelConfig
    secret_fields: ClassVar[frozenset[str]] = frozenset({"password", "callback_token"})
    max_batch: ClassVar[int] = 100
    callback_answer: ClassVar[tuple[int, str, bytes]] = (200, "text/plain", b"OK")

    def __init__(self, config: KannelConfig, context: ProviderContext) -> None:
        self.config = config
        # The account's requests in flight in this process (see RequestPool).
        self._pool = RequestPool(config.concurrency)
        self.http = context.http
        self.status_url = context.status_url

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        assert isinstance(config, KannelConfig)
        return cls(config, context)

    # ---- sending -------------------------------------------------------------------------------

    def request(self, message: OutboundMessage) -> tuple[dict[str, str], bytes]:
        """The headers and body of the sendsms POST for one message."""
        c = self.config
        unicode = count_segments(message.text).encoding == "UCS-2"
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-Kannel-Username": c.username,
            "X-Kannel-Password": c.password,
            "X-Kannel-To": self.recipient(message.to),
            "X-Kannel-Coding": "2" if unicode else "0",
        }
        sender = message.sender or c.from_number
        if sender:
            headers["X-Kannel-From"] = sender
        if c.smsc:
            headers["X-Kannel-SMSC"] = c.smsc
        if self.status_url and c.dlr_mask:
            headers["X-Kannel-DLR-Mask"] = str(c.dlr_mask)
            headers["X-Kannel-DLR-URL"] = self.dlr_url(message.id)
        return headers, message.text.encode("utf-8")

    def recipient(self, to: str) -> str:
        return _TO_FORMATS[self.config.to_format] + to.lstrip("+")

    def dlr_url(self, message_id: str) -> str:
        """Where Kannel reports on ``message_id``; it substitutes the ``%`` escapes itself."""
        assert self.status_url is not None
        url = self.status_url
        if "token" not in parse_qs(urlsplit(url).query):  # unless the URL carries it already
            url += ("&" if "?" in url else "?") + "token=" + quote(self.config.callback_token, safe="")
        separator = "&" if "?" in url else "?"
        return f"{url}{separator}id={quote(message_id, safe='')}&{_DLR_QUERY}"

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        if self.http is None:
            raise TransientProviderError("no HTTP session: this instance only parses callbacks")
        http = self.http
        stop: list[_Refused] = []  # once Kannel refuses the call, the rest are not sent at all

        async def one(message: OutboundMessage) -> SendResult | _Refused:
            if stop:
                first = stop[0]
                reason = f"not attempted: {first.reason}"
                return _Refused(message.id, reason, first.permanent, first.retry_after, attempted=False)
            try:
                result = await self._send_one(http, message)
            except Exception as exc:  # a fault of ours mid-call: this message only, UNKNOWN
                return SendResult(message.id, Outcome.UNKNOWN, error=fault(exc))
            if isinstance(result, _Refused):
                stop.append(result)
            return result

        outcomes = await self._pool.map(messages, one, is_code)
        refused = [o for o in outcomes if isinstance(o, _Refused)]
        if refused and len(refused) == len(outcomes):  # nothing reached Kannel: fail over
            permanent = next((r for r in stop if r.permanent), None)
            if permanent is not None:
                raise PermanentProviderError(permanent.reason)
            waits = [r.retry_after for r in stop if r.retry_after is not None]
            raise TransientProviderError(stop[0].reason, max(waits) if waits else None)
        return [
            SendResult(
                o.message_id,
                Outcome.FAILED if o.permanent and o.attempted else Outcome.RETRY,
                error=o.reason,
                retry_after=o.retry_after,
            )
            if isinstance(o, _Refused)
            else o
            for o in outcomes
        ]

    async def _send_one(self, http: aiohttp.ClientSession, message: OutboundMessage) -> SendResult | _Refused:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds)
        headers, body = self.request(message)
        unusable = next((k for k, v in headers.items() if not _header_safe(v)), None)
        if unusable is not None:
            error = f"{unusable} cannot carry {headers[unusable]!r} (control characters)"
            return SendResult(message.id, Outcome.FAILED, error=error)
        try:
            async with http.post(
                self.config.sendsms_url, data=body, headers=headers, timeout=timeout
            ) as answer:
                status = answer.status
                text = (await answer.read()).decode("utf-8", errors="replace").strip()
                retry_after = _retry_after(answer.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as exc:  # never connected: certainly not sent
            return _Refused(message.id, f"cannot connect to Kannel: {exc.os_error or exc}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Connected, so the request may have reached smsbox: unknown, never blindly sent again.
            reason = (
                "no answer within the timeout"
                if isinstance(exc, TimeoutError)
                else f"connection lost: {client_error_text(exc)}"
            )
            return SendResult(message.id, Outcome.UNKNOWN, error=reason)
        answer_text = f"HTTP {status}: {text[:200]}"
        if 200 <= status < 300:
            return SendResult.sent(message.id, None, answer_text)
        if status in GATEWAY_UNCERTAIN:
            return SendResult(message.id, Outcome.UNKNOWN, error=gateway_uncertain(status, "Kannel"))
        if status == 429 or status >= 500:
            return _Refused(message.id, answer_text, retry_after=retry_after)
        if AUTH_FAILED.lower() in text.lower():
            return _Refused(message.id, answer_text, permanent=True)
        return SendResult(message.id, Outcome.FAILED, response=answer_text, error=answer_text)

    # ---- callbacks -----------------------------------------------------------------------------

    def verify_callback(self, headers: Mapping[str, str], body: bytes, url: str) -> bool:
        """Kannel signs nothing: the URL it calls carries the account's ``callback_token``."""
        token = _query(body).get("token", "")
        return hmac.compare_digest(token.encode(), self.config.callback_token.encode())

    def parse_receipts(self, body: bytes) -> list[DeliveryEvent]:
        """A dlr-url call: ``token``, ``id`` (our log id), ``type`` (%d), ``smsc``, ``ts``, ``answer``."""
        query = _query(body)
        message_id = query.get("id")
        if not message_id:
            raise ValueError("no id in the delivery report")
        try:
            kind = int(query.get("type", ""))
        except ValueError:
            raise ValueError(f"delivery report type {query.get('type')!r} is not a number") from None
        label, status = DLR_TYPES.get(kind, ("unknown type", None))
        if status is None:
            return []
        error = None
        if status == "undelivered":
            answer = query.get("answer", "").strip()
            error = f"kannel DLR {kind} ({label})" + (f": {answer[:300]}" if answer else "")
        # The report's time tells a batch retry's report (same log id, same type) from a repeat
        # of the first; a repeat carries the same time and is still recognized as one.
        when = query.get("ts", "").strip()
        return [
            DeliveryEvent(
                event_key=f"{message_id}:{kind}" + (f":{when}" if when else ""),
                message_id=message_id,
                provider_message_id=None,
                status=status,
                error=error,
            )
        ]

    def parse_inbound(self, body: bytes) -> list[InboundSms]:
        """A get-url call: ``from`` (%p), ``to`` (%P), ``text`` (%a), ``id`` (%I), ``ts`` (%t)."""
        query = _query(body)
        sender = query.get("from", "").strip()
        if not sender:
            raise ValueError("no sender (from) in the inbound message")
        if sender.startswith("00") and sender[2:].isascii() and sender[2:].isdigit():
            sender = "+" + sender[2:]
        text = query.get("text", "")
        to = query.get("to") or None
        key = query.get("id")
        if not key:
            material = "\x00".join((sender, to or "", text, query.get("ts", ""), query.get("smsc", "")))
            key = hashlib.sha256(material.encode()).hexdigest()[:32]
        return [InboundSms(event_key=f"mo:{key}", from_number=sender, text=text, to=to)]


def _query(body: bytes) -> dict[str, str]:
    """A query string (``+`` is a space), first value per name."""
    out: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True):
        out.setdefault(key, value)
    return out


def _header_safe(value: str) -> bool:
    return not any(ord(char) < 32 or ord(char) == 127 for char in value)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


__all__ = ["AUTH_FAILED", "DLR_TYPES", "KannelConfig", "KannelProvider"]
