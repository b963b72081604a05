"""Provider callbacks through the webhook provider's signed format: receipts move statuses
forward only, duplicates are no-ops, forged or replayed callbacks change nothing, bounces and
complaints suppress, inbound STOP suppresses with exactly one confirmation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from comms.messages.fairness import rank_of
from comms.models import Message, ReceiptEvent, Suppression
from tests.conftest import Service, TenantKeys, make_tenant, wait_until
from tests.integration.conftest import SECRET, add_account, signed
from tests.webhook_sink import WebhookSink


async def sent_message(service: Service, tenant: TenantKeys, to: str = "13800138000") -> str:
    answer = await service.client.post(
        "/communication/bulk",
        json={"channel": "sms", "category": "transactional", "content": "Parcel", "recipients": [to]},
        headers=tenant.headers(),
    )
    log_id = str(answer.json()["items"][0]["id"])

    async def sent() -> bool:
        async with service.db.read() as session:
            row = await session.get(Message, log_id)
        return row is not None and row.status == "sent"

    await wait_until(sent)
    return log_id


async def status_of(service: Service, log_id: str) -> str:
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None
    return row.status


async def post_receipt(service: Service, account: str, events: list[dict[str, Any]], **kw: Any) -> Any:
    body, headers = signed({"events": events}, **kw)
    return await service.client.post(f"/webhooks/webhook/{account}/status", content=body, headers=headers)


async def test_valid_receipt_applies_and_answers_in_vendor_form(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    log_id = await sent_message(live_service, live_tenant)
    answer = await post_receipt(
        live_service, account, [{"event_id": "e1", "id": log_id, "status": "delivered"}]
    )
    assert answer.status_code == 200 and answer.json() == {"ok": True}  # the vendor's form, not the envelope
    assert await status_of(live_service, log_id) == "delivered"
    log = (
        await live_service.client.get(f"/communication/logs/{log_id}", headers=live_tenant.headers())
    ).json()
    assert log["data"]["delivered_at"]


async def test_a_receipt_with_only_the_vendors_id_finds_its_item(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    """Vendors that do not echo our log id (Twilio's MessageSid) are matched by their own id,
    within the account that sent the message; another account's id matches nothing."""
    log_id = await sent_message(live_service, live_tenant)
    async with live_service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.provider_message_id == f"gw-{log_id[-8:]}"
    unknown = await post_receipt(
        live_service, account, [{"event_id": "e0", "message_id": "gw-nothing", "status": "delivered"}]
    )
    assert unknown.status_code == 200 and await status_of(live_service, log_id) == "sent"
    answer = await post_receipt(
        live_service,
        account,
        [{"event_id": "e1", "message_id": row.provider_message_id, "status": "delivered"}],
    )
    assert answer.status_code == 200
    assert await status_of(live_service, log_id) == "delivered"


async def test_a_receipt_ahead_of_the_recorded_send_is_applied_once_the_send_is_recorded(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    """A vendor that names only its own id (Twilio, Tencent) can report before the dispatcher has
    recorded that id: the receipt is kept as ``unmatched`` and applied on the next sweep."""
    from sqlalchemy import update

    log_id = await sent_message(live_service, live_tenant)
    async with live_service.db.begin() as session:  # as it is while the batch is still in flight
        row = await session.get(Message, log_id)
        assert row is not None
        vendor_id = row.provider_message_id
        await session.execute(update(Message).where(Message.id == log_id).values(provider_message_id=None))
    early = [{"event_id": "e-early", "message_id": vendor_id, "status": "delivered"}]
    # Two more events of other vendor ids ride in the same callback: each row keeps its own event,
    # not the whole body (a vendor batching 500 events would otherwise store 500 x 500).
    others = [
        {"event_id": f"e-other{i}", "message_id": f"gw-unknown{i}", "status": "delivered"} for i in (1, 2)
    ]
    assert (await post_receipt(live_service, account, early + others)).status_code == 200
    async with live_service.db.read() as session:
        rows = {r.event_key: r for r in (await session.scalars(select(ReceiptEvent))).all()}
    stored = next(r for r in rows.values() if "e-early" in r.event_key)
    assert (
        stored.outcome == "unmatched" and "gw-unknown" not in stored.payload and vendor_id in stored.payload
    )
    assert all(r.payload.count("gw-unknown") == 1 for r in rows.values() if r is not stored)
    assert await status_of(live_service, log_id) == "sent"
    async with live_service.db.begin() as session:  # the dispatcher records the send
        await session.execute(
            update(Message).where(Message.id == log_id).values(provider_message_id=vendor_id)
        )
    assert await live_service.app.state.dispatcher.retry_unmatched_receipts() == 1
    assert await status_of(live_service, log_id) == "delivered"
    assert await live_service.app.state.dispatcher.retry_unmatched_receipts() == 0  # applied once
    async with live_service.db.read() as session:
        stored = await session.get(ReceiptEvent, stored.id)
    assert stored is not None and stored.outcome == "delivered"


async def test_an_unmatched_receipt_stored_as_the_whole_callback_body_is_still_applied(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    """Rows written before events were kept one by one hold the callback's body: the sweep reads
    them with the account's provider as before."""
    from sqlalchemy import update

    from comms.receipts.service import record_once

    log_id = await sent_message(live_service, live_tenant)
    async with live_service.db.begin() as session:
        row = await session.get(Message, log_id)
        assert row is not None and row.provider_message_id is not None
        event = {"event_id": "old1", "message_id": row.provider_message_id, "status": "delivered"}
        body = json.dumps({"events": [event]})
        await record_once(session, live_tenant.tenant_id, account, "webhook", "status", "old1", body)
        await session.execute(update(ReceiptEvent).values(outcome="unmatched"))
    assert await live_service.app.state.dispatcher.retry_unmatched_receipts() == 1
    assert await status_of(live_service, log_id) == "delivered"


async def test_forged_or_replayed_receipt_is_401_and_changes_nothing(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    log_id = await sent_message(live_service, live_tenant)
    event = [{"event_id": "e1", "id": log_id, "status": "delivered"}]
    forged = await post_receipt(live_service, account, event, secret="another-secret-123456")
    replayed = await post_receipt(live_service, account, event, age=3600)
    assert forged.status_code == 401 and replayed.status_code == 401
    assert await status_of(live_service, log_id) == "sent"
    async with live_service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(ReceiptEvent)) == 0
    wrong_provider = await live_service.client.post(f"/webhooks/aliyun/{account}/status", content=b"{}")
    assert wrong_provider.status_code == 404


async def test_duplicate_and_late_receipts_never_regress(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    log_id = await sent_message(live_service, live_tenant)
    delivered = [{"event_id": "e1", "id": log_id, "status": "delivered"}]
    await post_receipt(live_service, account, delivered)
    again = await post_receipt(live_service, account, delivered)
    assert again.status_code == 200
    late = await post_receipt(
        live_service, account, [{"event_id": "e2", "id": log_id, "status": "undelivered", "error": "late"}]
    )
    assert late.status_code == 200
    assert await status_of(live_service, log_id) == "delivered"  # terminal: never moves back
    async with live_service.db.read() as session:
        events = (await session.scalars(select(ReceiptEvent).order_by(ReceiptEvent.received_at))).all()
    assert [e.outcome for e in events] == ["delivered", "kept delivered"]  # the duplicate was stored once


async def test_hard_bounce_marks_undelivered_and_suppresses(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    log_id = await sent_message(live_service, live_tenant)
    await post_receipt(
        live_service,
        account,
        [
            {
                "event_id": "b1",
                "id": log_id,
                "status": "undelivered",
                "error": "absent subscriber",
                "bounce": "hard",
            }
        ],
    )
    assert await status_of(live_service, log_id) == "undelivered"
    async with live_service.db.read() as session:
        suppression = await session.scalar(select(Suppression))
    assert suppression is not None and suppression.reason == "hard_bounce" and suppression.scope == "all"
    again = await live_service.client.post(
        "/communication/bulk",
        json={"channel": "sms", "category": "transactional", "content": "x", "recipients": ["13800138000"]},
        headers=live_tenant.headers(),
    )
    assert again.json()["items"][0]["status"] == "suppressed"


async def test_a_receipt_saying_the_recipient_opted_out_at_the_carrier_suppresses_marketing(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    delivered_id = await sent_message(live_service, live_tenant, to="13900139000")
    contradicting = {"event_id": "o0", "id": delivered_id, "status": "delivered", "bounce": "opted_out"}
    assert (await post_receipt(live_service, account, [contradicting])).status_code == 200
    async with live_service.db.read() as session:  # a delivered message was not refused: nothing more
        assert await session.scalar(select(Suppression)) is None
    log_id = await sent_message(live_service, live_tenant)
    event = {
        "event_id": "o1",
        "id": log_id,
        "status": "undelivered",
        "error": "opted out",
        "bounce": "opted_out",
    }
    assert (await post_receipt(live_service, account, [event])).status_code == 200
    assert await status_of(live_service, log_id) == "undelivered"
    async with live_service.db.read() as session:
        suppression = await session.scalar(select(Suppression))
    assert suppression is not None
    assert (suppression.reason, suppression.source, suppression.scope) == ("stop", "provider", "marketing")


async def test_inbound_stop_suppresses_and_confirms_exactly_once(
    live_service: Service, live_tenant: TenantKeys, account: str, sink: WebhookSink
) -> None:
    for n, text in enumerate(("STOP", "stop")):
        body, headers = signed({"messages": [{"event_id": f"in{n}", "from": "+8613800138000", "text": text}]})
        answer = await live_service.client.post(
            f"/webhooks/webhook/{account}/inbound", content=body, headers=headers
        )
        assert answer.status_code == 200

    async def confirmed() -> bool:
        return len(sink.bodies) >= 1

    await wait_until(confirmed)
    async with live_service.db.read() as session:
        messages = (await session.scalars(select(Message))).all()
        suppression = await session.scalar(select(Suppression))
    assert len(messages) == 1 and messages[0].category == "transactional"  # one confirmation, not two
    assert "unsubscribed" in sink.bodies[0]["text"]
    assert suppression is not None and suppression.reason == "stop" and suppression.source == "sms_keyword"


async def test_a_stop_holds_even_when_its_confirmation_cannot_be_sent(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    """The tenant's SMS sender is declared for marketing only, so the transactional confirmation
    is refused at submission: the opt-out itself must still be recorded and answered 200."""
    changed = await live_service.client.put(
        "/communication/settings",
        json={"sender_identities": ["news@acme.example", {"address": "ACME", "streams": ["marketing"]}]},
        headers=live_tenant.headers(),
    )
    assert changed.status_code == 200, changed.text
    body, headers = signed({"messages": [{"event_id": "in-1", "from": "+8613800138000", "text": "STOP"}]})
    answer = await live_service.client.post(
        f"/webhooks/webhook/{account}/inbound", content=body, headers=headers
    )
    assert answer.status_code == 200
    async with live_service.db.read() as session:
        suppression = await session.scalar(select(Suppression))
        confirmations = (await session.scalars(select(Message))).all()
    assert suppression is not None and suppression.reason == "stop"
    assert confirmations == []  # no reply could be sent, and nothing half-written


async def test_one_unreadable_sender_does_not_undo_the_other_stops_of_its_callback(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    """Vendors batch replies: a STOP from a number that is no phone number is recorded as ignored,
    and the valid STOP beside it still suppresses (a 4xx would make the vendor retry forever)."""
    body, headers = signed(
        {
            "messages": [
                {"event_id": "in-ok", "from": "+8613800138000", "text": "\uff34\uff24"},
                {"event_id": "in-bad", "from": "not-a-number", "text": "T"},
            ]
        }
    )
    answer = await live_service.client.post(
        f"/webhooks/webhook/{account}/inbound", content=body, headers=headers
    )
    assert answer.status_code == 200, answer.text
    async with live_service.db.read() as session:
        suppressions = (await session.scalars(select(Suppression))).all()
        outcomes = dict((await session.execute(select(ReceiptEvent.event_key, ReceiptEvent.outcome))).all())
    assert [s.reason for s in suppressions] == ["stop"]
    assert outcomes["inbound:in-ok"].startswith("stop")
    assert outcomes["inbound:in-bad"].startswith("ignored")


async def test_a_receipt_that_overtakes_the_send_answer_is_kept(
    live_service: Service, live_tenant: TenantKeys, account: str, sink: WebhookSink
) -> None:
    sink.hang_seconds = 1.0  # the gateway delivers, and calls back, before it answers our POST
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "category": "transactional",
            "content": "Parcel",
            "recipients": ["13800138000"],
        },
        headers=live_tenant.headers(),
    )
    log_id = answer.json()["items"][0]["id"]

    async def sending() -> bool:
        return await status_of(live_service, log_id) == "sending"

    await wait_until(sending)
    early = await post_receipt(
        live_service, account, [{"event_id": "x1", "id": log_id, "status": "delivered"}]
    )
    assert early.status_code == 200
    assert await status_of(live_service, log_id) == "delivered"

    async def answered() -> bool:
        async with live_service.db.read() as session:
            row = await session.get(Message, log_id)
        return row is not None and row.sent_at is not None

    await wait_until(answered)
    async with live_service.db.read() as session:
        row = await session.get(Message, log_id)
    assert (
        row is not None
        and row.status == "delivered"
        and row.provider == "webhook"
        and row.lease_owner is None
    )


async def test_a_receipt_for_an_attempt_that_got_no_answer_settles_the_waiting_resend(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    """An attempt whose answer was lost is re-queued flagged for one re-send. Its receipt proves
    that attempt reached the provider: the item becomes `delivered` and is not sent again. A row
    waiting for an ordinary retry (not flagged) is not moved by a stray receipt."""
    from sqlalchemy import update

    log_id = await sent_message(live_service, live_tenant)
    other = await sent_message(live_service, live_tenant, to="13800138001")
    far = datetime(2999, 1, 1, tzinfo=UTC)  # keep both out of the dispatcher's reach
    async with live_service.db.begin() as session:
        for row_id, flagged in ((log_id, True), (other, False)):
            await session.execute(
                update(Message)
                .where(Message.id == row_id)
                .values(status="queued", possible_duplicate=flagged, due_at=far, queue_rank=rank_of(far))
            )
    answer = await post_receipt(
        live_service,
        account,
        [
            {"event_id": "late-1", "id": log_id, "status": "delivered"},
            {"event_id": "late-2", "id": other, "status": "delivered"},
        ],
    )
    assert answer.status_code == 200
    assert await status_of(live_service, log_id) == "delivered"
    assert await status_of(live_service, other) == "queued"


OTHER_SECRET = "other-gateway-secret-0123456789"


async def second_account(service: Service, tenant: TenantKeys, sink: WebhookSink) -> str:
    """A second SMS gateway of the tenant's, after `account` in priority, with a secret of its own."""
    other = await add_account(service, tenant, sink.url, secret=OTHER_SECRET, name="other", priority=9)
    return str(other["id"])


async def test_a_callback_on_another_account_cannot_touch_a_message_it_did_not_carry(
    live_service: Service, live_tenant: TenantKeys, account: str, sink: WebhookSink
) -> None:
    """Whoever holds one account's callback secret (a gateway the tenant runs itself, a leaked
    token) can move only what that account carried: a signed receipt naming a message another
    account sent changes nothing and suppresses no one."""
    other_id = await second_account(live_service, live_tenant, sink)
    log_id = await sent_message(live_service, live_tenant)  # through `account` (priority first)
    event = {"event_id": "x1", "id": log_id, "status": "undelivered", "bounce": "hard"}
    answer = await post_receipt(live_service, other_id, [event], secret=OTHER_SECRET)
    assert answer.status_code == 200
    assert await status_of(live_service, log_id) == "sent"
    async with live_service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0
        outcome = await session.scalar(
            select(ReceiptEvent.outcome).where(ReceiptEvent.event_key.like("%x1%"))
        )
    assert outcome == "ignored: unknown message"
    carried = await post_receipt(live_service, account, [{**event, "event_id": "x2"}])
    assert carried.status_code == 200 and await status_of(live_service, log_id) == "undelivered"


async def test_a_message_no_account_has_sent_takes_no_receipt_from_any(
    live_service: Service, live_tenant: TenantKeys, account: str, sink: WebhookSink
) -> None:
    """Any account of a channel may report on a message whose send is under way and not yet
    recorded (a receipt faster than the send's answer); a message not being sent at all
    (scheduled here; or queued, cancelled, refused) has no receipt to get: a signed fake one
    moves nothing and suppresses no one, complaint or hard bounce."""
    from datetime import timedelta

    from comms.kit.clock import isoformat, utcnow

    other_id = await second_account(live_service, live_tenant, sink)
    answer = await live_service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "category": "transactional",
            "content": "x",
            "recipients": ["13800138000"],
            "send_at": isoformat(utcnow() + timedelta(days=30)),
        },
        headers=live_tenant.headers(),
    )
    assert answer.status_code == 202, answer.text
    log_id = answer.json()["items"][0]["id"]
    for i, (secret_of, bounce) in enumerate(((other_id, "complaint"), (account, "hard"))):
        event = {"event_id": f"s{i}", "id": log_id, "status": "undelivered", "bounce": bounce}
        secret = OTHER_SECRET if secret_of == other_id else None
        posted = await post_receipt(
            live_service, secret_of, [event], **({"secret": secret} if secret else {})
        )
        assert posted.status_code == 200, posted.text
    assert await status_of(live_service, log_id) == "scheduled"
    async with live_service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0


async def test_a_possible_duplicates_other_account_suppresses_no_one_by_a_receipt_that_moves_nothing(
    live_service: Service, live_tenant: TenantKeys, account: str, sink: WebhookSink
) -> None:
    """A possible duplicate may take receipts from any account of its channel (its earlier attempt
    may have gone anywhere). Once its re-send is recorded `delivered` by its carrier, another
    account's signed hard bounce moves nothing, and then suppresses no one either."""
    from sqlalchemy import update

    other_id = await second_account(live_service, live_tenant, sink)
    log_id = await sent_message(live_service, live_tenant)  # through `account`
    async with live_service.db.begin() as session:
        await session.execute(
            update(Message).where(Message.id == log_id).values(status="delivered", possible_duplicate=True)
        )
    event = {"event_id": "d1", "id": log_id, "status": "undelivered", "bounce": "hard"}
    answer = await post_receipt(live_service, other_id, [event], secret=OTHER_SECRET)
    assert answer.status_code == 200
    assert await status_of(live_service, log_id) == "delivered"
    async with live_service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0
    late = await post_receipt(live_service, account, [{**event, "event_id": "d2"}])  # its carrier's
    assert late.status_code == 200
    async with live_service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 1


async def test_an_email_accounts_secret_opts_no_number_out(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    """Replies and keywords are SMS: a signed STOP on an email account's inbound URL is a 404 in
    the envelope and suppresses nothing."""
    email = await add_account(
        live_service, live_tenant, sink.url, channel="email", name="mail", secret=OTHER_SECRET
    )
    body, headers = signed(
        {"messages": [{"event_id": "m1", "from": "+8613800138000", "text": "STOP"}]}, secret=OTHER_SECRET
    )
    answer = await live_service.client.post(
        f"/webhooks/webhook/{email['id']}/inbound", content=body, headers=headers
    )
    assert answer.status_code == 404 and answer.json()["code"] == 404, answer.text
    async with live_service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0


async def test_odd_callbacks_are_4xx_never_500(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    """Whatever reaches a callback URL gets a 4xx in the envelope: a timestamp header too long for
    int() (unsigned: 401), JSON nested thousands deep (unsigned, which SES's check parses: 401;
    signed: 400), and an email account's inbound URL (404, before any SNS control message is
    handled)."""
    from comms.providers.webhook import signature

    deep = b'{"events": [], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    timestamp = "1" * 5000
    headers = {"X-Comms-Timestamp": timestamp, "X-Comms-Signature": signature(SECRET, "1", b"{}")}
    too_long = await live_service.client.post(
        f"/webhooks/webhook/{account}/status", content=b"{}", headers=headers
    )
    assert too_long.status_code == 401 and too_long.json()["code"] == 401, too_long.text
    _, signed_headers = signed({})
    nested = deep
    signed_headers["X-Comms-Signature"] = signature(SECRET, signed_headers["X-Comms-Timestamp"], nested)
    for kind in ("status", "inbound"):
        answer = await live_service.client.post(
            f"/webhooks/webhook/{account}/{kind}", content=nested, headers=signed_headers
        )
        assert answer.status_code == 400 and answer.json()["code"] == 400, (kind, answer.text)
    ses = await live_service.client.post(
        "/communication/providers",
        json={
            "channel": "email",
            "provider": "ses",
            "name": "ses",
            "config": {
                "region": "eu-west-1",
                "access_key_id": "A" * 16,
                "secret_access_key": "x",
                "sns_topic_arn": "arn:aws:sns:eu-west-1:123456789012:comms",
            },
        },
        headers=live_tenant.headers(),
    )
    assert ses.status_code == 201, ses.text
    ses_id = ses.json()["data"]["id"]
    unsigned = await live_service.client.post(f"/webhooks/ses/{ses_id}/status", content=b"[" * 5000)
    assert unsigned.status_code == 401 and unsigned.json()["code"] == 401, unsigned.text
    control = {"Type": "SubscriptionConfirmation", "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/x"}
    inbound = await live_service.client.post(f"/webhooks/ses/{ses_id}/inbound", json=control)
    assert inbound.status_code == 404 and inbound.json()["code"] == 404, inbound.text


async def test_a_batch_retry_forgets_the_earlier_attempts_provider(
    service: Service, tenant: TenantKeys
) -> None:
    """A retried item's earlier vendor id and account are cleared with it: a late receipt about
    the earlier attempt can no longer be taken for the new one's."""
    answer = await service.client.post(
        "/communication/bulk",
        json={"channel": "sms", "category": "transactional", "content": "x", "recipients": ["13800138000"]},
        headers=tenant.headers(),
    )
    log_id, batch_id = answer.json()["items"][0]["id"], answer.json()["batch_id"]
    async with service.db.begin() as session:
        row = await session.get(Message, log_id)
        assert row is not None
        row.status, row.provider, row.provider_account_id, row.provider_message_id = (
            "undelivered", "webhook", "acc_old", "gw-old",
        )  # fmt: skip
    retried = await service.client.post(f"/communication/batches/{batch_id}/retry", headers=tenant.headers())
    assert retried.status_code == 200, retried.text
    async with service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.status == "queued"
    assert (row.provider, row.provider_account_id, row.provider_message_id) == (None, None, None)


async def test_receipts_of_other_systems_do_not_keep_a_fresh_one_from_being_tried(
    live_service: Service, live_tenant: TenantKeys, account: str
) -> None:
    """An account also used outside comms brings receipts that never match: they wait out their
    hour. A sweep tries the newest as well as the oldest, so a fresh receipt of ours (just ahead of
    its send's recording) is applied though the older ones fill a sweep."""
    from datetime import timedelta

    from sqlalchemy import update

    from comms.kit.clock import utcnow
    from comms.providers.base import DeliveryEvent
    from comms.receipts.service import event_payload, record_once, retry_unmatched

    log_id = await sent_message(live_service, live_tenant)
    dispatcher = live_service.app.state.dispatcher
    async with live_service.db.begin() as session:
        row = await session.get(Message, log_id)
        assert row is not None and row.provider_message_id is not None
        for i in range(4):  # another system's, half an hour old
            foreign = DeliveryEvent(f"f{i}", None, f"gw-foreign{i}", "delivered")
            await record_once(
                session, live_tenant.tenant_id, account, "webhook", "status", f"f{i}", event_payload(foreign)
            )
        await session.execute(
            update(ReceiptEvent).values(outcome="unmatched", received_at=utcnow() - timedelta(minutes=30))
        )
        ours = DeliveryEvent("ours", None, row.provider_message_id, "delivered")
        await record_once(
            session, live_tenant.tenant_id, account, "webhook", "status", "ours", event_payload(ours)
        )
        await session.execute(
            update(ReceiptEvent).where(ReceiptEvent.event_key == "status:ours").values(outcome="unmatched")
        )
    async with live_service.db.begin() as session:
        assert await retry_unmatched(session, dispatcher.router.provider_for, limit=2) == 1
    assert await status_of(live_service, log_id) == "delivered"


async def test_an_early_receipt_through_the_account_a_retry_went_out_by_waits_for_its_send(
    live_service: Service, live_tenant: TenantKeys, account: str, sink: WebhookSink
) -> None:
    """A retry that goes out through another account than the earlier attempt: its receipt,
    naming our id, can arrive while the row still shows the earlier account. It is kept and
    applied once the send is recorded, not dropped."""
    from sqlalchemy import update

    other_id = await second_account(live_service, live_tenant, sink)
    log_id = await sent_message(live_service, live_tenant)  # recorded under `account`
    async with live_service.db.begin() as session:  # the retry is in flight, through `other`
        await session.execute(update(Message).where(Message.id == log_id).values(status="sending"))
    event = {"event_id": "r1", "id": log_id, "status": "delivered"}
    assert (await post_receipt(live_service, other_id, [event], secret=OTHER_SECRET)).status_code == 200
    async with live_service.db.read() as session:
        outcome = await session.scalar(
            select(ReceiptEvent.outcome).where(ReceiptEvent.event_key.like("%r1%"))
        )
    assert outcome == "unmatched" and await status_of(live_service, log_id) == "sending"
    async with live_service.db.begin() as session:  # the send is recorded under `other`
        await session.execute(
            update(Message).where(Message.id == log_id).values(status="sent", provider_account_id=other_id)
        )
    assert await live_service.app.state.dispatcher.retry_unmatched_receipts() == 1
    assert await status_of(live_service, log_id) == "delivered"


async def test_another_tenants_account_cannot_touch_a_message_whatever_its_state(
    live_service: Service, live_tenant: TenantKeys, account: str, sink: WebhookSink
) -> None:
    """A message in flight or flagged for a re-send may be settled by a receipt through any of
    its tenant's accounts of its channel (an earlier attempt may have gone there), never through
    another tenant's: a signed receipt of a gateway of tenant B naming tenant A's log id changes
    nothing."""
    from sqlalchemy import update

    log_id = await sent_message(live_service, live_tenant)
    far = datetime(2999, 1, 1, tzinfo=UTC)
    async with live_service.db.begin() as session:  # re-queued flagged: its attempt got no answer
        await session.execute(
            update(Message)
            .where(Message.id == log_id)
            .values(status="queued", possible_duplicate=True, due_at=far, queue_rank=rank_of(far))
        )
    intruder = await make_tenant(live_service.db, "Intruder")
    theirs = await add_account(live_service, intruder, sink.url, secret=OTHER_SECRET, name="theirs")
    event = {"event_id": "b1", "id": log_id, "status": "undelivered", "bounce": "hard"}
    answer = await post_receipt(live_service, str(theirs["id"]), [event], secret=OTHER_SECRET)
    assert answer.status_code == 200
    assert await status_of(live_service, log_id) == "queued"
    async with live_service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Suppression)) == 0
    # The tenant's own account settles it, as before.
    own = await post_receipt(live_service, account, [{**event, "event_id": "b2"}])
    assert own.status_code == 200 and await status_of(live_service, log_id) == "undelivered"


async def test_receipts_on_a_sibling_accounts_url_apply_when_the_vendor_account_is_the_same(
    live_service: Service, live_tenant: TenantKeys, account: str, sink: WebhookSink
) -> None:
    """Two comms accounts of one vendor account (here one gateway, one signing secret; two API
    keys of one SendGrid account, one SNS topic, one Tencent SdkAppId) get their receipts on
    whichever URL the vendor was given: a receipt arriving on the other account's URL applies
    to the message, by our id or by the vendor's. An account of another vendor account still
    cannot touch it."""
    twin = await add_account(live_service, live_tenant, sink.url, name="twin", priority=9)  # same secret
    stranger = await second_account(live_service, live_tenant, sink)  # a secret of its own
    by_ours = await sent_message(live_service, live_tenant)  # through `account` (priority first)
    by_theirs = await sent_message(live_service, live_tenant, to="13800138001")
    async with live_service.db.read() as session:
        carried = await session.get(Message, by_theirs)
    assert carried is not None and carried.provider_account_id == account and carried.provider_message_id

    refused = await post_receipt(
        live_service,
        stranger,
        [{"event_id": "s1", "id": by_ours, "status": "delivered"}],
        secret=OTHER_SECRET,
    )
    assert refused.status_code == 200 and await status_of(live_service, by_ours) == "sent"
    answer = await post_receipt(
        live_service,
        str(twin["id"]),
        [
            {"event_id": "t1", "id": by_ours, "status": "delivered"},
            {
                "event_id": "t2",
                "message_id": carried.provider_message_id,
                "status": "undelivered",
                "error": "absent",
            },
        ],
    )
    assert answer.status_code == 200
    assert await status_of(live_service, by_ours) == "delivered"
    assert await status_of(live_service, by_theirs) == "undelivered"


async def test_an_account_whose_config_cannot_be_read_does_not_stall_the_receipt_sweep(
    live_service: Service, live_tenant: TenantKeys, account: str, sink: WebhookSink
) -> None:
    """The sweep of waiting receipts compares accounts' callback scopes, which reads their configs.
    One that cannot be read now (a key lost, a rule that refuses what was stored) shares nothing,
    and the sweep still applies the receipts of the others."""
    from sqlalchemy import update

    from comms.models import ProviderAccount
    from comms.providers.base import DeliveryEvent
    from comms.receipts.service import event_payload, record_once, retry_unmatched

    broken = await second_account(live_service, live_tenant, sink)
    log_id = await sent_message(live_service, live_tenant)
    dispatcher = live_service.app.state.dispatcher
    async with live_service.db.begin() as session:
        row = await session.get(Message, log_id)
        assert row is not None and row.provider_message_id is not None
        theirs = DeliveryEvent("b1", None, "gw-never-sent", "delivered")
        await record_once(
            session, live_tenant.tenant_id, broken, "webhook", "status", "b1", event_payload(theirs)
        )
        ours = DeliveryEvent("o1", None, row.provider_message_id, "delivered")
        await record_once(
            session, live_tenant.tenant_id, account, "webhook", "status", "o1", event_payload(ours)
        )
        await session.execute(update(ReceiptEvent).values(outcome="unmatched"))
        await session.execute(
            update(ProviderAccount).where(ProviderAccount.id == broken).values(config={"url": "not a url"})
        )
    async with live_service.db.begin() as session:
        assert await retry_unmatched(session, dispatcher.router.provider_for) == 1
    assert await status_of(live_service, log_id) == "delivered"
