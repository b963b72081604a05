"""Logs (filters, pagination, newest first, tenant isolation), batches, templates CRUD."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from tests.conftest import Service, TenantKeys, make_tenant


async def bulk(service: Service, tenant: TenantKeys, **body: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "channel": "sms",
        "content": "Hello {{ name }}",
        "category": "transactional",
        "variables": {"name": "you"},
        "recipients": ["13800138000"],
    }
    payload.update(body)
    answer = await service.client.post("/communication/bulk", json=payload, headers=tenant.headers())
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


async def test_logs_newest_first_with_pagination_math(service: Service, tenant: TenantKeys) -> None:
    first = await bulk(service, tenant, recipients=[f"138001380{i:02d}" for i in range(25)])
    second = await bulk(service, tenant, recipients=["13900139000"], user_id="usr_1")
    page1 = (await service.client.get("/communication/logs?page_size=10", headers=tenant.headers())).json()
    assert page1["total"] == 26
    assert page1["pagination"] == {
        "page": 1,
        "page_size": 10,
        "total": 26,
        "total_pages": 3,
        "has_next": True,
        "has_prev": False,
        "next_cursor": page1["pagination"]["next_cursor"],
    }
    assert isinstance(page1["pagination"]["next_cursor"], str)
    assert page1["items"][0]["batch_id"] == second["batch_id"]
    page3 = (
        await service.client.get("/communication/logs?page_size=10&page=3", headers=tenant.headers())
    ).json()
    assert (
        len(page3["items"]) == 6
        and page3["pagination"]["has_prev"] is True
        and not page3["pagination"]["has_next"]
    )
    ids = [i["id"] for i in page1["items"]]
    assert ids == sorted(ids, reverse=True)
    assert all(i["batch_id"] == first["batch_id"] for i in page3["items"])
    assert page3["pagination"]["next_cursor"] is None
    beyond = (await service.client.get("/communication/logs?page=9", headers=tenant.headers())).json()
    assert beyond["items"] == [] and beyond["total"] == 26


async def test_a_batchs_items_page_newest_first_without_the_others(
    service: Service, tenant: TenantKeys
) -> None:
    """A batch's page is read as a range of the primary key (its ids share one head): it holds
    exactly that batch's items, newest first, whatever was accepted before and after it."""
    before = await bulk(service, tenant, recipients=[f"137001370{i:02d}" for i in range(7)])
    batch = await bulk(service, tenant, recipients=[f"138001380{i:02d}" for i in range(25)])
    after = await bulk(service, tenant, recipients=[f"139001390{i:02d}" for i in range(7)])
    ids = sorted((i["id"] for i in batch["items"]), reverse=True)
    seen: list[str] = []
    for page in (1, 2, 3):
        answer = await service.client.get(
            f"/communication/logs?batch_id={batch['batch_id']}&page={page}&page_size=10",
            headers=tenant.headers(),
        )
        body = answer.json()
        assert body["total"] == 25 and body["pagination"]["has_next"] is (page < 3)
        seen += [i["id"] for i in body["items"]]
    assert seen == ids
    for other in (before, after):
        listed = await service.client.get(
            f"/communication/logs?batch_id={other['batch_id']}", headers=tenant.headers()
        )
        assert {i["id"] for i in listed.json()["items"]} == {i["id"] for i in other["items"]}


async def pages_by_cursor(
    service: Service, tenant: TenantKeys, query: str, between: Any = None
) -> list[dict[str, Any]]:
    """Every page of /logs?<query>, following pagination.next_cursor from the first page;
    ``between`` (a coroutine function) runs after each page."""
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        suffix = f"&cursor={cursor}" if cursor else ""
        answer = await service.client.get(f"/communication/logs?{query}{suffix}", headers=tenant.headers())
        assert answer.status_code == 200, answer.text
        pages.append(answer.json())
        cursor = pages[-1]["pagination"]["next_cursor"]
        if cursor is None:
            return pages
        if between is not None:
            await between()
        assert len(pages) < 50


