"""The smtp provider against real SMTP servers (aiosmtpd, in this process).

Through the whole service (API -> dispatcher -> provider -> aiosmtpd): pooled sessions, content,
headers and DKIM verified by dkimpy on the received bytes, 4xx retried, 5xx failed with the
server's reply, the server down and back, and the server restarted in the middle of a bulk.

Against the provider itself: STARTTLS (required and opportunistic), implicit TLS, certificate
checks, AUTH PLAIN and LOGIN, a wrong password, pipelining (what arrives in one packet), reply
pairing with refusals inside a pipeline, a session dropped while idle and one dropped in the middle
of a message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import email
import email.policy
import ipaddress
import re
import ssl
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from bench._server import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from comms.errors import PermanentProviderError, TransientProviderError
from comms.models import Message
from comms.providers.base import OutboundMessage, Outcome
from comms.providers.email.smtp import SmtpConfig, SmtpProvider, data_payload
from tests.conftest import Service, TenantKeys, statuses, wait_until

MESSAGE_ID = re.compile(rb"^Message-ID: <(log_[^@>]+)@", re.M | re.I)


@dataclass
class Received:
    rcpt_tos: list[str]
    content: bytes
    cipher: Any  # (name, protocol, bits) over TLS, else None


class Handler:
    """What the server does and saw. Recipients in ``temporary`` get 451 once, in ``refused``
    550; a ``drop_after`` recipient's content is stored and then, once, the connection closed unanswered."""

    def __init__(self, pipelining: bool = False) -> None:
        self.pipelining = pipelining
        self.received: list[Received] = []
        self.temporary: set[str] = set()
        self.refused: set[str] = set()
        self.full: set[str] = set()  # 552 to RCPT: the mailbox is full (for now)
        self.scan_seconds = 0.0  # how long the content is looked at before the reply
        self.drop_after: set[str] = set()
        self.sessions: set[Any] = set()  # client (host, port) pairs that sent a MAIL
        self.chunks: dict[int, list[bytes]] = {}  # what each connection's reads returned
        self.mechanisms: list[str] = []

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.sessions.add(session.peer)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refused:
            return "550 5.1.1 mailbox unavailable"
        if address in self.full:
            return "552 5.2.2 mailbox full"
        if address in self.temporary:
            self.temporary.discard(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes) and server.transport is not None
        if self.scan_seconds:
            await asyncio.sleep(self.scan_seconds)  # a relay scanning the content
        cipher = server.transport.get_extra_info("cipher")
        self.received.append(Received(list(envelope.rcpt_tos), envelope.original_content, cipher))
        if dropped := set(envelope.rcpt_tos) & self.drop_after:
            self.drop_after -= dropped  # once
            server.transport.close()  # the server has the message; the client gets no answer
        return "250 2.0.0 queued"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.mechanisms.append(mechanism)
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"s3cret")
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535

    def log_ids(self) -> Counter[str]:
        found = (MESSAGE_ID.search(r.content) for r in self.received)
        return Counter(m.group(1).decode() for m in found if m is not None)


class RecordingSMTP(SMTP):
    """aiosmtpd's server, also keeping each chunk a read returned (decrypted under STARTTLS)."""

    def data_received(self, data: bytes) -> None:
        self.event_handler.chunks.setdefault(id(self), []).append(data)
        super().data_received(data)


class RecordingController(Controller):
    def factory(self) -> SMTP:
        return RecordingSMTP(self.handler, **self.SMTP_kwargs)


