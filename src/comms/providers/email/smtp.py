"""The ``smtp`` provider: the tenant's own MTA or relay, over a pool of persistent sessions.

**Sessions.** Each account keeps up to ``max_connections`` SMTP sessions open, reused across
messages and batches. aiosmtplib opens a session: TCP or implicit TLS, the greeting, EHLO,
STARTTLS, and AUTH with whichever of CRAM-MD5, PLAIN and LOGIN the server offers. The mail
transactions that follow are written here, on the same transport (see *Pipelining*). A session
the server dropped (its idle timeout, a restart) is noticed at the next checkout or when a write
or read fails, and a new one is opened; one idle for more than ``IDLE_LIMIT`` is not trusted and
closed.

**TLS** (``security``):

* ``opportunistic`` (default): STARTTLS when the server offers it, plain text when it does not.
  A handshake or certificate that fails never falls back to plain text.
* ``starttls``: STARTTLS required; a server that does not offer it is refused.
* ``implicit`` (the contract's ``tls``): TLS from the first byte, port 465.
* ``none``: plain text.

``verify_tls`` (default true) checks the server's certificate and name against the system CAs,
or against ``ca_certificate`` (PEM) alone when one is set, which is how a private relay with its
own CA is trusted. False accepts any certificate. A password is never sent over a session
without TLS unless ``security`` is ``none``.

**Pipelining** (RFC 2920). When the server advertises PIPELINING (and ``pipelining`` is not
turned off), MAIL FROM, RCPT TO and DATA go out in one write. After the 354, the next write
carries the message with its final dot *and* the next message's MAIL/RCPT/DATA (content may
open a group, RFC 2920 3.1), so a steady stream costs one round trip per message instead of
four. aiosmtplib cannot pipeline. Its protocol parses one reply per command written. A second
reply that arrives in the same segment stays unparsed in its buffer, and bytes that arrive while
no command is waiting are dropped, so pipelined replies would be lost or mispaired. Once a
session is open, its transport is therefore handed over (``set_protocol``) to :class:`_Replies`,
a reader that queues every reply in order. Servers that do not offer PIPELINING get one command
per round trip through the same reader. When DATA is accepted after a refused recipient, a
single dot ends it, as RFC 2920 3.1 asks.

**Outcomes**, per message (the rules of providers/base.py):

* a 2xx reply after the content: ``sent``;
* 5xx to MAIL, RCPT, DATA or the content: ``failed`` with the server's reply in ``error``;
  4xx: ``retry`` (the dispatcher backs off);
* the session broke after the content (or part of it) was written and before its reply:
  ``unknown``, since the server may have the message. The dispatcher sends it once more,
  flagged;
* the session broke while only the envelope was out: nothing can have been delivered, so the
  message goes back to the queue once, for another session, and is ``retry`` after that.

``send`` raises only when nothing reached a server: TransientProviderError when no session
could be opened, PermanentProviderError when the server refuses the account's settings
(authentication rejected, STARTTLS required but not offered, a password without TLS).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import aiosmtplib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from comms.errors import PermanentProviderError, ProviderError, TransientProviderError
from comms.kit.domains import normalize_domain, valid_selector
from comms.kit.netguard import is_public
from comms.providers.base import OutboundMessage, Outcome, Provider, ProviderContext, SendResult
from comms.providers.email.dkim_signing import DkimSigner
from comms.providers.email.mime import message_id_for
from comms.providers.email.outbound import email_bytes

log = logging.getLogger("comms.providers.smtp")

IDLE_LIMIT = 60.0  # seconds; many relays drop a session idle for a minute or more
QUIT_TIMEOUT = 2.0
MAX_REPLY = 64 * 1024  # an unfinished reply longer than this is not SMTP
RESPONSE_LIMIT = 300

# What an envelope address may contain: no blanks, controls or angle brackets (command injection).
_ADDRESS = re.compile(r"[^\s<>\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+")
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")

Security = Literal["opportunistic", "starttls", "implicit", "none"]


class SmtpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535, description="587; 465 with implicit TLS.")
    security: Security = Field(
        default="opportunistic",
        validation_alias=AliasChoices("security", "tls"),
        description="opportunistic | starttls | implicit (also: tls) | none",
    )
    username: str | None = None
    password: str | None = None
    max_connections: int = Field(default=4, ge=1, le=64)
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    data_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        le=1800,
        description="How long to wait for the reply to a message's content (RFC 5321 4.5.3.2.6: 10 "
        "minutes; relays scan content before answering). Past it the message is unknown, not unsent.",
    )
    verify_tls: bool = Field(default=True, description="Check the server's certificate and name.")
    ca_certificate: str | None = Field(
        default=None, description="PEM: trust this CA (or self-signed certificate) instead of the system's."
    )
    pipelining: bool = Field(default=True, description="Pipeline commands when the server offers it.")
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_private_key: str | None = None

    @field_validator("security", mode="before")
    @classmethod
    def _contract_name(cls, value: Any) -> Any:
        return "implicit" if value == "tls" else value

    @field_validator("ca_certificate")
    @classmethod
    def _loadable(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ssl.create_default_context(cadata=value)
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"not a PEM certificate: {exc}") from None
        return value

    @field_validator("dkim_domain")
    @classmethod
    def _dkim_domain(cls, value: str | None) -> str | None:
        # The d= of every signature, in ASCII: receivers look up <selector>._domainkey.<domain>.
        return None if value is None else normalize_domain(value)

    @field_validator("dkim_selector")
    @classmethod
    def _dkim_selector(cls, value: str | None) -> str | None:
        if value is not None and not valid_selector(value):
            raise ValueError(f"{value!r} is not a DKIM selector (letters, digits, - and _, dot-separated)")
        return value

    @field_validator("dkim_private_key")
    @classmethod
    def _rsa_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                key = serialization.load_pem_private_key(value.encode(), password=None)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"not an unencrypted PEM private key: {exc}") from None
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError("DKIM signing here takes an RSA key")
        return value

    def dkim_public_key(self) -> str | None:
        """The public half of the DKIM key, as DNS publishes it (base64 DER, the ``p=`` tag)."""
        if not self.dkim_private_key:
            return None
        key = serialization.load_pem_private_key(self.dkim_private_key.encode(), password=None)
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")

    @model_validator(mode="after")
    def _together(self) -> SmtpConfig:
        if self.username and self.password is None:
            raise ValueError("a username needs a password")
        dkim = (self.dkim_domain, self.dkim_selector, self.dkim_private_key)
        if any(dkim) and not all(dkim):
            raise ValueError("DKIM needs dkim_domain, dkim_selector and dkim_private_key together")
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.security == "implicit" else 587


def tls_context(config: SmtpConfig) -> ssl.SSLContext:
    if config.ca_certificate:
        context = ssl.create_default_context(cadata=config.ca_certificate)
    else:
        context = ssl.create_default_context()
    if not config.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Replies(asyncio.Protocol):
    """The reading side of an open session: every reply, parsed and queued in arrival order.

    RFC 5321 4.2: ``ddd-text`` continues a reply, ``ddd text`` (or ``ddd``) ends it. Replies to
    pipelined commands may arrive in one segment or split anywhere; nothing is dropped.
    """

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.replies: deque[tuple[int, str]] = deque()
        self.broken: str | None = None  # why the session cannot be used any more
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # lines of a multi-line reply still arriving
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            code, separator = line[:3], line[3:4]
            if len(code) != 3 or not code.isdigit() or separator not in (b"", b" ", b"-"):
                self.fail(f"not an SMTP reply: {line[:80]!r}")
                return
            self._lines.append(line[4:])
            if separator != b"-":
                text = b"\n".join(self._lines).decode("utf-8", "replace")
                self._lines = []
                self.replies.append((int(code), text))
        del buffer[:start]
        if len(buffer) > MAX_REPLY or len(self._lines) > 1000:
            self.fail("reply too long")
            return
        if len(self.replies) >= self._wanted:
            self._wake()

    def eof_received(self) -> bool:
        self.fail("the server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost: {exc}" if exc else "the server closed the connection")

    def fail(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        self.transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: bytes) -> bool:
        """False when the session was already unusable: then nothing was written."""
        if self.broken is not None or self.transport.is_closing():
            self.fail(self.broken or "the connection is closing")
            return False
        try:
            self.transport.write(data)
        except (OSError, RuntimeError) as exc:
            self.fail(f"write failed: {exc}")
        return True

    def _time_out(self, timeout: float) -> None:
        self.fail(f"no reply within {timeout:g} s")

    async def read(self, count: int, timeout: float) -> list[tuple[int, str]]:
        """The next ``count`` replies; fewer when the session broke (``broken`` says why)."""
        if len(self.replies) < count and self.broken is None:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._wanted = count
            timer = loop.call_later(timeout, self._time_out, timeout)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
                self._wanted = 0
        replies = self.replies
        return [replies.popleft() for _ in range(min(count, len(replies)))]


class _Session:
    def __init__(self, reader: _Replies, extensions: dict[str, str], pipelining: bool) -> None:
        self.reader = reader
        self.pipelining = pipelining
        self.size = "size" in extensions
        self.smtputf8 = "smtputf8" in extensions
        self.dirty = False  # a refused transaction may have left state behind: RSET first
        self.last_used = time.monotonic()

    @property
    def usable(self) -> bool:
        return self.reader.broken is None and not self.reader.transport.is_closing()

    def close(self) -> None:
        self.reader.transport.close()

    async def quit(self) -> None:
        if self.usable and self.reader.write(b"QUIT\r\n"):
            await self.reader.read(1, QUIT_TIMEOUT)
        self.close()


@dataclass(slots=True, eq=False)
class _Prepared:
    """One message ready for the wire: envelope addresses and the dot-stuffed DATA payload."""

    id: str
    sender: bytes
    recipient: bytes
    utf8: bool
    size: int
    payload: bytes  # ends with CRLF.CRLF
    message_id: str
    requeued: bool = False

    def envelope(self, session: _Session) -> tuple[bytes, bytes, bytes] | SendResult:
        params = b""
        if session.size:
            params += b" SIZE=%d" % self.size
        if self.utf8:
            if not session.smtputf8:
                error = "the server does not offer SMTPUTF8, which a non-ASCII address needs"
                return SendResult(self.id, Outcome.FAILED, error=error)
            params += b" SMTPUTF8"
        return (
            b"MAIL FROM:<" + self.sender + b">" + params + b"\r\n",
            b"RCPT TO:<" + self.recipient + b">\r\n",
            b"DATA\r\n",
        )


_Queued = OutboundMessage | _Prepared  # a message not yet rendered, or one put back


def data_payload(raw: bytes) -> tuple[bytes, int]:
    """The DATA payload (RFC 5321 4.5.2 dot-stuffed, CRLF line ends, final dot) and its SIZE."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
        raw = _LINE_ENDINGS.sub(b"\r\n", raw)
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    size = len(raw)
    if b"\n." in raw:
        raw = raw.replace(b"\n.", b"\n..")
    if raw.startswith(b"."):
        raw = b"." + raw
    return raw + b".\r\n", size


