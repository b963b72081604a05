"""Envelope on every error, OpenAPI names from the seed, health endpoints."""

from __future__ import annotations

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
    assert (await service.client.get("/docs")).status_code == 200


async def test_health_and_ready(service: Service) -> None:
    assert (await service.client.get("/healthz")).json()["code"] == 200
    ready = await service.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["message"] == "ready"