async def test_a_cursor_walks_every_item_once_while_new_items_arrive(
    service: Service, tenant: TenantKeys
) -> None:
    """Page numbers shift when items arrive between two reads (OFFSET counts from the newest);
    a cursor is a position: every item listed exactly once, in order, whatever arrives."""
    first = await bulk(service, tenant, recipients=[f"138001380{i:02d}" for i in range(23)])
    listed_first = sorted((i["id"] for i in first["items"]), reverse=True)
    arrived: list[str] = []

    async def another() -> None:
        arrived.extend(i["id"] for i in (await bulk(service, tenant, recipients=["13900139000"]))["items"])

    pages = await pages_by_cursor(service, tenant, "page_size=10", between=another)
    seen = [i["id"] for p in pages for i in p["items"]]
    assert seen == listed_first and len(pages) == 3 and len(arrived) == 2
    assert [len(p["items"]) for p in pages] == [10, 10, 3]
    assert pages[0]["pagination"]["page"] == 1 and pages[0]["pagination"]["has_prev"] is False
    for later in pages[1:]:  # reached by a position, not a page number
        assert later["pagination"]["page"] is None and later["pagination"]["has_prev"] is True
    assert [p["pagination"]["has_next"] for p in pages] == [True, True, False]
    # total still counts every match, the ones that arrived meanwhile too
    assert pages[-1]["total"] == 25 and pages[-1]["pagination"]["total_pages"] == 3
    # the same walk by page numbers would have shown an item twice
    by_number = []
    for page in (1, 2, 3):
        got = await service.client.get(
            f"/communication/logs?page_size=10&page={page}", headers=tenant.headers()
        )
        by_number += [i["id"] for i in got.json()["items"]]
        if page == 1:
            await another()
    assert len(by_number) != len(set(by_number))


async def test_a_cursor_keeps_the_filters_and_the_tenant(service: Service, tenant: TenantKeys) -> None:
    """The cursor is only a position: the request's own filters and tenant always apply, and a
    batch is still read as a range of the primary key."""
    batch = await bulk(service, tenant, recipients=[f"138001380{i:02d}" for i in range(12)])
    await bulk(service, tenant, recipients=[f"137001370{i:02d}" for i in range(5)])
    pages = await pages_by_cursor(service, tenant, f"batch_id={batch['batch_id']}&page_size=5")
    assert [i["id"] for p in pages for i in p["items"]] == sorted(
        (i["id"] for i in batch["items"]), reverse=True
    )
    assert all(p["total"] == 12 for p in pages)
    other = await make_tenant(service.db, "Other")
    await bulk(service, other, recipients=["13600136000"])
    cursor = pages[0]["pagination"]["next_cursor"]
    theirs = await service.client.get(f"/communication/logs?cursor={cursor}", headers=other.headers())
    assert theirs.status_code == 200 and theirs.json()["items"] == []  # their one item is newer


async def test_oldest_first_lists_a_batch_in_the_order_of_its_request(
    service: Service, tenant: TenantKeys
) -> None:
    """order=oldest: a batch in the order the request named its recipients (as the 202 listed
    them); its cursor walks on into what arrives later, and only ever forward."""
    numbers = [f"138001380{i:02d}" for i in (7, 3, 11, 0, 5, 9, 1)]
    created = await bulk(service, tenant, recipients=numbers)
    in_request_order = [i["id"] for i in created["items"]]
    query = f"batch_id={created['batch_id']}&order=oldest&page_size=3"
    pages = await pages_by_cursor(service, tenant, query)
    assert [i["id"] for p in pages for i in p["items"]] == in_request_order
    assert [i["recipient"] for p in pages for i in p["items"]] == [i["recipient"] for i in created["items"]]
    numbered = await service.client.get(f"/communication/logs?{query}&page=3", headers=tenant.headers())
    assert [i["id"] for i in numbered.json()["items"]] == in_request_order[6:]
    arrived: list[str] = []

    async def another() -> None:
        arrived.extend(i["id"] for i in (await bulk(service, tenant, recipients=["13900139000"]))["items"])

    everything = await pages_by_cursor(service, tenant, "order=oldest&page_size=4", between=another)
    listed = [i["id"] for p in everything for i in p["items"]]
    assert listed == sorted(listed) and len(listed) == len(set(listed))
    assert listed[:7] == in_request_order and set(arrived) <= set(listed) and len(arrived) >= 1


async def test_logs_without_counting(service: Service, tenant: TenantKeys) -> None:
    """count=false: no count of the matches (total and total_pages null); has_next and the cursor
    come from reading one item more than the page."""
    await bulk(service, tenant, recipients=[f"138001380{i:02d}" for i in range(7)])
    h = tenant.headers()
    first = (await service.client.get("/communication/logs?page_size=3&count=false", headers=h)).json()
    info = first["pagination"]
    assert first["total"] is None and info["total"] is None and info["total_pages"] is None
    assert info["has_next"] is True and len(first["items"]) == 3
    last = (await service.client.get("/communication/logs?page_size=3&page=3&count=false", headers=h)).json()
    assert len(last["items"]) == 1 and last["pagination"]["has_next"] is False
    exact = (await service.client.get("/communication/logs?page_size=7&count=false", headers=h)).json()
    assert len(exact["items"]) == 7 and exact["pagination"]["has_next"] is False
    assert exact["pagination"]["next_cursor"] is None
    pages = await pages_by_cursor(service, tenant, "page_size=3&count=false&status=queued")
    assert sum(len(p["items"]) for p in pages) == 7 and all(p["total"] is None for p in pages)