@contextlib.contextmanager
def running(handler: Handler, port: int | None = None, **kwargs: Any) -> Iterator[Controller]:
    controller = RecordingController(handler, hostname="127.0.0.1", port=port or free_port(), **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        with contextlib.suppress(AssertionError):  # a test may have stopped it already
            controller.stop()


@pytest.fixture(params=["stepwise", "pipelining"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[tuple[Controller, Handler]]:
    handler = Handler(pipelining=request.param == "pipelining")
    with running(handler) as controller:
        yield controller, handler


@dataclass
class Tls:
    ca_pem: str  # what a client trusts
    server: ssl.SSLContext  # the server's certificate (for 127.0.0.1, signed by the CA) and key


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1, made now with ``cryptography``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "comms test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = Path(folder / "server.pem"), Path(folder / "server.key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return Tls(ca.public_bytes(serialization.Encoding.PEM).decode(), server)


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


def outbound(n: int, to: str | None = None) -> OutboundMessage:
    return OutboundMessage(
        id=f"log_{n:026d}",
        tenant_id="ten_1",
        channel="email",
        category="transactional",
        to=to or f"person{n}@example.com",
        text=f"Message {n}\n.a line starting with a dot\n",
        sender="news@acme.example",
        subject=f"Subject {n}",
    )


def provider(port: int, **config: Any) -> SmtpProvider:
    return SmtpProvider(SmtpConfig.model_validate({"host": "127.0.0.1", "port": port, **config}))


# ---- through the service ---------------------------------------------------------------------


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
    assert "password" not in answer.json()["data"]["config"]
    return str(answer.json()["data"]["id"])


def smtp_instance(service: Service, account: str) -> SmtpProvider:
    instance = next(
        p for (acc, _), p in service.app.state.dispatcher.router._instances.items() if acc == account
    )
    assert isinstance(instance, SmtpProvider)
    return instance


async def post_bulk(service: Service, tenant: TenantKeys, recipients: list[str], **body: Any) -> Any:
    answer = await service.client.post(
        "/communication/bulk",
        json={
            "channel": "email",
            "category": "transactional",
            "subject": "S",
            "content": "x",
            "recipients": recipients,
            **body,
        },
        headers=tenant.headers(),
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


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
    accepted = await post_bulk(
        live_service,
        live_tenant,
        recipients,
        category="marketing",
        subject="Winter sale, {{ name }}",
        content="Hi {{ name }}",
        variables={"name": "friend"},
    )

    async def sent() -> bool:
        return await statuses(live_service, accepted["batch_id"]) == {"sent": 40}

    await wait_until(sent)
    assert sorted(r.rcpt_tos[0] for r in handler.received) == sorted(recipients)
    log_ids = {item["id"] for item in accepted["items"]}
    assert set(handler.log_ids()) == log_ids and set(handler.log_ids().values()) == {1}
    for received in handler.received:
        raw = received.content
        assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: dns_record)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert parsed["To"] == received.rcpt_tos[0]
        assert parsed["From"].addresses[0].addr_spec == "news@acme.example"
        assert parsed["Subject"] == "Winter sale, friend"
        assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        body = parsed.get_body(("plain",))
        assert body is not None and str(body.get_content()).startswith("Hi friend")
        signature = raw.split(b"\r\n\r\n", 1)[0].decode()
        header = re.search(r"DKIM-Signature:(.*?)\r\n(?=\S)", signature, re.S)
        assert header is not None
        signed = re.search(
            r"h=([^;]+)", header.group(1).replace("\r\n", "").replace(" ", "").replace("\t", "")
        )
        assert signed is not None
        names = signed.group(1).lower().split(":")
        assert "list-unsubscribe" in names and "list-unsubscribe-post" in names and "from" in names
    # Pooled: 40 messages over at most max_connections sessions, seen from both ends.
    assert smtp_instance(live_service, account).connections_opened <= 2
    assert 1 <= len(handler.sessions) <= 2


async def test_smtp_4xx_is_retried_and_5xx_fails_with_the_servers_reply(
    live_service: Service, live_tenant: TenantKeys, smtp_server: tuple[Controller, Handler]
) -> None:
    controller, handler = smtp_server
    await add_smtp_account(live_service, live_tenant, controller.port)
    handler.temporary.add("later@example.com")
    handler.refused.add("gone@example.com")
    accepted = await post_bulk(
        live_service,
        live_tenant,
        ["later@example.com", "gone@example.com", "fine@example.com"],
        subject="Receipt",
        content="Thanks",
    )

    async def settled() -> bool:
        return await statuses(live_service, accepted["batch_id"]) == {"sent": 2, "failed": 1}

    await wait_until(settled)
    async with live_service.db.read() as session:
        later = await session.get(Message, accepted["items"][0]["id"])
        gone = await session.get(Message, accepted["items"][1]["id"])
    assert later is not None and later.status == "sent" and later.attempts == 2
    assert (
        gone is not None
        and gone.status == "failed"
        and "550" in (gone.error or "")
        and "unavailable" in (gone.error or "")
    )
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["fine@example.com", "later@example.com"]


async def test_smtp_server_down_then_back(
    live_service: Service, live_tenant: TenantKeys, smtp_server: tuple[Controller, Handler]
) -> None:
    controller, handler = smtp_server
    port = controller.port
    # Retries a second apart: five attempts outlast a restart on a loaded machine.
    live_service.settings.retry_base_seconds = live_service.settings.retry_max_seconds = 1.0
    await add_smtp_account(live_service, live_tenant, port)
    controller.stop()  # connection refused: retried, nothing lost
    accepted = await post_bulk(live_service, live_tenant, ["a@example.com"])
    log_id = accepted["items"][0]["id"]

    async def retrying() -> bool:
        async with live_service.db.read() as session:
            row = await session.get(Message, log_id)
        return row is not None and row.attempts >= 1 and row.status == "queued"

    await wait_until(retrying)
    with running(handler, port):

        async def sent() -> bool:
            async with live_service.db.read() as session:
                row = await session.get(Message, log_id)
            return row is not None and row.status == "sent"

        await wait_until(sent)
        assert len(handler.received) == 1


async def test_smtp_server_restarted_in_the_middle_of_a_bulk(
    live_service: Service, live_tenant: TenantKeys, smtp_server: tuple[Controller, Handler]
) -> None:
    """Every message ends sent: delivered once, or (a session broke before its answer) delivered
    again with ``possible_duplicate`` set. None is lost."""
    controller, handler = smtp_server
    port = controller.port
    # Retries a second apart: five attempts outlast the restart below on a loaded machine.
    live_service.settings.retry_base_seconds = live_service.settings.retry_max_seconds = 1.0
    account = await add_smtp_account(live_service, live_tenant, port)
    handler.drop_after.add("r5@example.com")  # stored, then the connection cut before the answer
    recipients = [f"r{i}@example.com" for i in range(300)]
    accepted = await post_bulk(live_service, live_tenant, recipients)
    batch = accepted["batch_id"]

    async def some_delivered() -> bool:
        return len(handler.received) >= 30

    await wait_until(some_delivered)
    controller.stop()  # sessions in use break mid-transaction
    delivered_before = len(handler.received)
    assert delivered_before < len(recipients)  # stopped in the middle, not after the end

    async def outage_seen() -> bool:  # the dispatcher met the refused connections
        async with live_service.db.read() as session:
            errors = await session.scalars(select(Message.error).where(Message.batch_id == batch))
            return any("cannot open an SMTP session" in (error or "") for error in errors)

    await wait_until(outage_seen)
    with running(handler, port):

        async def all_sent() -> bool:
            return await statuses(live_service, batch) == {"sent": len(recipients)}

        await wait_until(all_sent, timeout=30)
    async with live_service.db.read() as session:
        rows = (await session.scalars(select(Message).where(Message.batch_id == batch))).all()
    deliveries = handler.log_ids()
    assert {row.id for row in rows} == set(deliveries)  # none lost
    for row in rows:
        assert deliveries[row.id] == 1 or (deliveries[row.id] == 2 and row.possible_duplicate), row.id
    cut = next(row for row in rows if row.recipient == "r5@example.com")
    assert deliveries[cut.id] == 2 and cut.possible_duplicate  # unknown, then sent again, flagged
    assert len(handler.received) > delivered_before  # the rest went through the restarted server
    assert smtp_instance(live_service, account).connections_opened > 2  # new sessions after the restart


async def test_wrong_smtp_password_fails_the_messages_and_sends_nothing(
    live_service: Service, live_tenant: TenantKeys, tls: Tls
) -> None:
    handler = Handler()
    with running(
        handler, tls_context=tls.server, require_starttls=True, authenticator=handler.authenticate
    ) as controller:
        await add_smtp_account(
            live_service,
            live_tenant,
            controller.port,
            security="starttls",
            ca_certificate=tls.ca_pem,
            username="mailer",
            password="wrong",
        )
        accepted = await post_bulk(live_service, live_tenant, ["a@example.com", "b@example.com"])

        async def failed() -> bool:
            return await statuses(live_service, accepted["batch_id"]) == {"failed": 2}

        await wait_until(failed)
        async with live_service.db.read() as session:
            row = await session.get(Message, accepted["items"][0]["id"])
        assert row is not None and "authentication failed: 535" in (row.error or "")
        assert handler.received == [] and handler.sessions == set()


# ---- the provider against servers with TLS and AUTH -------------------------------------------


async def test_starttls_required_with_a_private_ca(tls: Tls) -> None:
    handler = Handler()
    with running(handler, tls_context=tls.server, require_starttls=True) as controller:
        smtp = provider(controller.port, security="starttls", ca_certificate=tls.ca_pem)
        results = await smtp.send([outbound(i) for i in range(5)])
        await smtp.close()
    assert [r.outcome for r in results] == [Outcome.SENT] * 5
    assert len(handler.received) == 5
    assert all(r.cipher is not None and r.cipher[1] in ("TLSv1.2", "TLSv1.3") for r in handler.received)


@pytest.mark.parametrize("pipelining", [False, True])
async def test_opportunistic_starttls_is_the_default(tls: Tls, pipelining: bool) -> None:
    """No ``security`` given: STARTTLS when offered, plain text when not."""
    assert SmtpConfig(host="relay.example").security == "opportunistic"
    offering, plain = Handler(pipelining), Handler(pipelining)
    with running(offering, tls_context=tls.server) as with_tls, running(plain) as without_tls:
        for port in (with_tls.port, without_tls.port):
            smtp = provider(port, ca_certificate=tls.ca_pem)
            assert [r.outcome for r in await smtp.send([outbound(1), outbound(2)])] == [Outcome.SENT] * 2
            await smtp.close()
    assert all(r.cipher is not None for r in offering.received) and len(offering.received) == 2
    assert all(r.cipher is None for r in plain.received) and len(plain.received) == 2


async def test_an_untrusted_certificate_is_refused_unless_checks_are_off(tls: Tls) -> None:
    handler = Handler()
    with running(handler, tls_context=tls.server) as controller:
        strict = provider(controller.port)  # system CAs only: the test CA is unknown
        with pytest.raises(TransientProviderError, match="certif"):
            await strict.send([outbound(1)])
        assert handler.received == []  # and no fallback to plain text
        relaxed = provider(controller.port, security="starttls", verify_tls=False)
        assert [r.outcome for r in await relaxed.send([outbound(2)])] == [Outcome.SENT]
        await relaxed.close()
    assert len(handler.received) == 1 and handler.received[0].cipher is not None


@pytest.mark.parametrize("security", ["implicit", "tls"])  # "tls" is the contract's name for it
async def test_implicit_tls(tls: Tls, security: str) -> None:
    handler = Handler(pipelining=True)
    # aiosmtpd does not count a TLS listener as TLS for its AUTH rule, hence auth_require_tls off.
    with running(
        handler, ssl_context=tls.server, authenticator=handler.authenticate, auth_require_tls=False
    ) as controller:
        smtp = provider(
            controller.port,
            security=security,
            ca_certificate=tls.ca_pem,
            username="mailer",
            password="s3cret",
        )
        assert smtp.config.security == "implicit"
        results = await smtp.send([outbound(i) for i in range(3)])
        await smtp.close()
    assert [r.outcome for r in results] == [Outcome.SENT] * 3
    assert all(r.cipher is not None for r in handler.received) and len(handler.received) == 3
    assert SmtpConfig(host="relay.example", tls="implicit").effective_port == 465


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_over_starttls(tls: Tls, mechanism: str) -> None:
    handler = Handler(pipelining=True)
    other = "LOGIN" if mechanism == "PLAIN" else "PLAIN"
    with running(
        handler,
        tls_context=tls.server,
        require_starttls=True,
        authenticator=handler.authenticate,
        auth_required=True,
        auth_exclude_mechanism=[other],
    ) as controller:
        smtp = provider(
            controller.port,
            security="starttls",
            ca_certificate=tls.ca_pem,
            username="mailer",
            password="s3cret",
            max_connections=2,
        )
        results = await smtp.send([outbound(i) for i in range(6)])
        await smtp.close()
    assert [r.outcome for r in results] == [Outcome.SENT] * 6
    assert len(handler.received) == 6
    assert handler.mechanisms == [mechanism] * smtp.connections_opened


async def test_wrong_password_raises_permanent_and_sends_nothing(tls: Tls) -> None:
    handler = Handler()
    with running(
        handler,
        tls_context=tls.server,
        require_starttls=True,
        authenticator=handler.authenticate,
        auth_required=True,
    ) as controller:
        smtp = provider(
            controller.port, ca_certificate=tls.ca_pem, username="mailer", password="wrong", max_connections=3
        )
        with pytest.raises(PermanentProviderError, match="535"):
            await smtp.send([outbound(i) for i in range(5)])
    assert handler.received == [] and handler.sessions == set()
    assert handler.mechanisms  # it did try


async def test_no_password_over_plain_text_and_no_silent_downgrade(tls: Tls) -> None:
    handler = Handler()
    # A server that offers AUTH without TLS, and no STARTTLS.
    with running(handler, authenticator=handler.authenticate, auth_require_tls=False) as controller:
        opportunistic = provider(controller.port, username="mailer", password="s3cret")
        with pytest.raises(PermanentProviderError, match="without TLS"):
            await opportunistic.send([outbound(1)])
        required = provider(controller.port, security="starttls")
        with pytest.raises(TransientProviderError, match="does not offer STARTTLS"):
            await required.send([outbound(2)])
    assert handler.mechanisms == [] and handler.received == []


# ---- pipelining, reply pairing, broken sessions ----------------------------------------------


def transaction_chunks(handler: Handler) -> list[bytes]:
    """The reads of the one connection, from the first MAIL on (EHLO and QUIT left out)."""
    [chunks] = handler.chunks.values()
    first = next(i for i, c in enumerate(chunks) if b"MAIL FROM" in c)
    return [c for c in chunks[first:] if c != b"QUIT\r\n"]


async def test_pipelining_sends_one_packet_per_message_when_offered() -> None:
    count = 20
    handler = Handler(pipelining=True)
    with running(handler) as controller:
        smtp = provider(controller.port, security="none", max_connections=1)
        results = await smtp.send([outbound(i) for i in range(count)])
        await smtp.close()
    assert [r.outcome for r in results] == [Outcome.SENT] * count
    chunks = transaction_chunks(handler)
    # One write per message: [previous message + final dot] MAIL RCPT DATA, and the last content.
    assert len(chunks) == count + 1
    assert chunks[0].startswith(b"MAIL FROM:<news@acme.example> SIZE=")
    for chunk in chunks[1:-1]:
        content, _, commands = chunk.partition(b"\r\n.\r\nMAIL FROM:")
        assert (
            commands.count(b"\r\n") == 3 and b"\r\nRCPT TO:<" in commands and commands.endswith(b"DATA\r\n")
        )
        assert MESSAGE_ID.search(content) is not None
    assert chunks[-1].endswith(b"\r\n.\r\n") and b"MAIL FROM" not in chunks[-1]
    # The dot at a line start was stuffed on the wire and is back to one at the server.
    assert b"\r\n..a line starting with a dot" in chunks[1]
    assert b"\r\n.a line starting with a dot\r\n" in handler.received[0].content


async def test_no_pipelining_without_the_extension_or_when_turned_off() -> None:
    for handler, config in (
        (Handler(pipelining=False), {}),
        (Handler(pipelining=True), {"pipelining": False}),
    ):
        with running(handler) as controller:
            smtp = provider(controller.port, security="none", max_connections=1, **config)
            results = await smtp.send([outbound(i) for i in range(3)])
            await smtp.close()
        assert [r.outcome for r in results] == [Outcome.SENT] * 3
        chunks = transaction_chunks(handler)
        assert len(chunks) == 3 * 4  # MAIL, RCPT, DATA, content: one round trip each
        assert [c.split(b":")[0] for c in chunks[:3]] == [b"MAIL FROM", b"RCPT TO", b"DATA\r\n"]


@pytest.mark.parametrize("pipelining", [False, True])
async def test_a_relay_that_scans_the_content_longer_than_the_command_timeout_is_waited_for(
    pipelining: bool,
) -> None:
    """The reply to a message's content may take long (RFC 5321 suggests waiting 10 minutes): it
    has its own timeout, so a slow scan is not taken for a lost answer (an unknown message)."""
    handler = Handler(pipelining)
    handler.scan_seconds = 0.6
    with running(handler) as controller:
        smtp = provider(
            controller.port, security="none", max_connections=1, timeout_seconds=0.3, data_timeout_seconds=5
        )
        results = await smtp.send([outbound(i) for i in range(2)])
        await smtp.close()
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]


@pytest.mark.parametrize("pipelining", [False, True])
async def test_refusals_inside_a_stream_keep_replies_paired(pipelining: bool) -> None:
    handler = Handler(pipelining)
    handler.refused |= {"person3@example.com", "person7@example.com"}
    handler.temporary |= {"person5@example.com"}
    handler.full |= {"person8@example.com"}  # 552 to RCPT is 452 (RFC 5321 4.5.3.1.10): try again
    with running(handler) as controller:
        smtp = provider(controller.port, security="none", max_connections=1)
        results = await smtp.send([outbound(i) for i in range(10)])
        await smtp.close()
    outcomes = {r.message_id: r for r in results}
    expected = {3: Outcome.FAILED, 5: Outcome.RETRY, 7: Outcome.FAILED, 8: Outcome.RETRY}
    for i in range(10):
        result = outcomes[outbound(i).id]
        assert result.outcome is expected.get(i, Outcome.SENT), (i, result)
    assert "550 5.1.1 mailbox unavailable" in (outcomes[outbound(3).id].error or "")
    assert "451 4.3.0" in (outcomes[outbound(5).id].error or "")
    # Each delivered message went to its own recipient, with its own content, over one session.
    assert [r.rcpt_tos for r in handler.received] == [
        [f"person{i}@example.com"] for i in range(10) if i not in expected
    ]
    for received in handler.received:
        assert email.message_from_bytes(received.content)["To"] == received.rcpt_tos[0]
    assert smtp.connections_opened == 1 and len(handler.sessions) == 1


@pytest.mark.parametrize("pipelining", [False, True])
async def test_a_session_dropped_while_idle_is_reopened(pipelining: bool) -> None:
    handler = Handler(pipelining)
    port = free_port()
    smtp = provider(port, security="none", max_connections=2)
    with running(handler, port):
        assert {r.outcome for r in await smtp.send([outbound(i) for i in range(4)])} == {Outcome.SENT}
    opened = smtp.connections_opened
    with running(handler, port):  # the old sessions are gone with the old server
        results = await smtp.send([outbound(i) for i in range(4, 10)])
        await smtp.close()
    assert [r.outcome for r in results] == [Outcome.SENT] * 6  # nothing lost, nothing in doubt
    assert smtp.connections_opened > opened
    assert sorted(handler.log_ids().values()) == [1] * 10


@pytest.mark.parametrize("pipelining", [False, True])
async def test_a_session_dropped_mid_message_makes_that_message_unknown(pipelining: bool) -> None:
    handler = Handler(pipelining)
    handler.drop_after.add("person2@example.com")
    with running(handler) as controller:
        smtp = provider(controller.port, security="none", max_connections=1)
        results = await smtp.send([outbound(i) for i in range(6)])
        await smtp.close()
    outcomes = [r.outcome for r in results]
    assert outcomes == [Outcome.SENT, Outcome.SENT, Outcome.UNKNOWN] + [Outcome.SENT] * 3
    assert "connection lost while sending" in (results[2].error or "")
    # The server had it (UNKNOWN was right to doubt); the message after it was only announced on
    # the broken session (pipelining) and went out once, on a new one.
    assert sorted(handler.log_ids().values()) == [1] * 6
    assert smtp.connections_opened == 2


async def test_server_unreachable_raises_transient_and_nothing_is_sent() -> None:
    smtp = provider(free_port(), security="none", timeout_seconds=2)
    with pytest.raises(TransientProviderError, match="cannot open an SMTP session"):
        await smtp.send([outbound(1), outbound(2)])


def test_data_payload_stuffs_dots_and_normalises_line_ends() -> None:
    payload, size = data_payload(b".top\nmiddle\r.dot\r\n..two\r\nend")
    assert payload == b"..top\r\nmiddle\r\n..dot\r\n...two\r\nend\r\n.\r\n"
    assert size == len(b".top\r\nmiddle\r\n.dot\r\n..two\r\nend\r\n")


def test_config_names_and_checks() -> None:
    assert SmtpConfig(host="h", security="tls").security == "implicit"  # the contract's value
    assert SmtpConfig.model_validate({"host": "h", "tls": "starttls"}).security == "starttls"
    assert SmtpConfig(host="h").effective_port == 587 and SmtpConfig(host="h").verify_tls is True
    with pytest.raises(ValueError, match="PEM"):
        SmtpConfig(host="h", ca_certificate="not a certificate")
    with pytest.raises(ValueError, match="password"):
        SmtpConfig(host="h", username="u")
    with pytest.raises(ValueError, match="together"):
        SmtpConfig(host="h", dkim_domain="acme.example")
    # d= and s= must be DNS names receivers can look up: checked when the account is saved.
    with pytest.raises(ValueError, match="not a domain name"):
        SmtpConfig(host="h", dkim_domain="acme example")
    with pytest.raises(ValueError, match="not a DKIM selector"):
        SmtpConfig(host="h", dkim_selector="s1;h=from")
    with pytest.raises(ValueError, match="together"):  # a good selector passes its own check
        SmtpConfig(host="h", dkim_selector="2026-11.mail")


async def test_messages_that_cannot_be_built_fail_alone() -> None:
    handler = Handler(pipelining=True)
    good = outbound(1)
    no_sender = dataclasses.replace(outbound(2), sender=None)
    injected = dataclasses.replace(outbound(3), subject="Hi\r\nBcc: everyone@example.com")
    with running(handler) as controller:
        smtp = provider(controller.port, security="none")
        results = await smtp.send([no_sender, good, injected])
        await smtp.close()
    assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.SENT, Outcome.FAILED]
    assert results[0].error == "no sender address"
    assert "CR or LF" in (results[2].error or "")
    assert [r.rcpt_tos for r in handler.received] == [["person1@example.com"]]


async def test_with_private_networks_off_a_relay_is_reached_at_a_public_address_only(
    tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMMS_PROVIDER_ALLOW_PRIVATE=false: a relay whose name resolves to private addresses only
    is refused for good; one at a public address is connected to through the address vetted as
    it was resolved (here 127.0.0.1 is taken for public), and TLS still checks the certificate."""
    from comms.errors import PermanentProviderError
    from comms.providers.email import smtp as smtp_module

    handler = Handler()
    with running(handler, tls_context=tls.server, require_starttls=True) as controller:
        config = {
            "host": "127.0.0.1",
            "port": controller.port,
            "security": "starttls",
            "ca_certificate": tls.ca_pem,
        }
        guarded = SmtpProvider(SmtpConfig.model_validate(config), allow_private=False)
        with pytest.raises(PermanentProviderError, match="resolves to no public address"):
            await guarded.send([outbound(1)])
        assert handler.received == [] and guarded.connections_opened == 0
        monkeypatch.setattr(smtp_module, "is_public", lambda address: address == "127.0.0.1")
        results = await guarded.send([outbound(i) for i in range(3)])
        await guarded.close()
    assert [r.outcome for r in results] == [Outcome.SENT] * 3
    assert len(handler.received) == 3 and all(r.cipher is not None for r in handler.received)
