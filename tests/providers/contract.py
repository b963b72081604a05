"""The contract every provider module keeps, written once; each vendor's test class inherits it.

A vendor's test module supplies a local HTTP server that speaks the vendor's wire format and
checks what the vendor checks (signature, required parameters, batch limits): a subclass of
:class:`FakeVendor`. Its test class subclasses :class:`ProviderContract` and says how to build the
provider against that server and how the vendor signs a delivery receipt. The inherited tests
then hold every provider to the same behaviour the dispatcher relies on:

- each message accepted once, as SENT; a full ``max_batch`` in one call within the vendor's limits;
- a vendor outage (5xx, throttling) or a refused connection raises TransientProviderError, so
  the dispatcher fails over; nothing reached the vendor;
- a request that got no answer is UNKNOWN per message, never raised (it may have arrived);
- a permanent refusal is FAILED with the vendor's reason (or PermanentProviderError);
- a signed receipt verifies and a forged one does not; receipts parse to stable event keys.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import aiohttp
import pytest
from aiohttp import web
from pydantic import BaseModel

from comms.errors import PermanentProviderError, TransientProviderError
from comms.providers.base import DeliveryEvent, OutboundMessage, Outcome, Provider, ProviderContext
from comms.providers.registry import PROVIDERS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _gateway_error(status: int) -> web.HTTPException:
    return (
        web.HTTPBadGateway(text="upstream failed")
        if status == 502
        else web.HTTPGatewayTimeout(text="upstream timed out")
    )


class FakeVendor:
    """A local server for one vendor. Subclasses add their routes in :meth:`routes` and call
    :meth:`accept` for each message the real vendor would have taken.

    ``mode`` switches behaviour at run time: ``"ok"``; ``"fail"`` (the vendor is down or
    throttling: answer as the vendor does then, e.g. HTTP 500/503); ``"hang"`` (read the request,
    then answer nothing for ``hang_seconds``); ``"reset"`` (read the request, then reset the
    connection); ``"garbled"`` (read the request, then answer a status line the client cannot
    parse); ``"gateway 502"`` / ``"gateway 504"`` (a proxy in front of the vendor answers
    so after reading the request, as a load balancer does when the vendor behind it fails or is
    slow); ``"reject"`` (the vendor's permanent refusal for
    the messages, e.g. an invalid number or an unapproved template).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.mode = "ok"
        self.hang_seconds = 5.0
        self.delivered: Counter[str] = Counter()  # recipient -> times accepted
        self.requests = 0
        self.bad_signatures = 0
        self.problems: list[str] = []  # what the vendor would have refused, and why
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def accept(self, recipient: str) -> None:
        self.delivered[recipient] += 1

    def refuse(self, problem: str) -> None:
        """Record a request the real vendor would refuse (tests assert there are none)."""
        self.problems.append(problem)

    async def pause_if_hanging(self, request: web.Request) -> None:
        """Called once the request is read: "hang" answers late, "reset" answers with a TCP reset."""
        self.requests += 1
        if self.mode == "hang":
            await asyncio.sleep(self.hang_seconds)
        if self.mode.startswith("gateway "):  # a proxy's own error page, not the vendor's answer
            status = int(self.mode.split()[1])
            raise _gateway_error(status)
        if self.mode == "garbled":  # an answer the client cannot parse, after the request was read
            transport = request.transport
            assert transport is not None
            transport.write(b"HTTP/1.1 2x0 OK\r\nContent-Length: nope\r\n\r\n")
            transport.close()
            raise ConnectionResetError("the vendor answered with a garbled status line")
        if self.mode == "reset":
            transport = request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            transport.abort()
            raise ConnectionResetError("the vendor reset the connection after reading the request")

    async def start(self) -> FakeVendor:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []
        self.port = sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


@dataclass(frozen=True)
class Callback:
    """A callback as the vendor sends it: lower-case headers, body (or query string for GET), URL."""

    headers: Mapping[str, str]
    body: bytes
    url: str


