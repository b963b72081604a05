"""POST /communication/bulk: every rule of CONTRACT.md, the happy path and the bad inputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from comms.models import AuditEvent, Batch, IdempotencyKey, Message
from tests.conftest import Service, TenantKeys, make_tenant, wait_for_message


async def count_rows(service: Service) -> tuple[int, int]:
    async with service.db.read() as session:
        batches = await session.scalar(select(func.count()).select_from(Batch))
        messages = await session.scalar(select(func.count()).select_from(Message))
    return int(batches or 0), int(messages or 0)


def sms(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "channel": "sms",
        "content": "Your verification code is {{ code }}",
        "recipients": ["13800138000", "13900139000"],
        "variables": {"code": "123456"},
        "category": "verification",
    }
    body.update(extra)
    return body


async def test_seed_example_is_accepted_with_masked_items(service: Service, tenant: TenantKeys) -> None:
    answer = await service.client.post("/communication/bulk", json=sms(), headers=tenant.headers())
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["code"] == 202 and body["message"] == "accepted" and body["timestamp"].endswith("Z")
    assert body["total"] == 2 and body["batch_id"].startswith("bat_")
    assert body["pagination"] == {
        "page": 1,
        "page_size": 100,
        "total": 2,
        "total_pages": 1,
        "has_next": False,
        "has_prev": False,
    }
    first, second = body["items"]
    assert first["recipient"] == "138****8000" and second["recipient"] == "139****9000"
    assert (
        first["status"] == "queued"
        and first["id"].startswith("log_")
        and first["tenant_id"] == tenant.tenant_id
    )
    assert first["content"] == "Your verification code is ******"  # the OTP never shows
    assert first["channel"] == "sms" and first["category"] == "verification"
    assert await count_rows(service) == (1, 2)


async def test_items_are_stored_in_the_batch_transaction_with_e164(
    service: Service, tenant: TenantKeys
) -> None:
    answer = await service.client.post("/communication/bulk", json=sms(), headers=tenant.headers())
    batch_id = answer.json()["batch_id"]
    async with service.db.read() as session:
        rows = (await session.scalars(select(Message).where(Message.batch_id == batch_id))).all()
        batch = await session.get(Batch, batch_id)
    assert sorted(m.recipient for m in rows) == ["+8613800138000", "+8613900139000"]
    assert batch is not None and batch.total == 2
    # The OTP is encrypted at rest, never stored in clear.
    assert "123456" not in json.dumps(batch.variables)


async def test_duplicates_collapse_after_normalization(service: Service, tenant: TenantKeys) -> None:
    recipients = ["13800138000", "+86 138 0013 8000", "+8613800138000", "138-0013-8000"]
    answer = await service.client.post(
        "/communication/bulk", json=sms(recipients=recipients), headers=tenant.headers()
    )
    assert answer.status_code == 202
    assert answer.json()["total"] == 1


async def test_email_duplicates_collapse_case_insensitively(service: Service, tenant: TenantKeys) -> None:
    body = {
        "channel": "email",
        "subject": "Hello",
        "content": "Hi",
        "category": "transactional",
        "recipients": ["Ann@Example.com", "ann@example.com", " ann@EXAMPLE.com "],
    }
    answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
    assert answer.status_code == 202, answer.text
    assert answer.json()["total"] == 1
    assert answer.json()["items"][0]["recipient"] == "A***@example.com"


async def test_invalid_recipients_become_rejected_items(service: Service, tenant: TenantKeys) -> None:
    answer = await service.client.post(
        "/communication/bulk",
        json=sms(recipients=["13800138000", "12345", "not-a-phone"]),
        headers=tenant.headers(),
    )
    assert answer.status_code == 202
    items = answer.json()["items"]
    assert [i["status"] for i in items] == ["queued", "rejected", "rejected"]
    assert all("invalid" in (i["error"] or "") for i in items[1:])
    assert answer.json()["counts"] == {"queued": 1, "rejected": 2}
    # A rejected address is shown as given, less directional controls that would reorder the log.
    reordering = await service.client.post(
        "/communication/bulk",
        json=sms(recipients=["\u202emoc.elpmaxe@eve"]),
        headers=tenant.headers(),
    )
    async with service.db.read() as session:
        shown = await session.scalar(
            select(Message.recipient).where(Message.id == reordering.json()["items"][0]["id"])
        )
    assert shown == "moc.elpmaxe@eve"


async def test_per_recipient_variables_merge_over_shared(service: Service, tenant: TenantKeys) -> None:
    body = {
        "channel": "email",
        "subject": "Hi {{ name }}",
        "content": "Hello {{ name }} from {{ company }}",
        "category": "transactional",
        "variables": {"company": "Acme", "name": "friend"},
        "recipients": [{"to": "a@example.com", "variables": {"name": "Ann"}}, "b@example.com"],
    }
    answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
    assert answer.status_code == 202, answer.text
    contents = [i["content"] for i in answer.json()["items"]]
    assert contents == ["Hello Ann from Acme", "Hello friend from Acme"]


async def test_missing_variable_is_422_naming_it_and_stores_nothing(
    service: Service, tenant: TenantKeys
) -> None:
    body = sms(
        content="Hi {{ name }}, code {{ code }}",
        recipients=["13800138000", {"to": "13900139000", "variables": {"name": "Bo"}}],
    )
    answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
    assert answer.status_code == 422
    payload = answer.json()
    assert payload["code"] == 422 and "name" in payload["message"]
    assert payload["errors"] == [{"field": "recipients[0]", "message": "missing variables: name"}]
    assert await count_rows(service) == (0, 0)


async def test_a_template_that_cannot_render_or_renders_to_nothing_is_422(
    service: Service, tenant: TenantKeys
) -> None:
    """One rendering at acceptance (the shared variables with the first recipient's own): a blank
    message, a filter given a bad argument or a result past the length limit is refused before
    anything is stored, instead of going out blank or failing for every recipient later."""
    big = "x" * 100_000  # the longest value allowed; eleven of them pass the rendered length
    for body, message in (
        (
            sms(content="{{ code }}", variables={"code": " "}),
            "the message renders to nothing (an empty text)",
        ),
        (sms(content='Hi {{ code|truncate("x") }}'), "template could not be rendered"),
        (
            sms(content="{{ code }}" * 11, variables={"code": big}),
            "rendered content is longer",
        ),
        (
            sms(
                content="{{ name }}",
                variables={},
                recipients=[{"to": "13800138000", "variables": {"name": ""}}],
            ),
            "the message renders to nothing",
        ),
    ):
        answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
        assert answer.status_code == 422, answer.text
        own = isinstance(body["recipients"][0], dict)  # type: ignore[index]
        assert answer.json()["errors"][0]["field"] == ("recipients[0]" if own else "content")
        assert answer.json()["errors"][0]["message"].startswith(message), answer.text
    assert await count_rows(service) == (0, 0)
    # Only the first recipient's own values are rendered here: the others' are at dispatch.
    later = sms(
        content="{{ name }}",
        variables={},
        recipients=[
            {"to": "13800138000", "variables": {"name": "Ann"}},
            {"to": "13900139000", "variables": {"name": ""}},
        ],
    )
    accepted = await service.client.post("/communication/bulk", json=later, headers=tenant.headers())
    assert accepted.status_code == 202, accepted.text


async def test_a_recipient_whose_own_values_render_to_nothing_fails_instead_of_going_out_blank(
    live_service: Service, live_tenant: TenantKeys
) -> None:
    body = sms(
        content="{{ name }}",
        variables={},
        recipients=[
            {"to": "13800138000", "variables": {"name": "Ann"}},
            {"to": "13900139000", "variables": {"name": " "}},
        ],
    )
    answer = await live_service.client.post("/communication/bulk", json=body, headers=live_tenant.headers())
    assert answer.status_code == 202, answer.text
    blank = answer.json()["items"][1]["id"]
    row = await wait_for_message(live_service, blank, lambda m: m.status not in ("queued", "sending"))
    assert (row.status, row.error) == ("failed", "the message renders to nothing (an empty text)")


def email(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "channel": "email",
        "category": "transactional",
        "subject": "Order {{ ref }}",
        "content": "Your order {{ ref }} has shipped.",
        "recipients": ["ann@example.com"],
        "variables": {"ref": "42"},
    }
    body.update(extra)
    return body


async def test_a_subject_that_renders_to_two_lines_is_refused_at_acceptance(
    service: Service, tenant: TenantKeys
) -> None:
    """A header holds no line break: a subject that renders to two lines (the shared values or the
    first recipient's: a 422 naming them; a later recipient's own: that recipient `rejected`) is
    refused now, not accepted to fail at dispatch; a dry run says the same."""
    injection = "42\r\nBcc: x@evil.example"
    for body, field in (
        (email(variables={"ref": injection}), "variables.ref"),
        (
            email(variables={}, recipients=[{"to": "ann@example.com", "variables": {"ref": injection}}]),
            "recipients[0]",
        ),
        (email(subject="Order {{ ref ~ '\\n' }}"), "subject"),
    ):
        for dry_run in (False, True):
            answer = await service.client.post(
                "/communication/bulk", json={**body, "dry_run": dry_run}, headers=tenant.headers()
            )
            assert answer.status_code == 422, answer.text
            assert answer.json()["errors"][0]["field"] == field, answer.text
            assert "more than one line" in answer.json()["errors"][0]["message"]
    assert await count_rows(service) == (0, 0)
    later = email(
        variables={},
        recipients=[
            {"to": "ann@example.com", "variables": {"ref": "42"}},
            {"to": "bo@example.com", "variables": {"ref": injection}},
        ],
    )
    for dry_run in (True, False):
        answer = await service.client.post(
            "/communication/bulk", json={**later, "dry_run": dry_run}, headers=tenant.headers()
        )
        assert answer.status_code == (200 if dry_run else 202), answer.text
        items = answer.json()["items"]
        assert [i["status"] for i in items] == ["queued", "rejected"]
        assert "line break" in items[1]["error"]


async def test_metadata_is_bounded(service: Service, tenant: TenantKeys) -> None:
    """metadata rides on every log item of the batch: at most 50 keys and 10,000 characters."""
    for metadata, message in (
        ({f"k{i}": "v" for i in range(51)}, "at most 50 keys"),
        ({"note": "x" * 10_000}, "at most 10000 characters"),
    ):
        answer = await service.client.post(
            "/communication/bulk", json=sms(metadata=metadata), headers=tenant.headers()
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["errors"][0]
        assert error["field"] == "metadata" and error["message"].startswith(message), answer.text
    assert await count_rows(service) == (0, 0)
    fine = {f"k{i}": "v" * 150 for i in range(50)}
    answer = await service.client.post(
        "/communication/bulk", json=sms(metadata=fine), headers=tenant.headers()
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["items"][0]["metadata"] == fine


async def test_a_dry_run_renders_once_per_distinct_set_of_values(
    service: Service, tenant: TenantKeys
) -> None:
    """A dry run renders each distinct set of the recipients' own values once (and counts segments
    once per rendering and region), while still reporting every recipient's own text."""
    from comms.templates import rendering

    renders = 0
    original = rendering.CompiledTemplate.render

    def counted(self: rendering.CompiledTemplate, variables: Any) -> str:
        nonlocal renders
        renders += 1
        return original(self, variables)

    recipients: list[Any] = [f"1380013{i:04d}" for i in range(300)]
    recipients += [
        {"to": "13900139000", "variables": {"code": "777"}},
        {"to": "13900139001", "variables": {"code": "777"}},
    ]
    rendering.CompiledTemplate.render = counted  # type: ignore[method-assign]
    try:
        answer = await service.client.post(
            "/communication/bulk?page_size=200",
            json=sms(recipients=recipients, dry_run=True),
            headers=tenant.headers(),
        )
    finally:
        rendering.CompiledTemplate.render = original  # type: ignore[method-assign]
    assert answer.status_code == 200, answer.text
    assert answer.json()["counts"] == {"queued": 302}
    # acceptance's own check (1) + one per distinct set (2) + the shown text of each page item (200)
    assert renders <= 1 + 2 + 200, renders
    assert answer.json()["items"][0]["content"] == "Your verification code is ******"