def _refused(message_id: str, code: int, text: str, at_rcpt: bool = False) -> SendResult:
    answer = f"{code} {text}"[:RESPONSE_LIMIT]
    # RFC 5321 4.5.3.1.10: a 552 (too much mail) to RCPT is to be taken as the temporary 452.
    permanent = 500 <= code < 600 and not (at_rcpt and code == 552)
    outcome = Outcome.FAILED if permanent else Outcome.RETRY
    return SendResult(message_id, outcome, response=answer, error=f"SMTP {answer}")


class SmtpProvider(Provider):
    name: ClassVar[str] = "smtp"
    channels: ClassVar[frozenset[str]] = frozenset({"email"})
    Config: ClassVar[type[BaseModel]] = SmtpConfig
    secret_fields: ClassVar[frozenset[str]] = frozenset({"password", "dkim_private_key"})
    max_batch: ClassVar[int] = 200

    def __init__(self, config: SmtpConfig, allow_private: bool = True) -> None:
        self.config = config
        self.allow_private = allow_private  # COMMS_PROVIDER_ALLOW_PRIVATE (kit/netguard.py)
        self._idle: list[_Session] = []
        self._slots = asyncio.Semaphore(config.max_connections)
        self._tls = tls_context(config) if config.security != "none" else None
        self.connections_opened = 0
        self._signer = (
            DkimSigner(config.dkim_domain, config.dkim_selector, config.dkim_private_key)
            if config.dkim_domain and config.dkim_selector and config.dkim_private_key
            else None
        )

    @classmethod
    def from_config(cls, config: Any, context: ProviderContext) -> Provider:
        assert isinstance(config, SmtpConfig)
        return cls(config, allow_private=context.allow_private)

    @classmethod
    def dkim_signer(cls, config: Any) -> tuple[str, str, str] | None:
        assert isinstance(config, SmtpConfig)
        public = config.dkim_public_key()
        if public is None or config.dkim_domain is None or config.dkim_selector is None:
            return None
        return config.dkim_domain, config.dkim_selector, public

    def render(self, message: OutboundMessage) -> bytes:
        raw = email_bytes(message)
        return self._signer.sign(raw) if self._signer is not None else raw

    # ---- send ----------------------------------------------------------------------------------

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        results: dict[str, SendResult] = {}
        # Rendered (and DKIM-signed) one at a time as sessions take them: building a whole batch
        # up front would hold up the event loop, and every session's replies, in one stretch.
        queue: deque[_Queued] = deque(messages)
        problems: list[ProviderError] = []
        if queue:
            workers = min(self.config.max_connections, len(queue))
            outcomes = await asyncio.gather(
                *(self._work(queue, results, problems) for _ in range(workers)), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    log.error("smtp session failed", exc_info=outcome)
        waiting = {entry.id for entry in queue}
        for message in messages:  # neither done nor queued: on the wire when a worker failed
            if message.id not in results and message.id not in waiting:
                error = "SMTP session failed mid-message"
                results[message.id] = SendResult(message.id, Outcome.UNKNOWN, error=error)
        if queue:
            problem = next(
                (p for p in problems if isinstance(p, PermanentProviderError)),
                problems[-1] if problems else TransientProviderError("no SMTP session could be opened"),
            )
            if not results:  # nothing reached a server: let the dispatcher fail over
                raise problem
            for entry in queue:
                error = f"no SMTP session: {problem.message}"
                results[entry.id] = SendResult(entry.id, Outcome.RETRY, error=error)
        return [results[m.id] for m in messages]

    def _prepare(self, message: OutboundMessage) -> _Prepared | SendResult:
        sender = message.sender
        if not sender:
            return SendResult(message.id, Outcome.FAILED, error="no sender address")
        if _ADDRESS.fullmatch(sender) is None or _ADDRESS.fullmatch(message.to) is None:
            return SendResult(message.id, Outcome.FAILED, error="not an address SMTP can carry")
        try:
            raw = self.render(message)
            message_id = message_id_for(message.id, sender)
        except Exception as exc:  # a header injection (ValueError), or a bug: this message only
            return SendResult(message.id, Outcome.FAILED, error=f"message not buildable: {exc}")
        payload, size = data_payload(raw)
        utf8 = not (sender.isascii() and message.to.isascii())
        return _Prepared(message.id, sender.encode(), message.to.encode(), utf8, size, payload, message_id)

    async def _work(
        self, queue: deque[_Queued], results: dict[str, SendResult], problems: list[ProviderError]
    ) -> None:
        """One session's share of a batch: takes messages off the shared queue until it is empty,
        opening a new session when the current one breaks."""
        async with self._slots:
            session: _Session | None = None
            try:
                while queue:
                    if session is None:
                        try:
                            session = await self._checkout()
                        except ProviderError as exc:
                            problems.append(exc)
                            return
                    if session.pipelining:
                        await self._pipelined(session, queue, results)
                    else:
                        await self._stepwise(session, queue, results)
                    if not session.usable:
                        session.close()
                        session = None
            except BaseException:
                if session is not None:
                    session.close()
                    session = None
                raise
            finally:
                if session is not None:
                    session.last_used = time.monotonic()
                    self._idle.append(session)

    def _next(
        self, session: _Session, queue: deque[_Queued], results: dict[str, SendResult]
    ) -> tuple[_Prepared, tuple[bytes, bytes, bytes]] | None:
        while queue:
            entry = queue.popleft()
            item = entry if isinstance(entry, _Prepared) else self._prepare(entry)
            if isinstance(item, SendResult):
                results[item.message_id] = item
                continue
            envelope = item.envelope(session)
            if isinstance(envelope, SendResult):
                results[item.id] = envelope
                continue
            return item, envelope
        return None

    @staticmethod
    def _not_sent(item: _Prepared, queue: deque[_Queued], results: dict[str, SendResult], why: str) -> None:
        """The session broke before the content left: nothing was delivered."""
        if not item.requeued:
            item.requeued = True
            queue.appendleft(item)
        else:
            results[item.id] = SendResult(item.id, Outcome.RETRY, error=f"SMTP session lost: {why}")

    @staticmethod
    def _final(item: _Prepared, reply: tuple[int, str] | None, why: str | None) -> SendResult:
        """The outcome of a message whose content was written."""
        if reply is None:
            return SendResult(item.id, Outcome.UNKNOWN, error=f"connection lost while sending: {why}")
        code, text = reply
        if 200 <= code < 300:
            return SendResult.sent(item.id, item.message_id, f"{code} {text}"[:200])
        return _refused(item.id, code, text)

    async def _pipelined(
        self, session: _Session, queue: deque[_Queued], results: dict[str, SendResult]
    ) -> None:
        """RFC 2920: per write, the previous message's content, then [RSET] MAIL RCPT DATA."""
        reader = session.reader
        timeout = self.config.timeout_seconds
        pending: _Prepared | None = None  # DATA accepted: its content opens the next write
        while True:
            upcoming = self._next(session, queue, results) if session.usable else None
            if pending is None and upcoming is None:
                return
            parts: list[bytes] = [pending.payload] if pending is not None else []
            reset = upcoming is not None and session.dirty
            if upcoming is not None:
                if reset:
                    parts.append(b"RSET\r\n")
                parts.extend(upcoming[1])
            if not reader.write(b"".join(parts)):
                why = reader.broken or "closed"
                for item in (pending, upcoming[0] if upcoming else None):
                    if item is not None:
                        self._not_sent(item, queue, results, why)
                return
            wanted = (pending is not None) + (upcoming is not None) * (3 + reset)
            # The first reply awaited is the content's, when a content went out in this write.
            replies = await reader.read(wanted, self.config.data_timeout_seconds if pending else timeout)
            if pending is not None:
                results[pending.id] = self._final(pending, replies[0] if replies else None, reader.broken)
                replies = replies[1:]
                pending = None
            if upcoming is None:
                continue
            item = upcoming[0]
            if reset and replies:
                if replies[0][0] != 250:
                    reader.fail(f"RSET answered {replies[0][0]} {replies[0][1]}")
                session.dirty = False
                replies = replies[1:]
            expected = ((250, 251), (250, 251), (354,))  # MAIL, RCPT, DATA
            refused_at = next(
                (
                    i
                    for i, (reply, ok) in enumerate(zip(replies, expected, strict=False))
                    if reply[0] not in ok
                ),
                None,
            )
            if refused_at is not None:
                code, text = replies[refused_at]
                results[item.id] = _refused(item.id, code, text, at_rcpt=refused_at == 1)
                session.dirty = True
                if code < 400:
                    reader.fail(f"unexpected reply {code} {text}")
                elif len(replies) == 3 and replies[2][0] == 354 and reader.write(b".\r\n"):
                    # DATA accepted with no valid recipient: one dot ends it (RFC 2920 3.1).
                    await reader.read(1, timeout)
            elif len(replies) == 3:
                pending = item
            else:
                self._not_sent(item, queue, results, reader.broken or "no reply")

    async def _stepwise(
        self, session: _Session, queue: deque[_Queued], results: dict[str, SendResult]
    ) -> None:
        """Without PIPELINING: one command, one reply."""
        reader = session.reader
        timeout = self.config.timeout_seconds
        while session.usable:
            upcoming = self._next(session, queue, results)
            if upcoming is None:
                return
            item, envelope = upcoming
            commands = [b"RSET\r\n", *envelope] if session.dirty else list(envelope)
            session.dirty = False
            for command in commands:
                replies = await reader.read(1, timeout) if reader.write(command) else []
                if not replies:
                    self._not_sent(item, queue, results, reader.broken or "no reply")
                    return
                code, text = replies[0]
                expected = (354,) if command == b"DATA\r\n" else (250, 251)
                if code not in expected:
                    if command == b"RSET\r\n":
                        reader.fail(f"RSET answered {code} {text}")
                        self._not_sent(item, queue, results, reader.broken or "RSET refused")
                        return
                    results[item.id] = _refused(item.id, code, text, at_rcpt=command.startswith(b"RCPT"))
                    session.dirty = True
                    if code < 400:
                        reader.fail(f"unexpected reply {code} {text}")
                    break
            else:
                if not reader.write(item.payload):
                    self._not_sent(item, queue, results, reader.broken or "closed")
                    return
                replies = await reader.read(1, self.config.data_timeout_seconds)
                results[item.id] = self._final(item, replies[0] if replies else None, reader.broken)

    # ---- sessions ------------------------------------------------------------------------------

    async def _checkout(self) -> _Session:
        now = time.monotonic()
        while self._idle:
            session = self._idle.pop()
            # A reply nobody asked for is the server's farewell (421 on idle) or a desync.
            if session.usable and not session.reader.replies and now - session.last_used < IDLE_LIMIT:
                return session
            session.close()
        return await self._open()

    async def _open(self) -> _Session:
        """A new session: connected, TLS as configured, authenticated; raises ProviderError."""
        config = self.config
        # Connected here to a public address only (the name checked as it is resolved, then the
        # socket handed over: no second lookup that could answer otherwise); TLS still verifies
        # the certificate against the host name.
        sock = (
            None
            if self.allow_private
            else await _public_socket(config.host, config.effective_port, config.timeout_seconds)
        )
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=None if sock is not None else config.effective_port,
            use_tls=config.security == "implicit",
            start_tls=False,  # decided below, where "offered or not" is visible
            tls_context=self._tls,
            timeout=config.timeout_seconds,
            sock=sock,
        )
        try:
            await client.connect()
            await _ehlo(client)
            if config.security in ("starttls", "opportunistic") and client.supports_extension("starttls"):
                await client.starttls()
                await _ehlo(client)
            elif config.security == "starttls":
                # Transient: TLS may be down for a while, or the offer stripped on the way; the
                # batch waits and tries again rather than failing for good.
                raise TransientProviderError("the server does not offer STARTTLS (security: starttls)")
            encrypted = client.get_transport_info("sslcontext") is not None
            if config.username:
                if not encrypted and config.security != "none":
                    raise PermanentProviderError(
                        "refusing to send the password without TLS: the server offers no STARTTLS"
                    )
                if not client.supports_extension("auth"):
                    raise PermanentProviderError("the server offers no AUTH")
                await client.login(config.username, config.password or "")
            transport = client.transport
            if transport is None or transport.is_closing():
                raise TransientProviderError("the server closed the session while it was opened")
        except ProviderError:
            client.close()
            raise
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            error = PermanentProviderError if exc.code >= 500 else TransientProviderError
            raise error(f"authentication failed: {exc.code} {exc.message}") from exc
        except ssl.SSLCertVerificationError as exc:
            client.close()
            raise TransientProviderError(f"TLS certificate not accepted: {exc.verify_message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise TransientProviderError(f"cannot open an SMTP session: {exc}") from exc
        except BaseException:
            client.close()
            raise
        reader = _Replies(cast(asyncio.WriteTransport, transport))
        transport.set_protocol(reader)
        self.connections_opened += 1
        pipelining = config.pipelining and client.supports_extension("pipelining")
        return _Session(reader, dict(client.esmtp_extensions), pipelining)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(session.quit() for session in idle), return_exceptions=True)


async def _ehlo(client: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO for a server that does not speak ESMTP (it then offers no extensions)."""
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        await client.helo()


async def _public_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A socket connected to one of ``host``'s public addresses; PermanentProviderError when it
    has none (the operator keeps providers off private networks), TransientProviderError when
    none answers."""
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TransientProviderError(f"cannot resolve {host}: {exc}") from exc
    public = [info for info in found if is_public(str(info[4][0]))]
    if not public:
        raise PermanentProviderError(
            f"{host} resolves to no public address, and providers may not reach private networks "
            "(COMMS_PROVIDER_ALLOW_PRIVATE=false)"
        )
    last: Exception | None = None
    for family, kind, proto, _, address in public:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
            return sock
        except (OSError, TimeoutError) as exc:
            sock.close()
            last = exc
    raise TransientProviderError(f"cannot connect to {host}: {last}")
