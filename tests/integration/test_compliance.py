"""COMPLIANCE.md's "Top 15", one test each (named after it), plus the inbound keyword table,
the OTP flow limits, retention, and the unsubscribe flows end to end through the dispatcher."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, time, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dns.message
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
import pytest
from sqlalchemy import func, select, text, update

from comms.compliance import quiet_hours, retention, wireless
from comms.compliance.addresses import address_hash
from comms.compliance.domain_checks import DomainRechecker
from comms.compliance.keywords import handle_inbound_sms
from comms.compliance.retention import RecipientAnonymizer, purge_expired_content
from comms.compliance.settings import TenantSettings
from comms.compliance.unsubscribe import UnsubscribeSigner
from comms.dispatch.queue import claim_due
from comms.kit.clock import isoformat, set_clock, utcnow
from comms.kit.secretbox import SecretBox
from comms.models import AuditEvent, Batch, Message, Suppression, Tenant
from tests.conftest import Service, TenantKeys, make_tenant, statuses, wait_until
from tests.integration.conftest import add_account, signed, standalone_dispatcher
from tests.webhook_sink import WebhookSink


async def bulk(service: Service, tenant: TenantKeys, expect: int = 202, **body: Any) -> dict[str, Any]:
    answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
    assert answer.status_code == expect, answer.text
    return dict(answer.json())


def marketing_email(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "email",
        "category": "marketing",
        "subject": "Our winter sale",
        "content": "Hello {{ name }}, 20% off everything.",
        "variables": {"name": "friend"},
        "recipients": ["ann@example.com"],
    }
    body.update(extra)
    return body


def verification_sms(**extra: Any) -> dict[str, Any]:
    """A one-time code to 13800138000, as the flow-limit tests send it."""
    body: dict[str, Any] = {
        "channel": "sms",
        "category": "verification",
        "content": "Code {{ code }}",
        "variables": {"code": "1"},
        "recipients": ["13800138000"],
    }
    body.update(extra)
    return body


async def opt_in(service: Service, tenant: TenantKeys, channel: str, address: str, **extra: Any) -> None:
    body = {
        "channel": channel,
        "address": address,
        "status": "opted_in",
        "basis": "opt_in",
        "source": "signup-form",
        "wording_version": "v3",
        # These tests are about what the consent allows: no opt-in confirmation SMS among the
        # messages they count (test_s4_* test it).
        "send_confirmation": False,
    }
    body.update(extra)
    answer = await service.client.post("/communication/consents", json=body, headers=tenant.headers())
    assert answer.status_code == 201, answer.text


def eml(service: Service, log_id: str) -> EmailMessage:
    raw = (service.outbox / "email" / f"{log_id}.eml").read_bytes()
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


@pytest.fixture
def frozen_clock() -> Iterator[list[datetime]]:
    """A settable clock: tests write now[0]."""
    now = [datetime(2026, 11, 26, 12, 0, tzinfo=UTC)]
    set_clock(lambda: now[0])
    yield now
    set_clock(None)


@pytest.fixture
def daytime_clock() -> Iterator[None]:
    """The service's clock running on from 09:00 in Shanghai (01:00 UTC), so marketing SMS to the
    tenant's CN numbers are inside their quiet-hours window whatever time the suite runs at; it
    advances, unlike frozen_clock, for tests whose events must come one after another."""
    import time as wall

    start, base = wall.monotonic(), datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
    set_clock(lambda: base + timedelta(seconds=wall.monotonic() - start))
    yield
    set_clock(None)


# ---- 1 ------------------------------------------------------------------------------------------


async def test_01_every_message_has_a_category(service: Service, tenant: TenantKeys) -> None:
    # No category and no template: marketing, the safe default (consent rules apply).
    default = await bulk(service, tenant, channel="sms", content="Hi", recipients=["13800138000"])
    assert default["items"][0]["category"] == "marketing"
    assert (
        default["items"][0]["status"] == "rejected" and default["items"][0]["error"] == "no marketing consent"
    )
    await service.client.post(
        "/communication/templates",
        json={"code": "otp", "channel": "sms", "category": "verification", "content": "Code {{ code }}"},
        headers=tenant.headers(),
    )
    from_template = await bulk(
        service, tenant, channel="sms", template="otp", recipients=["13800138000"], variables={"code": "1"}
    )
    assert from_template["items"][0]["category"] == "verification"
    mismatch = await bulk(
        service,
        tenant,
        422,
        channel="sms",
        template="otp",
        category="marketing",
        recipients=["13800138000"],
        variables={"code": "1"},
    )
    assert "category_mismatch" in mismatch["message"]


# ---- 2 ------------------------------------------------------------------------------------------


async def test_02_suppression_checked_before_every_send(service: Service, tenant: TenantKeys) -> None:
    await opt_in(service, tenant, "email", "ann@example.com")
    added = await service.client.post(
        "/communication/suppressions",
        json={"channel": "email", "address": "Ann@Example.com", "reason": "unsubscribed"},
        headers=tenant.headers(),
    )
    assert added.status_code == 201
    item = (await bulk(service, tenant, **marketing_email()))["items"][0]
    assert (item["status"], item["error"]) == ("suppressed", "recipient unsubscribed")
    announcement = await bulk(service, tenant, **marketing_email(category="announcement"))
    assert announcement["items"][0]["status"] == "suppressed"
    # An opt-out does not stop transactional mail or a verification code...
    receipt = await bulk(service, tenant, **marketing_email(category="transactional"))
    assert receipt["items"][0]["status"] == "queued"
    # ...a hard bounce stops everything but verification.
    await service.client.post(
        "/communication/suppressions",
        json={"channel": "email", "address": "ann@example.com", "reason": "hard_bounce"},
        headers=tenant.headers(),
    )
    receipt = await bulk(service, tenant, **marketing_email(category="transactional"))
    assert (receipt["items"][0]["status"], receipt["items"][0]["error"]) == (
        "suppressed",
        "recipient address bounced",
    )
    code = await bulk(service, tenant, **marketing_email(category="verification"))
    assert code["items"][0]["status"] == "queued"


async def test_02_unsubscribe_between_acceptance_and_dispatch_wins(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    await opt_in(live_service, live_tenant, "email", "ann@example.com")
    dispatcher = live_service.app.state.dispatcher
    await dispatcher.stop()  # hold the queue: accepted, not yet sent
    created = await bulk(live_service, live_tenant, **marketing_email())
    assert created["items"][0]["status"] == "queued"
    await live_service.client.post(
        "/communication/suppressions",
        json={"channel": "email", "address": "ann@example.com", "reason": "unsubscribed"},
        headers=live_tenant.headers(),
    )
    dispatcher.__init__(dispatcher.db, dispatcher.settings, dispatcher._cache._secrets, dispatcher.router)
    dispatcher.start()

    async def settled() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"suppressed": 1}

    await wait_until(settled)
    await dispatcher.stop()
    assert not (live_service.outbox / "email").exists() or not list((live_service.outbox / "email").iterdir())


# ---- 3 ------------------------------------------------------------------------------------------


async def test_03_marketing_blocked_without_consent_basis(
    service: Service, frozen_clock: list[datetime]
) -> None:
    # No quiet hours in the way here (test 8 covers them): 09:00 in Shanghai, the evening before
    # in San Francisco, and the countries without a legal window open all day.
    frozen_clock[0] = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
    always = "00:00-24:00"
    tenant = await make_tenant(service.db, "Acme", quiet_hours={"DE": always, "FR": always})
    body = {
        "channel": "sms",
        "category": "marketing",
        "content": "Sale!",
        "recipients": ["13800138000", "13900139000", "+14155552671", "+4915112345678", "+33612345678"],
    }
    await opt_in(service, tenant, "sms", "13800138000")
    # US: prior express WRITTEN consent for marketing texts (TCPA).
    await opt_in(service, tenant, "sms", "+14155552671")
    # DE: soft opt-in from a sale with an opt-out offered at collection is enough in the EU (ePD 13(2)).
    await opt_in(
        service,
        tenant,
        "sms",
        "+4915112345678",
        basis="soft_opt_in",
        source="sale",
        collected_with_optout=True,
    )
    # FR: soft opt-in without a sale is not.
    await opt_in(service, tenant, "sms", "+33612345678", basis="soft_opt_in", source="newsletter")
    items = {i["recipient"]: i for i in (await bulk(service, tenant, **body))["items"]}
    assert items["138****8000"]["status"] == "queued"
    assert (items["139****9000"]["status"], items["139****9000"]["error"]) == (
        "rejected",
        "no marketing consent",
    )
    assert (items["415***2671"]["status"], items["415***2671"]["error"]) == (
        "rejected",
        "no prior express written consent",
    )
    assert items["151****5678"]["status"] == "queued"
    assert items["61*****78"]["error"] == "no marketing consent"
    # The EU's outermost regions (Reunion, Guadeloupe, ...) have numbers of their own; EU law applies
    overseas = await bulk(service, tenant, **{**body, "recipients": ["+262692123456", "+590690123456"]})
    assert [(i["status"], i["error"]) for i in overseas["items"]] == [
        ("rejected", "no marketing consent")
    ] * 2
    await opt_in(service, tenant, "sms", "+14155552671", basis="written")
    again = await bulk(service, tenant, **{**body, "recipients": ["+14155552671"]})
    assert again["items"][0]["status"] == "queued"
    # S1 names every +1 number: Puerto Rico and Guam share the plan, and an opt-in that was not
    # written does not carry a marketing text there either.
    await opt_in(service, tenant, "sms", "+17872345678")
    territories = await bulk(service, tenant, **{**body, "recipients": ["+17872345678", "+16715551234"]})
    assert [(i["status"], i["error"]) for i in territories["items"]] == [
        ("rejected", "no prior express written consent")
    ] * 2


# ---- 4, 9 ---------------------------------------------------------------------------------------


async def test_04_marketing_email_carries_list_unsubscribe_headers(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    await opt_in(live_service, live_tenant, "email", "ann@example.com")
    created = await bulk(live_service, live_tenant, **marketing_email())

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 1}

    await wait_until(sent)
    message = eml(live_service, created["items"][0]["id"])
    (unsubscribe,) = message.get_all("List-Unsubscribe")
    assert unsubscribe.startswith("<https://comms.test/u/log_") and unsubscribe.endswith(">")
    assert unsubscribe.count("<") == 1  # exactly one HTTPS URI (RFC 8058)
    assert message.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert message["List-Id"] and message["Auto-Submitted"] == "auto-generated"
    body = message.get_content()
    assert "1 Main St, Springfield" in body and unsubscribe.strip("<>") in body
    # Transactional mail is not subscription mail: no unsubscribe header.
    receipt = await bulk(live_service, live_tenant, **marketing_email(category="transactional"))

    async def receipt_sent() -> bool:
        return await statuses(live_service, receipt["batch_id"]) == {"sent": 1}

    await wait_until(receipt_sent)
    assert eml(live_service, receipt["items"][0]["id"])["List-Unsubscribe"] is None


async def test_09_marketing_email_needs_postal_address_verified_from_and_ad_disclosure(
    live_service: Service,
) -> None:
    bare = await make_tenant(live_service.db, "Bare", postal_address=None)
    answer = await bulk(live_service, bare, 422, **marketing_email())
    assert "postal_address" in answer["message"]
    tenant = await make_tenant(live_service.db, "Shop", ad_disclosure="This is an advertisement.")
    unverified = await bulk(live_service, tenant, 422, **marketing_email(sender="ceo@other.example"))
    assert "unverified_sender" in unverified["errors"][0]["message"]
    long_sender = "x" * 100_000 + "@other.example"
    huge = await bulk(live_service, tenant, 422, **marketing_email(sender=long_sender))
    assert len(huge["errors"][0]["message"]) < 300  # the request's value is not echoed whole
    only_variables = await bulk(live_service, tenant, 422, **marketing_email(subject="{{ name }}"))
    assert only_variables["errors"][0]["field"] == "subject"
    await opt_in(live_service, tenant, "email", "ann@example.com")
    created = await bulk(live_service, tenant, **marketing_email())

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 1}

    await wait_until(sent)
    message = eml(live_service, created["items"][0]["id"])
    assert message["From"] == "Shop <news@acme.example>"
    body = message.get_content()
    assert "This is an advertisement." in body and "1 Main St, Springfield" in body


# ---- 5, 12 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # SQLite runs one write at a time
async def test_05_one_click_posts_at_the_same_instant_all_answer_200(
    service: Service, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mailbox provider retrying a one-click POST, the person clicking beside it: simultaneous
    POSTs for one recipient all answer 200 and leave one suppression (on PostgreSQL the second
    insert of the row was an IntegrityError, a 500). Here every request reads "not suppressed
    yet" before any of them writes, the interleaving that made it."""
    from comms.compliance.repository import SuppressionStore

    await opt_in(service, tenant, "email", "ann@example.com")
    created = await bulk(service, tenant, **marketing_email())
    token = UnsubscribeSigner(service.settings.resolved_secret_key).token(created["items"][0]["id"])
    read = SuppressionStore.get
    arrived, all_read = [0], asyncio.Event()

    async def read_together(self: SuppressionStore, channel: str, digest: str) -> Any:
        found = await read(self, channel, digest)
        if not all_read.is_set():
            arrived[0] += 1
            if arrived[0] == 8:
                all_read.set()
            await asyncio.wait_for(all_read.wait(), timeout=10)
        return found

    monkeypatch.setattr(SuppressionStore, "get", read_together)
    answers = await asyncio.gather(
        *(service.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}) for _ in range(8))
    )
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers if a.status_code != 200]
    async with service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 1


async def test_05_one_click_post_suppresses_in_the_same_request(service: Service, tenant: TenantKeys) -> None:
    await opt_in(service, tenant, "email", "ann@example.com")
    created = await bulk(service, tenant, **marketing_email())
    token = UnsubscribeSigner(service.settings.resolved_secret_key).token(created["items"][0]["id"])

    async def suppressed() -> int:
        async with service.db.read() as session:
            return int(await session.scalar(select(func.count()).select_from(Suppression)) or 0)

    page = await service.client.get(f"/u/{token}")
    assert page.status_code == 200 and "<form" in page.text and "a***@example.com" in page.text
    assert "password" not in page.text.lower() and "<input" not in page.text  # no login, no extra fields
    assert await suppressed() == 0  # a GET (a scanner's prefetch) never unsubscribes
    one_click = await service.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200 and "location" not in one_click.headers
    assert await suppressed() == 1
    again = await service.client.post(
        f"/u/{token}",
        files={"List-Unsubscribe": (None, "One-Click")},  # multipart/form-data works too
    )
    assert again.status_code == 200 and await suppressed() == 1
    forged = await service.client.post(f"/u/{created['items'][0]['id']}.AAAAAAAAAAAAAAAAAAAAAA")
    assert forged.status_code == 404
    nxt = await bulk(service, tenant, **marketing_email())
    assert (nxt["items"][0]["status"], nxt["items"][0]["error"]) == ("suppressed", "recipient unsubscribed")
    async with service.db.read() as session:
        event = await session.scalar(select(AuditEvent).where(AuditEvent.action == "suppression.added"))
    assert event is not None and event.details["source"] == "one_click"
    assert 'action=""' in page.text  # posts back to the URL it was shown at (behind any path prefix)
    # A one-click POST sent as multipart/form-data (RFC 8058 allows it) is recorded as one, too.
    await opt_in(service, tenant, "email", "bob@example.com")
    bob = await bulk(service, tenant, **marketing_email(recipients=["bob@example.com"]))
    bob_token = UnsubscribeSigner(service.settings.resolved_secret_key).token(bob["items"][0]["id"])
    multipart = await service.client.post(f"/u/{bob_token}", files={"List-Unsubscribe": (None, "One-Click")})
    assert multipart.status_code == 200 and await suppressed() == 2
    async with service.db.read() as session:
        sources = (
            await session.scalars(select(AuditEvent.details).where(AuditEvent.action == "suppression.added"))
        ).all()
    assert [d["source"] for d in sources] == ["one_click", "one_click"]


def test_12_unsubscribe_tokens_last_over_a_year_and_are_unforgeable() -> None:
    signer = UnsubscribeSigner("k")
    from comms.kit.ids import new_id

    log_id = new_id("log")
    token = signer.token(log_id)
    now = utcnow()
    assert signer.verify(token, now + timedelta(days=31)) == log_id
    assert signer.verify(token, now + timedelta(days=366)) == log_id
    # No time limit: a batch retry years later sends the same log ids, with the same links.
    assert signer.verify(token, now + timedelta(days=4000)) == log_id
    assert UnsubscribeSigner("other-key").verify(token, now) is None
    assert signer.verify(token[:-2] + "xx", now) is None
    assert signer.verify("garbage", now) is None


# ---- 6 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "suppresses"),
    [
        ("STOP", True),
        ("stop", True),
        ("  Stop  ", True),
        ("END", True),
        ("CANCEL", True),
        ("UNSUBSCRIBE", True),
        ("QUIT", True),
        ("OPT OUT", True),
        ("opt  out", True),
        ("REVOKE", True),
        ("STOPALL", True),
        ("T", True),
        ("td", True),
        ("N", True),
        ("R", True),
        ("退订", True),
        ("HELP", False),
        ("info", False),
        ("please stop texting me about this", True),  # any reasonable means (47 CFR 64.1200(a)(10))
        ("hello", False),
    ],
)
async def test_06_inbound_keywords(service: Service, tenant: TenantKeys, text: str, suppresses: bool) -> None:
    async with service.db.begin() as session:
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        first = await handle_inbound_sms(session, row, "13800138000", text)
        second = await handle_inbound_sms(session, row, "+86 138 0013 8000", text)
    async with service.db.read() as session:
        count = int(await session.scalar(select(func.count()).select_from(Suppression)) or 0)
    assert count == (1 if suppresses else 0)
    if suppresses:
        assert first.reply is not None and "unsubscribed" in first.reply
        assert second.reply is None  # exactly one confirmation
    elif text.lower() in ("help", "info"):
        assert first.reply is not None
        for must in ("Msg&data rates may apply", "STOP", "Acme", "news@acme.example"):
            assert must in first.reply
    else:
        assert first.reply is None and first.keyword is None


