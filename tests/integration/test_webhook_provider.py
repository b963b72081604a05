"""Provider accounts, the webhook provider over real HTTP, routing with failover and breakers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from comms.models import Message, ProviderAccount
from tests.conftest import Service, TenantKeys, make_tenant, statuses, wait_for_message, wait_until
from tests.integration.conftest import SECRET, add_account
from tests.webhook_sink import WebhookSink

# One verification code, sent while a bulk holds the account.
CODE: dict[str, Any] = {
    "channel": "sms",
    "category": "verification",
    "content": "Code {{ code }}",
    "variables": {"code": "4711"},
    "recipients": ["13900139000"],
}


def sms_bulk(n: int, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "sms",
        "category": "transactional",
        "content": "Parcel {{ p }}",
        "variables": {"p": "PX"},
        "recipients": [f"138001{i:05d}" for i in range(n)],
    }
    body.update(extra)
    return body


async def send_until(
    service: Service, tenant: TenantKeys, body: dict[str, Any], counts: dict[str, int]
) -> httpx.Response:
    """Send ``body`` and wait until its batch's items have these statuses: the 202."""
    answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
    batch = answer.json()["batch_id"]

    async def settled() -> bool:
        return await statuses(service, batch) == counts

    await wait_until(settled)
    return answer


async def test_provider_accounts_validate_and_keep_secrets_write_only(
    service: Service, tenant: TenantKeys
) -> None:
    created = await add_account(service, tenant, "https://gw.example/send")
    assert created["id"].startswith("acc_") and "secret" not in created["config"]
    assert created["secret_fields_set"] == ["secret"]
    assert created["callback_urls"]["status"] == f"https://comms.test/webhooks/webhook/{created['id']}/status"
    async with service.db.read() as session:
        stored = await session.get(ProviderAccount, created["id"])
    assert stored is not None and SECRET not in str(stored.config)  # encrypted at rest
    h = tenant.headers()
    for body, field in (
        ({"channel": "sms", "provider": "nope", "name": "x"}, "provider"),
        (
            {
                "channel": "sms",
                "provider": "webhook",
                "name": "x",
                "config": {"url": "ftp://x", "secret": SECRET},
            },
            "config.url",
        ),
        (
            {
                "channel": "sms",
                "provider": "webhook",
                "name": "x",
                "config": {"url": "https://x", "secret": "short"},
            },
            "config.secret",
        ),
        (
            {"channel": "sms", "provider": "webhook", "name": "x", "config": {"url": "https://x"}},
            "config.secret",
        ),
        # Hosts and ports urllib only objects to when they are read (by a send, a callback).
        *(
            (
                {
                    "channel": "sms",
                    "provider": "webhook",
                    "name": "x",
                    "config": {"url": url, "secret": SECRET},
                },
                "config.url",
            )
            for url in ("https://[zz]/send", "https://[::1/send", "https://]/", "https://gw.example:abc/send")
        ),
        (
            {
                "channel": "sms",
                "provider": "tencent",
                "name": "x",
                "config": {
                    "secret_id": "a",
                    "secret_key": "b",
                    "sdk_app_id": "1400006666",
                    "callback_token": "tok0123456789abcdef0123",
                    "endpoint": "https://[zz]/",
                },
            },
            "config.endpoint",
        ),
    ):
        answer = await service.client.post("/communication/providers", json=body, headers=h)
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == field
    updated = await service.client.put(
        f"/communication/providers/{created['id']}",
        json={"config": {"url": "https://gw2.example/send"}},
        headers=h,
    )
    assert (
        updated.status_code == 200 and updated.json()["data"]["config"]["url"] == "https://gw2.example/send"
    )
    assert updated.json()["data"]["secret_fields_set"] == ["secret"]  # kept though not given again
    other = await make_tenant(service.db, "Other")
    assert (
        await service.client.get(f"/communication/providers/{created['id']}", headers=other.headers())
    ).status_code == 404
    assert (
        await service.client.get("/communication/providers", headers=tenant.headers(tenant.read_only_token))
    ).status_code == 403
    assert (
        await service.client.delete(f"/communication/providers/{created['id']}", headers=h)
    ).status_code == 200