async def test_bad_cursors_are_422_naming_the_cursor(service: Service, tenant: TenantKeys) -> None:
    from comms.kit.pagination import encode_cursor

    created = await bulk(service, tenant, recipients=["13800138000", "13900139000"])
    log_id = created["items"][0]["id"]
    good = encode_cursor(f"newest:{log_id}")
    for query in (
        f"cursor={good}&page=2",  # a position and a page number
        f"cursor={good}&order=oldest",  # made for the other order: another place in it
        "cursor=not-a-cursor",
        "cursor=%00",
        f"cursor={encode_cursor('newest:bat_' + '0' * 32)}",  # another kind of id
        f"cursor={encode_cursor('newest:log_zz')}",
        f"cursor={encode_cursor('newest:' + log_id[:16] + chr(0) * 20)}",  # a NUL once decoded
        f"cursor={encode_cursor('newest:' + log_id[:16] + 'é' * 20)}",
        f"cursor={encode_cursor('newest:' + log_id.upper())}",
        f"cursor={encode_cursor(log_id)}",  # no order
        f"cursor={encode_cursor('sideways:' + log_id)}",
        f"cursor={log_id}",  # a log id as it is: cursors are opaque
        "cursor=" + "A" * 201,
    ):
        answer = await service.client.get(f"/communication/logs?{query}", headers=tenant.headers())
        assert answer.status_code == 422, (query, answer.text)
        assert answer.json()["errors"][0]["field"] == "cursor", (query, answer.text)
    bad_count = await service.client.get("/communication/logs?count=maybe", headers=tenant.headers())
    assert bad_count.status_code == 422 and bad_count.json()["errors"][0]["field"] == "count"
    bad_order = await service.client.get("/communication/logs?order=random", headers=tenant.headers())
    assert bad_order.status_code == 422 and bad_order.json()["errors"][0]["field"] == "order"
    fine = await service.client.get(f"/communication/logs?cursor={good}&page=1", headers=tenant.headers())
    assert fine.status_code == 200


async def test_log_filters(service: Service, tenant: TenantKeys) -> None:
    a = await bulk(service, tenant, recipients=["13800138000", "13900139000"], user_id="usr_a")
    await bulk(service, tenant, recipients=["13700137000"], user_id="usr_b")
    await bulk(
        service,
        tenant,
        channel="email",
        subject="S",
        recipients=["Ann@Example.com"],
        content="x",
        variables=None,
    )
    get = service.client.get
    h = tenant.headers()
    assert (await get("/communication/logs?user_id=usr_a", headers=h)).json()["total"] == 2
    assert (await get(f"/communication/logs?batch_id={a['batch_id']}", headers=h)).json()["total"] == 2
    assert (await get("/communication/logs?channel=email", headers=h)).json()["total"] == 1
    assert (await get("/communication/logs?status=queued", headers=h)).json()["total"] == 4
    assert (await get("/communication/logs?recipient=%2B86%20139%200013%209000", headers=h)).json()[
        "total"
    ] == 1
    assert (await get("/communication/logs?recipient=ann@example.com", headers=h)).json()["total"] == 1
    assert (await get("/communication/logs?created_from=2000-01-01T00:00:00Z", headers=h)).json()[
        "total"
    ] == 4
    assert (await get("/communication/logs?created_to=2000-01-01T00:00:00Z", headers=h)).json()["total"] == 0
    # The bounds hold at the second the log shows (created_at is shown to the second, stored
    # finer; the bounds are also read as a range of the time-ordered ids, made a moment before).
    item = (await get(f"/communication/logs?batch_id={a['batch_id']}", headers=h)).json()["items"][0]
    at = datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
    second, ms = timedelta(seconds=1), timedelta(milliseconds=1)

    async def between(start: datetime | None, end: datetime | None) -> set[str]:
        query = f"/communication/logs?batch_id={a['batch_id']}&page_size=200"
        query += f"&created_from={quote(start.isoformat())}" if start else ""
        query += f"&created_to={quote(end.isoformat())}" if end else ""
        return {i["id"] for i in (await get(query, headers=h)).json()["items"]}

    both = {i["id"] for i in a["items"]}
    assert await between(at, at + second) == both and await between(at, None) == both
    assert await between(None, at + second) == both
    assert await between(at - timedelta(days=3650), at + second) == both
    assert await between(at + second, None) == set() and await between(None, at - ms) == set()
    bad = await get("/communication/logs?created_from=yesterday", headers=h)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "created_from"
    bad_recipient = await get("/communication/logs?recipient=12", headers=h)
    assert bad_recipient.status_code == 422