async def test_06_start_resubscribes_after_stop_only(service: Service, tenant: TenantKeys) -> None:
    async with service.db.begin() as session:
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        await handle_inbound_sms(session, row, "13800138000", "STOP")
        start = await handle_inbound_sms(session, row, "13800138000", "START")
        assert start.changed and start.reply is not None and "subscribed again" in start.reply
        assert (await handle_inbound_sms(session, row, "13800138000", "UNSTOP")).reply is None
    # START never lifts a hard bounce or complaint.
    await service.client.post(
        "/communication/suppressions",
        json={"channel": "sms", "address": "13900139000", "reason": "complaint"},
        headers=tenant.headers(),
    )
    async with service.db.begin() as session:
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        assert not (await handle_inbound_sms(session, row, "13900139000", "YES")).changed
    # Nor a recorded objection (GDPR Art. 21): YES is a common reply to anything.
    objected = await service.client.delete(
        "/communication/consents/sms/13700137000", headers=tenant.headers()
    )
    assert objected.status_code == 200
    async with service.db.begin() as session:
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        assert not (await handle_inbound_sms(session, row, "13700137000", "YES")).changed
    # Nor one recorded after a STOP of the same number (the suppression takes the firmer reason),
    # nor a tenant's own suppression on top of a STOP.
    for number, firmer in (("13600136000", "objection"), ("13500135000", "manual")):
        async with service.db.begin() as session:
            row = await session.get(Tenant, tenant.tenant_id)
            assert row is not None
            assert (await handle_inbound_sms(session, row, number, "STOP")).changed
        if firmer == "objection":
            answer = await service.client.delete(
                f"/communication/consents/sms/{number}", headers=tenant.headers()
            )
        else:
            answer = await service.client.post(
                "/communication/suppressions",
                json={"channel": "sms", "address": number, "reason": "manual"},
                headers=tenant.headers(),
            )
        assert answer.status_code in (200, 201), answer.text
        async with service.db.begin() as session:
            row = await session.get(Tenant, tenant.tenant_id)
            assert row is not None
            assert not (await handle_inbound_sms(session, row, number, "YES")).changed, firmer
        async with service.db.read() as session:
            reasons = set(
                await session.scalars(
                    select(Suppression.reason).where(Suppression.tenant_id == tenant.tenant_id)
                )
            )
        assert firmer in reasons


# ---- 7 ------------------------------------------------------------------------------------------


async def test_07_marketing_sms_carries_signature_and_opt_out(
    live_service: Service, frozen_clock: list[datetime]
) -> None:
    frozen_clock[0] = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)  # inside the CN and US windows
    tenant = await make_tenant(live_service.db, "Acme", sms_signature="阿克米")
    await opt_in(live_service, tenant, "sms", "13800138000")
    await opt_in(live_service, tenant, "sms", "+14155552671", basis="written")
    created = await bulk(
        live_service,
        tenant,
        channel="sms",
        category="marketing",
        content="Winter sale today",
        recipients=["13800138000", "+14155552671"],
    )

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 2}

    await wait_until(sent)
    import json

    cn, us = (
        json.loads((live_service.outbox / "sms" / f"{i['id']}.json").read_text()) for i in created["items"]
    )
    assert cn["content"] == "【阿克米】Winter sale today回T退订"
    assert us["content"] == "Winter sale today Reply STOP to opt out"


# ---- 8 ------------------------------------------------------------------------------------------


async def test_08_quiet_hours_defer_marketing_sms_until_the_window_opens(
    service: Service, tenant: TenantKeys, frozen_clock: list[datetime]
) -> None:
    await opt_in(service, tenant, "sms", "13800138000")
    await opt_in(service, tenant, "sms", "+14155552671", basis="written")
    frozen_clock[0] = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai, 06:00 in San Francisco
    created = await bulk(
        service,
        tenant,
        channel="sms",
        category="marketing",
        content="Sale",
        recipients=["13800138000", "+14155552671"],
    )
    cn, us = created["items"]
    assert cn["status"] == "deferred" and "2026-11-27T00:00:00Z" in cn["error"]  # 08:00 Shanghai
    assert us["status"] == "deferred" and "2026-11-26T16:00:00Z" in us["error"]  # 08:00 Pacific
    # A verification code is never held back.
    otp = await bulk(
        service,
        tenant,
        channel="sms",
        category="verification",
        content="c {{ code }}",
        variables={"code": "1"},
        recipients=["13800138000"],
    )
    assert otp["items"][0]["status"] == "queued"
    async with service.db.begin() as session:
        claimed = await claim_due(session, "w", 10, utcnow(), timedelta(seconds=30))
    assert [c.category for c in claimed] == ["verification"]
    frozen_clock[0] = datetime(2026, 11, 26, 16, 0, 1, tzinfo=UTC)
    async with service.db.begin() as session:
        claimed = await claim_due(session, "w", 10, utcnow(), timedelta(seconds=30))
    assert [c.id for c in claimed] == [us["id"]]
    frozen_clock[0] = datetime(2026, 11, 27, 0, 0, 1, tzinfo=UTC)
    async with service.db.begin() as session:
        claimed = await claim_due(session, "w", 10, utcnow(), timedelta(seconds=30))
    assert [c.id for c in claimed] == [cn["id"]]


async def test_08_rows_held_for_quiet_hours_rank_spread_by_position(
    service: Service, tenant: TenantKeys, frozen_clock: list[datetime]
) -> None:
    """A bulk held back until the window opens is ranked from that time as a batch due then
    would be (fairness.py): its rows do not all share one rank."""
    from comms.messages.fairness import FAIR_SLICE, FAIR_STEP_MS

    frozen_clock[0] = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai
    created = await bulk(
        service,
        tenant,
        channel="sms",
        category="announcement",
        content="Maintenance tonight",
        recipients=[f"138{i:08d}" for i in range(FAIR_SLICE + 100)],
    )
    async with service.db.read() as session:
        ranks = (
            await session.execute(
                select(Message.queue_rank, func.count())
                .where(Message.batch_id == created["batch_id"], Message.status == "deferred")
                .group_by(Message.queue_rank)
                .order_by(Message.queue_rank)
            )
        ).all()
    opens = int(datetime(2026, 11, 27, 0, 0, tzinfo=UTC).timestamp() * 1000)  # 08:00 Shanghai
    assert ranks == [(opens, FAIR_SLICE), (opens + FAIR_STEP_MS, 100)]


# ---- 10 -----------------------------------------------------------------------------------------


async def test_10_responses_mask_recipients_and_logs_hold_no_pii(
    live_service: Service, live_tenant: TenantKeys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    otp = "918273"
    sms = await bulk(
        live_service,
        live_tenant,
        channel="sms",
        category="verification",
        content="Your code is {{ code }}",
        variables={"code": otp},
        recipients=["13800138000"],
    )
    email = await bulk(
        live_service,
        live_tenant,
        channel="email",
        category="transactional",
        subject="Hi",
        content="Reset with {{ password }}",
        recipients=[{"to": "secret.person@example.com", "variables": {"password": "hunter2"}}],
    )

    async def done() -> bool:
        return await statuses(live_service, sms["batch_id"]) == {"sent": 1} and await statuses(
            live_service, email["batch_id"]
        ) == {"sent": 1}

    await wait_until(done)
    logs = (await live_service.client.get("/communication/logs", headers=live_tenant.headers())).json()
    shown = str(logs) + str(sms) + str(email)
    for raw in ("13800138000", "secret.person", otp, "hunter2"):
        assert raw not in shown
    assert {"138****8000", "s***@example.com"} <= {i["recipient"] for i in logs["items"]}
    lines = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for raw in ("13800138000", "secret.person@example.com", otp, "hunter2", live_tenant.token):
        assert raw not in lines


async def test_10_a_provider_answer_quoting_the_address_is_masked_like_the_recipient(
    service: Service, tenant: TenantKeys
) -> None:
    """Vendors quote the address in their errors ("550 5.1.1 <Ann@Example.com>: ...", "The 'To'
    number +1... is not valid"): the log and the event webhook mask it there too, in any case
    and spelling; pii:read with unmask=true shows the text as stored."""
    from comms.events.service import item_event

    accepted = await bulk(
        service,
        tenant,
        channel="email",
        category="transactional",
        subject="Hi",
        content="Hello",
        recipients=["ann.smith@example.com"],
    )
    log_id = accepted["items"][0]["id"]
    error = "SMTP 550 5.1.1 <Ann.Smith@Example.com>: Recipient address rejected"
    response = "rcpt=ann.smith%40example.com refused"
    async with service.db.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.id == log_id)
            .values(status="failed", error=error, response=response)
        )
    shown = (await service.client.get(f"/communication/logs/{log_id}", headers=tenant.headers())).json()[
        "data"
    ]
    assert shown["error"] == "SMTP 550 5.1.1 <a***@example.com>: Recipient address rejected"
    assert shown["response"] == "rcpt=a***@example.com refused"
    listed = (await service.client.get("/communication/logs", headers=tenant.headers())).json()["items"]
    assert "ann.smith" not in str(listed).lower()
    raw = await service.client.get(
        f"/communication/logs/{log_id}?unmask=true", headers=tenant.headers(tenant.pii_token)
    )
    assert (raw.json()["data"]["error"], raw.json()["data"]["response"]) == (error, response)
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None
    event = item_event(row, "failed", row.error, "smtp", None, utcnow())
    assert event["error"] == shown["error"] and event["recipient"] == "a***@example.com"
    sms_row = Message(
        id="log_x", channel="sms", recipient="+14155550123", batch_id="bat_x", category="marketing"
    )
    for quoted in ("+14155550123", "4155550123", "+1 415-555-0123", "(415) 555-0123", "001 415 555 0123"):
        told = item_event(
            sms_row, "failed", f"The 'To' number {quoted} is not valid", "twilio", None, utcnow()
        )
        assert "555" not in told["error"] and told["error"].endswith("***0123 is not valid"), told
    untouched = "serial 14155550123999 and 94155550123"  # other numbers that merely contain it
    assert item_event(sms_row, "failed", untouched, "twilio", None, utcnow())["error"] == untouched


# ---- 11, 13, 14, 15 -----------------------------------------------------------------------------


async def test_11_a_broken_feedback_report_is_422_not_500(service: Service, tenant: TenantKeys) -> None:
    """Reports quote spam: an unknown charset on the quoted headers, or a Message-ID like <@>,
    made the standard library's parser raise (found by fuzzing). Such a report is not one of a
    message comms sent: 422 in the envelope, nothing changed."""
    head = (
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\r\n--B\r\n"
    )
    bodies = [
        head + b"Content-Type: text/rfc822-headers; charset=bogus\r\n\r\nMessage-ID: <x@y>\r\n\r\n--B--\r\n",
        head + b'Content-Type: text/rfc822-headers; charset=""\r\n\r\nMessage-ID: <x@y>\r\n\r\n--B--\r\n',
        head + b"Content-Type: message/rfc822\r\n\r\nMessage-ID: <@>\r\nSubject: hi\r\n\r\nbody\r\n--B--\r\n",
        head + b"Content-Type: message/rfc822\r\n\r\nMessage-ID: <[@]>\r\n\r\nbody\r\n--B--\r\n",
    ]
    for body in bodies:
        answer = await service.client.post(
            "/communication/complaints/arf",
            content=body,
            headers={**tenant.headers(), "Content-Type": "message/rfc822"},
        )
        assert answer.status_code == 422 and answer.json()["code"] == 422, answer.text
    async with service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0


async def test_11_hard_bounces_and_complaints_suppress_everything_but_codes(
    service: Service, tenant: TenantKeys
) -> None:
    for address, reason in (("bounced@example.com", "hard_bounce"), ("angry@example.com", "complaint")):
        answer = await service.client.post(
            "/communication/suppressions",
            json={"channel": "email", "address": address, "reason": reason},
            headers=tenant.headers(),
        )
        assert answer.status_code == 201 and answer.json()["data"]["scope"] == "all"
    created = await bulk(
        service,
        tenant,
        **marketing_email(category="transactional", recipients=["bounced@example.com", "angry@example.com"]),
    )
    assert [i["error"] for i in created["items"]] == ["recipient address bounced", "recipient complained"]
    listed = (await service.client.get("/communication/suppressions", headers=tenant.headers())).json()
    assert listed["total"] == 2 and all("***" in i["address"] for i in listed["items"])
    other = await make_tenant(service.db, "Other")
    assert (await service.client.get("/communication/suppressions", headers=other.headers())).json()[
        "total"
    ] == 0


async def test_13_erasure_keeps_a_hashed_suppression(service: Service, tenant: TenantKeys) -> None:
    await bulk(service, tenant, **marketing_email(category="transactional"))
    erased = await service.client.post(
        "/communication/erasures",
        json={"channel": "email", "address": "ANN@example.com"},
        headers=tenant.headers(),
    )
    assert erased.status_code == 200 and erased.json()["data"]["deleted_log_items"] == 1
    async with service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Message)) == 0
        rows = (await session.scalars(select(Suppression))).all()
    assert len(rows) == 1 and rows[0].address is None and len(rows[0].address_hash) == 64
    # A later re-import of the address, even with a consent record, does not lift the erasure's
    # do-not-contact entry: only an opt-out of the person's own (unsubscribe, STOP) is lifted by an opt-in.
    await opt_in(service, tenant, "email", "ann@example.com")
    again = await bulk(service, tenant, **marketing_email())
    assert (again["items"][0]["status"], again["items"][0]["error"]) == (
        "suppressed",
        "recipient erased their data",
    )
    async with service.db.read() as session:
        erasures = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "contact.erased")
        )
    assert erasures == 1


async def test_13_erased_address_reimported_without_consent_stays_suppressed(
    service: Service, tenant: TenantKeys
) -> None:
    await service.client.post(
        "/communication/erasures",
        json={"channel": "email", "address": "ann@example.com"},
        headers=tenant.headers(),
    )
    again = await bulk(service, tenant, **marketing_email(category="announcement"))
    assert (again["items"][0]["status"], again["items"][0]["error"]) == (
        "suppressed",
        "recipient erased their data",
    )


async def test_13_erasure_reaches_raw_callbacks_in_the_vendors_spelling(
    service: Service, tenant: TenantKeys
) -> None:
    """Vendors quote a number form-encoded (Twilio, Kannel) or in national form (Aliyun,
    Tencent), in any letter case: the stored raw callbacks go in every spelling (on PostgreSQL
    too, where LIKE is case-sensitive). `_` and `%` in an address are
    literal characters, not wildcards that reach other people's callbacks."""
    from comms.models import ReceiptEvent

    now = utcnow()
    payloads = {
        "twilio": "From=%2B8613800138000&Body=STOP",
        "aliyun": '[{"phone_number":"13800138000","content":"TD"}]',
        "other-number": "From=%2B8613900139000&Body=STOP",
        "ann_b": '{"email":"ann_b@example.com"}',
        "annxb": '{"email":"annxb@example.com"}',
        # in another letter case: the vendor's spelling, an email's or %2b's
        "Ann_B": '{"email":"Ann_B@Example.COM"}',
        "lower-encoded": "From=%2b8613800138000&Body=STOP",
    }
    async with service.db.begin() as session:
        for key, payload in payloads.items():
            session.add(
                ReceiptEvent(
                    id=f"evt_{key}",
                    tenant_id=tenant.tenant_id,
                    account_id="acc_x",
                    provider="test",
                    kind="inbound",
                    event_key=key,
                    payload=payload,
                    received_at=now,
                )
            )
    for channel, address in (("sms", "+8613800138000"), ("email", "ann_b@example.com")):
        erased = await service.client.post(
            "/communication/erasures", json={"channel": channel, "address": address}, headers=tenant.headers()
        )
        assert erased.status_code == 200, erased.text
    async with service.db.read() as session:
        left = set((await session.scalars(select(ReceiptEvent.event_key))).all())
    assert left == {"other-number", "annxb"}


async def test_13_erasure_strikes_the_address_from_a_stored_unmasked_answer(
    service: Service, tenant: TenantKeys
) -> None:
    """A bulk answered with unmask=true keeps that answer a day for its Idempotency-Key: an
    erasure strikes the address out of it, and a retry of the request still replays (it does not
    run, and send, again)."""
    body = {
        "channel": "sms",
        "category": "transactional",
        "content": "x",
        "recipients": ["13800138000", "13900139000"],
    }
    headers = {**tenant.headers(tenant.pii_token), "Idempotency-Key": "order-77"}
    first = await service.client.post("/communication/bulk?unmask=true", json=body, headers=headers)
    assert first.status_code == 202 and "+8613800138000" in first.text, first.text
    erased = await service.client.post(
        "/communication/erasures", json={"channel": "sms", "address": "13800138000"}, headers=tenant.headers()
    )
    assert erased.status_code == 200, erased.text
    replay = await service.client.post("/communication/bulk?unmask=true", json=body, headers=headers)
    assert replay.status_code == 202, replay.text
    assert "13800138000" not in replay.text and "+8613900139000" in replay.text
    assert [i["recipient"] for i in replay.json()["items"]] == ["[erased]", "+8613900139000"]
    assert replay.json()["batch_id"] == first.json()["batch_id"]


