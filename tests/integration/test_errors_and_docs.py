"""Envelope on every error, OpenAPI names from the seed, health endpoints."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import Service, TenantKeys


async def test_unknown_route_is_enveloped_404(service: Service) -> None:
    answer = await service.client.get("/nope")
    assert answer.status_code == 404
    assert answer.json()["code"] == 404 and "timestamp" in answer.json()


async def test_query_validation_is_enveloped_422(service: Service, tenant: TenantKeys) -> None:
    answer = await service.client.get("/communication/logs?page=0", headers=tenant.headers())
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "page"


async def test_openapi_uses_seed_dto_names(service: Service) -> None:
    schema = (await service.client.get("/openapi.json")).json()
    names = set(schema["components"]["schemas"])
    for name in (
        "dto.BulkSendRequest",
        "dto.CommunicationLogListResponse",
        "dto.CommunicationLogResponse",
        "dto.PageInfo",
        "dto.SimpleResponse",
    ):
        assert name in names
    body = schema["paths"]["/communication/bulk"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body == {"$ref": "#/components/schemas/dto.BulkSendRequest"}
    assert list(schema["components"]["securitySchemes"]) == ["bearerAuth"]  # the seed's name
    assert "counts" in schema["components"]["schemas"]["dto.CommunicationLogListResponse"]["properties"]
    # The public routes document what they answer besides success (found by schemathesis)
    callback = schema["paths"]["/webhooks/{provider}/{account_id}/status"]["post"]["responses"]
    assert {"400", "401", "404", "413", "422", "503"} <= set(callback)
    assert callback["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/dto.SimpleResponse"
    }
    assert "text/html" in schema["paths"]["/u/{token}"]["get"]["responses"]["404"]["content"]
    assert (await service.client.get("/docs")).status_code == 200


async def test_health_and_ready(service: Service) -> None:
    assert (await service.client.get("/healthz")).json()["code"] == 200
    ready = await service.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["message"] == "ready"


async def _counts(service: Service) -> tuple[int, int, int]:
    from sqlalchemy import func, select

    from comms.models import Batch, Message, Template

    async with service.db.read() as session:
        return (
            int(await session.scalar(select(func.count()).select_from(Message)) or 0),
            int(await session.scalar(select(func.count()).select_from(Batch)) or 0),
            int(await session.scalar(select(func.count()).select_from(Template)) or 0),
        )


async def test_edge_inputs_are_enveloped_errors_that_change_nothing(
    service: Service, tenant: TenantKeys
) -> None:
    """Inputs at the edges of what the parsers take: deep nesting, dates past year 9999, page
    numbers past a 64-bit offset, oversized templates, malformed JSON on model-validated routes.
    Each is a 4xx in the envelope naming the field, never a 500, and nothing is written."""
    sms = {"channel": "sms", "category": "transactional", "recipients": ["13800138000"]}
    deep = "{% if a %}" * 400 + "x" + "{% endif %}" * 400
    cases: list[tuple[str, str, dict[str, object] | bytes | None, int, str]] = [
        ("POST", "/communication/bulk", {**sms, "content": deep}, 422, "content"),
        (
            "POST",
            "/communication/bulk",
            {**sms, "content": "{{ " + "(" * 3000 + "a" + ")" * 3000 + " }}"},
            422,
            "content",
        ),
        ("POST", "/communication/bulk", {**sms, "content": "x" * 300_000}, 422, "content"),
        (
            "POST",
            "/communication/bulk",
            {**sms, "content": "hi", "send_at": "9999-12-31T23:59:59-01:00"},
            422,
            "send_at",
        ),
        (
            "POST",
            "/communication/bulk",
            {**sms, "content": "hi", "send_at": "0001-01-01T00:00:00+01:00"},
            422,
            "send_at",
        ),
        (
            "POST",
            "/communication/templates",
            {"code": "deep", "channel": "sms", "content": deep},
            422,
            "content",
        ),
        (
            "POST",
            "/communication/templates",
            {"code": "big", "channel": "sms", "content": "x" * 300_000},
            422,
            "content",
        ),
        ("POST", "/communication/templates", b"{bad", 400, ""),
        ("POST", "/communication/suppressions", b"{bad", 400, ""),
        ("PUT", "/communication/settings", b"[" * 100_000 + b"]" * 100_000, 400, ""),
        ("GET", "/communication/logs?created_from=0001-01-01T00:00:00%2B01:00", None, 422, "created_from"),
        # RFC 3339 date-times only (Python's fromisoformat alone takes these too)
        ("GET", "/communication/logs?created_from=2026-04-15", None, 422, "created_from"),
        ("GET", "/communication/logs?created_to=20261127T063000Z", None, 422, "created_to"),
        ("GET", "/communication/logs?created_to=2026-11-27T06:30:00", None, 422, "created_to"),
        (
            "POST",
            "/communication/bulk",
            {**sms, "content": "hi", "send_at": "20270101T000000Z"},
            422,
            "send_at",
        ),
        ("GET", "/communication/logs?created_to=9999-12-31T23:59:59-01:00", None, 422, "created_to"),
        ("GET", "/communication/logs?page=9223372036854775807", None, 422, "page"),
        ("GET", "/communication/templates?page=9223372036854775807", None, 422, "page"),
        ("GET", "/communication/suppressions?page=9223372036854775807", None, 422, "page"),
        # PostgreSQL cannot store NUL in text (SQLite can): refused alike on both, naming the field.
        ("POST", "/communication/bulk", {**sms, "content": "a\u0000b"}, 422, "content"),
        (
            "POST",
            "/communication/bulk",
            {**sms, "recipients": ["1380013800\u0000"], "content": "hi"},
            422,
            "recipients[0]",
        ),
        (
            "POST",
            "/communication/bulk",
            {**sms, "content": "hi", "metadata": {"k": "v\u0000"}},
            422,
            "metadata.k",
        ),
        (
            "POST",
            "/communication/templates",
            {"code": "n", "channel": "sms", "content": "a\u0000"},
            422,
            "content",
        ),
        ("GET", "/communication/logs?recipient=%00", None, 422, "recipient"),
        ("GET", "/communication/logs?status=sendt", None, 422, "status"),
        ("GET", "/communication/logs/log_%00", None, 422, "path"),
        # Templates whose compilation would hold the event loop for seconds: refused before parsing.
        ("POST", "/communication/bulk", {**sms, "content": "{{a}}" * 52_428}, 422, "content"),
        ("POST", "/communication/bulk", {**sms, "content": "{{ a" + "|e" * 200 + " }}"}, 422, "content"),
        (
            "POST",
            "/communication/bulk",
            {**sms, "content": "{{ " + "~".join(["a"] * 4000) + " }}"},
            422,
            "content",
        ),
        (
            "POST",
            "/communication/templates",
            {"code": "nots", "channel": "sms", "content": "{{ " + "not " * 200 + "a }}"},
            422,
            "content",
        ),
        (
            "POST",
            "/communication/bulk",
            {**sms, "content": "hi", "send_at": "2099-01-01T00:00:00Z"},
            422,
            "send_at",
        ),
        ("POST", "/webhooks/twilio/acc%00/status", b"{}", 422, "path"),
        # An outbox account's folder stays inside the outbox: refused when saved, not at a send.
        (
            "POST",
            "/communication/providers",
            {"channel": "sms", "provider": "outbox", "name": "o", "config": {"directory": "a/../../etc"}},
            422,
            "config.directory",
        ),
        # Bodies the framework reads stop at COMMS_MAX_REQUEST_BYTES (4 MiB), before any parsing.
        (
            "POST",
            "/communication/templates",
            {"code": "huge", "channel": "sms", "content": "x" * 5_000_000},
            413,
            "",
        ),
        ("PUT", "/communication/settings", b" " * 4 * 1024 * 1024 + b"{}", 413, ""),
        # Routes with limits of their own hold to them before anything reads the body (the NUL
        # check, a callback's signature check before its account is even looked up).
        ("POST", "/webhooks/aliyun/acc_nope/status", b" " * (1024 * 1024 + 1), 413, ""),
        ("POST", "/communication/unsubscribe/mailto", b" " * (10 * 1024 * 1024 + 1), 413, ""),
        ("POST", "/u/anything", b" " * (16 * 1024 + 1), 413, ""),
        # A trailing slash is another path: not found, in the envelope (not a bodiless redirect).
        ("GET", "/communication/logs/", None, 404, ""),
        ("POST", "/communication/bulk/", {**sms, "content": "hi"}, 404, ""),
    ]
    before = await _counts(service)
    for method, path, body, status, field in cases:
        kwargs: dict[str, object] = {"headers": {**tenant.headers(), "Content-Type": "application/json"}}
        if isinstance(body, bytes):
            kwargs["content"] = body
        elif body is not None:
            kwargs["json"] = body
        answer = await service.client.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert answer.status_code == status, (path, answer.status_code, answer.text[:300])
        envelope = answer.json()
        assert envelope["code"] == status and envelope["message"], (path, envelope)
        if field:
            assert [e["field"] for e in envelope["errors"]] == [field], (path, envelope)
    assert await _counts(service) == before


async def test_a_provider_account_config_cannot_be_set_to_null(service: Service, tenant: TenantKeys) -> None:
    created = await service.client.post(
        "/communication/providers",
        json={
            "channel": "sms",
            "provider": "webhook",
            "name": "gw",
            "config": {"url": "http://127.0.0.1:9/x", "secret": "s3cret-s3cret-s3cret"},
        },
        headers=tenant.headers(),
    )
    assert created.status_code == 201, created.text
    account = created.json()["data"]
    answer = await service.client.put(
        f"/communication/providers/{account['id']}", json={"config": None}, headers=tenant.headers()
    )
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "config"
    again = await service.client.get(f"/communication/providers/{account['id']}", headers=tenant.headers())
    assert again.json()["data"]["config"] == account["config"]


async def test_validation_messages_read_as_sentences(service: Service, tenant: TenantKeys) -> None:
    """Our validators' messages reach the caller as written, without pydantic's "Value error, "."""
    answer = await service.client.post(
        "/communication/templates",
        json={"code": "shout", "channel": "sms", "content": "Hi {{ name|shout }}"},
        headers=tenant.headers(),
    )
    assert answer.status_code == 422
    assert answer.json()["message"] == "content: filter 'shout' is not allowed in templates"
    region = await service.client.put(
        "/communication/settings", json={"default_region": "XX"}, headers=tenant.headers()
    )
    assert region.status_code == 422
    assert region.json()["errors"] == [
        {
            "field": "default_region",
            "message": "XX is not a region with a phone numbering plan (e.g. CN, US, DE)",
        }
    ]


async def test_the_request_id_is_echoed_and_quoted_in_a_500(
    service: Service, tenant: TenantKeys, caplog: pytest.LogCaptureFixture
) -> None:
    """X-Request-ID comes back on every answer; an unhandled error's 500 quotes the same id in its
    body, its header and its log line, so a caller's report finds the traceback."""

    async def boom() -> None:
        raise RuntimeError("a bug of ours")

    service.app.add_api_route("/boom-for-test", boom)
    ok = await service.client.get("/healthz", headers={"X-Request-ID": "client-rid-1"})
    assert ok.headers["x-request-id"] == "client-rid-1"
    with caplog.at_level(logging.ERROR, logger="comms.access"):
        failed = await service.client.get("/boom-for-test", headers={"X-Request-ID": "client-rid-2"})
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "client-rid-2"
    assert failed.json()["message"] == "internal error (request id client-rid-2)"
    [record] = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert getattr(record, "request_id", None) == "client-rid-2" and record.exc_info is not None
    generated = await service.client.get("/boom-for-test")
    assert generated.headers["x-request-id"] in generated.json()["message"]

    async def file_trouble() -> None:
        raise PermissionError(13, "Permission denied", "/var/comms/outbox")

    service.app.add_api_route("/file-trouble-for-test", file_trouble)
    # An OSError that is no lost connection is a bug or a file of ours: a 500, not "database down".
    denied = await service.client.get("/file-trouble-for-test")
    assert denied.status_code == 500 and denied.json()["message"].startswith("internal error")