async def test_other_tenants_objects_are_404(service: Service, tenant: TenantKeys) -> None:
    mine = await bulk(service, tenant)
    other = await make_tenant(service.db, "Other")
    log_id = mine["items"][0]["id"]
    for path in (f"/communication/logs/{log_id}", f"/communication/batches/{mine['batch_id']}"):
        assert (await service.client.get(path, headers=other.headers())).status_code == 404
        assert (await service.client.get(path, headers=tenant.headers())).status_code == 200
    cancel = await service.client.post(
        f"/communication/batches/{mine['batch_id']}/cancel", headers=other.headers()
    )
    assert cancel.status_code == 404
    assert (await service.client.get("/communication/logs", headers=other.headers())).json()["total"] == 0
    theirs = await service.client.get(
        f"/communication/logs?batch_id={mine['batch_id']}", headers=other.headers()
    )
    assert theirs.status_code == 200 and (theirs.json()["total"], theirs.json()["items"]) == (0, [])


async def test_batch_counts_cancel_and_retry(service: Service, tenant: TenantKeys) -> None:
    created = await bulk(service, tenant, recipients=["13800138000", "13900139000", "bad"])
    batch_id = created["batch_id"]
    data = (await service.client.get(f"/communication/batches/{batch_id}", headers=tenant.headers())).json()[
        "data"
    ]
    assert data["counts"] == {"queued": 2, "rejected": 1} and data["total"] == 3 and data["done"] is False
    cancelled = await service.client.post(
        f"/communication/batches/{batch_id}/cancel", headers=tenant.headers()
    )
    assert cancelled.status_code == 200
    assert cancelled.json()["data"]["counts"] == {"cancelled": 2, "rejected": 1}
    assert cancelled.json()["data"]["done"] is True and cancelled.json()["data"]["cancelled_at"]
    again = await service.client.post(f"/communication/batches/{batch_id}/cancel", headers=tenant.headers())
    assert again.json()["message"] == "nothing to cancel: every item is final"
    assert again.json()["data"]["cancelled_at"] == cancelled.json()["data"]["cancelled_at"]
    # A batch with nothing left to send is not marked cancelled by a cancel.
    finished = await bulk(service, tenant, recipients=["bad"])
    answer = await service.client.post(
        f"/communication/batches/{finished['batch_id']}/cancel", headers=tenant.headers()
    )
    assert answer.status_code == 200 and answer.json()["message"] == "nothing to cancel: every item is final"
    assert answer.json()["data"]["cancelled_at"] is None
    retried = await service.client.post(f"/communication/batches/{batch_id}/retry", headers=tenant.headers())
    assert retried.status_code == 200 and retried.json()["message"] == "re-queued 0 item(s)"
    assert (
        await service.client.get("/communication/batches/bat_nope", headers=tenant.headers())
    ).status_code == 404


async def test_a_batch_retry_ranks_its_rows_like_a_new_batch(service: Service, tenant: TenantKeys) -> None:
    """Re-queued rows are spread over virtual time by position (fairness.py), not all given one
    rank: a 100k retry must not rank wholly ahead of a batch accepted a second later."""
    from sqlalchemy import func, select, update

    from comms.messages.fairness import FAIR_SLICE, FAIR_STEP_MS
    from comms.models import Message

    created = await bulk(service, tenant, recipients=[f"138{i:08d}" for i in range(2 * FAIR_SLICE + 200)])
    batch_id = created["batch_id"]
    async with service.db.begin() as session:
        await session.execute(update(Message).where(Message.batch_id == batch_id).values(status="failed"))
    retried = await service.client.post(f"/communication/batches/{batch_id}/retry", headers=tenant.headers())
    assert retried.json()["message"] == f"re-queued {2 * FAIR_SLICE + 200} item(s)"
    async with service.db.read() as session:
        ranks = (
            await session.execute(
                select(Message.queue_rank, func.count())
                .where(Message.batch_id == batch_id)
                .group_by(Message.queue_rank)
                .order_by(Message.queue_rank)
            )
        ).all()
    assert [count for _, count in ranks] == [FAIR_SLICE, FAIR_SLICE, 200]
    assert [rank - ranks[0][0] for rank, _ in ranks] == [0, FAIR_STEP_MS, 2 * FAIR_STEP_MS]