async def test_an_address_with_a_slash_can_be_unsuppressed_and_its_consent_withdrawn(
    service: Service, tenant: TenantKeys
) -> None:
    """ "a/b@example.com" is a valid address (RFC 5322 allows "/" in the local part): its path
    segment is sent encoded (%2F) and still names it."""
    address = "a/b@example.com"
    created = await service.client.post(
        "/communication/suppressions",
        json={"channel": "email", "address": address, "reason": "unsubscribed"},
        headers=tenant.headers(),
    )
    assert created.status_code == 201, created.text
    listed = await service.client.get(
        f"/communication/suppressions?address={quote(address)}", headers=tenant.headers()
    )
    assert listed.json()["total"] == 1
    removed = await service.client.delete(
        f"/communication/suppressions/email/{quote(address, safe='@')}", headers=tenant.headers()
    )
    assert removed.status_code == 200, removed.text
    assert (await service.client.get("/communication/suppressions", headers=tenant.headers())).json()[
        "total"
    ] == 0
    await opt_in(service, tenant, "email", address)
    withdrawn = await service.client.delete(
        f"/communication/consents/email/{quote(address, safe='@')}", headers=tenant.headers()
    )
    assert withdrawn.status_code == 200, withdrawn.text
    latest = (
        await service.client.get(
            f"/communication/consents?address={quote(address)}", headers=tenant.headers()
        )
    ).json()
    assert latest["items"][0]["status"] == "opted_out"


async def test_the_law_is_the_floor_of_a_tenants_consent_policy(service: Service, tenant: TenantKeys) -> None:
    """ePrivacy in the EEA and UK (soft opt-in at least), consent in China: a tenant may require
    more, never less; a weaker policy stored before this rule is read as the law's."""
    for weaker, field in (
        ({"EU": "none"}, "consent_policy.EU"),
        ({"de": "none"}, "consent_policy.DE"),
        ({"GB": "none"}, "consent_policy.GB"),
        ({"CN": "soft_opt_in"}, "consent_policy.CN"),
    ):
        refused = await service.client.put(
            "/communication/settings", json={"consent_policy": weaker}, headers=tenant.headers()
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == field
    for stronger in (
        {"EU": "opt_in"},
        {"US": "opt_in"},
        {"*": "soft_opt_in"},
        {"CN": "opt_in", "DE": "soft_opt_in"},
    ):
        allowed = await service.client.put(
            "/communication/settings", json={"consent_policy": stronger}, headers=tenant.headers()
        )
        assert allowed.status_code == 200, allowed.text
    async with service.db.begin() as session:
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        row.settings = {**row.settings, "consent_policy": {"EU": "none", "CN": "none"}}
    sms = {"channel": "sms", "category": "marketing", "content": "Sale"}
    for number in ("+4915112345678", "13800138000"):
        item = (await bulk(service, tenant, **sms, recipients=[number]))["items"][0]
        assert (item["status"], item["error"]) == ("rejected", "no marketing consent"), number


async def test_14_consent_evidence_and_append_only_audit(service: Service, tenant: TenantKeys) -> None:
    await opt_in(service, tenant, "email", "ann@example.com")
    listed = (
        await service.client.get(
            "/communication/consents?channel=email&address=ann@example.com", headers=tenant.headers()
        )
    ).json()
    record = listed["items"][0]
    assert (
        record["status"] == "opted_in" and record["basis"] == "opt_in" and record["source"] == "signup-form"
    )
    # The channel may be left out: an address with an "@" is an email address (as in /logs).
    by_address = await service.client.get(
        "/communication/consents?address=Ann@Example.com", headers=tenant.headers()
    )
    assert by_address.status_code == 200 and by_address.json()["items"] == listed["items"]
    assert record["wording_version"] == "v3" and record["created_at"]
    withdrawn = await service.client.delete(
        "/communication/consents/email/ann@example.com", headers=tenant.headers()
    )
    assert withdrawn.status_code == 200
    blocked = await bulk(service, tenant, **marketing_email())
    assert blocked["items"][0]["status"] == "suppressed"  # objection is absolute and immediate (Art. 21)
    await service.client.get("/communication/logs?unmask=true", headers=tenant.headers(tenant.pii_token))
    audit = (
        await service.client.get(
            "/communication/audit?page_size=50", headers=tenant.headers(tenant.pii_token)
        )
    ).json()
    actions = [e["action"] for e in audit["items"]]
    for action in ("consent.recorded", "suppression.added", "bulk.submitted", "pii.revealed"):
        assert action in actions, actions
    for method in ("put", "delete", "patch"):
        answer = await service.client.request(
            method.upper(), "/communication/audit", headers=tenant.headers()
        )
        assert answer.status_code == 405
    assert (
        await service.client.get("/communication/audit", headers=tenant.headers(tenant.read_only_token))
    ).status_code == 403


async def test_15_promo_templates_get_marketing_rules(service: Service, tenant: TenantKeys) -> None:
    created = await service.client.post(
        "/communication/templates",
        json={
            "code": "notice",
            "channel": "sms",
            "category": "transactional",
            "content": "Your order shipped. 10% off next!",
            "contains_promo": True,
        },
        headers=tenant.headers(),
    )
    assert created.status_code == 201
    sent = await bulk(service, tenant, channel="sms", template="notice", recipients=["13800138000"])
    assert sent["items"][0]["category"] == "marketing" and sent["items"][0]["error"] == "no marketing consent"


# ---- flow limits, retention, end to end -------------------------------------------------------------


async def test_verification_sms_flow_limits_per_number(
    service: Service, tenant: TenantKeys, frozen_clock: list[datetime]
) -> None:
    body = verification_sms()
    assert (await bulk(service, tenant, **body))["items"][0]["status"] == "queued"
    second = (await bulk(service, tenant, **body))["items"][0]
    assert (second["status"], second["error"]) == ("rejected", "rate limited")  # 1 per minute
    for minute in range(1, 5):
        frozen_clock[0] += timedelta(minutes=1, seconds=1)
        assert (await bulk(service, tenant, **body))["items"][0]["status"] == "queued", minute
    frozen_clock[0] += timedelta(minutes=1, seconds=1)
    assert (await bulk(service, tenant, **body))["items"][0]["error"] == "rate limited"  # 5 per hour
    other = (await bulk(service, tenant, **{**body, "recipients": ["13900139000"]}))["items"][0]
    assert other["status"] == "queued"


async def test_verification_flow_limit_holds_for_requests_at_the_same_instant(
    service: Service, tenant: TenantKeys
) -> None:
    """Twelve requests for one number at once (and a larger one naming it too): one code is
    accepted, every other is rate limited, on PostgreSQL (where the counts would race) as on
    SQLite."""
    body = verification_sms()
    many = {**body, "recipients": ["13800138000", *(f"139001{i:05d}" for i in range(40))]}
    answers = await asyncio.gather(
        *(
            service.client.post("/communication/bulk", json=b, headers=tenant.headers())
            for b in [body] * 12 + [many]
        )
    )
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
    async with service.db.read() as session:
        rows = (
            await session.execute(
                select(Message.status, func.count())
                .where(Message.recipient_key == "+8613800138000")
                .group_by(Message.status)
            )
        ).all()
    assert dict(rows) == {"queued": 1, "rejected": 12}


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite writes one at a time: no lock to wait for
async def test_a_code_waits_for_another_request_for_its_number_and_a_dry_run_takes_no_lock(
    service: Service, tenant: TenantKeys
) -> None:
    from comms.compliance import repository

    body = verification_sms()
    params = {"tenant": tenant.tenant_id, "keys": ["+8613800138000"], "mask": repository.LOCK_BUCKETS - 1}
    async with service.db.begin() as holder:  # another request for that number, not yet committed
        await holder.execute(repository._LOCK_NUMBERS, params)
        dry = await service.client.post(
            "/communication/bulk", json={**body, "dry_run": True}, headers=tenant.headers()
        )
        assert dry.status_code == 200 and dry.json()["items"][0]["status"] == "queued"
        other = await make_tenant(service.db, "Other")  # another tenant's codes do not wait
        assert (
            await service.client.post("/communication/bulk", json=body, headers=other.headers())
        ).status_code == 202
        waiting = asyncio.create_task(
            service.client.post("/communication/bulk", json=body, headers=tenant.headers())
        )

        async def blocked() -> bool:  # its transaction waits for the holder's lock
            async with service.db.read() as session:
                found = await session.scalar(
                    select(func.count())
                    .select_from(text("pg_locks"))
                    .where(text("locktype = 'advisory' AND NOT granted"))
                )
            return bool(found)

        await wait_until(blocked)
        assert not waiting.done()
    accepted = await waiting
    assert accepted.status_code == 202 and accepted.json()["items"][0]["status"] == "queued"
    async with service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Message)) == 2


async def test_the_purge_works_in_chunks_walking_on_from_the_last(
    service: Service, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content due for purging goes PURGE_CHUNK rows per statement (each inside the statement
    timeout), every due row once, however many there are; rows not yet due stay."""
    from comms.compliance import retention

    monkeypatch.setattr(retention, "PURGE_CHUNK", 3)
    created = await bulk(
        service,
        tenant,
        channel="sms",
        category="transactional",
        content="Parcel {{ p }}",
        recipients=[{"to": f"138001380{i:02d}", "variables": {"p": f"PX-{i}"}} for i in range(8)],
    )
    ids = [i["id"] for i in created["items"]]
    async with service.db.begin() as session:  # as if sent: finished, with content
        await session.execute(
            update(Message).where(Message.id.in_(ids)).values(status="sent", content="Parcel PX")
        )
        await session.execute(  # the last one is recent: not due
            update(Message).where(Message.id == ids[-1]).values(created_at=utcnow() + timedelta(days=30))
        )
    async with service.db.begin() as session:
        assert await purge_expired_content(session, utcnow() + timedelta(days=31)) == 7
    async with service.db.read() as session:
        rows = [await session.get(Message, i) for i in ids]
    assert [r.content is None and r.variables is None for r in rows if r is not None] == [True] * 7 + [False]


async def test_content_is_purged_after_retention(live_service: Service, live_tenant: TenantKeys) -> None:
    created = await bulk(
        live_service,
        live_tenant,
        channel="sms",
        category="transactional",
        content="Parcel {{ p }}",
        recipients=[{"to": "13800138000", "variables": {"p": "PX-9"}}],
    )
    static = await bulk(
        live_service,
        live_tenant,
        channel="sms",
        category="transactional",
        content="Ann Lee: your test result is ready",
        recipients=["13800138001"],
    )

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 1} and await statuses(
            live_service, static["batch_id"]
        ) == {"sent": 1}

    await wait_until(sent)
    async with live_service.db.begin() as session:
        assert await purge_expired_content(session, utcnow() + timedelta(days=29)) == 0
    async with live_service.db.begin() as session:
        assert await purge_expired_content(session, utcnow() + timedelta(days=31)) == 2
    async with live_service.db.read() as session:
        row = await session.get(Message, created["items"][0]["id"])
    assert row is not None and row.content is None and row.variables is None and row.status == "sent"
    # The log shows no content either: a body without variables is not rendered again from the
    # batch, whose own text is kept.
    for item in (created["items"][0], static["items"][0]):
        shown = await live_service.client.get(
            f"/communication/logs/{item['id']}", headers=live_tenant.headers()
        )
        assert shown.json()["data"]["content"] is None, shown.json()


async def test_recipients_are_anonymized_after_log_retention(
    live_service: Service, live_tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """P4, second half: after log_retention_days a finished log item keeps only a masked recipient
    and a salted hash of it; its content goes, provider text quoting the address is scrubbed. An
    item not finished yet (scheduled far ahead) keeps its recipient until it is; an erasure still
    finds the anonymized items."""
    for bad in (0, 3651, "a year"):
        refused = await live_service.client.put(
            "/communication/settings", json={"log_retention_days": bad}, headers=live_tenant.headers()
        )
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "log_retention_days"
    changed = await live_service.client.put(
        "/communication/settings", json={"log_retention_days": 10}, headers=live_tenant.headers()
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["data"]["log_retention_days"] == 10
    sms = await bulk(
        live_service, live_tenant, channel="sms", category="transactional", content="Parcel {{ p }}",
        recipients=[{"to": "13800138000", "variables": {"p": "PX-9"}}], user_id="usr_ann",
    )  # fmt: skip
    mail = await bulk(live_service, live_tenant, **marketing_email(category="transactional"))
    later = await bulk(
        live_service, live_tenant, channel="sms", category="transactional", content="Reminder",
        recipients=["13900139000", "13700137000"], send_at=isoformat(utcnow() + timedelta(days=60)),
        user_id="usr_bob",
    )  # fmt: skip

    async def sent() -> bool:
        return all([await statuses(live_service, b["batch_id"]) == {"sent": 1} for b in (sms, mail)])

    await wait_until(sent)
    sms_id, mail_id = sms["items"][0]["id"], mail["items"][0]["id"]
    async with live_service.db.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.id == sms_id)
            .values(response="accepted 8613800138000 (13800138000)")
        )
        salt = (await session.get(Tenant, live_tenant.tenant_id)).hash_salt  # type: ignore[union-attr]
        await session.execute(update(Message).where(Message.id == sms_id).values(status="failed", error="x"))
        await session.execute(
            update(Message).where(Message.id == mail_id).values(response="250 ok for <Ann@Example.COM>")
        )
        # One item of the later batch is finished (failed), the other still to be sent.
        done_early = later["items"][1]["id"]
        await session.execute(update(Message).where(Message.id == done_early).values(status="failed"))
    anonymizer = RecipientAnonymizer(live_service.db)
    assert await anonymizer.run(utcnow() + timedelta(days=9)) == 0
    # One item per chunk, no time: each round does one chunk and the next goes on from there.
    monkeypatch.setattr(retention, "ANONYMIZE_CHUNK", 1)
    runs = [await anonymizer.run(utcnow() + timedelta(days=11), budget_seconds=0) for _ in range(5)]
    assert runs == [1, 1, 0, 1, 0]  # past the unfinished item, in the round after it
    async with live_service.db.read() as session:
        rows = {m.id: m for m in (await session.scalars(select(Message))).all()}
    texted, mailed, waiting = rows[sms_id], rows[mail_id], rows[later["items"][0]["id"]]
    assert (texted.recipient, mailed.recipient) == ("138****8000", "a***@example.com")
    assert texted.recipient_key == "anon:" + address_hash(salt, "sms", "+8613800138000")
    assert mailed.recipient_key == "anon:" + address_hash(salt, "email", "ann@example.com")
    assert texted.content is None and mailed.content is None and texted.status == "failed"
    assert texted.response == "accepted 138****8000 (138****8000)"
    assert mailed.response == "250 ok for <a***@example.com>"
    assert (waiting.recipient, waiting.status) == ("+8613900139000", "scheduled")  # still to be sent
    async with live_service.db.read() as session:
        batches = dict((await session.execute(select(Batch.id, Batch.user_id))).all())
    assert (texted.user_id, batches[sms["batch_id"]]) == (
        None,
        None,
    )  # the person's id in the tenant goes too
    # The batch keeps it while an item of it is still to go; the finished item loses it already.
    assert (waiting.user_id, batches[later["batch_id"]], rows[done_early].user_id) == (
        "usr_bob",
        "usr_bob",
        None,
    )
    for unmask, token in ((False, None), (True, live_tenant.pii_token)):
        shown = await live_service.client.get(
            f"/communication/logs/{sms_id}?unmask={str(unmask).lower()}", headers=live_tenant.headers(token)
        )
        assert shown.status_code == 200 and shown.json()["data"]["recipient"] == "138****8000"
    found = await live_service.client.get(
        "/communication/logs?recipient=13800138000", headers=live_tenant.headers()
    )
    assert found.json()["total"] == 0
    # A retry has no address left to send the failed item to: it stays as it is.
    await live_service.client.post(
        f"/communication/batches/{sms['batch_id']}/retry", headers=live_tenant.headers()
    )
    assert await statuses(live_service, sms["batch_id"]) == {"failed": 1}
    # The unsubscribe link of an old message still reaches the person (by the salted hash).
    token = UnsubscribeSigner(live_service.settings.resolved_secret_key).token(mail_id)
    unsubscribed = await live_service.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert unsubscribed.status_code == 200
    again = await bulk(live_service, live_tenant, **marketing_email(category="announcement"))
    assert (again["items"][0]["status"], again["items"][0]["error"]) == (
        "suppressed",
        "recipient unsubscribed",
    )
    # Once the scheduled item is done, a later round takes it (it starts where that item was).
    cancelled = await live_service.client.post(
        f"/communication/batches/{later['batch_id']}/cancel", headers=live_tenant.headers()
    )
    assert cancelled.status_code == 200, cancelled.text
    # (with the suppressed announcement above, which is as old as the others 11 days from now)
    assert await anonymizer.run(utcnow() + timedelta(days=11)) == 2
    assert await anonymizer.run(utcnow() + timedelta(days=11)) == 0
    erased = await live_service.client.post(
        "/communication/erasures",
        json={"channel": "sms", "address": "13800138000"},
        headers=live_tenant.headers(),
    )
    assert erased.status_code == 200 and erased.json()["data"]["deleted_log_items"] == 1


async def test_unsubscribe_end_to_end_from_the_eml(live_service: Service, live_tenant: TenantKeys) -> None:
    await opt_in(live_service, live_tenant, "email", "ann@example.com")
    created = await bulk(live_service, live_tenant, **marketing_email())

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 1}

    await wait_until(sent)
    url = eml(live_service, created["items"][0]["id"])["List-Unsubscribe"].strip("<>")
    path = url.removeprefix("https://comms.test")
    answer = await live_service.client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    nxt = await bulk(live_service, live_tenant, **marketing_email())
    assert (nxt["items"][0]["status"], nxt["items"][0]["error"]) == ("suppressed", "recipient unsubscribed")


def arf(original: bytes, feedback_type: str = "abuse", part: str = "message/rfc822") -> bytes:
    """A feedback report as a mailbox provider's feedback loop mails it (RFC 5965), the recipient
    redacted as many providers do."""
    return (
        b"From: staff@fbl.mailbox.example\r\nTo: fbl@acme.example\r\nSubject: FW: complaint\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="arf-b"\r\n\r\n'
        b"--arf-b\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        b"--arf-b\r\nContent-Type: message/feedback-report\r\n\r\n"
        b"Feedback-Type: " + feedback_type.encode() + b"\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\n"
        b"Original-Rcpt-To: <redacted@example.com>\r\n\r\n"
        b"--arf-b\r\nContent-Type: " + part.encode() + b"\r\n\r\n" + original + b"\r\n--arf-b--\r\n"
    )


async def test_11_feedback_loop_reports_suppress_the_complainer_and_count(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    """M6: an ARF complaint from a mailbox provider, handed to POST /communication/complaints/arf,
    finds the message by its signed unsubscribe token (marketing) or its Message-ID
    (transactional: headers only), suppresses the recipient for every category but verification,
    and counts as a complaint. A not-spam report changes nothing; nor does any bad report."""
    await opt_in(live_service, live_tenant, "email", "ann@example.com")
    promo = await bulk(live_service, live_tenant, **marketing_email())
    receipt = await bulk(
        live_service, live_tenant, **marketing_email(category="transactional", recipients=["bob@example.com"])
    )

    async def sent() -> bool:
        return all([await statuses(live_service, b["batch_id"]) == {"sent": 1} for b in (promo, receipt)])

    await wait_until(sent)
    promo_id, receipt_id = promo["items"][0]["id"], receipt["items"][0]["id"]
    promo_eml = (live_service.outbox / "email" / f"{promo_id}.eml").read_bytes()
    receipt_headers = f"Message-ID: <{receipt_id}@acme.example>\r\nFrom: news@acme.example\r\n".encode()
    headers = {**live_tenant.headers(), "Content-Type": "message/rfc822"}

    async def send(body: bytes, **extra: str) -> Any:
        return await live_service.client.post(
            "/communication/complaints/arf", content=body, headers={**headers, **extra}
        )

    async def state() -> tuple[list[tuple[str | None, str, str, str]], int]:
        async with live_service.db.read() as session:
            rows = (await session.scalars(select(Suppression))).all()
            complaints = await session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "complaint.received")
            )
        return sorted((r.address, r.reason, r.scope, r.source) for r in rows), int(complaints or 0)

    bad = [
        (await send(arf(promo_eml), **{"Content-Type": "application/json"}), 400),
        (await send(arf(promo_eml + b"x" * (10 * 1024 * 1024))), 413),
        (await send(promo_eml), 422),  # the message itself, not a report about it
        (await send(arf(promo_eml, "spam!")), 422),
        (await send(arf(b"Subject: hello\r\n", part="text/rfc822-headers")), 422),  # not one of ours
        (
            await send(
                arf(b"Message-ID: <log_" + b"0" * 32 + b"@acme.example>\r\n", part="text/rfc822-headers")
            ),
            404,
        ),
    ]
    assert [(answer.status_code, answer.json()["code"]) for answer, _ in bad] == [
        (code, code) for _, code in bad
    ]
    assert "report-type=feedback-report" in bad[2][0].json()["errors"][0]["message"]
    assert await state() == ([], 0)
    not_spam = await send(arf(promo_eml, "not-spam"))
    assert not_spam.status_code == 200 and not_spam.json()["data"]["complaint"] is False
    assert not_spam.json()["data"]["duplicate"] is False
    assert await state() == ([], 0)

    by_token = await send(arf(promo_eml))
    assert by_token.status_code == 200, by_token.text
    assert by_token.json()["data"] == {
        "log_id": promo_id, "feedback_type": "abuse", "found_by": "list-unsubscribe",
        "address": "a***@example.com", "complaint": True, "duplicate": False,
    }  # fmt: skip
    by_id = await send(arf(receipt_headers, part="text/rfc822-headers"))
    assert by_id.status_code == 200 and by_id.json()["data"]["found_by"] == "message-id"
    assert await state() == (
        [
            ("ann@example.com", "complaint", "all", "feedback_loop"),
            ("bob@example.com", "complaint", "all", "feedback_loop"),
        ],
        2,
    )
    again = await send(arf(promo_eml))  # the same report delivered twice: counted once
    assert again.status_code == 200 and again.json()["data"]["duplicate"] is True
    assert (await state())[1] == 2
    other = await make_tenant(live_service.db, "Other")
    foreign = await live_service.client.post(
        "/communication/complaints/arf",
        content=arf(promo_eml),
        headers={**other.headers(), "Content-Type": "message/rfc822"},
    )
    assert foreign.status_code == 404
    nxt = await bulk(live_service, live_tenant, **marketing_email(category="transactional"))
    assert nxt["items"][0]["status"] == "suppressed"


async def test_11_a_complaint_about_one_message_counts_once_whoever_reports_it(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink, account: str
) -> None:
    """The provider that carried an email reports its recipient's complaint, then the mailbox
    provider's feedback loop reports the same one, as abuse and as fraud: one complaint in the
    rate. An SMS account's callback naming that email is not taken at all."""
    mail_gw = await add_account(live_service, live_tenant, sink.url, channel="email", name="mail-gw")
    mail = await bulk(
        live_service, live_tenant, **marketing_email(category="transactional", recipients=["bob@example.com"])
    )
    log_id = mail["items"][0]["id"]
    await wait_until(lambda: _is(live_service, mail["batch_id"], {"sent": 1}))

    async def complaints() -> int:
        async with live_service.db.read() as session:
            found = await session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "complaint.received")
            )
        return int(found or 0)

    event = {"event_id": "c1", "id": log_id, "status": "delivered", "bounce": "complaint"}
    for on in (account, mail_gw["id"]):  # the SMS account first: not its message
        body, headers = signed({"events": [event]})
        pushed = await live_service.client.post(
            f"/webhooks/webhook/{on}/status", content=body, headers=headers
        )
        assert pushed.status_code == 200, pushed.text
        assert await complaints() == (0 if on == account else 1)
    report_of = f"Message-ID: <{log_id}@acme.example>\r\nFrom: news@acme.example\r\n".encode()
    for feedback_type in ("abuse", "fraud"):
        answer = await live_service.client.post(
            "/communication/complaints/arf",
            content=arf(report_of, feedback_type, part="text/rfc822-headers"),
            headers={**live_tenant.headers(), "Content-Type": "message/rfc822"},
        )
        assert answer.status_code == 200 and answer.json()["data"]["complaint"] is True, answer.text
    assert await complaints() == 1
    async with live_service.db.read() as session:
        suppressed = (await session.scalars(select(Suppression))).all()
    assert [(s.address, s.reason) for s in suppressed] == [("bob@example.com", "complaint")]