async def test_an_unsubscribe_token_of_foreign_characters_is_not_valid(service: Service) -> None:
    for method in ("GET", "POST"):
        answer = await service.client.request(method, "/u/log_0193aaaaaaaa00000000000000000001.%C3%A9")
        assert answer.status_code == 404, answer.text


async def test_a_code_under_any_name_is_never_shown(service: Service, tenant: TenantKeys) -> None:
    """COMPLIANCE.md P3: a verification message that names its code "pin" (or "Code") shows and
    stores it as ******, like one that calls it "code"."""
    from comms.models import Batch

    for name in ("pin", "Code"):
        answer = await service.client.post(
            "/communication/bulk",
            json={
                "channel": "sms",
                "category": "verification",
                "content": f"Your login code is {{{{ {name} }}}}",
                "variables": {name: "482913"},
                "recipients": ["13800138000"],
            },
            headers=tenant.headers(),
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["items"][0]["content"] == "Your login code is ******"
        async with service.db.read() as session:
            batch = await session.get(Batch, answer.json()["batch_id"])
        assert batch is not None and "482913" not in str(batch.variables) and name in batch.secret_variables


async def test_what_was_stored_before_newer_checks_still_reads(service: Service, tenant: TenantKeys) -> None:
    """Checks added later apply where a value is set, not where it is read: a tenant whose stored
    default region predates the numbering-plan check, and a stored template over today's template
    limits, are still served (the template is listed without its variables)."""
    from sqlalchemy import update

    from comms.kit.clock import utcnow
    from comms.models import Template, Tenant

    async with service.db.begin() as session:
        tenant_row = await session.get(Tenant, tenant.tenant_id)
        assert tenant_row is not None
        await session.execute(
            update(Tenant)
            .where(Tenant.id == tenant.tenant_id)
            .values(settings={**(tenant_row.settings or {}), "default_region": "UK"})
        )
        session.add(
            Template(
                id="tpl_0193aaaaaaaa00000000000000000001",
                tenant_id=tenant.tenant_id,
                code="old-big",
                channel="sms",
                category="transactional",
                content="{{a}}" * 301,
                secret_variables=[],
                provider_templates={},
                version=1,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    assert (await service.client.get("/communication/settings", headers=tenant.headers())).status_code == 200
    listed = await service.client.get("/communication/templates", headers=tenant.headers())
    assert listed.status_code == 200, listed.text
    assert [t["variables"] for t in listed.json()["items"] if t["code"] == "old-big"] == [[]]


async def test_a_database_host_out_of_reach_is_a_503(service: Service) -> None:
    import errno

    async def unreachable() -> None:
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    service.app.add_api_route("/unreachable-for-test", unreachable)
    answer = await service.client.get("/unreachable-for-test")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