async def test_bulk_goes_through_the_webhook_signed(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    account = await add_account(live_service, live_tenant, sink.url)
    answer = await live_service.client.post(
        "/communication/bulk", json=sms_bulk(30), headers=live_tenant.headers()
    )
    batch = answer.json()["batch_id"]

    async def sent() -> bool:
        return await statuses(live_service, batch) == {"sent": 30}

    await wait_until(sent)
    assert sink.bad_signatures == 0 and len(sink.received) == 30 and set(sink.received.values()) == {1}
    body = sink.bodies[0]
    assert body["to"].startswith("+86") and body["text"] == "Parcel PX" and body["from"] == "ACME"
    log = (
        await live_service.client.get(
            f"/communication/logs/{answer.json()['items'][0]['id']}", headers=live_tenant.headers()
        )
    ).json()["data"]
    assert log["provider"] == "webhook" and log["provider_message_id"].startswith("gw-")
    async with live_service.db.read() as session:
        row = await session.get(Message, log["id"])
    assert row is not None and row.provider_account_id == account["id"]


async def test_per_message_answers_map_to_statuses(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    live_service.settings.max_attempts = 2
    await add_account(live_service, live_tenant, sink.url)
    sink.per_message["+8613800100000"] = {"status": "rejected", "error": "number blacklisted"}
    sink.per_message["+8613800100001"] = {"status": "retry", "error": "busy"}
    answer = await send_until(live_service, live_tenant, sms_bulk(3), {"failed": 2, "sent": 1})
    batch = answer.json()["batch_id"]
    items = (
        await live_service.client.get(f"/communication/logs?batch_id={batch}", headers=live_tenant.headers())
    ).json()
    errors = sorted(i["error"] or "" for i in items["items"])
    assert (
        errors[0] == ""
        and "number blacklisted" in errors[1]
        and "retries exhausted after 2 attempts: busy" in errors[2]
    )
    assert sink.received[answer.json()["items"][1]["id"]] == 2  # the retried one was offered twice


async def test_a_recipient_the_gateway_reports_opted_out_is_suppressed_for_marketing(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    """A STOP that went to the carrier or the vendor never reaches comms' inbound route; the
    vendor's refusal says so (Twilio 21610, Tencent PhoneNumberInBlacklist, a gateway's
    ``opted_out``): the message fails and the recipient is suppressed for marketing, as after a
    STOP of comms' own, while transactional messages still go to them."""
    await add_account(live_service, live_tenant, sink.url)
    sink.per_message["+8613800100000"] = {"status": "opted_out"}
    answer = await send_until(live_service, live_tenant, sms_bulk(2), {"failed": 1, "sent": 1})
    refused = answer.json()["items"][0]["id"]
    log = (
        await live_service.client.get(f"/communication/logs/{refused}", headers=live_tenant.headers())
    ).json()
    assert log["data"]["error"] == "the recipient opted out at the gateway or the carrier"
    listed = (
        await live_service.client.get("/communication/suppressions", headers=live_tenant.headers())
    ).json()
    assert [(i["reason"], i["source"], i["scope"]) for i in listed["items"]] == [
        ("stop", "provider", "marketing")
    ]
    marketing = sms_bulk(2, category="announcement", content="Store opens at 9")
    later = await live_service.client.post(
        "/communication/bulk", json=marketing, headers=live_tenant.headers()
    )
    first, second = later.json()["items"]
    assert (first["status"], first["error"]) == ("suppressed", "recipient unsubscribed")
    assert second["status"] in ("queued", "deferred")  # (deferred in Shanghai's quiet hours)
    again = await live_service.client.post(
        "/communication/bulk", json=sms_bulk(1), headers=live_tenant.headers()
    )
    assert again.json()["items"][0]["status"] == "queued"  # transactional: still sent to them


async def test_failover_to_the_secondary_sends_each_message_once(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    primary = await WebhookSink(SECRET, fail_status=500).start()
    secondary = await WebhookSink(SECRET).start()
    live_service.settings.dispatch_batch_size = 5  # many calls, so the primary's breaker opens
    try:
        first_account = await add_account(live_service, live_tenant, primary.url, name="primary", priority=1)
        await add_account(live_service, live_tenant, secondary.url, name="secondary", priority=2)
        first = await live_service.client.post(
            "/communication/bulk", json=sms_bulk(40), headers=live_tenant.headers()
        )

        async def first_sent() -> bool:
            return await statuses(live_service, first.json()["batch_id"]) == {"sent": 40}

        await wait_until(first_sent)
        await primary.stop()  # now connection refused
        second = await live_service.client.post(
            "/communication/bulk", json=sms_bulk(40, content="Second {{ p }}"), headers=live_tenant.headers()
        )

        async def second_sent() -> bool:
            return await statuses(live_service, second.json()["batch_id"]) == {"sent": 40}

        await wait_until(second_sent)
        assert len(secondary.received) == 80 and set(secondary.received.values()) == {1}  # none twice
        assert not primary.received  # it never accepted anything
        items = (
            await live_service.client.get("/communication/logs?page_size=5", headers=live_tenant.headers())
        ).json()
        assert {i["provider"] for i in items["items"]} == {"webhook"}
        states = live_service.app.state.dispatcher.router.breaker_states()
        assert "open" in set(states.values())
        assert primary.requests < 16  # once open, the primary is skipped rather than tried per call
        scraped = (await live_service.client.get("/metrics")).text
        assert f'comms_provider_breaker_state{{account="{first_account["id"]}"}} 2.0' in scraped  # open
    finally:
        await primary.stop()
        await secondary.stop()


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateway_error_is_no_refusal_to_fail_over_on(
    live_service: Service, live_tenant: TenantKeys, status: int
) -> None:
    """A 502 or 504 comes from a proxy in front of the vendor that passed the request on: the
    vendor may have it. The message is not handed to the next account as though nothing had left;
    it is re-sent once, flagged possible_duplicate (where the vendor is asked first if it can be)."""
    primary = await WebhookSink(SECRET, fail_status=status).start()
    secondary = await WebhookSink(SECRET).start()
    try:
        await add_account(live_service, live_tenant, primary.url, name="primary", priority=1)
        await add_account(live_service, live_tenant, secondary.url, name="secondary", priority=2)
        answer = await live_service.client.post(
            "/communication/bulk", json=sms_bulk(1), headers=live_tenant.headers()
        )
        log_id = answer.json()["items"][0]["id"]
        # Both attempts go to the primary (one failed call does not open its breaker) and get the
        # same answer: the message ends unknown, and the secondary never had it.
        row = await wait_for_message(live_service, log_id, lambda m: m.status not in ("queued", "sending"))
        assert (row.status, row.possible_duplicate, row.attempts) == ("unknown", True, 2)
        assert row.error == (
            f"HTTP {status} from a gateway in front of the webhook endpoint: the request may have reached it"
        )
        assert primary.requests == 2 and not secondary.received
    finally:
        await primary.stop()
        await secondary.stop()


async def test_a_primary_that_never_answers_opens_its_breaker(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    """Calls that time out return UNKNOWN rather than raise; a chunk with nothing but UNKNOWN
    counts as a failure, so after a few the breaker opens and the rest goes to the secondary
    (the unanswered ones are sent there once more, flagged)."""
    primary = await WebhookSink(SECRET).start()
    primary.hang_seconds = 1.0  # far past the account's 0.2 s timeout
    secondary = await WebhookSink(SECRET).start()
    live_service.settings.dispatch_batch_size = 1  # one call per message
    try:
        first = await add_account(
            live_service,
            live_tenant,
            primary.url,
            name="primary",
            priority=1,
            config={"url": primary.url, "secret": SECRET, "timeout_seconds": 0.2},
        )
        await add_account(live_service, live_tenant, secondary.url, name="secondary", priority=2)
        created = await live_service.client.post(
            "/communication/bulk", json=sms_bulk(12), headers=live_tenant.headers()
        )

        async def all_sent() -> bool:
            return await statuses(live_service, created.json()["batch_id"]) == {"sent": 12}

        await wait_until(all_sent)
        assert live_service.app.state.dispatcher.router.breaker_states()[first["id"]] != "closed"
        assert primary.requests < 12  # not every message was tried on the silent primary
        assert len(secondary.received) == 12 and set(secondary.received.values()) == {1}
    finally:
        await primary.stop()
        await secondary.stop()


async def test_no_answer_is_resent_once_flagged_possible_duplicate(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    await add_account(
        live_service,
        live_tenant,
        sink.url,
        config={"url": sink.url, "secret": SECRET, "timeout_seconds": 0.3},
    )
    sink.hang_seconds = 1.0
    answer = await live_service.client.post(
        "/communication/bulk", json=sms_bulk(1), headers=live_tenant.headers()
    )
    log_id = answer.json()["items"][0]["id"]

    async def flagged() -> bool:
        return log_id in sink.flagged

    await wait_until(flagged)
    sink.hang_seconds = 0

    async def settled() -> bool:
        async with live_service.db.read() as session:
            row = await session.get(Message, log_id)
        return row is not None and row.status in ("sent", "unknown")

    await wait_until(settled)
    async with live_service.db.read() as session:
        row = await session.get(Message, log_id)
    assert row is not None and row.possible_duplicate is True


async def test_a_fault_of_ours_mid_call_is_never_offered_to_the_next_route(
    live_service: Service, live_tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request reached the primary, then our own code failed reading the answer (a bug, not
    a vendor refusal): the message may have been taken, so it is not failed over to the secondary;
    it is re-sent once to the primary, flagged as a possible duplicate."""
    import comms.providers.webhook as webhook

    primary = await WebhookSink(SECRET).start()
    secondary = await WebhookSink(SECRET).start()
    faults = {"left": 1}
    parse = webhook._results

    def faulty_results(messages: Any, raw: bytes, status: int) -> Any:
        if faults["left"]:
            faults["left"] -= 1
            raise RuntimeError("a bug while reading the answer")
        return parse(messages, raw, status)

    monkeypatch.setattr(webhook, "_results", faulty_results)
    try:
        await add_account(live_service, live_tenant, primary.url, name="primary", priority=1)
        await add_account(live_service, live_tenant, secondary.url, name="secondary", priority=2)
        answer = await live_service.client.post(
            "/communication/bulk", json=sms_bulk(1), headers=live_tenant.headers()
        )
        log_id = answer.json()["items"][0]["id"]
        row = await wait_for_message(live_service, log_id, lambda m: m.status == "sent")
        assert row.possible_duplicate is True
        assert not secondary.received  # never offered to a second provider
        assert list(primary.received.values()) == [2] and log_id in primary.flagged  # once more, flagged
    finally:
        await primary.stop()
        await secondary.stop()


async def test_a_failing_send_rate_check_sends_nothing_and_retries(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    """The rate check itself fails (before any request): nothing left, so the message is retried
    later as a plain transient failure, not taken for a possible duplicate."""

    class BrokenLimiter:
        async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
            raise RuntimeError("limiter broken")

        async def close(self) -> None:
            return None

    dispatcher = live_service.app.state.dispatcher
    working, dispatcher.limiter = dispatcher.limiter, BrokenLimiter()
    try:
        await add_account(live_service, live_tenant, sink.url, rate_per_second=100)
        answer = await live_service.client.post(
            "/communication/bulk", json=sms_bulk(1), headers=live_tenant.headers()
        )
        log_id = answer.json()["items"][0]["id"]
        row = await wait_for_message(live_service, log_id, lambda m: m.attempts >= 1 and m.status == "queued")
        assert "send rate check failed" in (row.error or "")
        assert row.possible_duplicate is False and not sink.received
    finally:
        dispatcher.limiter = working


async def test_heartbeat_keeps_a_slow_send_from_being_reaped(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    live_service.settings.lease_seconds = 2.0  # the call below takes longer than a whole lease
    await add_account(live_service, live_tenant, sink.url)
    sink.hang_seconds = 4.0
    answer = await live_service.client.post(
        "/communication/bulk", json=sms_bulk(3), headers=live_tenant.headers()
    )
    batch = answer.json()["batch_id"]

    async def sent() -> bool:
        return await statuses(live_service, batch) == {"sent": 3}

    await wait_until(sent)
    assert set(sink.received.values()) == {1} and not sink.flagged  # never reaped, never re-sent


async def test_a_bulk_in_flight_does_not_hold_back_another_tenants_code(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    """Fair share: tenant A's bulk fills every dispatch slot with slow provider calls; tenant B's
    verification code goes out through the express lane while all of them are still in flight."""
    live_service.settings.lease_seconds = 30
    await add_account(live_service, live_tenant, sink.url)
    sink.hang_seconds = 3.0
    bulk = await live_service.client.post(
        "/communication/bulk", json=sms_bulk(2500), headers=live_tenant.headers()
    )
    batch = bulk.json()["batch_id"]

    async def slots_full() -> bool:
        return sink.requests >= live_service.settings.dispatch_concurrency

    await wait_until(slots_full)
    other = await make_tenant(live_service.db, name="Beta")
    code = await live_service.client.post(
        "/communication/bulk",
        json=CODE,
        headers=other.headers(),
    )
    code_batch = code.json()["batch_id"]

    async def code_sent() -> bool:
        return await statuses(live_service, code_batch) == {"sent": 1}

    await wait_until(code_sent)
    counts = await statuses(live_service, batch)
    assert "sent" not in counts, counts  # every one of A's calls was still in flight
    sink.hang_seconds = 0


async def test_a_text_too_long_for_the_primary_goes_to_a_route_that_takes_it(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    """Provider capabilities drive routing: Twilio takes at most 1,600 characters, so a longer
    text goes to the next account; with no account that takes it, it fails with the reason."""
    from tests.providers.test_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM, TwilioVendor

    twilio = await TwilioVendor().start()
    try:
        body = {
            "channel": "sms",
            "provider": "twilio",
            "name": "twilio",
            "priority": 1,
            "config": {
                "account_sid": ACCOUNT_SID,
                "auth_token": AUTH_TOKEN,
                "from_number": FROM,
                "endpoint": twilio.url,
            },
        }
        created = await live_service.client.post(
            "/communication/providers", json=body, headers=live_tenant.headers()
        )
        assert created.status_code == 201, created.text
        long_text = "x" * 1700
        only_twilio = await live_service.client.post(
            "/communication/bulk",
            json=sms_bulk(1, content=long_text, variables={}),
            headers=live_tenant.headers(),
        )

        async def failed() -> bool:
            return await statuses(live_service, only_twilio.json()["batch_id"]) == {"failed": 1}

        await wait_until(failed)
        log = await live_service.client.get(
            f"/communication/logs/{only_twilio.json()['items'][0]['id']}", headers=live_tenant.headers()
        )
        assert log.json()["data"]["error"] == (
            "no provider can carry it: twilio takes at most 1600 characters, the text has 1700"
        )
        await add_account(live_service, live_tenant, sink.url, name="long-texts", priority=2)
        live_service.app.state.dispatcher.router.refresh()  # see the new account now, not in 5 s
        both = await live_service.client.post(
            "/communication/bulk",
            json={**sms_bulk(2, variables={}), "content": long_text, "recipients": ["13800138000"]},
            headers=live_tenant.headers(),
        )
        short = await live_service.client.post(
            "/communication/bulk", json=sms_bulk(1), headers=live_tenant.headers()
        )

        async def sent() -> bool:
            return await statuses(live_service, both.json()["batch_id"]) == {"sent": 1} and await statuses(
                live_service, short.json()["batch_id"]
            ) == {"sent": 1}

        await wait_until(sent)
        assert (
            len(sink.received) == 1 and len(twilio.delivered) == 1
        )  # long via the webhook, short via Twilio
    finally:
        await twilio.stop()


async def test_a_code_of_the_same_tenant_passes_a_bulk_that_holds_every_gateway_slot(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    """The bulk's requests hang at a slow gateway and fill the account's request slots; the
    tenant's own verification code still goes out through the slots kept for codes."""
    live_service.settings.lease_seconds = 30
    await add_account(
        live_service, live_tenant, sink.url, config={"url": sink.url, "secret": SECRET, "batch_size": 1}
    )
    sink.hang_seconds, sink.hang_only = 3.0, {"transactional"}
    bulk = await live_service.client.post(
        "/communication/bulk", json=sms_bulk(200), headers=live_tenant.headers()
    )

    async def slots_full() -> bool:
        return sink.requests >= 16  # the account's default concurrency

    await wait_until(slots_full)
    code = await live_service.client.post(
        "/communication/bulk",
        json=CODE,
        headers=live_tenant.headers(),
    )

    async def code_sent() -> bool:
        return await statuses(live_service, code.json()["batch_id"]) == {"sent": 1}

    await wait_until(code_sent)
    assert "sent" not in await statuses(live_service, bulk.json()["batch_id"])  # all still hanging
    sink.hang_seconds = 0


async def test_an_instance_replaced_by_a_new_config_is_closed_after_a_grace_period(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each config version of an account gets its own provider instance (with its pooled
    connections). A replaced one is closed once batches in flight had time to finish with it,
    so the cache does not grow and connections do not stay open for ever."""
    from comms.dispatch import routing

    monkeypatch.setattr(routing, "RETIRE_AFTER", 0.0)
    router = live_service.app.state.dispatcher.router
    account = await add_account(live_service, live_tenant, sink.url)

    async def instance() -> Any:
        async with live_service.db.read() as session:
            row = await session.get(ProviderAccount, account["id"])
        assert row is not None
        return router.provider_for(row)

    old = await instance()
    closed: list[bool] = []
    original_close = old.close

    async def recording_close() -> None:
        closed.append(True)
        await original_close()

    old.close = recording_close
    changed = await live_service.client.put(
        f"/communication/providers/{account['id']}", json={"priority": 7}, headers=live_tenant.headers()
    )
    assert changed.status_code == 200, changed.text
    new = await instance()
    assert new is not old and old not in router._instances.values()

    async def retired() -> bool:
        return closed == [True] and old not in router._retiring

    await wait_until(retired)
    assert await instance() is new  # the current one stays


async def test_a_cancel_stops_the_calls_a_send_rate_holds_back(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimed batch goes out one call after another at the account's send rate; a cancel that
    comes between two calls stops the calls not made yet (the cancel's promise: every item not
    yet handed to a provider), and only those."""
    from comms.dispatch import dispatcher as dispatcher_module
    from comms.providers.webhook import WebhookProvider

    monkeypatch.setattr(WebhookProvider, "max_batch", 1)  # one message per call, like per-message vendors
    monkeypatch.setattr(dispatcher_module, "CANCEL_RECHECK_SECONDS", 0.0)
    await add_account(live_service, live_tenant, sink.url, rate_per_second=4)
    answer = await live_service.client.post(
        "/communication/bulk", json=sms_bulk(10), headers=live_tenant.headers()
    )
    batch_id = answer.json()["batch_id"]

    async def some_sent() -> bool:
        return sum(sink.received.values()) >= 1

    await wait_until(some_sent)
    cancelled = await live_service.client.post(
        f"/communication/batches/{batch_id}/cancel", headers=live_tenant.headers()
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["message"] == "cancelled 0 item(s)"  # all ten were claimed: in flight

    async def settled() -> bool:
        counts = await statuses(live_service, batch_id)
        return sum(n for s, n in counts.items() if s in ("sent", "cancelled")) == 10

    await wait_until(settled)
    counts = await statuses(live_service, batch_id)
    assert counts["sent"] == sum(sink.received.values()) and max(sink.received.values()) == 1
    assert counts.get("cancelled", 0) >= 5  # four calls a second: most were still to come
    async with live_service.db.read() as session:
        rows = (await session.scalars(select(Message).where(Message.status == "cancelled"))).all()
    assert {m.error for m in rows} == {"cancelled by request"} and not any(
        m.id in sink.received for m in rows
    )


async def test_a_callback_for_an_account_whose_stored_config_no_longer_validates_is_503(
    service: Service, tenant: TenantKeys
) -> None:
    """An account stored before a rule that now refuses its configuration (here: a URL whose host
    urllib cannot read) answers its vendor's callbacks 503 in the envelope, to be tried again once
    the tenant fixed it; never an unhandled 500."""
    from sqlalchemy import update

    from tests.integration.conftest import signed

    created = await add_account(service, tenant, "https://gw.example/send")
    async with service.db.begin() as session:
        stored = await session.get(ProviderAccount, created["id"])
        assert stored is not None
        await session.execute(
            update(ProviderAccount)
            .where(ProviderAccount.id == created["id"])
            .values(config={**stored.config, "url": "https://[zz]/send"})
        )
    body, headers = signed({"events": [{"event_id": "e1", "id": "log_x", "status": "delivered"}]})
    answer = await service.client.post(
        f"/webhooks/webhook/{created['id']}/status", content=body, headers=headers
    )
    assert answer.status_code == 503, answer.text
    assert answer.json()["message"].startswith("this provider account's configuration cannot be used")
    fixed = await service.client.put(
        f"/communication/providers/{created['id']}",
        json={"config": {"url": "https://gw.example/send"}},
        headers=tenant.headers(),
    )
    assert fixed.status_code == 200, fixed.text
    again = await service.client.post(
        f"/webhooks/webhook/{created['id']}/status", content=body, headers=headers
    )
    assert again.status_code == 200, again.text


async def test_an_accounts_rate_bounds_its_bursts_too(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    """An account allowed 2 messages a second gets at most 2 in one call, however many a claimed
    batch holds (a whole batch in one call would be a burst past the vendor's per-second limit)."""
    await add_account(live_service, live_tenant, sink.url, rate_per_second=2)
    answer = await live_service.client.post(
        "/communication/bulk", json=sms_bulk(5), headers=live_tenant.headers()
    )
    batch_id = answer.json()["batch_id"]

    async def sent() -> bool:
        return await statuses(live_service, batch_id) == {"sent": 5}

    await wait_until(sent)
    assert sink.call_sizes == [2, 2, 1]


async def test_a_cookie_one_tenants_endpoint_sets_never_rides_along_with_another_tenants_calls(
    tmp_path: Any,
) -> None:
    """Every tenant's provider calls share the router's HTTP session: it keeps no cookies, so a
    cookie set for a whole domain by one endpoint is not sent to a sibling host of another."""
    from aiohttp import web

    from comms.dispatch.routing import Router

    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        answer = web.Response(text="ok")
        answer.set_cookie("session", "tenant-a-secret", path="/")
        return answer

    app = web.Application()
    app.router.add_post("/send", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    router = Router(tmp_path)
    try:
        http = router._context("webhook", "acc_a").http
        assert http is not None
        for _ in range(2):
            # a name, not an address: aiohttp keeps no cookies of IP-address hosts anyway
            async with http.post(f"http://localhost:{port}/send", data=b"{}") as answer:
                assert answer.status == 200 and "session" in answer.headers.get("Set-Cookie", "")
        assert seen == [None, None]
    finally:
        await router.close()
        await runner.cleanup()


async def test_with_private_networks_off_provider_endpoints_must_be_public(
    service: Service, tenant: TenantKeys, tmp_path: Any
) -> None:
    """COMMS_PROVIDER_ALLOW_PRIVATE=false: a provider account naming a private, loopback or
    link-local address is refused when it is set (nothing stored), and the HTTP pool the
    providers share connects to public addresses only (a name is checked as it is resolved)."""
    import aiohttp

    from comms.dispatch.routing import Router

    service.settings.provider_allow_private = False
    cases = [
        ("sms", "webhook", {"url": "http://127.0.0.1:9/send", "secret": SECRET}, "config.url"),
        ("sms", "twilio", {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32,
                           "from_number": "+14155550100", "endpoint": "http://169.254.169.254/latest"},
         "config.endpoint"),
        ("email", "smtp", {"host": "10.0.0.5"}, "config.host"),
        ("email", "smtp", {"host": "localhost"}, "config.host"),
        ("sms", "kannel", {"sendsms_url": "http://[::ffff:10.0.0.1]:13013/cgi-bin/sendsms", "username": "u",
                           "password": "p", "from": "ACME"}, "config.sendsms_url"),
        ("email", "ses", {"region": "eu-west-1", "access_key_id": "AKIA" + "A" * 16,
                          "secret_access_key": "s" * 40, "sns_allow_http": True},
         "config.sns_cert_host_suffix"),
    ]  # fmt: skip
    for channel, provider, config, field in cases:
        body = {"channel": channel, "provider": provider, "name": provider, "config": config}
        refused = await service.client.post("/communication/providers", json=body, headers=tenant.headers())
        assert refused.status_code == 422, (provider, refused.text)
        assert refused.json()["errors"][0]["field"] == field, refused.json()
    listed = await service.client.get("/communication/providers", headers=tenant.headers())
    assert listed.json()["total"] == 0
    public = await add_account(service, tenant, "https://93.184.215.14/send")
    moved = await service.client.put(
        f"/communication/providers/{public['id']}",
        json={"config": {"url": "http://localhost:8080/send"}},
        headers=tenant.headers(),
    )
    assert moved.status_code == 422 and moved.json()["errors"][0]["field"] == "config.url"
    kept = await service.client.get(f"/communication/providers/{public['id']}", headers=tenant.headers())
    assert kept.json()["data"]["config"]["url"] == "https://93.184.215.14/send"
    # The pool itself: a name that resolves to loopback only is not connected to (the same
    # server is reached by a pool that allows private networks).
    from aiohttp import web

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/send", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    guarded, open_ = Router(tmp_path, allow_private=False), Router(tmp_path)
    try:
        http = guarded._context("webhook", "acc").http
        assert http is not None
        with pytest.raises(aiohttp.ClientConnectorDNSError) as refused_dns:
            await http.post(f"http://localhost:{port}/send", data=b"{}")
        assert "no public address" in str(refused_dns.value.os_error)
        other = open_._context("webhook", "acc").http
        assert other is not None
        async with other.post(f"http://localhost:{port}/send", data=b"{}") as answer:
            assert answer.status == 200
    finally:
        await guarded.close()
        await open_.close()
        await runner.cleanup()


async def test_a_vendors_error_that_quotes_a_code_or_other_recipients_is_stored_struck(
    live_service: Service, live_tenant: TenantKeys, sink: WebhookSink
) -> None:
    """A vendor's error may quote the text it refused, code and all, and a refused call's error is
    every one of its messages' error, naming numbers that are not theirs: what is stored (and
    shown by /logs and the event webhook) has the codes struck and the call's recipients masked."""
    await add_account(live_service, live_tenant, sink.url)
    sink.per_message["+8613800138000"] = {
        "status": "rejected",
        "error": "content refused: 'Your code is 482913'",
    }
    codes = {
        "channel": "sms",
        "category": "verification",
        "content": "Your code is {{ code }}",
        "recipients": [
            {"to": "13800138000", "variables": {"code": "482913"}},
            {"to": "13900139000", "variables": {"code": "555111"}},
        ],
    }
    first = await send_until(live_service, live_tenant, codes, {"failed": 1, "sent": 1})
    sink.fail_status, sink.fail_text = 400, "content blocked: 'Your code is 771177' to +8613700137000"
    both = {
        **codes,
        "recipients": [
            {"to": "13700137000", "variables": {"code": "771177"}},
            {"to": "13600136000", "variables": {"code": "662266"}},
        ],
    }
    second = await send_until(live_service, live_tenant, both, {"failed": 2})
    ids = [i["id"] for answer in (first, second) for i in answer.json()["items"]]
    async with live_service.db.read() as session:
        rows = [await session.get(Message, i) for i in ids]
    stored = " ".join(f"{r.error} {r.response}" for r in rows if r is not None)
    for secret in ("482913", "555111", "771177", "662266", "13700137000"):
        assert secret not in stored, (secret, stored)
    refused = rows[0]
    assert refused is not None and refused.error == "content refused: 'Your code is ******'"
    other = rows[3]
    assert other is not None and "137****7000" in (other.error or "") and "******" in (other.error or "")