async def _is(service: Service, batch_id: str, expected: dict[str, int]) -> bool:
    return await statuses(service, batch_id) == expected


async def test_an_old_consent_synced_again_does_not_undo_an_unsubscribe(
    service: Service, tenant: TenantKeys
) -> None:
    """A person unsubscribes; the tenant's CRM then syncs its consent records again. An opt-in
    lifts the person's own opt-out only when collected after it (`collected_at`); one without
    that time, or collected before, is recorded as evidence and the opt-out stays."""
    await opt_in(service, tenant, "email", "ann@example.com")
    unsubscribed = await service.client.post(
        "/communication/suppressions",
        json={"channel": "email", "address": "ann@example.com", "reason": "unsubscribed"},
        headers=tenant.headers(),
    )
    assert unsubscribed.status_code == 201
    later = utcnow() + timedelta(seconds=2)
    for extra, lifted in (
        ({}, False),  # no collection time: an import, not a new consent
        ({"collected_at": isoformat(utcnow() - timedelta(days=90))}, False),  # the old record again
    ):
        answer = await service.client.post(
            "/communication/consents",
            json={
                "channel": "email",
                "address": "ann@example.com",
                "status": "opted_in",
                "basis": "opt_in",
                **extra,
            },
            headers=tenant.headers(),
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["data"]["opt_out_lifted"] is lifted
        item = (await bulk(service, tenant, **marketing_email()))["items"][0]
        assert item["status"] == "suppressed"
    future = await service.client.post(
        "/communication/consents",
        json={"channel": "email", "address": "ann@example.com", "status": "opted_in", "basis": "opt_in",
              "collected_at": isoformat(utcnow() + timedelta(days=1))},
        headers=tenant.headers(),
    )  # fmt: skip
    assert future.status_code == 422 and future.json()["errors"][0]["field"] == "collected_at"
    # The signup form, after the unsubscribe (a few seconds on: times are sent to the second).
    fresh = await service.client.post(
        "/communication/consents",
        json={"channel": "email", "address": "ann@example.com", "status": "opted_in", "basis": "opt_in",
              "collected_at": isoformat(later)},
        headers=tenant.headers(),
    )  # fmt: skip
    assert fresh.status_code == 201 and fresh.json()["data"]["opt_out_lifted"] is True
    assert fresh.json()["data"]["collected_at"] == isoformat(later)
    item = (await bulk(service, tenant, **marketing_email()))["items"][0]
    assert item["status"] == "queued"

    # A history synced in order, months later: an opt-out dated January, an opt-in dated March.
    # The opt-out is dated as given, so the later opt-in lifts it.
    async def consent(status: str, when: datetime, **extra: Any) -> Any:
        return await service.client.post(
            "/communication/consents",
            json={"channel": "email", "address": "bob@example.com", "status": status,
                  "collected_at": isoformat(when), **extra},
            headers=tenant.headers(),
        )  # fmt: skip

    january, march = utcnow() - timedelta(days=300), utcnow() - timedelta(days=240)
    assert (await consent("opted_out", january)).status_code == 201
    lifted = await consent("opted_in", march, basis="opt_in")
    assert lifted.json()["data"]["opt_out_lifted"] is True
    # An opt-out after it (a repeat one included) makes the opt-in older again.
    assert (await consent("opted_out", march + timedelta(days=1))).status_code == 201
    assert (await consent("opted_out", march + timedelta(days=30))).status_code == 201
    between = await consent("opted_in", march + timedelta(days=10), basis="opt_in")
    assert between.json()["data"]["opt_out_lifted"] is False
    ancient = await consent("opted_in", datetime(1, 1, 1, tzinfo=UTC), basis="opt_in")
    assert ancient.status_code == 422 and ancient.json()["errors"][0]["field"] == "collected_at"


async def test_03_marketing_email_without_opt_in_needs_an_ad_disclosure(service: Service) -> None:
    # A US tenant: email marketing is opt-out there, so no consent is needed, but then CAN-SPAM
    # wants the message to say it is an advertisement (C3).
    plain = await make_tenant(service.db, "Shop", "US")
    item = (await bulk(service, plain, **marketing_email()))["items"][0]
    assert (item["status"], item["error"].split(":")[0]) == ("rejected", "no ad disclosure")
    await opt_in(service, plain, "email", "ann@example.com")  # opted in: the disclosure is waived
    assert (await bulk(service, plain, **marketing_email()))["items"][0]["status"] == "queued"
    disclosed = await make_tenant(service.db, "Ads", "US", ad_disclosure="This is an advertisement.")
    assert (await bulk(service, disclosed, **marketing_email()))["items"][0]["status"] == "queued"


async def test_c10_marketing_to_a_wireless_carrier_domain_needs_express_authorization(
    service: Service, tmp_path: Path
) -> None:
    """47 CFR 64.3100: marketing email to an FCC-listed wireless domain (it reaches a phone) is
    rejected without an opted_in consent of basis opt_in, even for a US tenant with an ad
    disclosure, where other addresses need no consent at all. Sub-domains count; parents and
    other categories do not. The operator's copy of the FCC list adds domains."""
    tenant = await make_tenant(service.db, "Ads", "US", ad_disclosure="This is an advertisement.")
    recipients = ["ann@vtext.com", "bob@X.TMOMail.net", "cat@att.net", "dan@example.com"]
    items = (await bulk(service, tenant, **marketing_email(recipients=recipients)))["items"]
    assert [(i["status"], (i["error"] or "").split(":")[0]) for i in items] == [
        ("rejected", "wireless carrier domain"),
        ("rejected", "wireless carrier domain"),
        ("queued", ""),
        ("queued", ""),
    ]
    receipt = await bulk(service, tenant, **marketing_email(category="transactional", recipients=recipients))
    assert {i["status"] for i in receipt["items"]} == {"queued"}
    await opt_in(
        service,
        tenant,
        "email",
        "eve@vtext.com",
        basis="soft_opt_in",
        source="sale",
        collected_with_optout=True,
    )
    await opt_in(service, tenant, "email", "ann@vtext.com")
    items = (await bulk(service, tenant, **marketing_email(recipients=["eve@vtext.com", "ann@vtext.com"])))[
        "items"
    ]
    assert [i["status"] for i in items] == ["rejected", "queued"]
    listed = tmp_path / "fcc-wireless-domains.txt"
    listed.write_text(
        "# FCC Wireless Domain Names\nsms.carrier.example\n\nMMS.Carrier.Example.  # with a dot\n"
    )
    try:
        assert wireless.use_list_file(listed) == len(wireless.BUILT_IN) + 2
        items = (await bulk(service, tenant, **marketing_email(recipients=["fay@mms.carrier.example"])))[
            "items"
        ]
        assert items[0]["status"] == "rejected"
        listed.write_text("sms.carrier.example\nnot a domain\n")
        with pytest.raises(ValueError, match=re.escape("fcc-wireless-domains.txt:2: not a domain name")):
            wireless.use_list_file(listed)
    finally:
        wireless.use_list_file(None)
    assert not wireless.is_wireless_domain("mms.carrier.example")


async def test_11_complaint_rate_breaker_pauses_marketing_email(service: Service) -> None:
    from sqlalchemy import update

    from comms.compliance import reputation

    tenant = await make_tenant(service.db, "Shop", complaint_rate_min_volume=10)
    receipts = await bulk(
        service,
        tenant,
        **marketing_email(category="transactional", recipients=[f"buyer{i}@example.com" for i in range(10)]),
    )
    async with service.db.begin() as session:
        await session.execute(
            update(Message).where(Message.batch_id == receipts["batch_id"]).values(status="sent")
        )
    await opt_in(service, tenant, "email", "ann@example.com")
    reputation.forget(tenant.tenant_id)
    assert (await bulk(service, tenant, **marketing_email()))["items"][0][
        "status"
    ] == "queued"  # 0 complaints
    answer = await service.client.post(
        "/communication/suppressions",
        json={"channel": "email", "address": "buyer3@example.com", "reason": "complaint"},
        headers=tenant.headers(),
    )
    assert answer.status_code == 201
    reputation.forget(tenant.tenant_id)
    paused = await bulk(service, tenant, 422, **marketing_email())  # 1 complaint in 10 sent: 10% >= 0.2%
    assert "marketing_paused" in paused["errors"][0]["message"]
    metrics_text = (await service.client.get("/metrics")).text
    assert f'comms_tenant_complaint_rate{{tenant="{tenant.tenant_id}"}} 0.1' in metrics_text
    # Transactional mail is not subscription mail: it still goes out.
    assert (await bulk(service, tenant, **marketing_email(category="transactional")))["items"][0][
        "status"
    ] == "queued"
    # Complaints are events: deleting the suppression does not take the complaint back, and a
    # complaint from an address that had unsubscribed earlier counts too.
    deleted = await service.client.delete(
        "/communication/suppressions/email/buyer3@example.com", headers=tenant.headers()
    )
    assert deleted.status_code in (200, 204), deleted.text
    reputation.forget(tenant.tenant_id)
    await bulk(service, tenant, 422, **marketing_email())
    for reason in ("unsubscribed", "complaint"):
        await service.client.post(
            "/communication/suppressions",
            json={"channel": "email", "address": "buyer4@example.com", "reason": reason},
            headers=tenant.headers(),
        )
    reputation.forget(tenant.tenant_id)
    async with service.db.read() as session:
        assert (await reputation.email_reputation(session, tenant.tenant_id, utcnow())).complaints == 2


# ---- M1: the mailto: unsubscribe --------------------------------------------------------------------

MAILTO = re.compile(r"^<(https://comms\.test/u/log_[^>]+)>, <mailto:(unsub\+[^>@]+@unsub\.acme\.example)>$")


async def test_04_mailto_list_unsubscribe_and_the_mail_to_it_suppresses(live_service: Service) -> None:
    tenant = await make_tenant(live_service.db, "Acme", unsubscribe_mailto_domain="Unsub.Acme.Example.")
    for address in ("ann@example.com", "bob@example.com"):
        await opt_in(live_service, tenant, "email", address)
    created = await bulk(
        live_service, tenant, **marketing_email(recipients=["ann@example.com", "bob@example.com"])
    )

    async def sent() -> bool:
        return await statuses(live_service, created["batch_id"]) == {"sent": 2}

    await wait_until(sent)
    ann, bob = (eml(live_service, item["id"]) for item in created["items"])
    (header,) = ann.get_all("List-Unsubscribe")
    match = MAILTO.match(header)  # the HTTPS URI first, then the mailto (RFC 2369, RFC 8058)
    assert match is not None, header
    assert header.count("https://") == 1 and ann["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    mailbox = match.group(2)
    assert len(mailbox.split("@")[0]) <= 64  # a valid local part
    assert mailbox != MAILTO.match(bob["List-Unsubscribe"]).group(2)  # type: ignore[union-attr]

    async def suppressions() -> list[tuple[str, str]]:
        async with live_service.db.read() as session:
            rows = (await session.scalars(select(Suppression))).all()
        return sorted((r.address or "", r.source) for r in rows)

    url = "/communication/unsubscribe/mailto"
    # Bad inputs change nothing: not an unsubscribe address, a forged token, no scope, another tenant.
    local, domain = mailbox.split("@")
    forged = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"  # one letter of the signature
    other = await make_tenant(live_service.db, "Other")
    for body, headers, code in (
        ({"recipient": "ann@example.com"}, tenant.headers(), 422),
        ({"recipient": mailbox, "sender": "not an address"}, tenant.headers(), 422),
        ({"recipient": forged}, tenant.headers(), 404),
        ({"recipient": mailbox}, tenant.headers(tenant.read_only_token), 403),
        ({"recipient": mailbox}, other.headers(), 404),
        ({"recipient": mailbox, "extra": 1}, tenant.headers(), 422),
    ):
        answer = await live_service.client.post(url, json=body, headers=headers)
        assert answer.status_code == code, (body, answer.text)
        assert answer.json()["code"] == code and answer.json()["message"]
    bad_json = await live_service.client.post(
        url, content=b"{", headers={**tenant.headers(), "Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert await suppressions() == []

    # The notification of an inbound-mail service; mail systems may change the local part's case.
    answer = await live_service.client.post(
        url, json={"recipient": mailbox.upper(), "sender": "Ann@Example.com"}, headers=tenant.headers()
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert answer.json()["message"] == "suppressed" and data["address"] == "a***@example.com"
    assert data["sender_is_recipient"] is True
    assert await suppressions() == [("ann@example.com", "mailto")]
    again = await live_service.client.post(url, json={"recipient": mailbox}, headers=tenant.headers())
    assert again.status_code == 200 and again.json()["message"] == "already suppressed"

    # Or the message itself, as an MTA hands it over (RFC 5322), here from a forwarding address.
    bob_mailbox = MAILTO.match(bob["List-Unsubscribe"]).group(2)  # type: ignore[union-attr]
    raw = (
        f"From: Bob <bob.forwarded@example.org>\r\nTo: <{bob_mailbox}>\r\n"
        "Subject: unsubscribe\r\nMessage-ID: <1@example.org>\r\n\r\nunsubscribe\r\n"
    ).encode()
    answer = await live_service.client.post(
        url, content=raw, headers={**tenant.headers(), "Content-Type": "message/rfc822"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["sender_is_recipient"] is False
    assert await suppressions() == [("ann@example.com", "mailto"), ("bob@example.com", "mailto")]
    nxt = await bulk(
        live_service, tenant, **marketing_email(recipients=["ann@example.com", "bob@example.com"])
    )
    assert {(i["status"], i["error"]) for i in nxt["items"]} == {("suppressed", "recipient unsubscribed")}
    # Without the setting there is only the HTTPS URI (test_04 above); a bad domain is refused.
    bad = await live_service.client.put(
        "/communication/settings",
        json={"unsubscribe_mailto_domain": "not a domain"},
        headers=tenant.headers(),
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "unsubscribe_mailto_domain"
    settings = (await live_service.client.get("/communication/settings", headers=tenant.headers())).json()
    assert settings["data"]["unsubscribe_mailto_domain"] == "unsub.acme.example"


# ---- K2: separate sender streams -----------------------------------------------------------------


async def test_15_marketing_and_transactional_use_separate_sender_identities(service: Service) -> None:
    tenant = await make_tenant(
        service.db,
        "Acme",
        sender_identities=[
            {"address": "news@acme.example", "streams": ["marketing", "announcement"]},
            {"address": "no-reply@acme.example", "streams": ["transactional", "verification"]},
            {"address": "ACMEPROMO", "streams": ["marketing"]},
            {"address": "ACME", "streams": ["verification", "transactional"]},
        ],
    )

    async def sender_of(batch_id: str) -> str | None:
        async with service.db.read() as session:
            batch = await session.get(Batch, batch_id)
        assert batch is not None
        return batch.sender

    # The default sender follows the category's stream.
    promo = await bulk(service, tenant, **marketing_email())
    receipt = await bulk(service, tenant, **marketing_email(category="transactional"))
    assert await sender_of(promo["batch_id"]) == "news@acme.example"
    assert await sender_of(receipt["batch_id"]) == "no-reply@acme.example"
    code = await bulk(
        service, tenant, channel="sms", category="verification", content="Code {{ code }}",
        variables={"code": "1"}, recipients=["13800138000"],
    )  # fmt: skip
    assert await sender_of(code["batch_id"]) == "ACME"
    # Marketing from a transactional identity, and the other way round, is a 422 naming the sender.
    for body in (
        marketing_email(sender="no-reply@acme.example"),
        marketing_email(category="transactional", sender="News@Acme.example"),
        {"channel": "sms", "category": "marketing", "content": "Sale", "recipients": ["13800138000"],
         "sender": "ACME"},
        {"channel": "sms", "category": "transactional", "content": "Shipped", "recipients": ["13800138000"],
         "sender": "ACMEPROMO"},
    ):  # fmt: skip
        answer = await bulk(service, tenant, 422, **body)
        (error,) = answer["errors"]
        assert error["field"] == "sender" and error["message"].startswith("sender_stream_mismatch"), error
    # No identity for a stream at all: announcement SMS has none here.
    none = await bulk(
        service,
        tenant,
        422,
        channel="sms",
        category="announcement",
        content="We moved",
        recipients=["13800138000"],
    )
    assert none["errors"][0]["message"].startswith("no_sender_for_stream")
    async with service.db.read() as session:
        batches = await session.scalar(
            select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant.tenant_id)
        )
    assert batches == 3  # the refused requests stored nothing
    # A plain string stays an identity for every stream (the old form), and both forms mix.
    changed = await service.client.put(
        "/communication/settings",
        json={
            "sender_identities": [
                "all@acme.example",
                {"address": "deals@acme.example", "streams": ["marketing"]},
            ]
        },
        headers=tenant.headers(),
    )
    assert changed.status_code == 200, changed.text
    assert (
        await sender_of((await bulk(service, tenant, **marketing_email()))["batch_id"])
    ) == "all@acme.example"
    deals = await bulk(service, tenant, **marketing_email(sender="deals@acme.example"))
    assert await sender_of(deals["batch_id"]) == "deals@acme.example"
    wrong = await service.client.put(
        "/communication/settings",
        json={"sender_identities": [{"address": "x@acme.example", "streams": ["promo"]}]},
        headers=tenant.headers(),
    )
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"].startswith("sender_identities")
    kept = (await service.client.get("/communication/settings", headers=tenant.headers())).json()["data"]
    assert kept["sender_identities"][0] == "all@acme.example"


# ---- M5: sending-domain authentication through a real DNS server ------------------------------------


class DnsServer(asyncio.DatagramProtocol):
    """A UDP DNS server on 127.0.0.1 answering TXT queries from ``records`` (dnspython's message
    API); a name in ``cnames`` is answered as a recursive resolver does: the CNAME, then the
    target's TXT records."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.cnames: dict[str, str] = {}
        self.servfail: set[str] = set()
        self.queries: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries.append(name)
        owner = question.name
        if name in self.cnames:
            target = self.cnames[name]
            cname = dns.rdata.from_text("IN", "CNAME", target + ".")
            response.answer.append(dns.rrset.from_rdata_list(owner, 60, [cname]))
            name, owner = target, dns.name.from_text(target)
        texts = self.records.get(name, [])
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif question.rdtype == dns.rdatatype.TXT and texts:
            rdatas = [
                dns.rdata.from_text(
                    "IN", "TXT", " ".join(f'"{t[i : i + 255]}"' for i in range(0, len(t), 255))
                )
                for t in texts
            ]
            response.answer.append(dns.rrset.from_rdata_list(owner, 60, rdatas))
        elif response.answer:
            pass  # the CNAME alone: its target has nothing of this type
        elif not any(k == name or k.endswith("." + name) for k in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server(settings: Any) -> AsyncIterator[DnsServer]:
    server = DnsServer()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0)
    )
    settings.dns_nameserver = "127.0.0.1:{}".format(transport.get_extra_info("sockname")[1])
    yield server
    transport.close()


DKIM_KEY = "v=DKIM1; k=rsa; p=" + base64.b64encode(bytes(range(94))).decode()


async def test_09_marketing_email_needs_spf_dkim_and_dmarc(service: Service, dns_server: DnsServer) -> None:
    tenant = await make_tenant(
        service.db,
        "Acme",
        require_dns_authentication=True,
        sender_identities=["news@acme.example", "promo@gmail.com", "ACME"],
    )
    await opt_in(service, tenant, "email", "ann@example.com")
    h = tenant.headers()

    async def verify(domain: str, body: dict[str, Any] | None = None, expect: int = 200) -> dict[str, Any]:
        answer = await service.client.post(
            f"/communication/settings/domains/{domain}/verify", json=body, headers=h
        )
        assert answer.status_code == expect, answer.text
        return dict(answer.json())

    unverified = await bulk(service, tenant, 422, **marketing_email())
    assert unverified["errors"][0]["field"] == "sender"
    assert "acme.example has not been verified" in unverified["errors"][0]["message"]
    # Transactional mail is not held to it.
    assert (await bulk(service, tenant, **marketing_email(category="transactional")))["items"][0][
        "status"
    ] == "queued"
    assert (await verify("acme.example", expect=422))["errors"][0]["field"] == "dkim_selectors"

    dns_server.records["acme.example"] = ["v=spf1 include:_spf.comms.test -all", "google-site-verification=x"]
    dns_server.records["_spf.comms.test"] = ["v=spf1 ip4:192.0.2.0/24 -all"]  # what the include names
    first = (await verify("acme.example", {"dkim_selectors": ["s1"]}))["data"]
    assert first["spf"]["ok"] and not first["dkim"]["ok"] and not first["dmarc"]["ok"]
    assert first["verified"] is False and "s1._domainkey.acme.example" in first["dkim"]["detail"]
    assert {"acme.example", "s1._domainkey.acme.example", "_dmarc.acme.example"} <= set(dns_server.queries)
    refused = await bulk(service, tenant, 422, **marketing_email())
    message = refused["errors"][0]["message"]
    assert "missing DKIM, DMARC" in message and "SPF:" not in message

    dns_server.records["s1._domainkey.acme.example"] = [DKIM_KEY]
    dns_server.records["_dmarc.acme.example"] = ["v=DMARC1; p=none; rua=mailto:dmarc@acme.example"]
    second = await verify("ACME.example.")  # the stored selectors are used again; the name normalized
    assert second["data"]["verified"] is True and second["message"] == "acme.example verified"
    assert second["data"]["dmarc"]["detail"].startswith("DMARC p=none")
    assert (await bulk(service, tenant, **marketing_email()))["items"][0]["status"] == "queued"
    stored = (await service.client.get("/communication/settings", headers=h)).json()["data"]["email_domains"]
    assert stored["acme.example"]["verified"] is True and stored["acme.example"]["dkim_selectors"] == ["s1"]

    # The verdict is comms' own: a tenant cannot write it; a DNS failure changes nothing (503).
    forged = await service.client.put(
        "/communication/settings",
        json={"email_domains": {"other.example": stored["acme.example"]}},
        headers=h,
    )
    assert forged.status_code == 422 and forged.json()["errors"][0]["field"] == "email_domains"
    dns_server.servfail.add("acme.example")
    assert (await verify("acme.example", expect=503))["code"] == 503
    dns_server.servfail.clear()
    assert (await service.client.get("/communication/settings", headers=h)).json()["data"][
        "email_domains"
    ] == stored
    # A record that is removed later fails the next check, and marketing stops again.
    del dns_server.records["s1._domainkey.acme.example"]
    again = await verify("acme.example")
    assert (
        again["data"]["verified"] is False and again["message"] == "acme.example not verified: missing DKIM"
    )
    assert "missing DKIM" in (await bulk(service, tenant, 422, **marketing_email()))["errors"][0]["message"]

    # No From on a mailbox provider's domain (Gmail: no impersonation of gmail.com), in any category.
    for category in ("marketing", "transactional"):
        gmail = await bulk(
            service, tenant, 422, **marketing_email(category=category, sender="promo@gmail.com")
        )
        assert gmail["errors"][0]["message"].startswith(
            "mailbox_provider_domain: comms cannot send as gmail.com"
        )
    assert (await verify("mail.gmail.com", {"dkim_selectors": ["s1"]}, expect=422))["errors"][0][
        "field"
    ] == "domain"
    assert (await verify("not_a_domain", {"dkim_selectors": ["s1"]}, expect=422))["errors"][0][
        "field"
    ] == "domain"
    assert (await verify("acme.example", {"dkim_selectors": ["bad selector"]}, expect=422))["code"] == 422


async def test_09_verified_domains_are_looked_up_again_by_themselves(
    service: Service, dns_server: DnsServer
) -> None:
    """A verified domain is checked again once its last check is a day old: passing, it stays
    verified; a DNS server that cannot be asked changes nothing; a record removed since makes it
    unverified, audited, and marketing from it stops with the reason."""
    tenant = await make_tenant(
        service.db, "Acme", require_dns_authentication=True, sender_identities=["news@acme.example"]
    )
    await opt_in(service, tenant, "email", "ann@example.com")
    dns_server.records["acme.example"] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    dns_server.records["s1._domainkey.acme.example"] = [DKIM_KEY]
    dns_server.records["_dmarc.acme.example"] = ["v=DMARC1; p=none"]
    verified = await service.client.post(
        "/communication/settings/domains/acme.example/verify",
        json={"dkim_selectors": ["s1"]},
        headers=tenant.headers(),
    )
    assert verified.json()["data"]["verified"] is True
    rechecker = DomainRechecker(service.db, service.app.state.comms.secrets, service.settings.dns_nameserver)

    async def recheck(hours: float) -> int:
        return await rechecker.run(utcnow() + timedelta(hours=hours))

    async def stored() -> dict[str, Any]:
        answer = await service.client.get("/communication/settings", headers=tenant.headers())
        return dict(answer.json()["data"]["email_domains"]["acme.example"])

    async def lost_events() -> int:
        async with service.db.read() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "domain.verification_lost")
            )
        return int(count or 0)

    assert await recheck(23) == 0  # checked less than a day ago
    assert await recheck(25) == 1
    still = await stored()
    assert still["verified"] is True and still["checked_at"] > verified.json()["data"]["checked_at"]
    assert await recheck(25) == 0  # just checked
    dns_server.servfail.add("s1._domainkey.acme.example")
    assert await recheck(50) == 0 and (await stored()) == still
    dns_server.servfail.clear()
    assert await recheck(50) == 0  # an unreachable DNS is left alone a while...
    rechecker._unreachable_until.clear()  # ...six hours later
    del dns_server.records["s1._domainkey.acme.example"]
    assert await recheck(50) == 1
    lost = await stored()
    assert lost["verified"] is False and lost["dkim"]["ok"] is False and await lost_events() == 1
    refused = await bulk(service, tenant, 422, **marketing_email(sender="news@acme.example"))
    assert "acme.example is missing DKIM" in refused["errors"][0]["message"]
    assert await recheck(100) == 0  # no longer verified: the tenant fixes it and verifies again


async def test_09_a_published_dkim_key_must_be_the_one_comms_signs_with(
    service: Service, dns_server: DnsServer
) -> None:
    """For a domain an smtp account DKIM-signs for, the key at its selector must be that account's
    public key: any other key would make every signature fail at the receiver."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    tenant = await make_tenant(service.db, "Acme", require_dns_authentication=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    account = await service.client.post(
        "/communication/providers",
        json={
            "channel": "email",
            "provider": "smtp",
            "name": "relay",
            "config": {
                "host": "127.0.0.1",
                "dkim_domain": "acme.example",
                "dkim_selector": "s1",
                "dkim_private_key": pem,
            },
        },
        headers=tenant.headers(),
    )
    assert account.status_code == 201, account.text
    records = dns_server.records
    records["acme.example"] = ["v=spf1 -all"]
    records["_dmarc.acme.example"] = ["v=DMARC1; p=reject"]
    records["s1._domainkey.acme.example"] = [DKIM_KEY]  # a well-formed key, but another one

    async def verify() -> dict[str, Any]:
        answer = await service.client.post(
            "/communication/settings/domains/acme.example/verify",
            json={"dkim_selectors": ["s1"]},
            headers=tenant.headers(),
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["data"])

    wrong = await verify()
    assert wrong["verified"] is False
    assert (
        wrong["dkim"]["detail"]
        == "s1._domainkey.acme.example: not the key the smtp account 'relay' signs with"
    )
    records["s1._domainkey.acme.example"] = [f"v=DKIM1; k=rsa; p={public[:200]} {public[200:]}"]
    assert (await verify())["verified"] is True


async def test_09_a_vendor_that_signs_must_have_its_dkim_cname(
    service: Service, dns_server: DnsServer
) -> None:
    """A SendGrid or SES (Easy DKIM) account signs the tenant's mail with a key the vendor
    publishes under its own domain, reached by a CNAME from the tenant's selector: a key the
    tenant published itself is not the one the vendor signs with. Each such account needs its
    CNAME; an SES account marked byo_dkim takes the tenant's own key."""
    tenant = await make_tenant(service.db, "Acme", require_dns_authentication=True)
    h = tenant.headers()
    records, cnames = dns_server.records, dns_server.cnames
    records["acme.example"] = ["v=spf1 -all"]
    records["_dmarc.acme.example"] = ["v=DMARC1; p=reject"]
    records["own._domainkey.acme.example"] = [DKIM_KEY]  # the tenant's own key, e.g. for its office mail

    async def verify(selectors: list[str]) -> dict[str, Any]:
        answer = await service.client.post(
            "/communication/settings/domains/acme.example/verify",
            json={"dkim_selectors": selectors},
            headers=h,
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["data"])

    assert (await verify(["own"]))["verified"] is True  # no vendor signs yet: any usable key
    sendgrid = await service.client.post(
        "/communication/providers",
        json={"channel": "email", "provider": "sendgrid", "name": "sg", "config": {"api_key": "SG.x"}},
        headers=h,
    )
    assert sendgrid.status_code == 201, sendgrid.text
    unaligned = await verify(["own"])
    assert unaligned["verified"] is False
    assert unaligned["dkim"]["detail"] == (
        "no selector leads to the sendgrid account 'sg''s keys (a CNAME from "
        "<selector>._domainkey.acme.example to sendgrid.net, from its domain authentication)"
    )
    cnames["s1._domainkey.acme.example"] = "s1.domainkey.u123.wl.sendgrid.net"
    records["s1.domainkey.u123.wl.sendgrid.net"] = [DKIM_KEY]
    passed = await verify(["own", "s1"])
    assert passed["verified"] is True, passed
    assert passed["dkim"]["detail"] == (
        "DKIM key at own._domainkey.acme.example, "
        "s1._domainkey.acme.example (-> s1.domainkey.u123.wl.sendgrid.net)"
    )
    # A CNAME into the vendor's domain with no key behind it is no key.
    records["s1.domainkey.u123.wl.sendgrid.net"] = ["v=DKIM1; p="]
    assert (await verify(["own", "s1"]))["verified"] is False
    records["s1.domainkey.u123.wl.sendgrid.net"] = [DKIM_KEY]

    ses = {"region": "eu-west-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "x"}
    added = await service.client.post(
        "/communication/providers",
        json={"channel": "email", "provider": "ses", "name": "ses", "config": ses},
        headers=h,
    )
    assert added.status_code == 201, added.text
    needs_ses = await verify(["own", "s1"])
    assert needs_ses["verified"] is False and "the ses account 'ses''s keys" in needs_ses["dkim"]["detail"]
    assert "amazonses.com or amazonses.com.cn" in needs_ses["dkim"]["detail"]
    cnames["tok3n._domainkey.acme.example"] = "tok3n.dkim.amazonses.com"
    records["tok3n.dkim.amazonses.com"] = [DKIM_KEY]
    assert (await verify(["own", "s1", "tok3n"]))["verified"] is True

    # An SES identity with Bring Your Own DKIM signs with the tenant's own published key.
    del cnames["tok3n._domainkey.acme.example"]
    changed = await service.client.put(
        f"/communication/providers/{added.json()['data']['id']}",
        json={"config": {**ses, "byo_dkim": True}},
        headers=h,
    )
    assert changed.status_code == 200, changed.text
    assert (await verify(["own", "s1"]))["verified"] is True


async def test_09_dns_record_rules(service: Service, dns_server: DnsServer) -> None:
    tenant = await make_tenant(service.db, "Acme", require_dns_authentication=True)

    async def check(domain: str) -> dict[str, Any]:
        answer = await service.client.post(
            f"/communication/settings/domains/{domain}/verify",
            json={"dkim_selectors": ["old", "s2"]},
            headers=tenant.headers(),
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["data"])

    records = dns_server.records
    # A sub-domain: DMARC found at the parent (the organizational domain), whose sp= applies.
    records["mail.shop.example"] = ["v=spf1 ip4:192.0.2.1 ~all"]
    records["old._domainkey.mail.shop.example"] = ["v=DKIM1; p="]  # revoked
    records["s2._domainkey.mail.shop.example"] = [DKIM_KEY]
    records["_dmarc.shop.example"] = ["v=DMARC1; p=reject; sp=quarantine"]
    sub = await check("mail.shop.example")
    assert sub["verified"] is True, sub
    assert sub["dkim"]["detail"] == "DKIM key at s2._domainkey.mail.shop.example"
    assert (
        sub["dmarc"]["detail"] == "DMARC p=quarantine at _dmarc.shop.example (applies to mail.shop.example)"
    )
    # +all, two SPF records, a DMARC record without a valid p=, a revoked key only.
    records["open.example"] = ["v=spf1 +all"]
    records["_dmarc.open.example"] = ["v=DMARC1; p=monitor"]
    records["old._domainkey.open.example"] = ["v=DKIM1; p="]
    records["twice.example"] = ["v=spf1 -all", "v=spf1 mx -all"]
    opened, twice = await check("open.example"), await check("twice.example")
    assert "allows any sender" in opened["spf"]["detail"] and opened["spf"]["ok"] is False
    assert "no valid p=" in opened["dmarc"]["detail"] and "revoked" in opened["dkim"]["detail"]
    assert "2 SPF records" in twice["spf"]["detail"]
    assert not (twice["spf"]["ok"] or twice["dkim"]["ok"] or twice["dmarc"]["ok"])
    assert twice["dmarc"]["detail"].startswith("no DMARC record")
    # SPF is followed through redirect= and include: as receivers follow it (RFC 7208).
    records["open2.example"] = ["v=spf1 redirect=open.example"]  # whose record ends in +all
    records["loop.example"] = ["v=spf1 include:loop2.example -all"]
    records["loop2.example"] = ["v=spf1 include:loop.example -all"]
    records["gone.example"] = ["v=spf1 include:_spf.nowhere.example -all"]
    records["busy.example"] = [
        "v=spf1 " + " ".join(f"include:s{i}.busy.example" for i in range(11)) + " -all"
    ]
    for i in range(11):
        records[f"s{i}.busy.example"] = ["v=spf1 ip4:192.0.2.1 -all"]
    records["fine.example"] = ["v=spf1 include:s1.busy.example mx a ~all"]
    details = {
        name: (await check(f"{name}.example"))["spf"] for name in ("open2", "loop", "gone", "busy", "fine")
    }
    assert "allows any sender" in details["open2"]["detail"]
    assert "SPF loop: loop.example -> loop2.example -> loop.example" in details["loop"]["detail"]
    assert "no SPF record" in details["gone"]["detail"]
    assert "more than 10 DNS lookups" in details["busy"]["detail"]
    assert [name for name, d in details.items() if d["ok"]] == ["fine"]
    # A target no DNS query can carry (a stray backslash in the record's data): a permerror
    # (fails), never a 500, nor a round of re-checks stopped at it (domain_checks.py).
    records["odd.example"] = ["v=spf1 include:bad\\\\ -all"]
    odd = await check("odd.example")
    assert odd["spf"]["ok"] is False, odd
    # RFC 7489: v=DMARC1 must come first, exactly; receivers discard any other record.
    records["late.example"] = ["v=spf1 -all"]
    records["_dmarc.late.example"] = ["p=reject; v=DMARC1"]
    late = await check("late.example")
    assert late["dmarc"]["ok"] is False and late["dmarc"]["detail"].startswith("no DMARC record")


# ---- S2: a number whose time zone is not known to one zone -----------------------------------------


async def test_08_unknown_time_zone_uses_the_strictest_window_of_the_country(
    service: Service, frozen_clock: list[datetime]
) -> None:
    tenant = await make_tenant(service.db, "Acme", "US")
    known, alaska, toll_free = "+14155552671", "+19075551234", "+18005551234"
    for number in (known, alaska, toll_free):
        await opt_in(service, tenant, "sms", number, basis="written")
    # 09:00 in San Francisco (known from the area code); 07:00 on the western Aleutians (907 spans
    # Anchorage and Adak); a toll-free number may be anywhere in the US, Hawaii included.
    frozen_clock[0] = datetime(2026, 11, 26, 17, 0, tzinfo=UTC)
    body = {
        "channel": "sms",
        "category": "marketing",
        "content": "Sale",
        "recipients": [known, alaska, toll_free],
    }
    items = (await bulk(service, tenant, **body))["items"]
    assert [i["status"] for i in items] == ["queued", "deferred", "deferred"]
    # 08:00 in Honolulu and Adak (UTC-10): the last of the US zones to open.
    assert all("deferred until 2026-11-26T18:00:00Z" in i["error"] for i in items[1:])
    # Released when the window opens in every zone, not before.
    frozen_clock[0] = datetime(2026, 11, 26, 17, 59, 59, tzinfo=UTC)
    async with service.db.begin() as session:
        early = await claim_due(session, "w", 10, utcnow(), timedelta(seconds=30))
    assert [c.id for c in early] == [items[0]["id"]]
    frozen_clock[0] = datetime(2026, 11, 26, 18, 0, 1, tzinfo=UTC)
    async with service.db.begin() as session:
        opened = await claim_due(session, "w", 10, utcnow(), timedelta(seconds=30))
    assert {c.id for c in opened} == {items[1]["id"], items[2]["id"]}
    # 21:00 in New York (UTC-5) closes the window for the toll-free number, not for San Francisco.
    frozen_clock[0] = datetime(2026, 11, 27, 2, 30, tzinfo=UTC)
    late = (await bulk(service, tenant, **{**body, "recipients": [known, toll_free]}))["items"]
    assert late[0]["status"] == "queued"
    assert (late[1]["status"], late[1]["error"]) == (
        "deferred",
        "quiet hours: deferred until 2026-11-27T18:00:00Z",
    )
    # A window narrower than the zones' spread leaves no moment that is inside it everywhere: the
    # request says so at once (and a queued one would wait, re-checked daily, never sent outside it).
    narrow = await make_tenant(service.db, "Narrow", "US", quiet_hours={"US": "09:00-12:00"})
    await opt_in(service, narrow, "sms", toll_free, basis="written")
    await opt_in(service, narrow, "sms", known, basis="written")
    frozen_clock[0] = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)  # 10:00 in San Francisco
    refused = (await bulk(service, narrow, **{**body, "recipients": [known, toll_free]}))["items"]
    assert refused[0]["status"] == "queued"
    assert refused[1]["status"] == "rejected"
    assert refused[1]["error"].startswith("quiet hours: no time is inside 09:00-12:00 in all 11 time zones")
    narrow_settings = TenantSettings(quiet_hours={"US": "09:00-12:00"})
    assert quiet_hours.deferral(utcnow(), toll_free, "US", narrow_settings) == utcnow() + timedelta(days=1)


async def test_08_a_tenant_may_narrow_the_legal_windows_but_not_widen_them(
    service: Service, tenant: TenantKeys
) -> None:
    """US 08:00-21:00 (TCPA) and CN 08:00-20:00 (carriers) are floors: the API refuses a wider
    window, and a wider one stored before this rule is held to the legal window anyway."""
    for window in ("00:00-24:00", "07:00-21:00", "22:00-06:00"):
        answer = await service.client.put(
            "/communication/settings", json={"quiet_hours": {"us": window}}, headers=tenant.headers()
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == "quiet_hours.US"
        padded = await service.client.put(  # stored as US: checked as US
            "/communication/settings", json={"quiet_hours": {" us ": window}}, headers=tenant.headers()
        )
        assert padded.status_code == 422, padded.text
        assert padded.json()["errors"][0]["field"] == "quiet_hours.US"
    for territory in ("PR", "gu", "VI", "AS", "MP"):  # the TCPA's hours hold in US territories too
        answer = await service.client.put(
            "/communication/settings",
            json={"quiet_hours": {territory: "00:00-24:00"}},
            headers=tenant.headers(),
        )
        assert (
            answer.status_code == 422
            and answer.json()["errors"][0]["field"] == f"quiet_hours.{territory.upper()}"
        )
    wider_cn = await service.client.put(
        "/communication/settings", json={"quiet_hours": {"CN": "08:00-22:00"}}, headers=tenant.headers()
    )
    assert wider_cn.status_code == 422
    absurd = await service.client.put(
        "/communication/settings",
        json={"quiet_hours": {"US": "99999999999999999999:00-21:00"}},
        headers=tenant.headers(),
    )
    assert absurd.status_code == 422 and absurd.json()["errors"][0]["field"].startswith("quiet_hours")
    surrogate = await service.client.put(
        "/communication/settings",
        content=b'{"postal_address": "1 Main St \\ud800"}',
        headers={**tenant.headers(), "Content-Type": "application/json"},
    )
    assert surrogate.status_code == 400 and surrogate.json()["message"] == "malformed JSON"
    narrower = await service.client.put(
        "/communication/settings",
        json={"quiet_hours": {"US": "09:00-20:00", "DE": "00:00-24:00"}},
        headers=tenant.headers(),
    )
    assert narrower.status_code == 200, narrower.text
    stored = TenantSettings(quiet_hours={"US": "00:00-24:00", "CN": "06:00-23:00", "DE": "00:00-24:00"})
    assert quiet_hours.window_for(stored, "US") == (time(8, 0), time(21, 0))
    assert quiet_hours.window_for(stored, "CN") == (time(8, 0), time(20, 0))
    assert quiet_hours.window_for(stored, "DE") == (time(0, 0), time(23, 59, 59))
    assert quiet_hours.window_for(TenantSettings(quiet_hours={"PR": "00:00-24:00"}), "PR") == (
        time(8),
        time(21),
    )


async def test_08_a_number_of_no_country_cannot_get_quiet_hours_sms(
    service: Service, frozen_clock: list[datetime]
) -> None:
    """A satellite phone (+881) has no time zone at all: the strictest window across every zone on
    earth has no moment in it, so a promotional SMS is refused at once instead of sent at any hour."""
    tenant = await make_tenant(service.db, "Acme", "US")
    iridium = "+881612345678"
    await opt_in(service, tenant, "sms", iridium)
    frozen_clock[0] = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    items = (
        await bulk(service, tenant, channel="sms", category="marketing", content="Sale", recipients=[iridium])
    )["items"]
    assert items[0]["status"] == "rejected"
    assert items[0]["error"].startswith("quiet hours: this number's time zone is unknown")
    assert quiet_hours.deferral(utcnow(), iridium, None, TenantSettings()) == utcnow() + timedelta(days=1)


# ---- S9: the daily limit of notification and promotional SMS --------------------------------------


async def test_sms_daily_limit_per_number_for_non_verification_sms(
    live_service: Service, live_tenant: TenantKeys, frozen_clock: list[datetime]
) -> None:
    """S9: at most ``sms_daily_limit`` notification/promotional SMS per number per day, counted
    from what reached a provider and checked just before the send (``rejected``, ``rate limited``);
    verification codes have their own limits and are not counted here."""
    service, tenant = live_service, live_tenant
    frozen_clock[0] = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)  # noon in Shanghai: no quiet hours
    for bad in (0, 10**20):  # too big would overflow the database's integer at every send
        invalid = await service.client.put(
            "/communication/settings", json={"sms_daily_limit": bad}, headers=tenant.headers()
        )
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "sms_daily_limit"
    lowered = await service.client.put(
        "/communication/settings", json={"sms_daily_limit": 3}, headers=tenant.headers()
    )
    assert lowered.status_code == 200
    number = "13800138000"
    notice = {
        "channel": "sms",
        "category": "transactional",
        "content": "Parcel {{ p }}",
        "variables": {"p": "1"},
    }

    async def settled(body: dict[str, Any]) -> dict[str, Any]:
        answer = await bulk(service, tenant, **body)

        async def done() -> bool:
            counts = await statuses(service, answer["batch_id"])
            return not set(counts) & {"queued", "sending"}

        await wait_until(done)
        async with service.db.read() as session:
            rows = (
                await session.scalars(select(Message).where(Message.batch_id == answer["batch_id"]))
            ).all()
        return {row.recipient: (row.status, row.error) for row in rows}

    for _ in range(3):
        assert await settled({**notice, "recipients": [number]}) == {"+8613800138000": ("sent", None)}
    # The 4th of the day, of any category but verification, is refused before any provider.
    assert await settled({**notice, "recipients": [number, "13900139000"]}) == {
        "+8613800138000": ("rejected", "rate limited"),
        "+8613900139000": ("sent", None),
    }
    await opt_in(service, tenant, "sms", number)
    promo = {"channel": "sms", "category": "marketing", "content": "Sale", "recipients": [number]}
    assert await settled(promo) == {"+8613800138000": ("rejected", "rate limited")}
    assert await settled(verification_sms(recipients=[number])) == {"+8613800138000": ("sent", None)}
    # A day later the window has moved on.
    frozen_clock[0] += timedelta(days=1, seconds=1)
    assert await settled({**notice, "recipients": [number]}) == {"+8613800138000": ("sent", None)}


# ---- gaps the review found: behaviours no test would have caught breaking -----------------------


async def dispatch_due(service: Service) -> list[str]:
    """One claim of everything due now, processed by a fresh worker: the ids it claimed."""
    async with standalone_dispatcher(service) as worker:
        async with service.db.begin() as session:
            claimed = await claim_due(session, worker.worker_id, 100, utcnow(), timedelta(seconds=30))
        if claimed:
            await worker._process(claimed)
    return [c.id for c in claimed]


def outbox_files(service: Service, channel: str) -> list[str]:
    folder = service.outbox / channel
    return sorted(p.stem for p in folder.iterdir()) if folder.exists() else []


async def test_08_quiet_hours_are_checked_again_at_dispatch(
    service: Service, tenant: TenantKeys, frozen_clock: list[datetime]
) -> None:
    """S2: a marketing SMS accepted a minute before the window closes but claimed after it is
    deferred by the dispatcher until the next window opens (nothing reaches a provider), and sent
    then; a transactional SMS to the same number in the same claim is not held back."""
    number = "+14155552671"  # San Francisco: 08:00-21:00 Pacific, UTC-8 in November
    await opt_in(service, tenant, "sms", number, basis="written")
    frozen_clock[0] = datetime(2026, 11, 27, 4, 59, tzinfo=UTC)  # 20:59 in San Francisco
    promo = await bulk(
        service, tenant, channel="sms", category="marketing", content="Sale", recipients=[number]
    )
    notice = await bulk(
        service, tenant, channel="sms", category="transactional", content="Shipped", recipients=[number]
    )
    promo_id, notice_id = promo["items"][0]["id"], notice["items"][0]["id"]
    assert (promo["items"][0]["status"], notice["items"][0]["status"]) == ("queued", "queued")
    frozen_clock[0] = datetime(2026, 11, 27, 5, 0, 1, tzinfo=UTC)  # 21:00:01: the window has closed
    assert sorted(await dispatch_due(service)) == sorted([promo_id, notice_id])
    async with service.db.read() as session:
        held = await session.get(Message, promo_id)
    assert held is not None
    assert (held.status, held.error) == ("deferred", "quiet hours: deferred until 2026-11-27T16:00:00Z")
    assert outbox_files(service, "sms") == [notice_id]  # only the transactional one left
    assert await statuses(service, notice["batch_id"]) == {"sent": 1}
    frozen_clock[0] = datetime(2026, 11, 27, 15, 59, 59, tzinfo=UTC)  # 07:59:59: not yet
    assert await dispatch_due(service) == []
    frozen_clock[0] = datetime(2026, 11, 27, 16, 0, 1, tzinfo=UTC)  # 08:00:01: released
    assert await dispatch_due(service) == [promo_id]
    assert await statuses(service, promo["batch_id"]) == {"sent": 1}
    assert outbox_files(service, "sms") == sorted([notice_id, promo_id])


class _Links(HTMLParser):
    """The text and the link targets of an HTML part."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [value for name, value in attrs if tag == "a" and name == "href" and value]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


async def test_04_html_marketing_email_carries_address_disclosure_and_unsubscribe_link(
    live_service: Service,
) -> None:
    """C3, C4, C5 in the HTML part too (what most recipients see): the ad disclosure, the postal
    address and an unsubscribe link to the /u/ page, inside <body>, and the link works."""
    tenant = await make_tenant(
        live_service.db, "Shop", ad_disclosure="Ads & offers: this is an advertisement."
    )
    created = await live_service.client.post(
        "/communication/templates",
        json={
            "code": "winter",
            "channel": "email",
            "category": "marketing",
            "subject": "Our winter sale",
            "content": "Hello {{ name }}, 20% off everything.",
            "html": "<html><body><p>Hello {{ name }}, <b>20% off</b> everything.</p></body></html>",
        },
        headers=tenant.headers(),
    )
    assert created.status_code == 201, created.text
    await opt_in(live_service, tenant, "email", "ann@example.com")
    sent = await bulk(
        live_service, tenant, channel="email", template="winter", variables={"name": "Ann"},
        recipients=["ann@example.com"],
    )  # fmt: skip

    async def done() -> bool:
        return await statuses(live_service, sent["batch_id"]) == {"sent": 1}

    await wait_until(done)
    message = eml(live_service, sent["items"][0]["id"])
    url = message["List-Unsubscribe"].strip("<>")
    assert url.startswith("https://comms.test/u/")
    part = message.get_body(("html",))
    assert part is not None and part.get_content_type() == "text/html"
    html_body = part.get_content()
    parsed = _Links()
    parsed.feed(html_body)
    text = "".join(parsed.text)
    assert "Hello Ann" in text
    assert "Ads & offers: this is an advertisement." in text  # escaped in the HTML, read back whole
    assert "Shop, 1 Main St, Springfield" in text
    assert parsed.hrefs == [url]
    assert html_body.index('href="') < html_body.lower().rindex("</body>")  # in the body, not after it
    page = await live_service.client.get(url.removeprefix("https://comms.test"))
    assert page.status_code == 200 and "a***@example.com" in page.text


async def test_04_announcement_email_is_subscription_mail_and_all_email_is_auto_submitted(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    """M1, M2: an announcement (subscription mail for Gmail) has List-Unsubscribe with one HTTPS
    URI and the One-Click header, as marketing does. M8: Auto-Submitted on every email, receipts
    and codes included, which carry no unsubscribe headers."""
    service, tenant = live_service, live_tenant
    batches = {
        category: await bulk(service, tenant, **marketing_email(category=category, subject="Notice"))
        for category in ("announcement", "transactional", "verification")
    }

    async def sent() -> bool:
        return all([await statuses(service, b["batch_id"]) == {"sent": 1} for b in batches.values()])

    await wait_until(sent)
    mails = {category: eml(service, b["items"][0]["id"]) for category, b in batches.items()}
    announcement = mails["announcement"]
    (unsubscribe,) = announcement.get_all("List-Unsubscribe")
    assert re.fullmatch(r"<https://comms\.test/u/log_[^<>,]+>", unsubscribe), unsubscribe
    assert announcement.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert announcement["List-Id"] and unsubscribe.strip("<>") in announcement.get_content()
    for category, mail in mails.items():
        assert mail.get_all("Auto-Submitted") == ["auto-generated"], category
    for category in ("transactional", "verification"):
        assert (
            mails[category]["List-Unsubscribe"] is None and mails[category]["List-Unsubscribe-Post"] is None
        )


async def test_11_complaint_rate_breaker_threshold_and_dispatch_hold(
    service: Service, frozen_clock: list[datetime]
) -> None:
    """M6 at the default threshold (0.2%) and minimum volume (1000 emails): 1 complaint in 1000
    sent (0.1%) leaves marketing going; the 2nd (0.2%) pauses it at acceptance, and marketing
    accepted before the breaker tripped is held back at dispatch (deferred, retried later) while
    transactional mail in the same claim goes out."""
    from comms.compliance import reputation

    tenant = await make_tenant(service.db, "Shop")
    buyers = [f"buyer{i}@example.com" for i in range(1000)]
    receipts = await bulk(service, tenant, **marketing_email(category="transactional", recipients=buyers))
    async with service.db.begin() as session:
        await session.execute(
            update(Message).where(Message.batch_id == receipts["batch_id"]).values(status="sent")
        )
    await opt_in(service, tenant, "email", "ann@example.com")

    async def complain(address: str) -> None:
        answer = await service.client.post(
            "/communication/suppressions",
            json={"channel": "email", "address": address, "reason": "complaint"},
            headers=tenant.headers(),
        )
        assert answer.status_code == 201, answer.text
        reputation.forget(tenant.tenant_id)

    await complain("buyer1@example.com")
    early = await bulk(service, tenant, **marketing_email())  # 1 in 1000: 0.1% < 0.2%
    assert early["items"][0]["status"] == "queued"
    await complain("buyer2@example.com")
    paused = await bulk(service, tenant, 422, **marketing_email())  # 2 in 1000: 0.2%, the threshold
    assert "marketing_paused" in paused["errors"][0]["message"]
    receipt = await bulk(service, tenant, **marketing_email(category="transactional"))
    reputation.forget(tenant.tenant_id)
    claimed = await dispatch_due(service)
    assert sorted(claimed) == sorted([early["items"][0]["id"], receipt["items"][0]["id"]])
    async with service.db.read() as session:
        held = await session.get(Message, early["items"][0]["id"])
    assert held is not None and held.status == "deferred"
    assert held.error is not None and held.error.startswith("marketing paused")
    assert isoformat(held.due_at) == isoformat(utcnow() + timedelta(hours=1))  # looked at again later
    assert outbox_files(service, "email") == [receipt["items"][0]["id"]]


async def test_11_below_the_minimum_volume_the_breaker_does_not_trip(service: Service) -> None:
    """The rate counts only from complaint_rate_min_volume emails sent: 2 complaints in 999 do
    not pause marketing; the 1000th email sent makes them count."""
    from comms.compliance import reputation

    tenant = await make_tenant(service.db, "Shop")
    buyers = [f"buyer{i}@example.com" for i in range(1000)]
    receipts = await bulk(service, tenant, **marketing_email(category="transactional", recipients=buyers))
    last = receipts["items"][0]["id"]
    async with service.db.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.batch_id == receipts["batch_id"], Message.id != last)
            .values(status="sent")
        )
    await opt_in(service, tenant, "email", "ann@example.com")
    for address in ("buyer1@example.com", "buyer2@example.com"):
        await service.client.post(
            "/communication/suppressions",
            json={"channel": "email", "address": address, "reason": "complaint"},
            headers=tenant.headers(),
        )
    reputation.forget(tenant.tenant_id)
    assert (await bulk(service, tenant, **marketing_email()))["items"][0]["status"] == "queued"
    async with service.db.begin() as session:
        await session.execute(update(Message).where(Message.id == last).values(status="sent"))
    reputation.forget(tenant.tenant_id)
    await bulk(service, tenant, 422, **marketing_email())


@pytest.mark.parametrize("word", ["YES", "UNSTOP", "START", "  yes! "])
async def test_06_every_opt_in_keyword_lifts_a_stop(
    service: Service, tenant: TenantKeys, frozen_clock: list[datetime], word: str
) -> None:
    """S4 (CTIA): START, UNSTOP and YES each lift an SMS-keyword opt-out, and marketing SMS to the
    number is accepted again; the confirmation is sent once."""
    frozen_clock[0] = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai: no quiet hours
    number = "13800138000"
    await opt_in(service, tenant, "sms", number)
    promo = {"channel": "sms", "category": "marketing", "content": "Sale", "recipients": [number]}
    async with service.db.begin() as session:
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        assert (await handle_inbound_sms(session, row, number, "STOP")).changed
    stopped = (await bulk(service, tenant, **promo))["items"][0]
    assert (stopped["status"], stopped["error"]) == ("suppressed", "recipient unsubscribed")
    async with service.db.begin() as session:
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        lifted = await handle_inbound_sms(session, row, number, word)
        again = await handle_inbound_sms(session, row, number, word)
    assert lifted.changed and lifted.reply is not None and "subscribed again" in lifted.reply
    assert not again.changed and again.reply is None  # one confirmation
    async with service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0
    assert (await bulk(service, tenant, **promo))["items"][0]["status"] == "queued"


@pytest.mark.parametrize(
    ("extra", "contact"),
    [
        ({}, "Support: news@acme.example."),  # the first email identity
        ({"sender_identities": ["ACME"]}, "Support: 1 Main St, Springfield."),  # SMS only: the address
        ({"sender_identities": ["ACME"], "postal_address": None}, "Support contact: not configured."),
    ],
)
async def test_06_help_reply_names_frequency_and_a_support_contact(
    service: Service, extra: dict[str, Any], contact: str
) -> None:
    """S4 (CTIA): HELP answers with the brand, the frequency, a support contact, "Msg&data rates
    may apply" and how to stop. A tenant without an email identity gets its postal address as
    the contact; one with neither is told plainly that none is configured."""
    tenant = await make_tenant(service.db, "Acme", **extra)
    async with service.db.begin() as session:
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        answer = await handle_inbound_sms(session, row, "13800138000", "HELP")
    assert answer.reply is not None and not answer.changed
    for must in ("Acme", "frequency", contact, "Msg&data rates may apply", "Reply STOP to opt out"):
        assert must in answer.reply, (must, answer.reply)


async def test_verification_sms_daily_limit_per_number(
    service: Service, tenant: TenantKeys, frozen_clock: list[datetime]
) -> None:
    """S9: 10 codes a day per number. Ten spread 13 minutes apart (never 2 in a minute nor 5 in
    an hour) are accepted over nearly two hours; the 11th within 24 hours of the first is
    rejected, until the first is 24 hours old."""
    body = verification_sms()
    start = frozen_clock[0]
    for i in range(10):
        frozen_clock[0] = start + timedelta(minutes=13 * i)
        assert (await bulk(service, tenant, **body))["items"][0]["status"] == "queued", i
    # 130 minutes in: 4 codes in the last hour, none in the last minute; 10 in the last day.
    for at in (timedelta(minutes=130), timedelta(hours=24, seconds=-1)):
        frozen_clock[0] = start + at
        item = (await bulk(service, tenant, **body))["items"][0]
        assert (item["status"], item["error"]) == ("rejected", "rate limited"), at
    frozen_clock[0] = start + timedelta(hours=24, seconds=1)  # the first code has left the day
    assert (await bulk(service, tenant, **body))["items"][0]["status"] == "queued"
    frozen_clock[0] += timedelta(minutes=13)  # ...and the second; rejected tries never counted
    assert (await bulk(service, tenant, **body))["items"][0]["status"] == "queued"


async def test_14_consent_evidence_includes_the_persons_ip_for_pii_readers(
    service: Service, tenant: TenantKeys
) -> None:
    """E5: the person's IP and the collection time are kept with a consent and returned by GET
    /communication/consents: the IP (and the raw address) only with unmask=true, which needs
    pii:read and is audited as a PII reveal (P1)."""
    collected = isoformat(utcnow() - timedelta(days=3))
    await opt_in(service, tenant, "email", "ann@example.com", ip="203.0.113.7", collected_at=collected)
    url = "/communication/consents?address=ann@example.com"

    async def reveals() -> list[dict[str, Any]]:
        async with service.db.read() as session:
            rows = (
                await session.scalars(select(AuditEvent).where(AuditEvent.action == "pii.revealed"))
            ).all()
        return [r.details for r in rows]

    masked = await service.client.get(url, headers=tenant.headers(tenant.pii_token))
    (record,) = masked.json()["items"]
    assert (record["address"], record["ip"], record["collected_at"]) == ("a***@example.com", None, collected)
    refused = await service.client.get(url + "&unmask=true", headers=tenant.headers())  # no pii:read
    assert refused.status_code == 403, refused.text
    assert await reveals() == []
    raw = await service.client.get(url + "&unmask=true", headers=tenant.headers(tenant.pii_token))
    assert raw.status_code == 200, raw.text
    (record,) = raw.json()["items"]
    assert (record["address"], record["ip"], record["collected_at"]) == (
        "ann@example.com",
        "203.0.113.7",
        collected,
    )
    assert await reveals() == [{"route": "consents", "ids": [record["id"]]}]


async def test_10_secret_variables_are_encrypted_at_rest_while_queued(
    service: Service, tenant: TenantKeys
) -> None:
    """P3: a recipient's own code (a default secret name) and a template's declared secret
    variable are stored sealed with the secret box until sent; other variables stay as given."""
    from comms.kit.secretbox import _PREFIX

    for template in (
        {"code": "otp", "category": "verification", "content": "Your code is {{ code }}"},
        {"code": "pin", "category": "transactional", "content": "Hi {{ name }}, PIN {{ pin }}",
         "secret_variables": ["pin"]},
    ):  # fmt: skip
        answer = await service.client.post(
            "/communication/templates", json={"channel": "sms", **template}, headers=tenant.headers()
        )
        assert answer.status_code == 201, answer.text
    otp = await bulk(
        service, tenant, channel="sms", template="otp",
        recipients=[{"to": "13800138000", "variables": {"code": "482913"}}],
    )  # fmt: skip
    pin = await bulk(
        service, tenant, channel="sms", template="pin",
        recipients=[{"to": "13800138000", "variables": {"name": "Ann", "pin": "7355"}}],
    )  # fmt: skip
    box = SecretBox(service.settings.resolved_secret_key)
    async with service.db.read() as session:
        coded = await session.get(Message, otp["items"][0]["id"])
        pinned = await session.get(Message, pin["items"][0]["id"])
    assert coded is not None and pinned is not None
    assert (coded.status, pinned.status) == ("queued", "queued")
    for row, name, secret in ((coded, "code", "482913"), (pinned, "pin", "7355")):
        assert row.variables is not None
        sealed = row.variables[name]
        assert sealed.startswith(_PREFIX) and secret not in sealed
        assert box.decrypt(sealed) == secret  # the real value, for the dispatcher only
        assert secret not in str(row.content or "")
    assert pinned.variables is not None and pinned.variables["name"] == "Ann"


async def test_14_a_bulk_writes_exactly_one_submission_audit_event(
    service: Service, tenant: TenantKeys
) -> None:
    """P5: one `bulk.submitted` per accepted request (not per recipient, not again on an
    Idempotency-Key replay, none for a dry run), with the key, IP, time, channel, category,
    template id and version, and the counts per status."""
    created = await service.client.post(
        "/communication/templates",
        json={"code": "notice", "channel": "email", "category": "transactional", "subject": "Notice",
              "content": "Hello {{ name }}"},
        headers=tenant.headers(),
    )  # fmt: skip
    template_id = created.json()["data"]["id"]
    changed = await service.client.put(
        f"/communication/templates/{template_id}",
        json={"content": "Hello {{ name }}, again"},
        headers=tenant.headers(),
    )
    assert changed.status_code == 200 and changed.json()["data"]["version"] == 2, changed.text
    await service.client.post(
        "/communication/suppressions",
        json={"channel": "email", "address": "cat@example.com", "reason": "hard_bounce"},
        headers=tenant.headers(),
    )
    body = {
        "channel": "email",
        "template": "notice",
        "variables": {"name": "friend"},
        "recipients": ["ann@example.com", "bob@example.com", "cat@example.com"],
    }
    dry = await service.client.post(
        "/communication/bulk", json={**body, "dry_run": True}, headers=tenant.headers()
    )
    assert dry.status_code == 200, dry.text
    headers = {**tenant.headers(), "Idempotency-Key": "p5-once"}
    answers = [await service.client.post("/communication/bulk", json=body, headers=headers) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json()["batch_id"] == answers[1].json()["batch_id"]
    async with service.db.read() as session:
        events = (
            await session.scalars(select(AuditEvent).where(AuditEvent.action == "bulk.submitted"))
        ).all()
        added = await session.scalar(select(AuditEvent).where(AuditEvent.action == "suppression.added"))
    (event,) = events
    assert added is not None and event.actor == added.actor and event.actor.startswith("key_")
    assert event.tenant_id == tenant.tenant_id and event.ip == "127.0.0.1" and event.created_at
    assert event.details == {
        "batch_id": answers[0].json()["batch_id"],
        "channel": "email",
        "category": "transactional",
        "template_id": template_id,
        "template_version": 2,
        "counts": {"queued": 2, "suppressed": 1},
    }


async def test_s4_an_sms_opt_in_is_confirmed_once_and_a_resync_sends_nothing(
    service: Service, tenant: TenantKeys
) -> None:
    """S4 (CTIA Messaging Principles 5.1.2): right after an opt-in to recurring SMS, one message
    names the brand, the frequency, a support contact, the cost and how to get help or stop. It
    goes to a new opt-in collected in the last hour, or one that lifts a STOP; a number opted in
    already, a record collected long ago or without a time (an import), email and opt-outs get
    none; the caller may ask for it or turn it off; and a number a marketing SMS may not go to
    (it stays suppressed, or it is a +1 number without written consent) is never told it is
    subscribed, even when asked."""
    number = "13800138000"

    async def consent(address: str = number, channel: str = "sms", **extra: Any) -> dict[str, Any]:
        body = {"channel": channel, "address": address, "status": "opted_in", "basis": "opt_in", **extra}
        answer = await service.client.post("/communication/consents", json=body, headers=tenant.headers())
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    def now(seconds: int = 0) -> str | None:
        return isoformat(utcnow() + timedelta(seconds=seconds))

    first = await consent(collected_at=now())
    log_id = first["data"]["confirmation_id"]
    assert log_id and first["message"] == "recorded; the opt-in confirmation SMS is queued"
    item = (await service.client.get(f"/communication/logs/{log_id}", headers=tenant.headers())).json()[
        "data"
    ]
    assert (item["channel"], item["category"], item["status"]) == ("sms", "transactional", "queued")
    assert item["recipient"] != number  # masked, as every log item
    for must in ("Acme", "subscribed", "frequency varies", "Support", "Msg&data rates may apply",
                 "Reply HELP for help, STOP to opt out"):  # fmt: skip
        assert must in item["content"], (must, item["content"])

    assert (await consent(collected_at=now()))["data"]["confirmation_id"] is None  # opted in already
    asked = await consent(send_confirmation=True)  # the caller asks for it again
    assert asked["data"]["confirmation_id"] not in (None, log_id)
    for address, extra in (
        ("13800138001", {"collected_at": now(-30 * 86400)}),  # a CRM re-syncing an old record
        ("13800138002", {}),  # an import: no collection time
        ("13800138003", {"collected_at": now(), "send_confirmation": False}),
    ):
        answer = await consent(address, **extra)
        assert answer["data"]["confirmation_id"] is None and answer["message"] == "recorded", address
    assert (await consent("ann@example.com", channel="email", collected_at=now()))["data"][
        "confirmation_id"
    ] is None

    async def stop(address: str) -> None:
        async with service.db.begin() as session:
            row = await session.get(Tenant, tenant.tenant_id)
            assert row is not None
            await handle_inbound_sms(session, row, address, "STOP")

    # STOP, then an opt-in collected before it: recorded, the number stays suppressed, and is not
    # told it is subscribed (not even when asked).
    await stop("13800138004")
    for extra in ({}, {"send_confirmation": True}):
        stale = await consent("13800138004", collected_at=now(-1800), **extra)
        assert not stale["data"]["opt_out_lifted"] and stale["data"]["confirmation_id"] is None
        assert "no opt-in confirmation SMS: marketing SMS to this number is suppressed" in stale["message"]
    # Opted in, STOP, then a new opt-in after it: the STOP is lifted and the new opt-in confirmed.
    await consent("13800138005", collected_at=now(), send_confirmation=False)
    await stop("13800138005")
    again = await consent("13800138005", collected_at=now(2))
    assert again["data"]["opt_out_lifted"] and again["data"]["confirmation_id"] is not None
    # A +1 number needs prior express written consent for marketing SMS (S1): without it, no
    # "you are subscribed"; with it, the confirmation.
    unwritten = await consent("+12025550123", collected_at=now())
    assert unwritten["data"]["confirmation_id"] is None
    assert "rejected (no prior express written consent)" in unwritten["message"]
    written = await consent("+12025550124", collected_at=now(), written=True)
    assert written["data"]["confirmation_id"] is not None

    out = await service.client.post(
        "/communication/consents",
        json={"channel": "sms", "address": "13800138006", "status": "opted_out"},
        headers=tenant.headers(),
    )
    assert out.status_code == 201 and out.json()["data"]["confirmation_id"] is None
    bad = await service.client.post(
        "/communication/consents",
        json={
            "channel": "sms",
            "address": number,
            "status": "opted_in",
            "basis": "opt_in",
            "send_confirmation": "maybe",
        },
        headers=tenant.headers(),
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "send_confirmation"
    async with service.db.read() as session:
        confirmations = await session.scalar(
            select(func.count()).where(
                Message.tenant_id == tenant.tenant_id, Message.category == "transactional"
            )
        )
    assert confirmations == 4  # the first opt-in, the one asked for, the STOP lifted, the written +1


async def test_s4_a_brand_with_template_syntax_is_sent_as_written(service: Service) -> None:
    """The confirmation (and every keyword reply) carries the tenant's brand and contact as text:
    a name with "{{" in it is neither rendered nor refused as a template."""
    tenant = await make_tenant(service.db, "Acme {{ x }} {% raw %}")
    answer = await service.client.post(
        "/communication/consents",
        json={"channel": "sms", "address": "13800138000", "status": "opted_in", "basis": "opt_in",
              "send_confirmation": True},
        headers=tenant.headers(),
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    log_id = answer.json()["data"]["confirmation_id"]
    assert log_id is not None, answer.json()["message"]
    item = (await service.client.get(f"/communication/logs/{log_id}", headers=tenant.headers())).json()[
        "data"
    ]
    assert item["content"].startswith("Acme {{ x }} {% raw %}: you are subscribed")


def marketing_sms(number: str) -> dict[str, Any]:
    return {"channel": "sms", "category": "marketing", "content": "20% off today", "recipients": [number]}


async def test_e6_an_objection_covers_every_channel_the_tenant_linked(
    service: Service, tenant: TenantKeys, daytime_clock: None
) -> None:
    """E6 (GDPR Art. 21): an objection to direct marketing is the person's. Once the tenant links
    a person's addresses (PUT /communication/contacts/{its id for them}), an objection recorded on
    one suppresses marketing to all of them at once, whichever comes first; transactional
    messages still go; an address not linked is untouched; unlinking keeps the suppressions."""
    for channel, address in (("sms", "13800138000"), ("email", "ann@example.com"), ("sms", "13900139000")):
        await opt_in(service, tenant, channel, address)
    linked = await service.client.put(
        "/communication/contacts/crm-42",
        json={"addresses": [{"channel": "sms", "address": "13800138000"},
                            {"channel": "email", "address": "Ann@Example.com"},
                            {"channel": "sms", "address": "+86 138 0013 8000"}]},  # the same number again
        headers=tenant.headers(),
    )  # fmt: skip
    assert linked.status_code == 200, linked.text
    data = linked.json()["data"]
    assert data["addresses"] == [
        {"channel": "sms", "address": "138****8000"},
        {"channel": "email", "address": "A***@example.com"},  # the local part keeps its case
    ]
    assert data["suppressed"] == [] and linked.json()["message"] == "linked"
    assert (await bulk(service, tenant, **marketing_email()))["items"][0]["status"] == "queued"

    withdrawn = await service.client.delete(
        "/communication/consents/sms/13800138000", headers=tenant.headers()
    )
    assert withdrawn.status_code == 200
    assert (await bulk(service, tenant, **marketing_sms("13800138000")))["items"][0]["status"] == "suppressed"
    email = (await bulk(service, tenant, **marketing_email()))["items"][0]
    assert (email["status"], email["error"]) == ("suppressed", "recipient unsubscribed")
    receipt = marketing_email(category="transactional", subject="Your receipt", content="Order 17 paid.")
    assert (await bulk(service, tenant, **receipt))["items"][0]["status"] == "queued"
    assert (await bulk(service, tenant, **marketing_sms("13900139000")))["items"][0]["status"] == "queued"
    listed = await service.client.get(
        "/communication/suppressions?channel=email&address=ann@example.com", headers=tenant.headers()
    )
    assert [(s["reason"], s["source"]) for s in listed.json()["items"]] == [("objection", "linked")]

    # The other order: an objection recorded first, the link made later, covers the new address
    # (whose own opt-in is older than the objection: a later one would stand).
    await opt_in(service, tenant, "sms", "13700137000")
    await service.client.post(
        "/communication/consents",
        json={"channel": "email", "address": "bob@example.com", "status": "opted_out"},
        headers=tenant.headers(),
    )
    later = await service.client.put(
        "/communication/contacts/crm-43",
        json={"addresses": [{"channel": "email", "address": "bob@example.com"},
                            {"channel": "sms", "address": "13700137000"}]},
        headers=tenant.headers(),
    )  # fmt: skip
    assert later.json()["data"]["suppressed"] == [{"channel": "sms", "address": "137****7000"}]
    assert later.json()["message"] == "linked; an objection on one of them now covers the others"
    assert (await bulk(service, tenant, **marketing_sms("13700137000")))["items"][0]["status"] == "suppressed"

    shown = await service.client.get("/communication/contacts/crm-42", headers=tenant.headers())
    assert shown.status_code == 200 and len(shown.json()["data"]["addresses"]) == 2
    unlinked = await service.client.delete("/communication/contacts/crm-42", headers=tenant.headers())
    assert unlinked.status_code == 200 and unlinked.json()["data"]["removed"] == 2
    assert (
        await service.client.get("/communication/contacts/crm-42", headers=tenant.headers())
    ).status_code == 404
    assert (
        await service.client.delete("/communication/contacts/crm-42", headers=tenant.headers())
    ).status_code == 404
    assert (await bulk(service, tenant, **marketing_email()))["items"][0]["status"] == "suppressed"
    audit = (await service.client.get("/communication/audit?page_size=100", headers=tenant.headers())).json()
    actions = {e["action"] for e in audit["items"]}
    assert {"contact.linked", "contact.unlinked", "objection.extended"} <= actions
    assert "crm-42" not in str(audit)  # the tenant's id for the person is kept hashed


async def test_e6_linking_again_never_revives_an_objection_the_person_lifted(
    service: Service, tenant: TenantKeys
) -> None:
    """An objection on A covers B; the person then opts in again on B (after the objection): B's
    suppression is lifted, and the tenant's routine re-sync of the same link must not bring it
    back, nor reach the addresses of another contact that shares A."""
    a, b = {"channel": "sms", "address": "13800138000"}, {"channel": "email", "address": "ann@example.com"}
    other = {"channel": "sms", "address": "13900139000"}

    async def put(contact: str, *addresses: dict[str, str]) -> dict[str, Any]:
        answer = await service.client.put(
            f"/communication/contacts/{contact}",
            json={"addresses": list(addresses)},
            headers=tenant.headers(),
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["data"])

    await opt_in(service, tenant, "email", "ann@example.com")
    await opt_in(service, tenant, "sms", "13900139000")
    await put("crm-1", a, b)
    await service.client.delete("/communication/consents/sms/13800138000", headers=tenant.headers())
    assert (await bulk(service, tenant, **marketing_email()))["items"][0]["status"] == "suppressed"
    again = await service.client.post(
        "/communication/consents",
        json={"channel": "email", "address": "ann@example.com", "status": "opted_in", "basis": "opt_in",
              "collected_at": isoformat(utcnow() + timedelta(seconds=2))},
        headers=tenant.headers(),
    )  # fmt: skip
    assert again.json()["data"]["opt_out_lifted"] is True
    assert (await put("crm-1", a, b))["suppressed"] == []  # the re-sync
    assert (await bulk(service, tenant, **marketing_email()))["items"][0]["status"] == "queued"
    # Another contact sharing A: linking it applies A's objection within that contact only.
    assert (await put("crm-2", a, other))["suppressed"] == [{"channel": "sms", "address": "139****9000"}]
    assert (await bulk(service, tenant, **marketing_email()))["items"][0]["status"] == "queued"


async def test_e6_bad_links_are_refused_and_change_nothing(service: Service, tenant: TenantKeys) -> None:
    async def put(contact: str, body: Any, expect: int = 422) -> dict[str, Any]:
        answer = await service.client.put(
            f"/communication/contacts/{contact}", json=body, headers=tenant.headers()
        )
        assert answer.status_code == expect, answer.text
        return dict(answer.json())

    sms = {"channel": "sms", "address": "13800138000"}
    assert (await put("c1", {"addresses": []}))["errors"][0]["field"] == "addresses"
    assert (await put("c1", {"addresses": [sms] * 21}))["errors"][0]["field"] == "addresses"
    bad = await put("c1", {"addresses": [sms, {"channel": "sms", "address": "12"}]})
    assert bad["errors"][0]["field"] == "addresses[1].address"
    assert (await put("c1", {"addresses": [{"channel": "fax", "address": "1"}]}))["errors"][0][
        "field"
    ].startswith("addresses")
    assert (await put("c1", {"addresses": [sms], "extra": 1}))["errors"][0]["field"] == "extra"
    assert (await put("c" * 201, {"addresses": [sms]}))["errors"][0]["field"] == "contact"
    readonly = await service.client.put(
        "/communication/contacts/c1",
        json={"addresses": [sms]},
        headers=tenant.headers(tenant.read_only_token),
    )
    assert readonly.status_code == 403
    assert (
        await service.client.get("/communication/contacts/c1", headers=tenant.headers())
    ).status_code == 404


async def test_e6_erasure_drops_the_address_from_its_contact(service: Service, tenant: TenantKeys) -> None:
    await service.client.put(
        "/communication/contacts/crm-7",
        json={"addresses": [{"channel": "sms", "address": "13800138000"},
                            {"channel": "email", "address": "ann@example.com"}]},
        headers=tenant.headers(),
    )  # fmt: skip
    erased = await service.client.post(
        "/communication/erasures",
        json={"channel": "email", "address": "ann@example.com"},
        headers=tenant.headers(),
    )
    assert erased.status_code == 200, erased.text
    shown = (await service.client.get("/communication/contacts/crm-7", headers=tenant.headers())).json()
    assert shown["data"]["addresses"] == [{"channel": "sms", "address": "138****8000"}]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_s4_two_opt_ins_of_one_number_at_once_send_one_confirmation(
    service: Service, tenant: TenantKeys
) -> None:
    """A form submitted twice (or a CRM and a form at the same instant): the number is new to
    both requests only if they do not see each other; they are serialized, so one is confirmed."""
    body = {"channel": "sms", "address": "13800138000", "status": "opted_in", "basis": "opt_in",
            "collected_at": isoformat(utcnow())}  # fmt: skip
    answers = await asyncio.gather(
        *(
            service.client.post("/communication/consents", json=body, headers=tenant.headers())
            for _ in range(4)
        )
    )
    assert [a.status_code for a in answers] == [201] * 4
    assert sum(a.json()["data"]["confirmation_id"] is not None for a in answers) == 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_e6_an_objection_and_a_link_at_the_same_instant_both_succeed(
    service: Service, tenant: TenantKeys, daytime_clock: None
) -> None:
    """An objection on A while the tenant links A with B, on which the person objected before:
    both write A's suppression. They take the tenant's consent lock in one order (it deadlocked,
    a 500, when the objection took it only after writing)."""
    for i in range(6):
        a, b = f"1380013{i:04d}", f"b{i}@example.com"
        await service.client.post(
            "/communication/consents",
            json={"channel": "email", "address": b, "status": "opted_out"},
            headers=tenant.headers(),
        )
        withdrawn, linked = await asyncio.gather(
            service.client.delete(f"/communication/consents/sms/{a}", headers=tenant.headers()),
            service.client.put(
                f"/communication/contacts/p{i}",
                json={"addresses": [{"channel": "sms", "address": a}, {"channel": "email", "address": b}]},
                headers=tenant.headers(),
            ),
        )
        assert (withdrawn.status_code, linked.status_code) == (200, 200), (withdrawn.text, linked.text)
        assert (await bulk(service, tenant, **marketing_sms(a)))["items"][0]["status"] == "suppressed"