class ProviderContract:
    """Inherit, set ``provider_name`` (and ``channel`` for email), implement the four hooks."""

    provider_name: ClassVar[str]
    channel: ClassVar[str] = "sms"
    status_url: ClassVar[str] = "https://comms.test/webhooks/x/acc_test/status"

    # ---- hooks each vendor implements ----------------------------------------------------------

    def make_vendor(self) -> FakeVendor:
        raise NotImplementedError

    def make_provider(self, vendor: FakeVendor, context: ProviderContext) -> Provider:
        """The provider pointed at ``vendor``, with a request timeout of about 1.5 s (well under the
        vendor's 5 s hang, well over a full batch on a loaded machine)."""
        raise NotImplementedError

    def receipt(
        self, provider: Provider, message: OutboundMessage, provider_message_id: str | None, delivered: bool
    ) -> Callback:
        """A correctly signed delivery receipt for ``message``, as the vendor would send it."""
        raise NotImplementedError

    def forge(self, callback: Callback) -> Callback:
        """The same receipt tampered with (default: one byte of the body changed)."""
        body = callback.body
        tampered = body[:-1] + (b"X" if body[-1:] != b"X" else b"Y")
        return Callback(callback.headers, tampered, callback.url)

    def outbound(self, n: int, start: int = 0) -> list[OutboundMessage]:
        """``n`` messages to distinct recipients; override for vendor-specific template data."""
        return [self.message(i) for i in range(start, start + n)]

    def message(self, i: int) -> OutboundMessage:
        if self.channel == "email":
            return OutboundMessage(
                id=f"log_{i:032x}",
                tenant_id="ten_test",
                channel="email",
                category="transactional",
                to=f"user{i}@example.com",
                text=f"Hello {i}",
                subject="Your parcel",
                sender="shop@acme.example",
                sender_name="Acme",
                variables={"name": f"user{i}"},
            )
        return OutboundMessage(
            id=f"log_{i:032x}",
            tenant_id="ten_test",
            channel="sms",
            category="verification",
            to=f"+86138{i:08d}",
            text=f"Your code is {100000 + i}",
            sender="Acme",
            variables={"code": str(100000 + i)},
            provider_template=self.provider_template(),
            segments=1,
        )

    def provider_template(self) -> dict[str, Any] | None:
        return None

    def recipient_key(self, message: OutboundMessage) -> str:
        """How the vendor's server records a recipient (e.g. without the leading +)."""
        return message.to

    # ---- fixtures ------------------------------------------------------------------------------

    @pytest.fixture
    async def vendor(self) -> AsyncIterator[FakeVendor]:
        async with self.make_vendor() as server:
            yield server

    @pytest.fixture
    async def provider(
        self, vendor: FakeVendor, http: aiohttp.ClientSession, tmp_path: Path
    ) -> AsyncIterator[Provider]:
        context = ProviderContext(
            http=http,
            outbox_dir=tmp_path,
            status_url=self.status_url,
            inbound_url=self.status_url.replace("/status", "/inbound"),
        )
        instance = self.make_provider(vendor, context)
        yield instance
        await instance.close()

    # ---- the contract --------------------------------------------------------------------------

    def test_declares_its_capabilities(self) -> None:
        cls = PROVIDERS[self.provider_name]
        assert cls.name == self.provider_name
        assert self.channel in cls.channels and cls.channels <= {"sms", "email"}
        assert cls.max_batch >= 1
        assert issubclass(cls.Config, BaseModel)
        assert cls.secret_fields <= set(cls.Config.model_fields)

    async def test_each_message_is_accepted_once(self, vendor: FakeVendor, provider: Provider) -> None:
        messages = self.outbound(3)
        results = await provider.send(messages)
        assert [r.message_id for r in results] == [m.id for m in messages]
        assert all(r.outcome is Outcome.SENT for r in results), results
        assert all(vendor.delivered[self.recipient_key(m)] == 1 for m in messages), vendor.delivered
        assert vendor.problems == [] and vendor.bad_signatures == 0

    async def test_a_full_batch_fits_the_vendor_limits(self, vendor: FakeVendor, provider: Provider) -> None:
        size = min(type(provider).max_batch, 1000)
        messages = self.outbound(size, start=1000)
        results = await provider.send(messages)
        assert sum(r.outcome is Outcome.SENT for r in results) == size
        assert len(vendor.delivered) == size and vendor.problems == []

    async def test_a_vendor_outage_is_transient_and_sends_nothing(
        self, vendor: FakeVendor, provider: Provider
    ) -> None:
        vendor.mode = "fail"
        with pytest.raises(TransientProviderError):
            await provider.send(self.outbound(2))
        assert not vendor.delivered

    async def test_a_refused_connection_is_transient(self, vendor: FakeVendor, provider: Provider) -> None:
        await vendor.stop()
        with pytest.raises(TransientProviderError):
            await provider.send(self.outbound(2))

    async def test_no_answer_is_unknown_never_raised(self, vendor: FakeVendor, provider: Provider) -> None:
        vendor.mode = "hang"
        messages = self.outbound(2)
        results = await provider.send(messages)
        assert [r.outcome for r in results] == [Outcome.UNKNOWN, Outcome.UNKNOWN]
        assert all(r.error for r in results)

    async def test_a_reset_after_the_request_is_unknown_never_raised(
        self, vendor: FakeVendor, provider: Provider
    ) -> None:
        """The vendor read the request, then the connection was reset: it may have taken the
        messages, so they are UNKNOWN (reconciled or re-sent once, flagged), never offered to the
        next account as unsent."""
        vendor.mode = "reset"
        results = await provider.send(self.outbound(2))
        assert [r.outcome for r in results] == [Outcome.UNKNOWN, Outcome.UNKNOWN]
        assert vendor.requests >= 1

    async def test_a_garbled_answer_after_the_request_is_unknown_never_raised(
        self, vendor: FakeVendor, provider: Provider
    ) -> None:
        """The vendor read the request and answered something the client cannot parse (a bad
        status line or header): it may have taken the messages, so they are UNKNOWN, never
        refused (which would send them again, or through another account, unflagged)."""
        vendor.mode = "garbled"
        results = await provider.send(self.outbound(2))
        assert [r.outcome for r in results] == [Outcome.UNKNOWN, Outcome.UNKNOWN]
        assert vendor.requests >= 1

    @pytest.mark.parametrize("status", [502, 504])
    async def test_a_gateway_error_is_unknown_never_raised(
        self, vendor: FakeVendor, provider: Provider, status: int
    ) -> None:
        """A 502 or 504 from a proxy in front of the vendor, after it passed the request on: the
        vendor may have taken the messages, so they are UNKNOWN, not a refusal to fail over on."""
        vendor.mode = f"gateway {status}"
        results = await provider.send(self.outbound(2))
        assert [r.outcome for r in results] == [Outcome.UNKNOWN, Outcome.UNKNOWN]
        assert all(f"HTTP {status} from a gateway" in (r.error or "") for r in results)
        assert vendor.requests >= 1

    async def test_a_permanent_refusal_fails_with_the_reason(
        self, vendor: FakeVendor, provider: Provider
    ) -> None:
        vendor.mode = "reject"
        messages = self.outbound(2)
        try:
            results = await provider.send(messages)
        except PermanentProviderError as exc:
            assert exc.message
            return
        assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.FAILED]
        assert all(r.error for r in results)

    async def test_signed_receipts_verify_and_forged_ones_do_not(self, provider: Provider) -> None:
        message = self.outbound(1)[0]
        good = self.receipt(provider, message, "pm-1", delivered=True)
        assert provider.verify_callback(good.headers, good.body, good.url)
        bad = self.forge(good)
        assert not provider.verify_callback(bad.headers, bad.body, bad.url)

    async def test_receipts_parse_to_statuses_with_stable_keys(self, provider: Provider) -> None:
        message = self.outbound(1)[0]
        delivered = self.receipt(provider, message, "pm-1", delivered=True)
        failed = self.receipt(provider, message, "pm-1", delivered=False)
        first: list[DeliveryEvent] = provider.parse_receipts(delivered.body)
        again = provider.parse_receipts(delivered.body)
        other = provider.parse_receipts(failed.body)
        assert [e.status for e in first] == ["delivered"] and [e.status for e in other] == ["undelivered"]
        assert first[0].message_id == message.id or first[0].provider_message_id == "pm-1"
        assert [e.event_key for e in first] == [e.event_key for e in again]  # a duplicate is recognisable
        assert first[0].event_key != other[0].event_key
        assert other[0].error


__all__ = ["FIXTURES", "Callback", "FakeVendor", "ProviderContract"]