async def test_malformed_json_is_400(service: Service, tenant: TenantKeys) -> None:
    answer = await service.client.post(
        "/communication/bulk",
        content=b'{"channel": "sms", ',
        headers={**tenant.headers(), "Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == 400 and "malformed JSON" in answer.json()["message"]
    not_utf8 = await service.client.post(
        "/communication/bulk",
        content=b'{"channel": "sms", "content": "\xff", "recipients": ["13800138000"]}',
        headers={**tenant.headers(), "Content-Type": "application/json"},
    )
    assert not_utf8.status_code == 400, not_utf8.text
    assert not_utf8.json()["message"] == "malformed JSON: the body is not valid UTF-8"
    assert await count_rows(service) == (0, 0)


async def test_wrong_types_and_unknown_fields_are_422_with_field(
    service: Service, tenant: TenantKeys
) -> None:
    cases = [
        (sms(recipients=["13800138000", 42]), "recipients[1]"),
        (sms(variables={"code": 123456}), "variables"),
        (sms(variables={"code": "x" * 100_001}), "variables"),  # a value is at most 100,000 characters
        (sms(recipient=["x"]), "recipient"),  # an unknown field is named itself
        (sms(recipients=[{"to": "13800138000", "vars": {}}]), "recipients[0].vars"),
        ({"content": "x", "recipients": ["13800138000"]}, "body"),
        (sms(channel="fax"), "channel"),
        (sms(category="spam"), "category"),
        (sms(recipients=[]), "recipients"),
        (sms(content=""), "content"),
        (sms(content="{{ broken"), "content"),
        (sms(content="{{ x.__class__ }}"), "content"),
        (sms(send_at="tomorrow"), "send_at"),
        (sms(send_at="2020-01-01T00:00:00Z"), "send_at"),
        (sms(sender="UNKNOWN"), "sender"),
        (sms(template="nope"), "template"),
        (
            {
                "channel": "email",
                "content": "x",
                "recipients": ["a@example.com"],
                "category": "transactional",
            },
            "subject",
        ),
    ]
    for body, field in cases:
        answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
        assert answer.status_code == 422, (body, answer.text)
        payload = answer.json()
        assert payload["code"] == 422 and payload["message"]
        assert field in {e["field"] for e in payload.get("errors", [])}, (field, payload)
    assert await count_rows(service) == (0, 0)


async def test_auth_errors(service: Service, tenant: TenantKeys) -> None:
    no_token = await service.client.post("/communication/bulk", json=sms())
    assert no_token.status_code == 401 and no_token.json()["code"] == 401
    bad = await service.client.post(
        "/communication/bulk", json=sms(), headers={"Authorization": "Bearer comms_key_x_y"}
    )
    assert bad.status_code == 401
    forged = tenant.token[:-4] + "AAAA"
    assert (
        await service.client.post(
            "/communication/bulk", json=sms(), headers={"Authorization": f"Bearer {forged}"}
        )
    ).status_code == 401
    read_only = await service.client.post(
        "/communication/bulk", json=sms(), headers=tenant.headers(tenant.read_only_token)
    )
    assert read_only.status_code == 403 and "send" in read_only.json()["message"]
    assert await count_rows(service) == (0, 0)


async def test_recipient_limit_is_413(service: Service, tenant: TenantKeys) -> None:
    service.settings.max_recipients = 3
    answer = await service.client.post(
        "/communication/bulk",
        json=sms(recipients=[f"1380013800{i}" for i in range(4)]),
        headers=tenant.headers(),
    )
    assert answer.status_code == 413 and answer.json()["code"] == 413
    assert await count_rows(service) == (0, 0)


async def test_body_size_limit_is_413(service: Service, tenant: TenantKeys) -> None:
    service.settings.max_body_bytes = 2048
    answer = await service.client.post(
        "/communication/bulk", json=sms(content="x" * 4096), headers=tenant.headers()
    )
    assert answer.status_code == 413


async def test_idempotency_key_replays_and_conflicts(service: Service, tenant: TenantKeys) -> None:
    headers = {**tenant.headers(), "Idempotency-Key": "order-42"}
    first = await service.client.post("/communication/bulk", json=sms(), headers=headers)
    again = await service.client.post("/communication/bulk", json=sms(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["batch_id"] == again.json()["batch_id"]
    assert await count_rows(service) == (1, 2)
    # The same JSON with other spacing and key order, or another page_size, is the same request.
    body = sms()
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2).encode()
    for path, content in (("/communication/bulk", reordered), ("/communication/bulk?page_size=1", None)):
        replay = await service.client.post(
            path,
            content=content or json.dumps(body).encode(),
            headers={**headers, "Content-Type": "application/json"},
        )
        assert replay.status_code == 202 and replay.json()["batch_id"] == first.json()["batch_id"], path
        assert replay.json()["items"] == first.json()["items"]
    conflict = await service.client.post(
        "/communication/bulk", json=sms(content="other {{ code }}"), headers=headers
    )
    assert conflict.status_code == 409 and conflict.json()["code"] == 409
    # Recipients shown raw are only replayed to a request that asks for them raw.
    raw = await service.client.post(
        "/communication/bulk?unmask=true", json=sms(), headers={**headers, **tenant.headers(tenant.pii_token)}
    )
    assert raw.status_code == 409
    assert await count_rows(service) == (1, 2)
    async with service.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1


async def test_a_key_stored_before_the_fingerprint_changed_still_replays(
    service: Service, tenant: TenantKeys
) -> None:
    """Keys stored by the earlier form (a hash of the raw body and the whole query) keep
    answering their retries for the day they live: a retry straddling the upgrade is replayed."""
    from sqlalchemy import update

    from comms.messages import idempotency

    headers = {**tenant.headers(), "Idempotency-Key": "before-upgrade", "Content-Type": "application/json"}
    raw = json.dumps(sms()).encode()
    first = await service.client.post("/communication/bulk", content=raw, headers=headers)
    assert first.status_code == 202
    async with service.db.begin() as session:  # as the earlier version stored it
        earlier = idempotency.earlier_fingerprint("/communication/bulk?", raw)
        await session.execute(update(IdempotencyKey).values(request_hash=earlier))
    again = await service.client.post("/communication/bulk", content=raw, headers=headers)
    assert again.status_code == 202 and again.json()["batch_id"] == first.json()["batch_id"]
    other = await service.client.post(
        "/communication/bulk", json=sms(content="other {{ code }}"), headers=headers
    )
    assert other.status_code == 409
    assert await count_rows(service) == (1, 2)


async def test_idempotency_keys_are_per_tenant(service: Service, tenant: TenantKeys) -> None:
    other = await make_tenant(service.db, "Other")
    headers_a = {**tenant.headers(), "Idempotency-Key": "k1"}
    headers_b = {**other.headers(), "Idempotency-Key": "k1"}
    a = await service.client.post("/communication/bulk", json=sms(), headers=headers_a)
    b = await service.client.post("/communication/bulk", json=sms(), headers=headers_b)
    assert a.status_code == b.status_code == 202 and a.json()["batch_id"] != b.json()["batch_id"]


async def test_dry_run_reports_and_stores_nothing(service: Service, tenant: TenantKeys) -> None:
    body = sms(dry_run=True, recipients=["13800138000", "bad"], content="Code {{ code }}" + " long" * 40)
    answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert payload["batch_id"] is None and payload["total"] == 2
    ok, bad = payload["items"]
    assert ok["status"] == "queued" and ok["segments"] == 2 and "******" in ok["content"]
    assert bad["status"] == "rejected"
    assert await count_rows(service) == (0, 0)


async def test_send_at_schedules(service: Service, tenant: TenantKeys) -> None:
    when = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    answer = await service.client.post(
        "/communication/bulk", json=sms(send_at=when), headers=tenant.headers()
    )
    assert answer.status_code == 202
    assert {i["status"] for i in answer.json()["items"]} == {"scheduled"}


async def test_page_size_query_controls_first_page(service: Service, tenant: TenantKeys) -> None:
    recipients = [f"138001380{i:02d}" for i in range(30)]
    answer = await service.client.post(
        "/communication/bulk?page_size=10", json=sms(recipients=recipients), headers=tenant.headers()
    )
    payload = answer.json()
    assert payload["total"] == 30 and len(payload["items"]) == 10
    assert payload["pagination"]["total_pages"] == 3 and payload["pagination"]["has_next"] is True


async def test_unmask_needs_pii_scope_and_is_audited(service: Service, tenant: TenantKeys) -> None:
    denied = await service.client.post(
        "/communication/bulk?unmask=true", json=sms(), headers=tenant.headers()
    )
    assert denied.status_code == 403
    allowed = await service.client.post(
        "/communication/bulk?unmask=true", json=sms(), headers=tenant.headers(tenant.pii_token)
    )
    assert allowed.status_code == 202
    assert allowed.json()["items"][0]["recipient"] == "+8613800138000"
    log_id = allowed.json()["items"][0]["id"]
    one = await service.client.get(
        f"/communication/logs/{log_id}?unmask=true", headers=tenant.headers(tenant.pii_token)
    )
    assert one.json()["data"]["recipient"] == "+8613800138000"
    async with service.db.read() as session:
        actions = (await session.scalars(select(AuditEvent.action))).all()
    assert "pii.revealed" in actions and "bulk.submitted" in actions


async def test_submission_is_audited_with_counts(service: Service, tenant: TenantKeys) -> None:
    await service.client.post("/communication/bulk", json=sms(), headers=tenant.headers())
    async with service.db.read() as session:
        event = await session.scalar(select(AuditEvent).where(AuditEvent.action == "bulk.submitted"))
    assert event is not None and event.details["counts"] == {"queued": 2}
    assert event.actor is not None and event.actor.startswith("key_")


async def test_an_idempotency_key_lives_a_day(service: Service, tenant: TenantKeys) -> None:
    """The stored answer holds recipients and content: after KEY_TTL it is deleted by the hourly
    maintenance, and the key may be used again for a new request."""
    from sqlalchemy import update

    from comms.kit.clock import utcnow
    from comms.messages import idempotency

    headers = {**tenant.headers(), "Idempotency-Key": "order-7"}
    first = await service.client.post("/communication/bulk", json=sms(), headers=headers)
    async with service.db.begin() as session:
        await session.execute(
            update(IdempotencyKey).values(created_at=utcnow() - idempotency.KEY_TTL - timedelta(minutes=1))
        )
    later = await service.client.post(
        "/communication/bulk", json=sms(content="new {{ code }}"), headers=headers
    )
    assert later.status_code == 202, later.text  # not a 409: the old key is gone
    assert later.json()["batch_id"] != first.json()["batch_id"]
    async with service.db.begin() as session:
        await session.execute(
            update(IdempotencyKey).values(created_at=utcnow() - idempotency.KEY_TTL - timedelta(minutes=1))
        )
        assert await idempotency.forget_expired(session, utcnow()) == 1
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0


async def test_reveals_by_replay_are_audited_and_a_dry_run_writes_nothing(
    service: Service, tenant: TenantKeys
) -> None:
    headers = {**tenant.headers(tenant.pii_token), "Idempotency-Key": "reveal-1"}
    for _ in range(2):
        answer = await service.client.post("/communication/bulk?unmask=true", json=sms(), headers=headers)
        assert answer.status_code == 202 and answer.json()["items"][0]["recipient"] == "+8613800138000"
    dry = await service.client.post(
        "/communication/bulk?unmask=true", json=sms(dry_run=True), headers=tenant.headers(tenant.pii_token)
    )
    assert dry.status_code == 200
    async with service.db.read() as session:
        reveals = (
            await session.scalars(select(AuditEvent.details).where(AuditEvent.action == "pii.revealed"))
        ).all()
    assert len(reveals) == 2 and [r.get("replay") for r in reveals].count(True) == 1


async def test_a_very_long_invalid_recipient_is_a_rejected_item(service: Service, tenant: TenantKeys) -> None:
    """Its shown form and key are cut to the column's 320 characters (PostgreSQL enforces them)."""
    for channel, good in (("sms", "13800138000"), ("email", "ann@example.com")):
        body = {
            "channel": channel,
            "category": "transactional",
            "subject": "Hi",
            "content": "Hello",
            "recipients": [good, "x" * 400],
        }
        answer = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
        assert answer.status_code == 202, answer.text
        assert [i["status"] for i in answer.json()["items"]] == ["queued", "rejected"]


async def test_a_few_recipients_and_many_are_stored_alike(service: Service, tenant: TenantKeys) -> None:
    """On PostgreSQL a handful of log items go in with one INSERT, more with COPY: the same mix of
    recipients (own variables, the batch's, a bad number) is stored alike
    either way."""

    def mix(start: int, size: int) -> list[object]:
        shaped: list[object] = ["not-a-number"]
        for i in range(size - 1):
            number = f"1390013{start + i:04d}"
            shaped.append({"to": number, "variables": {"name": f"N{i}"}} if i % 2 else number)
        return shaped

    def shape(row: Message) -> tuple[object, ...]:
        return (
            row.status, row.error, row.variables is None, row.channel, row.category, row.priority,
            row.due_at is not None, row.queue_rank is not None, row.recipient == row.recipient_key,
        )  # fmt: skip

    shapes = []
    for start, size in ((0, 8), (100, 40)):
        answer = await service.client.post(
            "/communication/bulk",
            json={
                "channel": "sms",
                "category": "transactional",
                "content": "Hi {{ name }}",
                "variables": {"name": "there"},
                "recipients": mix(start, size),
            },
            headers=tenant.headers(),
        )
        assert answer.status_code == 202, answer.text
        async with service.db.read() as session:
            rows = (
                await session.scalars(select(Message).where(Message.batch_id == answer.json()["batch_id"]))
            ).all()
        assert len(rows) == size
        shapes.append(sorted({shape(r) for r in rows}, key=repr))
    assert shapes[0] == shapes[1]
    assert len(shapes[0]) == 3  # rejected, queued with own variables, queued with the batch's


async def test_a_bulk_that_fails_after_its_items_leaves_nothing(
    service: Service, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The items go to the database on the driver directly (COPY, or one INSERT for a few): they
    must still be inside the request's transaction. A failure after them (here: writing the audit
    row) leaves no item, no batch, and nothing a worker could claim; the same request again works.
    An email code with inline content is the case where nothing else reaches the database first."""

    async def broken(self: object, session: object) -> None:
        raise RuntimeError("the audit row could not be written")

    body = {
        "channel": "email",
        "category": "verification",
        "subject": "Your code",
        "content": "Your code is {{ code }}",
        "variables": {"code": "4711"},
    }
    for recipients in (["ann@example.com"], [f"user{i}@example.com" for i in range(40)]):
        monkeypatch.setattr(AuditEvent, "insert_into", broken)
        failed = await service.client.post(
            "/communication/bulk", json={**body, "recipients": recipients}, headers=tenant.headers()
        )
        assert failed.status_code == 500
        async with service.db.read() as session:
            assert await session.scalar(select(func.count()).select_from(Message)) == 0
            assert await session.scalar(select(func.count()).select_from(Batch)) == 0
        monkeypatch.undo()
        again = await service.client.post(
            "/communication/bulk", json={**body, "recipients": recipients}, headers=tenant.headers()
        )
        assert again.status_code == 202
        async with service.db.begin() as session:
            await session.execute(delete(Message))
            await session.execute(delete(Batch))


async def test_a_fault_part_way_through_a_large_bulk_leaves_the_pool_usable(
    service: Service, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's write runs while the next chunk is prepared: when preparing fails, the write in
    flight ends before the transaction rolls back, nothing of the request is kept, and the
    requests after it work (before: a connection went back to the pool mid-transaction)."""
    from comms.messages import service as submit

    original = submit._Normalizer.run
    calls = 0

    def failing_on_the_second_chunk(self: submit._Normalizer, chunk: list[object]) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a fault while preparing the second chunk")
        return original(self, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(submit._Normalizer, "run", failing_on_the_second_chunk)
    body = sms(recipients=[f"138{i:08d}" for i in range(submit.CHUNK + 1)])
    failed = await service.client.post("/communication/bulk", json=body, headers=tenant.headers())
    assert failed.status_code == 500 and failed.json()["code"] == 500
    assert await count_rows(service) == (0, 0)
    for _ in range(4):  # more than one connection of the pool: each must be usable
        assert (
            await service.client.post("/communication/bulk", json=sms(), headers=tenant.headers())
        ).status_code == 202
    assert await count_rows(service) == (4, 8)