async def test_templates_crud_and_use(service: Service, tenant: TenantKeys) -> None:
    h = tenant.headers()
    created = await service.client.post(
        "/communication/templates",
        json={
            "code": "verify_code",
            "name": "Verification",
            "channel": "sms",
            "category": "verification",
            "content": "Your code is {{ code }}, valid {{ minutes }} min",
            "secret_variables": ["code"],
            "provider_templates": {"aliyun": {"template_code": "SMS_123456", "sign_name": "Acme"}},
        },
        headers=h,
    )
    assert created.status_code == 201, created.text
    tpl = created.json()["data"]
    assert tpl["id"].startswith("tpl_") and tpl["variables"] == ["code", "minutes"]
    dup = await service.client.post(
        "/communication/templates",
        json={"code": "verify_code", "channel": "sms", "content": "x"},
        headers=h,
    )
    assert dup.status_code == 409
    by_code = await service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "template": "verify_code",
            "recipients": ["13800138000"],
            "variables": {"code": "987654", "minutes": "5"},
        },
        headers=h,
    )
    assert by_code.status_code == 202, by_code.text
    item = by_code.json()["items"][0]
    assert item["template_id"] == tpl["id"] and item["category"] == "verification"
    assert item["content"] == "Your code is ******, valid 5 min"
    mismatch = await service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "template": tpl["id"],
            "category": "marketing",
            "recipients": ["13800138000"],
            "variables": {"code": "1", "minutes": "5"},
        },
        headers=h,
    )
    assert mismatch.status_code == 422 and "category_mismatch" in mismatch.json()["message"]
    override = await service.client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "template": "verify_code",
            "content": "Code: {{ code }}",
            "recipients": ["13800138000"],
            "variables": {"code": "1"},
        },
        headers=h,
    )
    assert override.status_code == 202 and override.json()["items"][0]["content"] == "Code: ******"
    wrong_channel = await service.client.post(
        "/communication/bulk",
        json={"channel": "email", "template": "verify_code", "subject": "s", "recipients": ["a@example.com"]},
        headers=h,
    )
    assert wrong_channel.status_code == 422
    updated = await service.client.put(
        f"/communication/templates/{tpl['id']}", json={"name": "V2"}, headers=h
    )
    assert updated.status_code == 200 and updated.json()["data"]["version"] == 2
    bad_update = await service.client.put(
        f"/communication/templates/{tpl['id']}", json={"content": "{{"}, headers=h
    )
    assert bad_update.status_code == 422
    listed = (await service.client.get("/communication/templates", headers=h)).json()
    assert listed["total"] == 1
    other = await make_tenant(service.db, "Other")
    assert (
        await service.client.get(f"/communication/templates/{tpl['id']}", headers=other.headers())
    ).status_code == 404
    assert (
        await service.client.delete(f"/communication/templates/{tpl['id']}", headers=other.headers())
    ).status_code == 404
    forbidden = await service.client.delete(
        f"/communication/templates/{tpl['id']}", headers=tenant.headers(tenant.read_only_token)
    )
    assert forbidden.status_code == 403
    assert (
        await service.client.delete(f"/communication/templates/{tpl['id']}", headers=h)
    ).status_code == 200
    assert (await service.client.get(f"/communication/templates/{tpl['id']}", headers=h)).status_code == 404


async def test_template_validation_errors(service: Service, tenant: TenantKeys) -> None:
    h = tenant.headers()
    for body in (
        {"code": "bad code!", "channel": "sms", "content": "x"},
        {"code": "c", "channel": "fax", "content": "x"},
        {"code": "c", "channel": "sms", "content": ""},
        {"code": "c", "channel": "sms", "content": "{% for x in y %}{% endfor %}"},
        {"code": "c", "channel": "email", "content": "x", "subject": "a\nBcc: evil@example.com"},
        {"code": "c", "channel": "sms", "content": "x", "unknown": 1},
    ):
        answer = await service.client.post("/communication/templates", json=body, headers=h)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["errors"]
    assert (await service.client.get("/communication/templates", headers=h)).json()["total"] == 0
